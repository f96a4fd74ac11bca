"""The MOSAIC ILP is exact where its model is: tiny instances against exhaustive enumeration, identical-machine
instances against a subset dynamic programme, and HiGHS against CBC.

The test cost model makes the ILP's linear pieces exact: a request costs ``a(length) + D_e / min(batch, cap)``
(``D_e`` per expert, ``a`` per predicted-length class, identical prompts), so a group costs exactly
``max(sum a + n D / cap, sum a + D)`` and buckets of one length have one cost.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from typing import ClassVar

import numpy as np
import pulp
import pytest

from mosaic.agents import order_worker_times
from mosaic.agents.bounds import bound_terms
from mosaic.agents.ilp_scheduler import MosaicIlpScheduler
from mosaic.core.types import Cluster, Expert, ExpertKind, Query, Request, Worker, Workload
from mosaic.ilp.relaxation import placement_bound
from mosaic.predictors.interface import CostModel, ModelCost


class ExactCosts(CostModel):
    """``request_seconds(r, b) = 0.01 x length(r) x slow(g) + D_e x slow(g) / min(b, cap)``; loads per expert."""

    SLOW: ClassVar[dict[str, float]] = {"fast": 1.0, "slow": 2.0}

    def __init__(self, workload: Workload, load: Mapping[str, float], decode: Mapping[str, float], cap: int = 4,
                 lengths: Sequence[float] = (100.0, 300.0, 900.0)) -> None:  # fmt: skip
        self.workload, self.load, self.decode, self.cap, self.lengths = workload, load, decode, cap, lengths

    def bind(self, workload: Workload) -> ExactCosts:
        return ExactCosts(workload, self.load, self.decode, self.cap, self.lengths)

    def model_cost(self, expert: str, gpu_type: str) -> ModelCost:
        return ModelCost(self.load[expert] * self.SLOW[gpu_type], 1e9, 0.01, 0.0, 0.0, 16.0, max_batch=self.cap)

    def predicted_tokens(self, request: Request) -> float:
        return self.lengths[(request.query_id * 7 + len(request.expert)) % len(self.lengths)]

    def request_seconds(self, request: Request, gpu_type: str, batch: int | None = None) -> float:
        b = min(batch or self.cap, self.cap)
        s = self.SLOW[gpu_type]
        return 0.01 * self.predicted_tokens(request) * s + self.decode[request.expert] * s / b

    def request_latency(self, request: Request, gpu_type: str) -> float:
        return self.request_seconds(request, gpu_type, 1)


def stage(routes: Sequence[Sequence[str]], names: Sequence[str]) -> Workload:
    experts = tuple(Expert(n, f"org/{n}", 7.0, ExpertKind.INSTRUCT, 16.0) for n in names)
    queries = tuple(Query(i, f"q{i}", prompt_tokens=50) for i in range(len(routes)))
    return Workload.build("tiny", queries, experts, tuple(tuple(r) for r in routes), experts[0])


def random_instance(seed: int, n_queries: int, n_experts: int, gpus: Sequence[str]):
    rng = np.random.default_rng(seed)
    names = [f"e{i}" for i in range(n_experts)]
    routes = [tuple(rng.choice(names, size=int(rng.integers(1, 3)), replace=False)) for _ in range(n_queries)]
    wl = stage(routes, names)
    costs = ExactCosts(wl, {e: float(rng.uniform(1.0, 8.0)) for e in names},
                       {e: float(rng.uniform(0.5, 12.0)) for e in names}, cap=int(rng.integers(2, 4)))  # fmt: skip
    return wl, costs, Cluster(tuple(Worker(i, g, 80.0) for i, g in enumerate(gpus)))


def makespan_of(assign: Sequence[int], wl: Workload, costs: CostModel, cluster: Cluster) -> float:
    """Makespan of a request -> worker position assignment, each expert one run per worker."""
    order: dict[int, list[int]] = {w.id: [] for w in cluster.workers}
    for r, k in sorted(enumerate(assign), key=lambda t: (t[1], wl.requests[t[0]].expert, t[0])):
        order[cluster.workers[k].id].append(r)
    return max(order_worker_times(order, wl, costs, cluster).values())


def brute_force(wl: Workload, costs: CostModel, cluster: Cluster, r_max: Mapping[str, int]) -> float:
    best = math.inf
    for assign in itertools.product(range(len(cluster)), repeat=len(wl.requests)):
        replicas: dict[str, set[int]] = {}
        for r, k in enumerate(assign):
            replicas.setdefault(wl.requests[r].expert, set()).add(k)
        if any(len(ws) > r_max.get(e, len(cluster)) for e, ws in replicas.items()):
            continue
        best = min(best, makespan_of(assign, wl, costs, cluster))
    return best


def ilp(**kw) -> MosaicIlpScheduler:
    return MosaicIlpScheduler(gap_rel=0.0, time_limit_s=30.0, polish_s=0.0, buckets=8, **kw)


@pytest.mark.parametrize("stragglers", [0.2, math.inf])  # inf: no request gets a bucket of its own
@pytest.mark.parametrize(("seed", "gpus"), [(0, ("fast", "fast")), (1, ("fast", "slow", "fast")),
                                             (2, ("fast", "fast", "fast")), (3, ("slow", "fast"))])  # fmt: skip
def test_matches_exhaustive_enumeration(seed, gpus, stragglers):
    wl, costs, cluster = random_instance(seed, n_queries=4, n_experts=3, gpus=gpus)
    assert 5 <= len(wl.requests) <= 8
    plan = ilp(straggler_share=stragglers).plan(wl, costs, cluster, np.random.default_rng(0))
    r_max = {kv.split("=")[0]: int(kv.split("=")[1]) for kv in str(plan.stats["ilp_r_max"]).split(",")}
    best = brute_force(wl, costs, cluster, r_max)
    assert plan.predicted_makespan == pytest.approx(best, rel=1e-6, abs=1e-2)
    assert plan.stats["ilp_makespan_s"] == pytest.approx(plan.predicted_makespan, rel=1e-9)  # model is exact here


def test_matches_exhaustive_enumeration_with_binding_r_max():
    wl, costs, cluster = random_instance(7, n_queries=4, n_experts=2, gpus=("fast", "fast", "fast"))
    heavy = max(costs.decode, key=costs.decode.get)
    plan = ilp(r_max={heavy: 1}).plan(wl, costs, cluster, np.random.default_rng(0))
    assert len(plan.replicas()[heavy]) == 1
    r_max = {kv.split("=")[0]: int(kv.split("=")[1]) for kv in str(plan.stats["ilp_r_max"]).split(",")}
    assert r_max[heavy] == 1
    assert plan.predicted_makespan == pytest.approx(brute_force(wl, costs, cluster, r_max), rel=1e-6, abs=1e-2)


def subset_dp(wl: Workload, costs: CostModel, n_workers: int) -> float:
    """Exact makespan on identical workers (no R_max): min over partitions into <= n_workers groups, by DP over
    subsets (each step fixes the group holding the lowest unassigned request, so no permutation is counted)."""
    n = len(wl.requests)
    gpu = "fast"
    cost = [0.0] * (1 << n)
    for mask in range(1, 1 << n):
        by_expert: dict[str, list[Request]] = {}
        for i in range(n):
            if mask >> i & 1:
                by_expert.setdefault(wl.requests[i].expert, []).append(wl.requests[i])
        cost[mask] = sum(costs.load_seconds(e, gpu) + costs.group_seconds(rs, gpu) for e, rs in by_expert.items())
    full = (1 << n) - 1
    f = cost[:]  # one worker
    for _ in range(n_workers - 1):
        g = f[:]
        for mask in range(1, full + 1):
            low = mask & -mask
            rest = mask ^ low
            sub = rest
            while True:
                part = sub | low
                g[mask] = min(g[mask], max(cost[part], f[mask ^ part]) if mask ^ part else cost[part])
                if sub == 0:
                    break
                sub = (sub - 1) & rest
        f = g
    return f[full]


@pytest.mark.parametrize("seed", [11, 12, 13])
def test_identical_workers_match_subset_dynamic_programme(seed):
    wl, costs, cluster = random_instance(seed, n_queries=6, n_experts=3, gpus=("fast",) * 3)
    assert 7 <= len(wl.requests) <= 10
    plan = ilp(replication_ratio=1e-9, straggler_share=math.inf).plan(wl, costs, cluster, np.random.default_rng(0))
    assert plan.predicted_makespan == pytest.approx(subset_dp(wl, costs, len(cluster)), rel=1e-6, abs=1e-2)


@pytest.mark.skipif("PULP_CBC_CMD" not in pulp.listSolvers(onlyAvailable=True), reason="CBC is not installed")
def test_highs_and_cbc_agree_on_a_medium_instance():
    wl, costs, cluster = random_instance(5, n_queries=16, n_experts=4, gpus=("fast",) * 3)
    plans = {s: ilp(solver=s).plan(wl, costs, cluster, np.random.default_rng(0)) for s in ("highs", "cbc")}
    assert plans["highs"].stats["ilp_model_status"] == plans["cbc"].stats["ilp_model_status"] == "optimal"
    assert plans["highs"].stats["ilp_solver"] == "highs" and plans["cbc"].stats["ilp_solver"] == "cbc"
    spans = [p.stats["ilp_makespan_s"] for p in plans.values()]
    assert spans[0] == pytest.approx(spans[1], rel=1e-6, abs=1e-2)


@pytest.mark.parametrize("seed", [11, 12, 13, 14])
def test_placement_bound_is_valid_and_tighter_than_the_work_bound(seed):
    wl, costs, cluster = random_instance(seed, n_queries=6, n_experts=3, gpus=("fast",) * 3)
    optimum = subset_dp(wl, costs, len(cluster))
    terms = bound_terms(wl, costs, cluster)
    assert terms.placement_s <= optimum + 1e-6
    assert terms.value == max(terms.work_s, terms.chain_s, terms.placement_s)
    assert bound_terms(wl, costs, cluster, placement=False).placement_s == 0.0


def test_placement_bound_counts_whole_loads():
    """Three experts of one request each, loads of 10 s, two workers: one worker loads two experts, so no plan
    beats 20 s plus two requests; the work bound spreads the loads (15 s plus half the work), the chain bound
    counts one load. The relaxation finds the optimum here."""
    wl = stage([("e0",), ("e1",), ("e2",)], ["e0", "e1", "e2"])
    costs = ExactCosts(wl, dict.fromkeys(("e0", "e1", "e2"), 10.0), dict.fromkeys(("e0", "e1", "e2"), 0.5))
    cluster = Cluster(tuple(Worker(i, "fast", 80.0) for i in range(2)))
    optimum = subset_dp(wl, costs, 2)
    terms = bound_terms(wl, costs, cluster)
    assert terms.placement_s > max(terms.work_s, terms.chain_s) + 2.0
    assert terms.placement_s == pytest.approx(optimum, rel=1e-4)


def test_placement_bound_only_for_one_gpu_type_and_small_instances():
    wl, costs, cluster = random_instance(1, n_queries=4, n_experts=3, gpus=("fast", "slow"))
    assert math.isnan(placement_bound(wl, costs, cluster))
    wl, costs, cluster = random_instance(1, n_queries=4, n_experts=3, gpus=("fast",) * 2)
    assert math.isnan(placement_bound(wl, costs, cluster, max_pairs=5))
    assert placement_bound(wl, costs, cluster) > 0
