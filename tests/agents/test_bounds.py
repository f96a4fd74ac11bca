"""Lower bound and predicted worker times: hand-computed values, heterogeneous GPUs, brute-force optimum."""

from __future__ import annotations

import math
from itertools import permutations, product

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from mosaic.agents import (
    bound_terms,
    lower_bound,
    make_scheduler,
    order_worker_times,
    predicted_worker_times,
)
from mosaic.core.errors import PlanError
from mosaic.core.types import Cluster, plan_from_order

# ToyCosts, fast GPU: q0 = 40 prompt tokens, 100 output tokens; q1 = 43 prompt, 107 output; load 10 s.
# request_seconds(b) = prompt / 1000 + tokens * (0.02 + 0.002 b) / b ; latency = request_seconds(1).
LAT = (0.04 + 100 * 0.022, 0.043 + 107 * 0.022)
AT_MAX4 = (0.04 + 100 * 0.007, 0.043 + 107 * 0.007)
AT_B2 = (0.04 + 100 * 0.012, 0.043 + 107 * 0.012)
OWN = (0.04 + 100 * 0.002, 0.043 + 107 * 0.002)  # batch-independent part: prefill + per-sequence step share


@pytest.fixture
def two_e0(toy):
    wl = toy.workload([("e0",), ("e0",)])
    return wl, toy.costs(wl)


def test_worker_times_load_plus_group_seconds(toy, two_e0):
    wl, costs = two_e0
    cluster = toy.cluster(["fast", "fast"])
    together = order_worker_times({0: [0, 1]}, wl, costs, cluster)
    # the slowest request's shared steps (107 x 0.02 s) plus every request's own seconds beat the amortised work
    assert together[0] == pytest.approx(10 + max(sum(AT_B2), sum(OWN) + 107 * 0.02))
    assert together[0] == pytest.approx(12.637)
    assert together[1] == 0.0  # idle workers are listed with 0
    apart = order_worker_times({0: [0], 1: [1]}, wl, costs, cluster)
    assert apart == pytest.approx({0: 10 + LAT[0], 1: 10 + LAT[1]})


def test_worker_times_skip_only_the_first_resident_load(toy):
    wl = toy.workload([("e0", "e1"), ("e0",)])  # requests: 0 e0, 1 e1, 2 e0
    costs = toy.costs(wl)
    cluster = toy.cluster(["fast"])
    loads = order_worker_times({0: [0, 1, 2]}, wl, costs, cluster)
    skipped = order_worker_times({0: [0, 1, 2]}, wl, costs, cluster, resident={0: "e0"})
    assert loads[0] - skipped[0] == pytest.approx(10.0)  # the second e0 run reloads
    not_first = order_worker_times({0: [1, 0, 2]}, wl, costs, cluster, resident={0: "e0"})
    assert not_first[0] == pytest.approx(order_worker_times({0: [1, 0, 2]}, wl, costs, cluster)[0])
    plan = plan_from_order("t", wl, {0: [0, 2, 1]}, 0.0, 0.0)
    assert predicted_worker_times(plan, wl, costs, cluster)[0] == pytest.approx(
        20
        + costs.group_seconds([wl.requests[0], wl.requests[2]], "fast")
        + costs.group_seconds([wl.requests[1]], "fast")
    )


def test_worker_times_charge_unload_to_every_load_that_replaces_an_expert(toy):
    wl = toy.workload([("e0", "e1"), ("e0",)])  # requests: 0 e0, 1 e1, 2 e0
    plain = toy.costs(wl)

    class WithUnload(type(plain)):
        def unload_seconds(self, expert: str, gpu_type: str) -> float:
            return {"e0": 3.0, "e1": 5.0}[expert]

    costs = WithUnload(wl)
    cluster = toy.cluster(["fast"])
    base = order_worker_times({0: [0, 1, 2]}, wl, plain, cluster)[0]
    # nothing resident: load e0 (no unload), free e0 (3) + load e1, free e1 (5) + load e0
    assert order_worker_times({0: [0, 1, 2]}, wl, costs, cluster)[0] == pytest.approx(base + 8.0)
    # e1 resident: the first load frees it too (5 + 3 + 5)
    assert order_worker_times({0: [0, 1, 2]}, wl, costs, cluster, {0: "e1"})[0] == pytest.approx(base + 13.0)
    # e0 resident: first run needs no load; then free e0 + load e1, free e1 + load e0
    skipped = order_worker_times({0: [0, 1, 2]}, wl, plain, cluster, {0: "e0"})[0]
    assert order_worker_times({0: [0, 1, 2]}, wl, costs, cluster, {0: "e0"})[0] == pytest.approx(skipped + 8.0)
    assert lower_bound(wl, costs, cluster, {0: "e1"}) == lower_bound(wl, plain, cluster, {0: "e1"})  # floor: no unload


