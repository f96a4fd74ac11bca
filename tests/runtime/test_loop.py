"""The runtime loop on the simulator: static plans replay exactly, policies act at events, bad actions are errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mosaic.agents import make_scheduler
from mosaic.agents.online import GreedyOnline
from mosaic.agents.policy import ARRIVAL, IDLE, START, Dispatch, Event, PlanReplay, Policy, Steal, View
from mosaic.agents.stealing import WorkStealing
from mosaic.core.config import load_config
from mosaic.core.errors import ConfigError, PlanError
from mosaic.core.trace import EXPERT_STAGE, RequestRecord, TraceWriter
from mosaic.core.types import plan_from_order
from mosaic.pipeline import prepare, run_scheduler
from mosaic.runtime.interface import Backend
from mosaic.runtime.sim import SimBackend


class ListeningReplay(PlanReplay):
    """The plan, by a policy that hears every idle worker and does nothing: the loop runs in lockstep."""

    events = frozenset({IDLE})


def _run(backend, policy, wl, costs, cluster):
    with TraceWriter(None) as trace:
        stage = backend.run_policy(EXPERT_STAGE, policy, wl, costs, cluster, trace)
    return stage, trace.records


@pytest.mark.parametrize("preset", ["gpqa", "mmlu_pro", "medmcqa"])
def test_lockstep_replay_gives_the_static_replay_record_for_record(preset):
    cfg = load_config(Path(__file__).resolve().parents[2] / "experiments" / "configs" / f"{preset}.yaml")
    exp = prepare(cfg)
    plan = make_scheduler("greedy-lpt").plan(exp.workload, exp.costs, exp.cluster, np.random.default_rng(0))
    backend = SimBackend(exp.responses, exp.costs, cfg.runtime.max_batch)
    static, recs = _run(backend, PlanReplay(plan), exp.workload, exp.costs, exp.cluster)
    stepped, recs2 = _run(backend, ListeningReplay(plan), exp.workload, exp.costs, exp.cluster)
    assert sorted(map(repr, recs)) == sorted(map(repr, recs2)) and len(recs) > len(exp.workload.requests)
    assert (static.end, static.worker_end, static.busy, static.loading) == (
        stepped.end, stepped.worker_end, stepped.busy, stepped.loading)  # fmt: skip


def _two_experts(rt, n_b=10):
    """Worker 0 runs one short a-request; worker 1 a queue of long b-requests (batch of 2: they serialise)."""
    wl = rt.workload([("a",)] + [("b",)] * n_b, experts=("a", "b"))
    resp = rt.responses(wl, lambda q, e: 5 if e == "a" else 200)
    table = {"a": rt.mcost(load_s=1.0), "b": rt.mcost(load_s=2.0, max_batch=2), "agg": rt.mcost()}
    costs = rt.costs(table, {"a": 5.0, "b": 200.0})
    plan = plan_from_order("by-hand", wl, {0: [0], 1: list(range(1, n_b + 1))}, 0.0, 0.0)
    return wl, SimBackend(resp, costs), costs, plan


def test_an_idle_worker_steals_the_tail_of_the_longest_queue(rt):
    wl, backend, costs, plan = _two_experts(rt)
    cluster = rt.cluster(2)
    static, _ = _run(backend, PlanReplay(plan), wl, costs, cluster)
    stolen, recs = _run(backend, WorkStealing(plan), wl, costs, cluster)
    reqs = rt.requests(recs)
    assert sorted(r.request_id for r in reqs) == list(range(len(wl.requests)))  # each exactly once
    on0 = [r.request_id for r in reqs if r.worker == 0 and r.expert == "b"]
    assert on0 and set(on0) <= set(range(6, 11))  # only the tail moved
    assert [(r.worker, r.expert) for r in rt.loads(recs)].count((0, "b")) == 1
    assert stolen.end < 0.75 * static.end


def test_stealing_never_moves_the_head_or_when_it_would_not_help(rt):
    wl, backend, costs, plan = _two_experts(rt, n_b=2)  # one queued behind the head: moving it costs a 2 s load
    _, recs = _run(backend, WorkStealing(plan), wl, costs, rt.cluster(2))
    assert {r.worker for r in rt.requests(recs) if r.expert == "b"} == {1}


class Scripted(Policy):
    """Returns the given actions at the start."""

    name = "scripted"

    def __init__(self, *actions):
        self.actions = list(actions)

    def decide(self, view: View, event: Event):
        return self.actions if event.kind == START else []


@pytest.mark.parametrize(
    "actions,needle",
    [
        ((Dispatch(0, (0, 0)),), "listed twice"),
        ((Dispatch(7, (0,)),), "not in the cluster"),
        ((Dispatch(0, (99,)),), "cannot be dispatched"),
        ((Dispatch(0, tuple(range(11))), Steal(0, 1, (0,))), "cannot move"),
        ((Dispatch(0, tuple(range(11))), Steal(0, 0, (5,))), "to itself"),
        (("go",), "not an action"),
        ((Dispatch(0, (0, 1)),), "left 9 request"),
    ],
)
def test_invalid_actions_are_plan_errors(rt, actions, needle):
    wl, backend, costs, _ = _two_experts(rt)
    with pytest.raises(PlanError, match=needle):
        _run(backend, Scripted(*actions), wl, costs, rt.cluster(2))


class RandomPolicy(Policy):
    """Dispatches a random share at the start, some of what arrives, and more (or steals) whenever a worker is
    idle; checks the view's invariants at every event."""

    name = "random"
    events = frozenset({IDLE, ARRIVAL})

    def __init__(self, rng: np.random.Generator) -> None:
        self.rng = rng

    def decide(self, view: View, event: Event):
        waiting, ids = list(view.waiting()), list(view.cluster.ids)
        held = [*waiting, *view.finished(), *(r for w in ids for r in (*view.queued(w), *view.running(w)))]
        assert len(held) == len(set(held))  # every request in one place at most; those in none have not arrived
        reqs, queries = view.workload.requests, view.workload.queries
        assert all(queries[reqs[r].query_id].arrival > view.clock for r in set(range(len(reqs))) - set(held))
        assert all(queries[reqs[r].query_id].arrival <= view.clock + 1e-9 for r in waiting)
        assert all(t <= view.clock + 1e-9 for t in view.finished().values())
        if event.kind == IDLE:
            assert not view.queued(event.worker) and not view.running(event.worker) and not view.loading(event.worker)
        if event.kind == START:
            return [Dispatch(int(self.rng.choice(ids)), (r,)) for r in waiting if self.rng.random() < 0.5]
        out = []
        for v in ids if event.kind == IDLE else ():
            tail = view.queued(v)[1:]
            if v != event.worker and tail and self.rng.random() < 0.5:
                out.append(Steal(v, event.worker, tuple(tail[-int(self.rng.integers(1, len(tail) + 1)) :])))
        if waiting:
            to = event.worker if event.kind == IDLE else int(self.rng.choice(ids))
            out.append(Dispatch(to, tuple(waiting[: int(self.rng.integers(1, len(waiting) + 1))])))
        return out


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_every_request_runs_once_whatever_a_valid_policy_does(rt, data):
    n = data.draw(st.integers(1, 14))
    experts = ("a", "b", "c")
    routes = [(data.draw(st.sampled_from(experts)),) for _ in range(n)]
    arrivals = data.draw(st.lists(st.sampled_from([0.0, 0.5, 3.0]), min_size=n, max_size=n))
    wl = rt.workload(routes, experts=experts, arrivals=arrivals)
    resp = rt.responses(wl, lambda q, e: (q * 7 + len(e)) % 30)
    table = {e: rt.mcost(load_s=data.draw(st.floats(0.0, 2.0)), max_batch=data.draw(st.integers(1, 4)))
             for e in (*experts, "agg")}  # fmt: skip
    costs = rt.costs(table)
    stage, recs = _run(SimBackend(resp, costs), RandomPolicy(np.random.default_rng(data.draw(st.integers(0, 99)))),
                       wl, costs, rt.cluster(data.draw(st.integers(1, 3))))  # fmt: skip
    reqs = rt.requests(recs)
    assert sorted(r.request_id for r in reqs) == list(range(n))
    assert all(r.start >= wl.queries[r.query_id].arrival - 1e-9 and r.end >= r.start for r in reqs)
    assert stage.end == max((r.end for r in reqs), default=0.0)


