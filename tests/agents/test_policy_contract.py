"""Every registered scheduler's run-time policy only returns valid actions (the loop raises on any other) and gets
every request run once, after it arrived: random small workloads, offline and online, with and without the stage
barrier."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mosaic.agents import SCHEDULERS
from mosaic.core.config import parse_config
from mosaic.core.trace import AGGREGATION_STAGE, EXPERT_STAGE, AggregationRecord, RequestRecord
from mosaic.pipeline import prepare, run_scheduler

NEEDS_A_MODEL = {"rl-reschedule"}  # a trained agent (tests/envs, tests/agents/test_rl*)
SLOW = {"mosaic-ilp", "mosaic-ilp-fixed"}  # their static plans are covered elsewhere; their run-time forms here
NAMES = sorted(n for n in SCHEDULERS if n not in NEEDS_A_MODEL | SLOW)


@pytest.mark.parametrize("name", NAMES)
@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    preset=st.sampled_from(["gpqa", "medmcqa", "mmlu_pro"]),
    n=st.integers(1, 30),
    workers=st.integers(1, 4),
    seed=st.integers(0, 10_000),
    rate=st.sampled_from([None, 0.05, 2.0]),
    barrier=st.booleans(),
    noise=st.sampled_from(["mean", "noisy-oracle:0.6"]),
)
def test_a_policy_runs_every_request_once_after_it_arrives(name, preset, n, workers, seed, rate, barrier, noise):
    exp = prepare(parse_config({
        "seed": seed,
        "workload": {"preset": preset, "questions": "synthetic", "num_queries": n, "k": 2, "arrival_rate": rate},
        "cluster": {"workers": workers},
        "costs": {"predictor": noise},
        "aggregation": {"mode": "adaptive", "threshold": 0.67},
        "runtime": {"barrier": barrier},
        "tracking": {"mode": "disabled"},
    }))  # fmt: skip
    run = run_scheduler(exp, name)
    reqs = [r for r in run.records if isinstance(r, RequestRecord)]
    experts = sorted(r.request_id for r in reqs if r.stage == EXPERT_STAGE)
    assert experts == list(range(len(exp.workload.requests)))
    aggregated = {d.query_id for d in run.result.decisions if not d.skipped}
    assert sorted(r.query_id for r in reqs if r.stage == AGGREGATION_STAGE) == sorted(aggregated)
    assert all(r.start >= exp.workload.queries[r.query_id].arrival - 1e-9 for r in reqs)
    assert sorted(r.query_id for r in run.records if isinstance(r, AggregationRecord)) == list(range(n))
