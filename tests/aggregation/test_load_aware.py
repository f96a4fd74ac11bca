"""Load-aware skip decisions: the no-barrier loop's load probe, the load-aware and ladder rules, the calibrated
policy, and experiments/online_aggregation.py's capacity, margin and verdict helpers."""

from __future__ import annotations

import importlib.util
import itertools
import math
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from mosaic.aggregation.interface import AggregationPolicy, AlwaysAggregate, Load, LoadProbe
from mosaic.aggregation.reliability import Reliability, SkipModel, skip_features
from mosaic.aggregation.thresholds import (
    BacklogLadder,
    CalibratedSkip,
    FixedThreshold,
    LoadAwareThreshold,
    make_aggregation_policy,
)
from mosaic.core.config import load_config
from mosaic.core.errors import ConfigError
from mosaic.core.types import Query
from mosaic.pipeline import plan_scheduler, prepare, run_scheduler

SCRIPT = Path(__file__).resolve().parents[2] / "experiments" / "online_aggregation.py"
Q = Query(0, "Which?", choices=("a", "b", "c", "d"), arrival=10.0)


def _exp(barrier: bool = False, n: int = 80, rate: float = 0.5):
    sets = [
        "workload.preset=medmcqa",
        f"workload.num_queries={n}",
        "cluster.workers=2",
        "tracking.mode=disabled",
        f"runtime.barrier={str(barrier).lower()}",
        f"workload.arrival_rate={rate}",
        "workload.arrival_process=poisson",
    ]
    return prepare(load_config(None, sets))


class Recorder(AggregationPolicy):
    """Never skips; records the load it is shown at each decision."""

    def __init__(self) -> None:
        self.probe: LoadProbe | None = None
        self.seen: list[Load | None] = []

    def watch(self, probe: LoadProbe | None) -> None:
        self.probe = probe

    def decide(self, query: Query, answers: Sequence[str | None], confidence: float) -> bool:
        self.seen.append(self.probe() if self.probe is not None else None)
        return False


@pytest.mark.parametrize("scheduler", ["greedy-online", "round-robin"])
def test_the_no_barrier_loop_shows_the_aggregator_queue(scheduler: str) -> None:
    exp, rec = _exp(), Recorder()
    run_scheduler(exp, plan_scheduler(exp, scheduler, rec))
    loads = [x for x in rec.seen if x is not None]
    assert len(loads) == len(rec.seen) == 80
    assert all(x.workers == 2 and x.queued >= 0 and x.queued_s >= 0 for x in loads)
    assert max(x.queued for x in loads) > 0  # aggregations wait while later queries' experts finish
    assert all(b.now >= a.now for a, b in itertools.pairwise(loads))
    assert all((x.queued == 0) == (x.queued_s == 0) for x in loads)
    barrier = _exp(barrier=True)
    rec2 = Recorder()
    run_scheduler(barrier, plan_scheduler(barrier, scheduler, rec2))
    assert rec2.seen == [None] * 80  # a stage barrier: no load to see


def _decisions(exp, policy: AggregationPolicy) -> list[bool]:
    return [d.skipped for d in run_scheduler(exp, plan_scheduler(exp, "greedy-online", policy)).result.decisions]


def test_load_aware_lies_between_its_two_thresholds() -> None:
    exp = _exp(rate=2.0)
    t1, t23 = _decisions(exp, FixedThreshold(1.0)), _decisions(exp, FixedThreshold(0.67))
    assert _decisions(exp, LoadAwareThreshold(1.0, 0.67, backlog_s=math.inf)) == t1  # never busy
    assert _decisions(exp, LoadAwareThreshold(1.0, 0.67, backlog_s=0.0)) == t23  # always busy
    mid = LoadAwareThreshold(1.0, 0.67, backlog_s=math.inf, slo_s=1e-3)  # every query has waited: busy
    assert _decisions(exp, mid) == t23 and mid.busy_decisions == sum(t23) - sum(t1)
    some = LoadAwareThreshold(1.0, 0.67, backlog_s=5.0)
    d = _decisions(exp, some)
    assert all(a <= b <= c for a, b, c in zip(t1, d, t23, strict=True))
    assert _decisions(_exp(barrier=True, rate=2.0), LoadAwareThreshold(1.0, 0.67, 0.0)) == t1  # barrier: no load