class PlansOnly(Backend):
    name = "plans-only"

    def __init__(self):
        self.ran = []

    def run_stage(self, stage, plan, workload, cluster, trace, start=0.0, resident=None):
        self.ran.append(plan)
        return None


def test_a_backend_without_the_loop_replays_plans_and_refuses_policies(rt):
    wl, _, costs, plan = _two_experts(rt)
    backend = PlansOnly()
    backend.run_policy(EXPERT_STAGE, PlanReplay(plan), wl, costs, rt.cluster(2), TraceWriter(None))
    assert backend.ran == [plan]
    with pytest.raises(ConfigError, match="'plans-only' runs static plans only; policy 'plan\\+steal'"):
        backend.run_policy(EXPERT_STAGE, WorkStealing(plan), wl, costs, rt.cluster(2), TraceWriter(None))


def test_stealing_schedulers_take_their_planners_options():
    s = make_scheduler("mosaic-ilp+steal", time_limit_s=2.0)
    assert s.name == "mosaic-ilp+steal" and s.inner.name == "mosaic-ilp"
    assert isinstance(s.runtime_policy(plan=None), WorkStealing)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"has no option 'bogus'; valid: .*time_limit_s"):
        make_scheduler("mosaic-ilp+steal", bogus=1)


def test_greedy_online_pulls_what_waits_as_one_batch_of_the_resident_expert(rt):
    """One worker: r0 (a) runs long; r1 (b), r2 (a), r3 (a) arrive meanwhile and wait; when the worker runs dry it
    takes the resident expert's two together (no load), then b."""
    wl = rt.workload([("a",), ("b",), ("a",), ("a",)], experts=("a", "b"), arrivals=[0.0, 1.0, 1.0, 2.0])
    resp = rt.responses(wl, lambda q, e: 400 if q == 0 else 10)
    costs = rt.costs({"a": rt.mcost(load_s=1.0), "b": rt.mcost(load_s=1.0), "agg": rt.mcost()})
    _, recs = _run(SimBackend(resp, costs), GreedyOnline(), wl, costs, rt.cluster(1))
    start = {r.request_id: r.start for r in rt.requests(recs)}
    end0 = next(r.end for r in rt.requests(recs) if r.request_id == 0)
    assert start[2] == pytest.approx(end0) and start[3] > start[2] and start[3] < start[1]  # one batch, then b
    assert [ld.expert for ld in rt.loads(recs)] == ["a", "b"]


