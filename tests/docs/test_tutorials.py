"""The docs' tutorial code runs as the pages say: the 30-line scheduler registers, plans valid plans and runs."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from mosaic.agents import SCHEDULERS
from mosaic.core.config import load_config
from mosaic.pipeline import prepare, run_scheduler

EXAMPLES = Path(__file__).resolve().parents[2] / "docs" / "tutorials" / "examples"


def load_example(name: str):
    spec = importlib.util.spec_from_file_location(f"tutorial_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def pack_experts():
    if "pack-experts" not in SCHEDULERS.describe():
        load_example("pack_experts")
    return SCHEDULERS.get("pack-experts")


def test_scheduler_tutorial_is_about_30_lines() -> None:
    code = [ln for ln in (EXAMPLES / "pack_experts.py").read_text().splitlines() if ln.strip()]
    assert len(code) <= 32


def test_tutorial_scheduler_runs_like_any_other(pack_experts) -> None:
    cfg = load_config(None, ["workload.preset=medmcqa", "workload.num_queries=200", "tracking.mode=disabled"])
    exp = prepare(cfg)
    mine, rr = run_scheduler(exp, "pack-experts").metrics, run_scheduler(exp, "round-robin").metrics
    assert mine.requests == rr.requests == len(exp.workload.requests)
    assert mine.expert_makespan >= mine.lower_bound
    # whole experts, no replication: never more loads than experts with requests (+ the aggregator stage's)
    assert mine.loads == len({r.expert for r in exp.workload.requests})
    # largest-first packing by predicted work balances better than dealing experts round-robin here
    assert mine.expert_makespan < rr.expert_makespan


def test_tutorial_backend_shifts_every_stage_by_its_startup() -> None:
    from mosaic.runtime.registry import BACKENDS

    if "sim-delayed" not in BACKENDS.describe():
        load_example("delayed_start")
    base = ["workload.preset=gpqa", "workload.num_queries=60", "tracking.mode=disabled"]
    plain = prepare(load_config(None, base))
    late = prepare(load_config(None, [*base, "runtime.backend=sim-delayed"]))
    a, b = run_scheduler(plain, "greedy-lpt").metrics, run_scheduler(late, "greedy-lpt").metrics
    assert b.expert_makespan == pytest.approx(a.expert_makespan + 30.0)
    assert b.aggregation_time == pytest.approx(a.aggregation_time + 30.0)
    assert (b.accuracy, b.requests) == (a.accuracy, a.requests)
