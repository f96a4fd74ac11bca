"""Sim-vs-real comparison: replaying a run's own plans and lengths in the simulator reproduces it exactly."""

from __future__ import annotations

import numpy as np
import pytest

from mosaic.core.trace import TraceWriter
from mosaic.core.types import Cluster, Response, Responses
from mosaic.runtime.executor import Executor
from mosaic.runtime.fidelity import compare, fidelity_table, max_worker_error, responses_of, simulate_run
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
