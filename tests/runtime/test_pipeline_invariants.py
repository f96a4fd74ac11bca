"""Properties of whole simulated runs (config -> workload -> plan -> simulator -> trace), for every baseline."""

from __future__ import annotations

from collections import defaultdict
from itertools import pairwise

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mosaic.core.config import parse_config
from mosaic.core.trace import AGGREGATION_STAGE, EXPERT_STAGE, LoadRecord, RequestRecord, read_trace
from mosaic.pipeline import prepare, run_scheduler

BASELINES = ("sequential", "round-robin", "data-parallel", "greedy-lpt")
EPS = 1e-6


# The simulator's models before issue 22 (the defaults are max/paged): tests of a scenario built under them pin them.
OLD_MODEL = {"step_model": "sum", "memory_mode": "reserve"}


def _cfg(preset: str, n: int, workers: int, k: int, seed: int, predictor: str = "mean", mode: str = "always",
         costs: dict | None = None):  # fmt: skip
    return parse_config({
        "seed": seed,
        "workload": {"preset": preset, "questions": "synthetic", "num_queries": n, "k": k},
        "cluster": {"workers": workers},
        "costs": {"predictor": predictor, **(costs or {})},
        "aggregation": {"mode": mode, "threshold": 0.67},
        "tracking": {"mode": "disabled"},
    })  # fmt: skip


def check_trace(records, workload_requests: int, stage: str) -> None:
    """Each request once; every request runs while its expert is the worker's only resident model."""
    reqs = [r for r in records if isinstance(r, RequestRecord) and r.stage == stage]
    loads = [r for r in records if isinstance(r, LoadRecord) and r.stage == stage]
    assert sorted(r.request_id for r in reqs) == list(range(workload_requests))
    per_worker: dict[int, list] = defaultdict(list)
    for rec in (*loads, *reqs):
        per_worker[rec.worker].append(rec)
    for w, recs in per_worker.items():
        w_loads = sorted((r for r in recs if isinstance(r, LoadRecord)), key=lambda r: r.start)
        for a, b in pairwise(w_loads):
            assert a.end <= b.start + EPS, f"worker {w}: loads overlap"
        for r in (r for r in recs if isinstance(r, RequestRecord)):
            before = [ld for ld in w_loads if ld.end <= r.start + EPS]
            if before:  # the latest load before the request decides what is resident
                assert before[-1].expert == r.expert, f"worker {w} ran {r.expert} while {before[-1].expert} resident"
            # no load may happen while the request runs (one resident expert at a time)
            assert not any(r.start + EPS < ld.start < r.end - EPS for ld in w_loads), f"worker {w}: load mid-request"


@pytest.mark.parametrize("name", BASELINES)
@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    preset=st.sampled_from(["gpqa", "medmcqa", "mmlu_pro"]),
    n=st.integers(1, 60),
    workers=st.integers(1, 5),
    k=st.integers(1, 4),
    seed=st.integers(0, 10_000),
    mode=st.sampled_from(["always", "adaptive"]),
)
def test_every_run_is_consistent(name, preset, n, workers, k, seed, mode):
    exp = prepare(_cfg(preset, n, workers, k, seed, mode=mode))
    run = run_scheduler(exp, name)
    check_trace(run.records, len(exp.workload.requests), EXPERT_STAGE)
    n_agg = sum(not d.skipped for d in run.result.decisions)
    check_trace(run.records, n_agg, AGGREGATION_STAGE)
    assert len(run.result.decisions) == len(exp.workload.queries)
    assert run.metrics.expert_makespan > 0
    assert run.result.aggregation.start >= run.result.expert.end - EPS  # aggregation starts after the experts


@pytest.mark.parametrize("name", BASELINES)
@settings(max_examples=5, deadline=None)
@given(n=st.integers(1, 80), workers=st.integers(1, 4), seed=st.integers(0, 10_000))
def test_makespan_never_below_the_lower_bound(name, n, workers, seed):
    """With predictions equal to the truth (oracle lengths) the bound holds for the simulated makespan."""
    exp = prepare(_cfg("mmlu_pro", n, workers, 3, seed, predictor="oracle"))
    run = run_scheduler(exp, name)
    assert run.metrics.expert_makespan >= run.metrics.lower_bound * (1 - 1e-9)


@pytest.mark.parametrize("name", BASELINES)
def test_same_seed_same_trace_file(tmp_path, name):
    cfg = _cfg("gpqa", 40, 3, 3, 7, mode="adaptive")
    paths = [tmp_path / f"{i}.jsonl" for i in range(2)]
    for p in paths:
        run_scheduler(prepare(cfg), name, p)
    assert paths[0].read_bytes() == paths[1].read_bytes()
    assert list(read_trace(paths[0]))  # non-empty, parseable
    other = tmp_path / "other.jsonl"
    run_scheduler(prepare(cfg.model_copy(update={"seed": 8})), name, other)
    assert other.read_bytes() != paths[0].read_bytes()


def test_round_robin_straggles_on_the_paper_workload():
    """The paper's pathology: the worker holding the popular reasoning expert runs far past the others (the sum model
    and reserved KV: one straggler; the calibrated defaults: the two reasoning workers, far past the others)."""
    old = prepare(_cfg("medmcqa", 4183, 4, 3, 0, costs=OLD_MODEL))
    spans = sorted(run_scheduler(old, "round-robin").result.expert.worker_end.values())
    assert spans[-1] > 1.5 * spans[-2] and spans[-1] > 10 * spans[0]
    assert run_scheduler(old, "greedy-lpt").metrics.expert_makespan < 0.6 * spans[-1]
    new = prepare(_cfg("medmcqa", 4183, 4, 3, 0))
    spans = sorted(run_scheduler(new, "round-robin").result.expert.worker_end.values())
    assert spans[-2] > 10 * spans[1] and spans[-1] > 20 * spans[0]  # 108.9, 173.1, 2,267.9, 2,505.1 s
    assert run_scheduler(new, "greedy-lpt").metrics.expert_makespan < 0.65 * spans[-1]  # 1,610.8 s


def test_scheduler_runs_do_not_depend_on_what_ran_before():
    """compare() runs schedulers one after another on one experiment: each must equal its run alone."""
    cfg = _cfg("gpqa", 30, 3, 3, 5, mode="adaptive")
    exp = prepare(cfg)
    first = exp.scheduler_rng().integers(1 << 62, size=4)
    run_scheduler(exp, "round-robin")
    assert (exp.scheduler_rng().integers(1 << 62, size=4) == first).all()  # every scheduler gets the same stream
    after = run_scheduler(exp, "greedy-lpt").records
    alone = run_scheduler(prepare(cfg), "greedy-lpt").records
    assert after == alone


@pytest.mark.parametrize("name", ["greedy-lpt", "data-parallel", "mosaic-ilp"])
def test_kv_aware_bound_is_tighter_and_still_valid(name):
    """On a paper workload the KV cache caps reasoning batches: the bound's work term counts that (raising it above
    the sum of per-request minima) and stays below every simulated makespan when predictions are the truth."""
    from mosaic.agents.bounds import min_seconds_array

    exp = prepare(_cfg("medmcqa", 4183, 4, 3, 0, predictor="oracle"))
    gpu = exp.cluster.workers[0].gpu_type
    per_request = float(min_seconds_array(exp.costs, exp.workload.requests, gpu).sum()) / len(exp.cluster)
    run = run_scheduler(exp, name)
    assert run.metrics.stats["lb_work_s"] > 1.1 * per_request
    assert run.metrics.expert_makespan >= run.metrics.lower_bound