def test_load_aware_rule_on_a_given_load() -> None:
    policy = LoadAwareThreshold(1.0, 0.67, backlog_s=20.0, slo_s=100.0)
    assert policy.decide(Q, [], 1.0) and not policy.decide(Q, [], 2 / 3)  # no load known: T = 1
    load = {"v": Load(50.0, 3, 30.0, 2)}
    policy.watch(lambda: load["v"])
    assert not policy.decide(Q, [], 2 / 3)  # 15 s per worker, waited 40 s
    load["v"] = Load(50.0, 3, 60.0, 2)
    assert policy.decide(Q, [], 2 / 3) and not policy.decide(Q, [], 1 / 3)  # backlog 30 s per worker
    load["v"] = Load(110.0, 0, 0.0, 2)
    assert policy.decide(Q, [], 2 / 3) and policy.busy_decisions == 2  # waited 100 s: its budget is spent
    assert Load(0.0, 0, 5.0, 0).backlog_s == 0.0
    with pytest.raises(ConfigError, match="backlog_s"):
        LoadAwareThreshold(backlog_s=-1.0)
    assert isinstance(make_aggregation_policy("load-aware", backlog_s=10.0), LoadAwareThreshold)


def test_calibrated_policy_skips_where_the_model_expects_no_loss(tmp_path: Path) -> None:
    rel = Reliability(("x", "y", "z"), (0.9, 0.6, 0.6), n_options=4)
    votes = [["A", "A", "A"], ["A", "A", "B"], ["B", "A", "A"]] * 20
    x = np.array([skip_features(Q, v, rel) for v in votes])
    maj = np.array([True, True, False] * 20)  # a 2:1 vote against the reliable expert is wrong
    path = SkipModel.fit(rel, x, maj, np.ones(60, bool)).save(tmp_path / "skip.json")
    policy = make_aggregation_policy("calibrated", model=str(path), max_loss=0.3)
    assert isinstance(policy, CalibratedSkip)
    assert policy.decide(Q, ["A", "A", "A"], 1.0) and not policy.decide(Q, ["B", "A", "A"], 2 / 3)
    with pytest.raises(ConfigError, match="max_loss"):
        CalibratedSkip(policy.model, max_loss=3.0)


def test_load_ladder_rungs_on_a_given_load() -> None:
    ladder = BacklogLadder(unanimous_s=10.0, busy_s=40.0, slo_s=100.0)
    assert not ladder.decide(Q, [], 1.0)  # no load known: backlog 0, below the first rung: never skip
    load = {"v": Load(50.0, 1, 10.0, 2)}  # 5 s per worker, waited 40 s
    ladder.watch(lambda: load["v"])
    assert not ladder.decide(Q, [], 1.0)
    load["v"] = Load(50.0, 2, 20.0, 2)  # 10 s per worker: T = 1
    assert ladder.decide(Q, [], 1.0) and not ladder.decide(Q, [], 2 / 3)
    load["v"] = Load(50.0, 8, 80.0, 2)  # 40 s per worker: T = 2/3
    assert ladder.decide(Q, [], 2 / 3) and not ladder.decide(Q, [], 1 / 3)
    load["v"] = Load(110.0, 0, 0.0, 2)  # empty queue but waited 100 s: T = 2/3
    assert ladder.decide(Q, [], 2 / 3)
    with pytest.raises(ConfigError, match="unanimous_s <= busy_s"):
        BacklogLadder(unanimous_s=50.0, busy_s=10.0)
    assert isinstance(make_aggregation_policy("load-ladder", unanimous_s=5.0), BacklogLadder)


