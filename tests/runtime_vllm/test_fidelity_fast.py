"""Sim-vs-real comparison: replaying a run's own plans and lengths in the simulator reproduces it exactly."""

from __future__ import annotations

import numpy as np
import pytest

from mosaic.core.trace import TraceWriter
from mosaic.core.types import Cluster, Response, Responses
from mosaic.runtime.executor import Executor
from mosaic.runtime.fidelity import (
    compare,
    fidelity_of_runs,
    fidelity_table,
    max_worker_error,
    responses_of,
    simulate_run,
)
from mosaic.runtime.sim import SimBackend


def test_sim_replay_of_a_sim_run_has_zero_error(vt, tmp_path):
    wl = vt.tiny_workload(tmp_path, 6)
    costs = vt.table_costs(wl)
    table = {(r.query_id, r.expert): Response(10 + 7 * r.id, "C", True, "x") for r in wl.requests}
    table |= {(q.id, wl.aggregator.name): Response(5, "C", True, "y") for q in wl.queries}
    cluster = Cluster.homogeneous(2, "cpu", 8.0)
    trace = TraceWriter(None)
    real = Executor(SimBackend(Responses(table), costs)).run(wl, vt.FixedOrder(vt.by_expert), costs, cluster,
                                                             np.random.default_rng(0), trace)  # fmt: skip
    assert len(responses_of(trace.records)) == len(table)
    sim = simulate_run(real, trace.records, wl, costs, cluster)
    errors = compare("fixed", real, sim)
    assert {e.stage for e in errors} == {"expert", "aggregation", "end-to-end"}
    assert all(e.error == pytest.approx(0.0, abs=1e-12) for e in errors)
    assert max_worker_error(errors) == pytest.approx(0.0, abs=1e-12)
    assert fidelity_table(errors).row_count == len(errors)
    replay = TraceWriter(None)  # the replay's own records: those of the run it replays
    simulate_run(real, trace.records, wl, costs, cluster, trace=replay)
    assert sorted(map(repr, replay.records)) == sorted(map(repr, trace.records))


def test_slower_profile_shows_positive_error(vt, tmp_path):
    wl = vt.tiny_workload(tmp_path, 6)
    cluster = Cluster.homogeneous(2, "cpu", 8.0)
    table = {(r.query_id, r.expert): Response(40, "C", True) for r in wl.requests}
    table |= {(q.id, wl.aggregator.name): Response(5, "C", True) for q in wl.queries}
    trace = TraceWriter(None)
    fast = vt.table_costs(wl, load_s=1.0)
    real = Executor(SimBackend(Responses(table), fast)).run(wl, vt.FixedOrder(vt.by_expert), fast, cluster,
                                                            np.random.default_rng(0), trace)  # fmt: skip
    sim = simulate_run(real, trace.records, wl, vt.table_costs(wl, load_s=2.0), cluster)
    assert all(e.error > 0 for e in compare("fixed", real, sim) if e.stage == "expert")


def test_fidelity_of_runs_replays_an_experiments_runs():
    """The path of `mosaic compare --backend vllm` and experiments/sim_vs_real.py, here on simulated "real" runs."""
    from mosaic.core.config import load_config
    from mosaic.pipeline import aggregation_policy, prepare, run_scheduler, scheduler_from_config

    cfg = load_config(None, ["workload.preset=gpqa", "workload.num_queries=12", "aggregation.mode=adaptive"])
    exp = prepare(cfg)
    runs = [run_scheduler(exp, name) for name in ("round-robin", "greedy-lpt")]
    simulated: dict = {}
    errors = fidelity_of_runs(exp, runs, aggregation_policy(exp), lambda n: scheduler_from_config(exp.cfg, n),
                              sim_records=simulated)  # fmt: skip
    assert {e.scheduler for e in errors} == {"round-robin", "greedy-lpt"}
    assert all(e.error == pytest.approx(0.0, abs=1e-9) for e in errors)
    for run in runs:
        assert sorted(map(repr, simulated[run.name])) == sorted(map(repr, run.records))