def test_greedy_online_runs_through_the_pipeline_with_no_plan_ahead():
    exp = prepare(load_config(None, ["workload.preset=gpqa", "workload.num_queries=30", "tracking.mode=disabled"]))
    run = run_scheduler(exp, "greedy-online")
    assert run.metrics.requests == len(exp.workload.requests) and run.metrics.aggregated == 30
    assert run.metrics.lower_bound > 0 and run.metrics.as_dict()["predicted_makespan"] is None
    assert sorted(r.request_id for r in run.records if isinstance(r, RequestRecord) and r.stage == EXPERT_STAGE) == (
        list(range(len(exp.workload.requests))))  # fmt: skip


def test_the_documented_example_policy_runs_and_spreads_the_requests(rt):
    import textwrap

    import mosaic.agents.policy as policy_module

    doc = policy_module.__doc__ or ""
    code = textwrap.dedent(doc.split("::", 1)[1].split("\n\n", 1)[1].split("\nEvery request")[0])
    namespace = dict(vars(policy_module))
    exec(code, namespace)  # the docstring's FewestQueued, as a reader would paste it
    wl = rt.workload([("a",)] * 9, experts=("a",), arrivals=[0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 2.0, 2.0, 2.0])
    costs = rt.costs({"a": rt.mcost(load_s=0.5), "agg": rt.mcost()})
    _, recs = _run(SimBackend(rt.responses(wl, lambda q, e: 20), costs), namespace["FewestQueued"](), wl, costs,
                   rt.cluster(3))  # fmt: skip
    per_worker = [sum(r.worker == w for r in rt.requests(recs)) for w in range(3)]
    assert per_worker == [3, 3, 3]
