import pytest

from mosaic.core.errors import PlanError, WorkloadError
from mosaic.core.types import Plan, Query, Response, Responses, Workload, plan_from_order, serving_sequence


def test_build_derives_one_request_per_route(tiny_workload):
    assert len(tiny_workload.requests) == 8
    assert [r.id for r in tiny_workload.requests] == list(range(8))
    assert tiny_workload.demand() == {"inst": 3, "reas": 3, "inst2": 2}
    assert tiny_workload.requests[0].prompt_tokens == 50


def test_prompt_overhead_added_per_expert(tiny_workload):
    wl = Workload.build("o", tiny_workload.queries, tiny_workload.experts, tiny_workload.routes,
                        tiny_workload.aggregator, prompt_overhead={"reas": 7})  # fmt: skip
    extra = [r.prompt_tokens - wl.queries[r.query_id].prompt_tokens for r in wl.requests if r.expert == "reas"]
    assert extra == [7] * 3


@pytest.mark.parametrize(
    ("routes", "message"),
    [((("nope",),) * 4, "unknown expert 'nope'"), ((("inst", "inst"),) * 4, "repeats"), ((), "0 routes for 4")],
)
def test_bad_routes_name_the_problem(tiny_workload, routes, message):
    with pytest.raises(WorkloadError, match=message):
        Workload.build("bad", tiny_workload.queries, tiny_workload.experts, routes, tiny_workload.aggregator)


def test_query_ids_must_be_indices(tiny_workload):
    qs = (Query(1, "a"),)
    with pytest.raises(WorkloadError, match="index 0 has id 1"):
        Workload.build("bad", qs, tiny_workload.experts, (("inst",),), tiny_workload.aggregator)


def test_plan_validate_accepts_a_full_plan(tiny_workload, two_workers):
    plan = plan_from_order("t", tiny_workload, {0: [0, 3, 7, 4, 5], 1: [1, 2, 6]}, 1.0, 0.5)
    plan.validate(tiny_workload, two_workers)
    assert plan.placement[0] == ("inst", "inst2")
    assert plan.replicas()["reas"] == (1,)
    assert plan.assignment[6] == 1


@pytest.mark.parametrize(
    ("order", "message"),
    [
        ({0: [0, 1, 2, 3], 1: [4, 5, 6]}, "1 requests unassigned"),
        ({0: [0, 1, 2, 3], 1: [3, 4, 5, 6, 7]}, "request 3 is assigned twice"),
        ({0: list(range(8)), 5: []}, "unknown workers"),
    ],
)
def test_plan_validate_names_what_is_wrong(tiny_workload, two_workers, order, message):
    plan = plan_from_order("t", tiny_workload, order, 1.0, 0.5)
    with pytest.raises(PlanError, match=message):
        plan.validate(tiny_workload, two_workers)


def test_unknown_request_is_named(tiny_workload, two_workers):
    with pytest.raises(PlanError, match="request 99 does not exist"):
        plan_from_order("t", tiny_workload, {0: [0, 99]}, 1.0, 0.5)
    plan = Plan("t", {0: ("inst",)}, {0: (0, 99)}, 1.0, 0.5)
    with pytest.raises(PlanError, match="worker 0: request 99 does not exist"):
        plan.validate(tiny_workload, two_workers)


def test_placement_must_match_order(tiny_workload, two_workers):
    plan = Plan("t", {0: ("reas",), 1: ()}, {0: tuple(range(8)), 1: ()}, 1.0, 0.5)
    with pytest.raises(PlanError, match="does not match"):
        plan.validate(tiny_workload, two_workers)


def test_plan_is_frozen(tiny_workload):
    plan = plan_from_order("t", tiny_workload, {0: list(range(8))}, 1.0, 0.5)
    with pytest.raises(AttributeError):
        plan.scheduler = "x"
    with pytest.raises(TypeError):
        plan.order[0] = ()


def test_serving_sequence_merges_runs(tiny_workload):
    assert serving_sequence(tiny_workload, (0, 3, 1, 2, 7)) == ("inst", "reas", "inst")


def test_responses_lookup_names_missing_pair():
    r = Responses({(0, "a"): Response(10, "A", True)})
    assert r.get(0, "a").output_tokens == 10
    with pytest.raises(WorkloadError, match="expert 'b' to query 0"):
        r.get(0, "b")
