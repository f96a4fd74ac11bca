"""No stage barrier: each query's aggregation is decided and run when its own experts have answered."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mosaic.agents import make_scheduler
from mosaic.core.errors import ConfigError
from mosaic.core.trace import AGGREGATION_STAGE, EXPERT_STAGE, AggregationRecord, RequestRecord, TraceWriter
from mosaic.pipeline import prepare, run_scheduler
from mosaic.runtime.executor import Executor

from .test_pipeline_invariants import OLD_MODEL, _cfg, check_trace

SCHEDULERS = ("round-robin", "greedy-lpt", "greedy-online", "greedy-lpt+steal")
EPS = 1e-6


def _overlapped(exp, on: bool):
    return exp.__class__(**{**{f: getattr(exp, f) for f in exp.__dataclass_fields__},
                            "cfg": exp.cfg.model_copy(update={"runtime": exp.cfg.runtime.model_copy(
                                update={"barrier": not on})})})  # fmt: skip


@pytest.mark.parametrize("name", SCHEDULERS)
@settings(max_examples=5, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    preset=st.sampled_from(["gpqa", "medmcqa", "mmlu_pro"]),
    n=st.integers(1, 50),
    workers=st.integers(1, 4),
    k=st.integers(1, 3),
    seed=st.integers(0, 10_000),
    mode=st.sampled_from(["always", "adaptive"]),
)
def test_overlapped_runs_decide_like_the_barrier_and_aggregate_after_their_own_experts(name, preset, n, workers, k,
                                                                                       seed, mode):  # fmt: skip
    exp = prepare(_cfg(preset, n, workers, k, seed, mode=mode))
    barrier, free = run_scheduler(exp, name), run_scheduler(_overlapped(exp, True), name)
    n_req = len(exp.workload.requests)
    check_trace(free.records, n_req, EXPERT_STAGE)
    aggs = [r for r in free.records if isinstance(r, RequestRecord) and r.stage == AGGREGATION_STAGE]
    expert_end: dict[int, float] = {}
    for r in free.records:
        if isinstance(r, RequestRecord) and r.stage == EXPERT_STAGE:
            expert_end[r.query_id] = max(expert_end.get(r.query_id, 0.0), r.end)
    assert all(r.request_id == n_req + r.query_id for r in aggs)
    assert all(r.start >= expert_end.get(r.query_id, 0.0) - EPS for r in aggs)
    decided = Counter(r.query_id for r in free.records if isinstance(r, AggregationRecord))
    assert decided == Counter(range(n))  # one decision per query
    skipped = {d.query_id for d in free.result.decisions if d.skipped}
    assert {r.query_id for r in aggs} == set(range(n)) - skipped
    assert [(d.skipped, d.answer, d.correct) for d in free.result.decisions] == [
        (d.skipped, d.answer, d.correct) for d in barrier.result.decisions]  # fmt: skip
    assert free.metrics.accuracy == barrier.metrics.accuracy and free.metrics.skip_rate == barrier.metrics.skip_rate
    assert free.result.end_to_end == pytest.approx(max(r.end for r in free.records if isinstance(r, RequestRecord)))


def test_without_the_barrier_aggregation_starts_while_experts_still_run():
    # round-robin: one worker's long reasoning queue ends the stage (a scenario built under the old models)
    exp = prepare(_cfg("gpqa", 60, 4, 3, 0, costs=OLD_MODEL))
    free = run_scheduler(_overlapped(exp, True), "round-robin")
    aggs = [r for r in free.records if isinstance(r, RequestRecord) and r.stage == AGGREGATION_STAGE]
    assert min(r.start for r in aggs) < free.result.expert.end - 1.0
    barrier = run_scheduler(exp, "round-robin")
    assert free.result.end_to_end < barrier.result.end_to_end  # round-robin's idle tail now serves aggregations


def test_a_backend_that_runs_plans_only_refuses_the_overlapped_mode():
    from .test_loop import PlansOnly

    exp = prepare(_cfg("gpqa", 4, 1, 1, 0))
    sched = make_scheduler("round-robin")
    with pytest.raises(ConfigError, match="barrier only"):
        Executor(PlansOnly(), barrier=False).run(exp.workload, sched, exp.costs, exp.cluster,
                                                 np.random.default_rng(0), TraceWriter(None))  # fmt: skip