def test_load_ladder_between_always_and_its_thresholds_in_a_run() -> None:
    exp = _exp(rate=2.0)
    t1, t23 = _decisions(exp, FixedThreshold(1.0)), _decisions(exp, FixedThreshold(0.67))
    assert _decisions(exp, BacklogLadder(math.inf, math.inf)) == [False] * 80  # never a rung: always
    assert _decisions(exp, BacklogLadder(0.0, math.inf)) == t1
    assert _decisions(exp, BacklogLadder(0.0, 0.0)) == t23
    d = _decisions(exp, BacklogLadder(2.0, 20.0))
    assert all(b <= c for b, c in zip(d, t23, strict=True)) and 0 < sum(d) < sum(t23)
    assert _decisions(_exp(barrier=True, rate=2.0), BacklogLadder(0.0, 0.0)) == t23  # backlog 0 >= 0: busy rung
    assert _decisions(_exp(barrier=True, rate=2.0), BacklogLadder(1.0, 1.0)) == [False] * 80  # barrier: always


def _script():
    spec = importlib.util.spec_from_file_location("online_aggregation", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["online_aggregation"] = module  # dataclasses resolve their module
    spec.loader.exec_module(module)
    return module


def _row(acc: float, p99: float) -> dict:
    return {"acc@0": acc, "p99": p99}


def test_script_margin_and_verdict_by_hand() -> None:
    s = _script()
    runs = {"always": [_row(0.80, 1000.0)], "T=1": [_row(0.79, 900.0)], "T=2/3": [_row(0.75, 800.0)],
            "T=1/3": [_row(0.75, 800.0)], "a": [_row(0.805, 780.0)], "b": [_row(0.79, 700.0)]}  # fmt: skip
    assert s.margin(runs, "a", "acc@0") == pytest.approx(0.5)  # min(+0.5 pp, +2.5% of 800 s)
    assert s.margin(runs, "b", "acc@0") == pytest.approx(-1.0)  # 1 pp below always
    assert s.choose(runs, "acc@0") == "a"
    assert s.ladder_name(math.inf, math.inf, 0.34, 1500.0) == "ladder u=inf T=0.34 slo=1500"
    assert s.ladder_name(10.0, 100.0) == "ladder u=10 b=100"
    assert s.verdict((0.01, 0.005), (-50.0, 20.0)) == "yes (CI)"
    assert s.verdict((0.01, 0.02), (-50.0, 20.0)) == "on means"
    assert s.verdict((-0.01, 0.02), (-50.0, 20.0)) == "within CI"
    assert s.verdict((-0.01, 0.005), (-50.0, 20.0)) == "no"
    assert s.verdict((0.01, 0.005), (30.0, 20.0)) == "no"


def test_script_keep_up_by_hand() -> None:
    s = _script()
    arrivals = np.array([0.0, 1.0, 2.0, 3.0, 4.0])  # second half: (2, 4], queries 3 and 4 arrive in it
    assert s.keep_up(arrivals, np.array([0.5, 1.5, 2.5, 3.5, 9.0])) == 1.0  # 2 answers in (2, 4]
    assert s.keep_up(arrivals, np.array([0.5, 1.5, 5.0, 6.0, math.inf])) == 0.0  # none by the last arrival
    assert s.keep_up(arrivals, np.array([0.5, 3.0, 3.5, 3.9, 4.0])) == 2.0  # backlog shrinking: > 1


def test_script_accuracy_under_a_stronger_aggregator() -> None:
    s, exp = _script(), _exp(n=40)
    run = run_scheduler(exp, plan_scheduler(exp, "greedy-online", AlwaysAggregate()))
    assert s.accuracy_under(exp, run, 0.0, 0) == pytest.approx(run.result.accuracy)
    agg = exp.workload.aggregator.name
    right = [exp.responses.table[(q.id, agg)].correct for q in exp.workload.queries]
    assert s.accuracy_under(exp, run, 1.0, 0) == 1.0 > np.mean(right)  # every aggregator answer made right
