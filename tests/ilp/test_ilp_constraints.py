"""The MOSAIC ILP's constraints and contracts: R_max and pinning, memory, fixed placement, residents, errors
that name the binding constraint, model size, stats, and plans that are valid and honestly priced."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pytest

from mosaic.agents import lower_bound, order_worker_times
from mosaic.agents.ilp_scheduler import MosaicIlpFixedScheduler, MosaicIlpScheduler
from mosaic.agents.registry import SCHEDULERS, make_scheduler
from mosaic.core.errors import ConfigError
from mosaic.core.types import Cluster, Expert, ExpertKind, Query, Workload
from mosaic.ilp import IlpError, InstanceOptions, build_instance, replication_cap, schedule
from mosaic.ilp.extract import deal
from mosaic.ilp.model import build
from mosaic.predictors.costmodel import ProfiledCostModel
from mosaic.predictors.lengths import MeanLengthPredictor
from mosaic.predictors.roofline import roofline_profile

GPU = "A100-80GB"
REA, INS = ExpertKind.REASONING, ExpertKind.INSTRUCT
EXPERTS = {"R1": (REA, 3000.0, 16.0), "R2": (REA, 2800.0, 16.0), "I1": (INS, 220.0, 16.0), "I2": (INS, 200.0, 16.0),
           "I3": (INS, 240.0, 16.0), "BIG": (INS, 200.0, 60.0)}  # fmt: skip
RNG = np.random.default_rng


def stage(n_queries: int, names: Sequence[str], k: int = 2, seed: int = 0, workers: int = 4, memory: float = 80.0,
          aggregator: str | None = None):  # fmt: skip
    """(workload, roofline costs with per-expert mean lengths, cluster): each query routed to k random experts."""
    rng = np.random.default_rng(seed)
    experts = tuple(Expert(n, f"org/{n}", 8.0, EXPERTS[n][0], EXPERTS[n][2]) for n in names)
    queries = tuple(Query(i, f"q{i}", prompt_tokens=int(rng.integers(60, 300))) for i in range(n_queries))
    routes = tuple(tuple(str(e) for e in rng.choice(list(names), size=min(k, len(names)), replace=False))
                   for _ in queries)  # fmt: skip
    agg = next(e for e in experts if e.name == (aggregator or names[0]))
    wl = Workload.build("stage", queries, experts, routes, agg)
    costs = ProfiledCostModel(roofline_profile(experts, [GPU], 256),
                              MeanLengthPredictor({n: EXPERTS[n][1] for n in names}), wl)  # fmt: skip
    return wl, costs, Cluster.homogeneous(workers, GPU, memory)


def r_max_of(plan) -> dict[str, int]:
    return {kv.split("=")[0]: int(kv.split("=")[1]) for kv in str(plan.stats["ilp_r_max"]).split(",")}


def check(plan, wl, costs, cluster, resident=None):
    """Every ILP plan: valid, priced like every other scheduler, above its lower bound."""
    plan.validate(wl, cluster)
    assert plan.predicted_makespan == pytest.approx(max(order_worker_times(plan.order, wl, costs, cluster,
                                                                           resident).values()))  # fmt: skip
    assert plan.lower_bound == pytest.approx(lower_bound(wl, costs, cluster, resident))
    assert plan.lower_bound <= plan.predicted_makespan + 1e-9
    for k in ("ilp_bound_s", "ilp_lp_bound_s"):
        assert plan.stats[k] <= plan.stats["ilp_makespan_s"] * (1 + 1e-6)


def test_r_max_rule():
    assert replication_cap(work_s=3000.0, load_s=36.0, requests=1000, workers=4, ratio=1.0) == 4
    assert replication_cap(work_s=70.0, load_s=36.0, requests=1000, workers=4, ratio=1.0) == 1  # light: pinned
    assert replication_cap(work_s=110.0, load_s=36.0, requests=1000, workers=4, ratio=1.0) == 3
    assert replication_cap(work_s=110.0, load_s=36.0, requests=2, workers=4, ratio=1.0) == 2  # not above requests
    assert replication_cap(work_s=1.0, load_s=0.0, requests=50, workers=4, ratio=1.0) == 4  # resident: no cap


def test_heavy_experts_replicated_light_ones_pinned_within_r_max():
    wl, costs, cluster = stage(600, ["R1", "R2", "I1", "I2", "I3"])
    plan = MosaicIlpScheduler().plan(wl, costs, cluster, RNG(0))
    check(plan, wl, costs, cluster)
    caps, replicas = r_max_of(plan), plan.replicas()
    assert all(len(replicas[e]) <= caps[e] for e in replicas)
    assert caps["I1"] == caps["I2"] == caps["I3"] == 1
    assert len(replicas["I1"]) == len(replicas["I2"]) == len(replicas["I3"]) == 1
    assert len(replicas["R1"]) + len(replicas["R2"]) >= 3  # the reasoning work is spread
    assert plan.stats["ilp_model_status"] == "optimal"
    # groups of hundreds run in several batches, which the cost model estimates: not certified optimal
    assert plan.stats["ilp_status"] == "model-optimal"


def test_r_max_override_binds():
    wl, costs, cluster = stage(400, ["R1", "I1"], k=1)
    free = MosaicIlpScheduler().plan(wl, costs, cluster, RNG(0))
    pinned = MosaicIlpScheduler(r_max={"R1": 1, "absent-expert": 2}).plan(wl, costs, cluster, RNG(0))
    assert len(free.replicas()["R1"]) > 1
    assert len(pinned.replicas()["R1"]) == 1 and r_max_of(pinned)["R1"] == 1
    assert pinned.predicted_makespan > free.predicted_makespan


def test_coresident_memory_respected():
    wl, costs, cluster = stage(300, ["R1", "I1", "I2", "I3"], k=1, workers=2, memory=40.0)
    need = {e: costs.model_cost(e, GPU).memory_gb for e in ("R1", "I1", "I2", "I3")}  # 19 GB each: two fit 40 GB
    loose = MosaicIlpScheduler(coresident_memory=False).plan(wl, costs, cluster, RNG(0))
    assert max(sum(need[e] for e in set(p)) for p in loose.placement.values()) > 40.0  # three light ones together
    tight = MosaicIlpScheduler(coresident_memory=True).plan(wl, costs, cluster, RNG(0))
    check(tight, wl, costs, cluster)
    assert max(sum(need[e] for e in set(p)) for p in tight.placement.values()) <= 40.0


def test_infeasible_memory_names_the_expert_and_the_sizes():
    wl, costs, cluster = stage(20, ["I1", "BIG"], workers=2, memory=40.0)
    with pytest.raises(IlpError, match=r"expert 'BIG' needs 63.0 GB, no worker has more than 40.0 GB"):
        MosaicIlpScheduler().plan(wl, costs, cluster, RNG(0))


def test_infeasible_coresident_packing_is_named():
    wl, costs, cluster = stage(30, ["I1", "I2", "I3"], k=1, workers=1, memory=40.0)
    with pytest.raises(IlpError, match="co-resident memory"):
        MosaicIlpScheduler(coresident_memory=True).plan(wl, costs, cluster, RNG(0))


def test_fixed_placement_errors_name_what_is_wrong():
    wl, costs, cluster = stage(20, ["R1", "I1", "I2"])
    with pytest.raises(IlpError, match="gives expert 'I2' no worker"):
        MosaicIlpFixedScheduler(placement={0: ["R1"], 1: ["I1"]}).plan(wl, costs, cluster, RNG(0))
    with pytest.raises(IlpError, match=r"names workers \[9\]"):
        MosaicIlpFixedScheduler(placement={9: ["R1", "I1", "I2"]}).plan(wl, costs, cluster, RNG(0))


def test_bad_options_raise_config_errors():
    with pytest.raises(ConfigError, match="unknown solver 'gurobi'"):
        MosaicIlpScheduler(solver="gurobi")
    with pytest.raises(ConfigError, match="buckets"):
        MosaicIlpScheduler(buckets=0)
    wl, costs, cluster = stage(20, ["R1", "I1"])
    with pytest.raises(ConfigError, match="r_max override for expert 'R1'"):
        MosaicIlpScheduler(r_max={"R1": 0}).plan(wl, costs, cluster, RNG(0))


def test_fixed_mode_keeps_the_given_placement():
    wl, costs, cluster = stage(400, ["R1", "I1", "I2"])
    given = {0: ["R1"], 1: ["R1", "I1"], 2: ["R1"], 3: ["R1", "I2"]}
    plan = MosaicIlpFixedScheduler(placement=given).plan(wl, costs, cluster, RNG(0))
    check(plan, wl, costs, cluster)
    assert {w: set(p) for w, p in plan.placement.items()} == {w: set(p) for w, p in given.items()}
    default = make_scheduler("mosaic-ilp-fixed").plan(wl, costs, cluster, RNG(0))  # greedy LPT's placement
    check(default, wl, costs, cluster)


def test_resident_expert_runs_first_without_a_load():
    wl, costs, cluster = stage(200, ["I1"], k=1)
    resident = {1: "I1", 3: None}
    plan = MosaicIlpScheduler().plan(wl, costs, cluster, RNG(0), resident)
    check(plan, wl, costs, cluster, resident)
    assert plan.placement[1] == ("I1",)
    assert plan.stats["resident_hits"] == 1


def test_aggregator_runs_last_where_placed():
    wl, costs, cluster = stage(300, ["R1", "I1", "I2"], workers=2, aggregator="I1")
    plan = MosaicIlpScheduler().plan(wl, costs, cluster, RNG(0))
    for seq in plan.placement.values():
        if "I1" in seq:
            assert seq[-1] == "I1"


def test_model_size_does_not_grow_with_queries():
    sizes = []
    for n in (500, 4000):
        wl, costs, cluster = stage(n, ["R1", "R2", "I1", "I2", "I3"], k=3)
        inst = build_instance(wl, costs, cluster, options=InstanceOptions(buckets=4))
        prob, _ = build(inst)
        sizes.append((inst.n_buckets, len(prob.variables()), prob.numConstraints()))
    assert sizes[1][0] <= sizes[0][0] <= 5 * 4 + 1000 // 4
    assert sizes[1][1] <= sizes[0][1] and sizes[1][2] <= sizes[0][2]


def test_stats_are_plain_values_and_complete():
    wl, costs, cluster = stage(300, ["R1", "I1", "I2"])
    out = schedule("mosaic-ilp", wl, costs, cluster)
    assert all(type(v).__module__ == "builtins" for v in out.stats.values())
    plan = SCHEDULERS.get("mosaic-ilp")().plan(wl, costs, cluster, RNG(0))
    keys = ("ilp_status", "ilp_solve_s", "ilp_lp_bound_s", "ilp_bound_s", "ilp_gap", "ilp_variables",
            "ilp_constraints", "ilp_replicas", "ilp_r_max", "ilp_gap_to_lb", "replicas", "ilp_warm_start")  # fmt: skip
    for key in keys:
        assert key in plan.stats, key
    assert plan.stats["ilp_status"] == "optimal"
    assert 0.0 <= plan.stats["ilp_gap"] <= 0.02  # solver stops at 0.5%; rounding continuous counts may add a bit


def test_a_tiny_time_limit_still_gives_a_valid_plan():
    wl, costs, cluster = stage(2000, ["R1", "R2", "I1", "I2", "I3"], k=3, workers=4)
    plan = MosaicIlpScheduler(time_limit_s=0.01, gap_rel=0.0).plan(wl, costs, cluster, RNG(0))
    check(plan, wl, costs, cluster)
    s = plan.stats
    # the status says what was proven: the solver stopped on its 0.01 s limit (gap_rel 0 cannot be reached by
    # then), so it has a plan with an open gap or only the warm start, and is never reported optimal
    assert s["ilp_model_status"] in ("feasible", "warm-start"), s
    assert s["ilp_status"] == s["ilp_model_status"]
    if s["ilp_status"] == "feasible":
        assert 0.0 < s["ilp_gap"] < 1.0 and s["ilp_bound_s"] <= s["ilp_makespan_s"]
    else:
        assert math.isnan(s["ilp_gap"])  # a warm start has no solver bound to measure a gap against
    full = MosaicIlpScheduler().plan(wl, costs, cluster, RNG(0))
    assert full.stats["ilp_model_status"] == "optimal"  # the default budget closes the model's gap (only the
    # model's: the cost model may price the 0.01 s plan a little lower, so the two plans are not compared)


def test_deal_meets_quotas_and_spreads_ranks():
    where = deal(tuple(range(12)), np.array([6, 0, 3, 3]))
    assert np.bincount(where, minlength=4).tolist() == [6, 0, 3, 3]
    assert sorted(np.flatnonzero(where == 2).tolist()) != [9, 10, 11]  # not the 3 shortest in a row
    assert where[0] == 0


def with_teardown(wl, costs, seconds: dict[str, float]) -> ProfiledCostModel:
    """``costs`` (a ProfiledCostModel of ``wl``) whose experts take ``seconds`` to free."""

    class Teardown(ProfiledCostModel):
        def unload_seconds(self, expert: str, gpu_type: str) -> float:
            return seconds[expert]

    return Teardown(costs.profile, costs.predictor, wl)


def test_a_load_carries_the_teardown_of_the_expert_it_brings():
    wl, plain, cluster = stage(300, ["R1", "I1", "I2"], workers=2, aggregator="I1")
    costs = with_teardown(wl, plain, {"R1": 7.0, "I1": 5.0, "I2": 3.0})
    inst = build_instance(wl, costs, cluster, resident={1: "I2"})
    load = {e: plain.load_seconds(e, GPU) for e in ("R1", "I1", "I2")}
    by_expert = dict(zip(inst.experts, inst.load.tolist(), strict=True))
    assert by_expert["R1"] == pytest.approx([load["R1"] + 7.0] * 2)
    assert by_expert["I1"] == pytest.approx([load["I1"]] * 2)  # the aggregator runs last and stays loaded
    assert by_expert["I2"] == pytest.approx([load["I2"] + 3.0, 0.0])  # resident on worker 1


def test_a_costly_teardown_keeps_the_plan_from_switching_experts():
    names = ["R1", "R2", "I1", "I2", "I3"]
    wl, plain, cluster = stage(400, names, workers=3, aggregator="I1")
    costs = with_teardown(wl, plain, {n: 0.0 if n == "I1" else 300.0 for n in names})
    blind = MosaicIlpScheduler().plan(wl, plain, cluster, RNG(0))
    aware = MosaicIlpScheduler().plan(wl, costs, cluster, RNG(0))
    check(aware, wl, costs, cluster)
    assert max(len(seq) for seq in blind.placement.values()) == 3  # two teardowns on one worker
    assert max(len(seq) for seq in aware.placement.values()) == 2
    priced_blind = max(order_worker_times(blind.order, wl, costs, cluster).values())
    assert aware.predicted_makespan < 0.8 * priced_blind