def test_lower_bound_by_hand(toy, two_e0):
    wl, costs = two_e0
    one = bound_terms(wl, costs, toy.cluster(["fast"]))
    assert one.work_s == pytest.approx(10 + sum(AT_MAX4))
    assert one.chain_s == pytest.approx(10 + LAT[1])
    assert lower_bound(wl, costs, toy.cluster(["fast"] * 2)) == pytest.approx(10 + LAT[1])
    res = bound_terms(wl, costs, toy.cluster(["fast"] * 2), resident={1: "e0", 0: None})
    assert (res.work_s, res.chain_s) == pytest.approx((sum(AT_MAX4) / 2, LAT[1]))


def test_lower_bound_uses_min_request_seconds_when_present(toy, two_e0):
    wl, _ = two_e0
    terms = bound_terms(wl, toy.costs_with_min(wl), toy.cluster(["fast"]))
    assert terms.work_s == pytest.approx(10 + 0.9 * sum(AT_MAX4))


def test_vectorised_fast_paths_give_the_same_bound(toy):
    wl = toy.workload([("e0", "e1"), ("e1",), ("e0", "e2")])
    cluster = toy.cluster(["slow", "fast", "fast"])
    slow_path = bound_terms(wl, toy.costs_with_min(wl), cluster, {0: "e1"})
    assert bound_terms(wl, toy.costs_vectorised(wl), cluster, {0: "e1"}) == slow_path


def test_lower_bound_heterogeneous_takes_cheapest_gpu(toy, two_e0):
    wl, costs = two_e0
    cluster = toy.cluster(["slow", "fast"])
    terms = bound_terms(wl, costs, cluster, resident={0: "e0"})
    assert terms.chain_s == pytest.approx(min(2.5 * LAT[1], 10 + LAT[1]))  # resident on the slow GPU wins
    assert terms.work_s == pytest.approx(sum(AT_MAX4) / 2)
    fast_only = bound_terms(wl, costs, cluster)
    assert fast_only.chain_s == pytest.approx(10 + LAT[1])


def test_empty_workload_bound_is_zero(toy):
    wl = toy.workload([(), ()])
    assert lower_bound(wl, toy.costs(wl), toy.cluster(["fast"])) == 0.0


def test_bad_inputs_are_named(toy, two_e0):
    wl, costs = two_e0
    with pytest.raises(PlanError, match="no workers"):
        lower_bound(wl, costs, Cluster(()))
    with pytest.raises(PlanError, match=r"resident map names workers \[7\]"):
        lower_bound(wl, costs, toy.cluster(["fast"]), resident={7: "e0"})
    with pytest.raises(PlanError, match=r"workers \[3\]"):
        order_worker_times({3: [0, 1]}, wl, costs, toy.cluster(["fast"]))


def _best_worker_time(wl, costs, gpu, resident, reqs) -> float:
    """Cheapest time for one worker to run ``reqs``: each expert run once, best order of experts."""
    groups: dict[str, list] = {}
    for r in reqs:
        groups.setdefault(wl.requests[r].expert, []).append(wl.requests[r])
    best = math.inf if groups else 0.0
    for perm in permutations(groups):
        t = sum(costs.group_seconds(groups[e], gpu) for e in perm)
        t += sum(costs.load_seconds(e, gpu) for k, e in enumerate(perm) if not (k == 0 and resident == e))
        best = min(best, t)
    return best


