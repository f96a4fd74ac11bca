"""Policy fidelity (:mod:`mosaic.runtime.policy_fidelity`) on a fake-engine run: the simulator runs the same policy
with every request's real output and prompt tokens (the aggregator's released prompt too), and the errors follow."""

from __future__ import annotations

import numpy as np
import pytest

from mosaic.agents import make_scheduler
from mosaic.core.trace import AGGREGATION_STAGE, RequestRecord, TraceWriter
from mosaic.core.types import Cluster
from mosaic.runtime.executor import Executor
from mosaic.runtime.policy_fidelity import PolicyError, policy_error, simulate_policy

CLUSTER = Cluster.homogeneous(2, "cpu", 8.0)


@pytest.mark.parametrize("barrier", [True, False])
def test_the_simulator_replays_the_real_lengths_under_the_same_policy(vt, tmp_path, barrier):
    wl = vt.tiny_workload(tmp_path, 4)
    costs = vt.table_costs(wl)
    backend = vt.FakeBackend(vt.specs(tmp_path))
    with TraceWriter(None) as trace:
        real = Executor(backend, barrier=barrier).run(wl, make_scheduler("greedy-online"), costs, CLUSTER,
                                                      np.random.default_rng(0), trace)  # fmt: skip
    backend.close()
    recs = list(trace.records)
    sim, sim_recs = simulate_policy(recs, wl, make_scheduler("greedy-online"), costs, CLUSTER, barrier)

    def lengths(records):
        return {(r.stage, r.request_id): (r.prompt_tokens, r.output_tokens, r.answer)
                for r in records if isinstance(r, RequestRecord)}  # fmt: skip

    assert lengths(sim_recs) == lengths(recs)
    assert any(k[0] == AGGREGATION_STAGE for k in lengths(recs))
    err = policy_error("greedy-online", real, recs, sim, sim_recs, [q.arrival for q in wl.queries])
    assert err.sim_makespan == pytest.approx(sim.end_to_end) and err.real_makespan == pytest.approx(real.end_to_end)
    assert err.sim_latency > 0 and "greedy-online: makespan real" in err.line()


def test_errors_are_relative_to_the_real_run():
    e = PolicyError("p", 10.0, 12.0, 4.0, 3.0)
    assert e.makespan_error == pytest.approx(0.2) and e.latency_error == pytest.approx(-0.25)
    assert PolicyError("p", 0.0, 1.0, 0.0, 1.0).makespan_error == 0.0


@pytest.mark.parametrize("barrier", ["true", "false"])
def test_fidelity_of_runs_runs_policies_again_and_a_simulated_run_replays_exactly(barrier):
    """The path of `mosaic compare --backend vllm` for runs that act at run time (or have no barrier), on simulated
    "real" runs: the same policy on the same lengths decides the same, so every error is zero."""
    from mosaic.core.config import load_config
    from mosaic.pipeline import aggregation_policy, prepare, run_scheduler, scheduler_from_config
    from mosaic.runtime.fidelity import fidelity_of_runs

    cfg = load_config(None, ["workload.preset=gpqa", "workload.num_queries=12", "workload.arrival_rate=0.02",
                             f"runtime.barrier={barrier}"])  # fmt: skip
    exp = prepare(cfg)
    names = ("greedy-online", "greedy-lpt+steal", "greedy-lpt")
    runs = [run_scheduler(exp, name) for name in names]
    simulated: dict = {}
    errors = fidelity_of_runs(exp, runs, aggregation_policy(exp), lambda n: scheduler_from_config(exp.cfg, n),
                              sim_records=simulated)  # fmt: skip
    dynamic = set(names) if barrier == "false" else set(names) - {"greedy-lpt"}
    assert {e.scheduler for e in errors if e.stage == "mean latency"} == dynamic
    assert all(e.error == pytest.approx(0.0, abs=1e-9) for e in errors)
    for run in runs:
        assert sorted(map(repr, simulated[run.name])) == sorted(map(repr, run.records))
