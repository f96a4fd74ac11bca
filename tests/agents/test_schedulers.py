"""The four baseline schedulers: coverage, structure, bounds, aggregation stage, determinism, registry."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mosaic.agents import SCHEDULERS, lower_bound, make_scheduler, order_worker_times, predicted_worker_times
from mosaic.core.errors import PlanError, RegistryError
from mosaic.core.types import Cluster

NAMES = ("sequential", "round-robin", "data-parallel", "greedy-lpt")
RNG = np.random.default_rng


def plan(name, wl, costs, cluster, resident=None, seed=0):
    return make_scheduler(name).plan(wl, costs, cluster, RNG(seed), resident)


def check(p, wl, costs, cluster, resident=None):
    """Invariants every plan must meet."""
    p.validate(wl, cluster)
    assert set(p.order) == set(cluster.ids)
    times = predicted_worker_times(p, wl, costs, cluster, resident)
    assert p.predicted_makespan == pytest.approx(max(times.values()))
    assert p.lower_bound == pytest.approx(lower_bound(wl, costs, cluster, resident))
    assert p.lower_bound <= p.predicted_makespan + 1e-9
    for w, seq in p.placement.items():  # baselines serve each expert in one run per worker
        assert len(set(seq)) == len(seq), (w, seq)


@settings(max_examples=60, deadline=None)
@given(data=st.data(), name=st.sampled_from(NAMES))
def test_every_plan_covers_each_request_once_and_respects_the_bound(toy, data, name):
    wl, costs, cluster, resident = data.draw(toy.instances())
    p = plan(name, wl, costs, cluster, resident)
    check(p, wl, costs, cluster, resident)
    assert p == plan(name, wl, costs, cluster, resident, seed=1)  # deterministic


@pytest.fixture
def six_on_four(toy):
    routes = [(f"e{i % 6}", f"e{(i + 1) % 6}") for i in range(12)]
    wl = toy.workload(routes)
    return wl, toy.costs(wl), toy.cluster(["fast"] * 4)


def test_sequential_runs_everything_on_the_first_worker(six_on_four):
    wl, costs, cluster = six_on_four
    p = plan("sequential", wl, costs, cluster, resident={0: "e3", 1: "e0"})
    check(p, wl, costs, cluster, {0: "e3", 1: "e0"})
    assert p.placement[0] == ("e3", "e0", "e1", "e2", "e4", "e5")
    assert all(not p.order[w] for w in (1, 2, 3))
    assert (p.stats["loads"], p.stats["resident_hits"], p.stats["workers_used"]) == (5, 1, 1)


def test_round_robin_deals_experts_and_loads_each_once(six_on_four):
    wl, costs, cluster = six_on_four
    p = plan("round-robin", wl, costs, cluster)
    check(p, wl, costs, cluster)
    assert dict(p.placement) == {0: ("e0", "e4"), 1: ("e1", "e5"), 2: ("e2",), 3: ("e3",)}
    assert (p.stats["loads"], p.stats["replicas"], p.stats["max_replicas"]) == (6, 6, 1)
    for w, ids in p.order.items():  # query order within each expert
        for e in p.placement[w]:
            mine = [r for r in ids if wl.requests[r].expert == e]
            assert mine == sorted(mine) == [r.id for r in wl.requests if r.expert == e]


def test_round_robin_runs_a_resident_expert_first(six_on_four):
    wl, costs, cluster = six_on_four
    p = plan("round-robin", wl, costs, cluster, resident={0: "e4", 2: "e5"})
    assert p.placement[0] == ("e4", "e0")
    assert p.placement[2] == ("e2",)  # e5 belongs to worker 1: resident elsewhere changes nothing
    assert (p.stats["loads"], p.stats["resident_hits"]) == (5, 1)


def test_round_robin_skips_experts_without_requests(toy):
    wl = toy.workload([("e1", "e3"), ("e3",)])
    p = plan("round-robin", wl, toy.costs(wl), toy.cluster(["fast"] * 2))
    assert dict(p.placement) == {0: ("e1",), 1: ("e3",)}


def test_data_parallel_loads_every_expert_on_every_worker(toy):
    routes = [("e0", "e1")] * 9 + [("e2",)] * 5
    wl = toy.workload(routes, ["e0", "e1", "e2"])
    costs, cluster = toy.costs(wl), toy.cluster(["fast"] * 4)
    p = plan("data-parallel", wl, costs, cluster, resident={3: "e2"})
    check(p, wl, costs, cluster, {3: "e2"})
    assert all(p.placement[w] == ("e0", "e1", "e2") for w in (0, 1, 2))
    assert p.placement[3] == ("e2", "e0", "e1")
    assert (p.stats["loads"], p.stats["max_replicas"]) == (11, 4)
    sizes = {e: [sum(wl.requests[r].expert == e for r in p.order[w]) for w in range(4)] for e in ("e0", "e1", "e2")}
    assert sizes == {"e0": [3, 2, 2, 2], "e1": [2, 3, 2, 2], "e2": [1, 1, 2, 1]}  # remainders rotate
    for e in ("e0", "e1", "e2"):  # contiguous chunks in query order
        chunks = [r for w in range(4) for r in p.order[w] if wl.requests[r].expert == e]
        assert chunks == [r.id for r in wl.requests if r.expert == e]


def test_lpt_beats_round_robin_on_a_skewed_instance(toy):
    routes = [("e0", "e1")] * 40 + [(f"e{2 + i % 4}",) for i in range(8)]
    wl = toy.workload(routes)
    costs = toy.costs(wl, load_s=dict.fromkeys(wl.demand(), 5.0), tokens={"e0": 2000.0, "e1": 1500.0})
    cluster = toy.cluster(["fast"] * 4)
    lpt, rr = plan("greedy-lpt", wl, costs, cluster), plan("round-robin", wl, costs, cluster)
    check(lpt, wl, costs, cluster)
    assert lpt.predicted_makespan < 0.8 * rr.predicted_makespan
    assert lpt.stats["max_replicas"] > 1  # the heavy experts were replicated


def test_lpt_orders_experts_by_first_assignment_and_requests_longest_first(toy):
    wl = toy.workload([("e0", "e1")] * 6 + [("e1",)] * 3, ["e0", "e1"])
    costs = toy.costs(wl, tokens={"e0": 50.0, "e1": 900.0})
    cluster = toy.cluster(["fast", "fast"])
    p = plan("greedy-lpt", wl, costs, cluster)
    for w, ids in p.order.items():
        assert p.placement[w][0] == "e1"  # the long expert is placed first everywhere it runs
        for e in p.placement[w]:
            secs = [costs.request_seconds(wl.requests[r], "fast") for r in ids if wl.requests[r].expert == e]
            assert secs == sorted(secs, reverse=True)


def test_lpt_ties_go_to_the_lowest_worker_and_residents_are_free(toy):
    wl = toy.workload([("e2",)], ["e1", "e2"])
    costs, cluster = toy.costs(wl), toy.cluster(["fast"] * 3)
    assert plan("greedy-lpt", wl, costs, cluster).order[0] == (0,)
    p = plan("greedy-lpt", wl, costs, cluster, resident={2: "e2", 0: "e1"})
    assert p.order[2] == (0,)
    assert (p.stats["loads"], p.stats["resident_hits"]) == (0, 1)


def with_teardown(costs, unload: dict[str, float]):
    """``costs`` whose experts take ``unload`` seconds to free (0 for the others)."""

    class WithUnload(type(costs)):
        def unload_seconds(self, expert: str, gpu_type: str) -> float:
            return unload.get(expert, 0.0)

    return WithUnload(costs.workload, costs.load_s, costs.tokens, costs.max_batch)


def test_lpt_charges_the_teardown_of_the_expert_a_load_replaces(toy):
    wl = toy.workload([("e0",)], ["e0", "e1"])
    plain = toy.costs(wl)
    costs = with_teardown(plain, {"e1": 50.0})
    cluster = toy.cluster(["fast"] * 2)
    resident = {0: "e1"}
    assert plan("greedy-lpt", wl, plain, cluster, resident=resident).order[0] == (0,)  # a tie: lowest worker
    p = plan("greedy-lpt", wl, costs, cluster, resident=resident)
    assert p.order[1] == (0,)  # freeing e1 on worker 0 would cost 50 s more
    alone = plan("greedy-lpt", wl, costs, toy.cluster(["fast"]), resident=resident)
    cost = costs.request_seconds(wl.requests[0], "fast")
    assert alone.stats["greedy_estimate_s"] == pytest.approx(50.0 + 10.0 + cost)


def test_lpt_estimate_counts_each_teardown_its_order_makes(toy):
    wl = toy.workload([("e0",), ("e1",), ("e0",)], ["e0", "e1"])
    costs = with_teardown(toy.costs(wl, tokens={"e0": 900.0, "e1": 100.0}), {"e0": 3.0, "e1": 5.0})
    cluster = toy.cluster(["fast"])
    p = plan("greedy-lpt", wl, costs, cluster)
    assert p.placement[0] == ("e0", "e1")
    work = sum(costs.request_seconds(r, "fast") for r in wl.requests)
    assert p.stats["greedy_estimate_s"] == pytest.approx(work + 2 * 10.0 + 3.0)  # e0 freed once, e1 never
    on_e1 = plan("greedy-lpt", wl, costs, cluster, resident={0: "e1"})
    assert on_e1.placement[0] == ("e1", "e0")  # the resident runs first, then e1 is freed for e0
    assert on_e1.stats["greedy_estimate_s"] == pytest.approx(work + 10.0 + 5.0)


def test_heterogeneous_gpus(toy):
    wl = toy.workload([("e0",)] * 12, ["e0"])
    costs, cluster = toy.costs(wl), toy.cluster(["slow", "fast"])
    p = plan("greedy-lpt", wl, costs, cluster)
    check(p, wl, costs, cluster)
    assert len(p.order[1]) > len(p.order[0])  # the fast GPU takes more of the work
    dp = plan("data-parallel", wl, costs, cluster)
    times = predicted_worker_times(dp, wl, costs, cluster)
    on_fast = order_worker_times({0: dp.order[0]}, wl, costs, toy.cluster(["fast"]))
    assert times[0] == pytest.approx(2.5 * on_fast[0])  # the slow GPU's time is 2.5x the same work on a fast one


@pytest.mark.parametrize("name", NAMES)
def test_aggregation_stage(toy, name):
    wl = toy.aggregation(10)
    costs, cluster = toy.costs(wl), toy.cluster(["fast"] * 4)
    resident = {1: "agg", 2: "e3"}
    p = plan(name, wl, costs, cluster, resident)
    check(p, wl, costs, cluster, resident)
    used = [w for w, ids in p.order.items() if ids]
    expected = {"sequential": [0], "round-robin": [0], "data-parallel": [0, 1, 2, 3]}
    if name in expected:
        assert used == expected[name]
    else:
        longest = max(wl.requests, key=lambda r: costs.request_seconds(r, "fast")).id
        assert p.order[1][0] == longest  # LPT: the longest request on the worker that has the aggregator
        assert p.stats["resident_hits"] == 1


@pytest.mark.parametrize("name", NAMES)
def test_empty_workload_gives_an_empty_plan(toy, name):
    wl = toy.workload([(), ()])
    cluster = toy.cluster(["fast", "slow"])
    p = plan(name, wl, toy.costs(wl), cluster, {0: "e1"})
    p.validate(wl, cluster)
    assert dict(p.order) == {0: (), 1: ()}
    assert (p.predicted_makespan, p.lower_bound, p.stats["loads"]) == (0.0, 0.0, 0)


@pytest.mark.parametrize("name", NAMES)
def test_bad_cluster_or_resident_is_named(toy, name):
    wl = toy.workload([("e0",)])
    with pytest.raises(PlanError, match="no workers"):
        plan(name, wl, toy.costs(wl), Cluster(()))
    with pytest.raises(PlanError, match="not in the cluster"):
        plan(name, wl, toy.costs(wl), toy.cluster(["fast"]), {4: "e0"})


def test_registry_names_and_help():
    for name in NAMES:
        cls = SCHEDULERS.get(name)
        assert cls.name == name
        assert SCHEDULERS.describe()[name] == cls.__doc__.strip().splitlines()[0]
    with pytest.raises(RegistryError) as err:
        make_scheduler("fifo")
    assert "unknown scheduler 'fifo'" in str(err.value)
    assert all(n in str(err.value) for n in NAMES)