def brute_force_optimum(wl, costs, cluster, resident) -> float:
    """Optimum predicted makespan over every assignment of requests to workers."""
    best = math.inf
    n = len(wl.requests)
    for assign in product(range(len(cluster)), repeat=n):
        span = max(
            _best_worker_time(wl, costs, w.gpu_type, resident.get(w.id), [r for r in range(n) if assign[r] == k])
            for k, w in enumerate(cluster.workers)
        )
        best = min(best, span)
    return best


@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_lower_bound_below_brute_force_optimum(toy, data):
    wl, costs, cluster, resident = data.draw(toy.instances(max_queries=4, max_workers=2, min_workers=2))
    assume(len(wl.requests) <= 6)
    opt = brute_force_optimum(wl, costs, cluster, resident)
    assert lower_bound(wl, costs, cluster, resident) <= opt + 1e-9
    # an independent check of the predicted makespans: no baseline beats the brute-force optimum
    for name in ("sequential", "round-robin", "data-parallel", "greedy-lpt"):
        p = make_scheduler(name).plan(wl, costs, cluster, np.random.default_rng(0), resident)
        assert p.predicted_makespan >= opt - 1e-9


def _two_long_requests(mode: str):
    """One worker, one expert, two requests of 1,000 output tokens (10-token prompts) and a 1,300-token KV cache."""
    from mosaic.core.types import Expert, ExpertKind, Query, Response, Responses, Workload
    from mosaic.predictors.costmodel import ProfiledCostModel
    from mosaic.predictors.interface import ModelCost
    from mosaic.predictors.lengths import OracleLengthPredictor
    from mosaic.predictors.profile import CostProfile

    e = Expert("e", "org/e", 7.0, ExpertKind.INSTRUCT, 20.0)
    wl = Workload.build("two", (Query(0, "", prompt_tokens=10), Query(1, "", prompt_tokens=10)), (e,), (("e",),) * 2, e)
    responses = Responses({(q, "e"): Response(1000) for q in (0, 1)})
    mc = ModelCost(0.0, 1e4, 0.01, 0.0, 0.0, 20.0, max_batch=8, kv_capacity_tokens=1300, memory_mode=mode)
    costs = ProfiledCostModel(CostProfile({"G": {"e": mc}}), OracleLengthPredictor(responses), wl)
    return wl, responses, costs, Cluster.homogeneous(1, "G", 80.0)


@pytest.mark.parametrize("mode", ["reserve", "paged"])
def test_true_bound_holds_in_both_memory_modes(mode):
    """Reserved KV: the two cannot overlap (2 x 1,010 > 1,300 tokens), 2,000 steps. Paged: both run until the cache
    fills, the later is preempted and resumes after the first, about 1,360 steps; a floor counting reservations
    (2,000 x 1,010 / 1,300 = 1,554 steps) would exceed that, the paged floor counts held tokens (p + j)."""
    from mosaic.agents.bounds import true_lower_bound
    from mosaic.core.trace import EXPERT_STAGE, TraceWriter
    from mosaic.runtime.sim import SimBackend

    wl, responses, costs, cluster = _two_long_requests(mode)
    with TraceWriter(None) as trace:
        plan = plan_from_order("one", wl, {0: [0, 1]}, 0.0, 0.0)
        simulated = SimBackend(responses, costs).run_stage(EXPERT_STAGE, plan, wl, cluster, trace).makespan
    bound = true_lower_bound(wl, responses, costs, cluster)
    assert bound.value <= simulated + 1e-9
    steps = simulated / 0.01
    if mode == "reserve":  # the reservation floor: 2,000 x 1,010 / 1,300 steps
        assert steps == pytest.approx(2000, abs=1) and bound.work_s == pytest.approx(
            2000 * 1010 / 1300 * 0.01, rel=1e-3
        )
    else:  # the held-token floor: 2 x sum_j (10 + j) / 1,300 steps
        assert 1300 < steps < 1554 and bound.work_s == pytest.approx(
            2 * (10 * 1000 + 999 * 500) / 1300 * 0.01, rel=1e-3
        )
