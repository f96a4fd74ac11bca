"""The runtime loop's events (dry, finish, wake), actions (withdraw, wake-at), gated requests, the generator form,
and run-ahead (lookahead) giving the records of strict lockstep."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mosaic.agents.policy import (
    ARRIVAL,
    DRY,
    FINISH,
    IDLE,
    START,
    WAKE,
    Dispatch,
    Event,
    Policy,
    Steal,
    View,
    WakeAt,  # fmt: skip
    Withdraw,
)
from mosaic.core.errors import PlanError
from mosaic.core.trace import EXPERT_STAGE, RequestRecord, TraceWriter
from mosaic.runtime.interface import Gates
from mosaic.runtime.loop import SimLoop
from mosaic.runtime.sim import SimBackend


def _loop(rt, wl, resp, costs, n_workers, **kw):
    backend = SimBackend(resp, costs)
    trace = TraceWriter(None)
    return SimLoop(backend, EXPERT_STAGE, wl, costs, rt.cluster(n_workers), trace, **kw), trace


class Recorder(Policy):
    """Dispatches everything to worker 0 at the start and records every event it hears."""

    name = "recorder"

    def __init__(self, events, first=None):
        self.events = frozenset(events)
        self.heard: list[Event] = []
        self.first = first

    def decide(self, view, event):
        self.heard.append(event)
        if event.kind == START:
            return self.first(view) if self.first else [Dispatch(0, tuple(view.waiting()))]
        return []


def test_dry_fires_when_the_queue_empties_while_the_batch_runs_then_idle_and_finish(rt):
    wl = rt.workload([("a",)] * 3, experts=("a",))
    resp = rt.responses(wl, lambda q, e: 10 * (q + 1))
    costs = rt.costs({"a": rt.mcost(load_s=1.0), "agg": rt.mcost()})
    loop, trace = _loop(rt, wl, resp, costs, 1)
    pol = Recorder({DRY, IDLE, FINISH})
    loop.run(pol)
    kinds = [e.kind for e in pol.heard]
    assert kinds[0] == START and kinds[1] == DRY and kinds[-1] == IDLE
    ends = {r.request_id: r.end for r in trace.records if isinstance(r, RequestRecord)}
    dry = pol.heard[1]
    assert dry.worker == 0 and dry.time < min(ends.values())  # dry: all admitted, none finished
    finished = [r for e in pol.heard if e.kind == FINISH for r in e.requests]
    assert sorted(finished) == [0, 1, 2]
    assert all(e.time == pytest.approx(ends[e.requests[0]]) for e in pol.heard if e.kind == FINISH)


class Withdrawer(Policy):
    """Worker 0 gets everything; at the first finish, worker 0's tail is taken back and sent to worker 1."""

    name = "withdrawer"
    events = frozenset({FINISH, ARRIVAL})

    def __init__(self):
        self.moved: tuple[int, ...] = ()

    def decide(self, view, event):
        if event.kind == START:
            return [Dispatch(0, tuple(view.waiting()))]
        if event.kind == FINISH and not self.moved:
            tail = view.queued(0)[1:]
            self.moved = tail
            assert all(r not in view.waiting() for r in tail)
            return [Withdraw(0, tail), Dispatch(1, tail)]
        return []


def test_withdrawn_requests_wait_again_and_run_where_dispatched_next(rt):
    wl = rt.workload([("a",)] * 6, experts=("a",))
    resp = rt.responses(wl, lambda q, e: 50)
    costs = rt.costs({"a": rt.mcost(load_s=1.0, max_batch=1), "agg": rt.mcost()})
    loop, trace = _loop(rt, wl, resp, costs, 2)
    pol = Withdrawer()
    loop.run(pol)
    where = {r.request_id: r.worker for r in trace.records if isinstance(r, RequestRecord)}
    assert pol.moved and all(where[r] == 1 for r in pol.moved)
    assert sorted(where) == list(range(6))


def test_a_request_withdrawn_before_it_arrives_arrives_again(rt):
    wl = rt.workload([("a",)] * 3, experts=("a",), arrivals=[0.0, 0.0, 50.0])
    resp = rt.responses(wl, lambda q, e: 5)
    costs = rt.costs({"a": rt.mcost(load_s=1.0, max_batch=1), "agg": rt.mcost()})

    class Back(Policy):
        name, events = "back", frozenset({ARRIVAL, DRY})

        def __init__(self):
            self.arrived: list[int] = []

        def decide(self, view, event):
            if event.kind == START:
                return [Dispatch(0, (0, 1, 2))]  # 2 ahead of its arrival
            if event.kind == ARRIVAL:
                self.arrived += event.requests
                return [Dispatch(1, event.requests)]
            if event.kind == DRY and 2 in view.queued(0)[1:]:  # worker 1 is dry at the start
                assert view.clock == 0.0
                return [Withdraw(0, (2,))]
            return []

    loop, trace = _loop(rt, wl, resp, costs, 2)
    pol = Back()
    loop.run(pol)
    assert pol.arrived == [2]
    rec = next(r for r in trace.records if isinstance(r, RequestRecord) and r.request_id == 2)
    assert rec.worker == 1 and rec.start >= 50.0


class Sleeper(Policy):
    """Dispatches nothing until woken at 10 s (a decision that took 10 s to compute)."""

    name = "sleeper"
    events = frozenset({WAKE})

    def __init__(self):
        self.woken: list[float] = []

    def decide(self, view, event):
        if event.kind == START:
            return [WakeAt(10.0)]
        self.woken.append(view.clock)
        return [Dispatch(0, tuple(view.waiting()))]


def test_wake_at_charges_the_decision_to_the_clock(rt):
    wl = rt.workload([("a",)] * 2, experts=("a",))
    resp = rt.responses(wl, lambda q, e: 5)
    costs = rt.costs({"a": rt.mcost(load_s=1.0), "agg": rt.mcost()})
    loop, trace = _loop(rt, wl, resp, costs, 1)
    pol = Sleeper()
    loop.run(pol)
    assert pol.woken == [10.0]
    assert min(r.start for r in trace.records if isinstance(r, RequestRecord)) >= 11.0  # 10 s + the 1 s load


def test_waking_in_the_past_is_an_error(rt):
    wl = rt.workload([("a",)], experts=("a",))
    costs = rt.costs({"a": rt.mcost(), "agg": rt.mcost()})
    loop, _ = _loop(rt, wl, rt.responses(wl, lambda q, e: 5), costs, 1)
    with pytest.raises(PlanError, match="the clock is at"):
        loop.run(Recorder({WAKE}, first=lambda v: [Dispatch(0, (0,)), WakeAt(-1.0)]))


def _gated(rt, skip):
    """Queries 0, 1 each ask experts a and b (requests 0-3); requests 4, 5: the aggregator of each, held until
    both experts of the query answered; ``skip``: the queries whose aggregator is cancelled."""
    wl = rt.workload([("a", "b", "agg"), ("a", "b", "agg")], experts=("a", "b", "agg"))
    by_query = {q: [r.id for r in wl.requests if r.query_id == q] for q in (0, 1)}
    agg = {q: next(r for r in ids if wl.requests[r].expert == "agg") for q, ids in by_query.items()}
    prereq = {agg[q]: tuple(r for r in ids if r != agg[q]) for q, ids in by_query.items()}
    calls: list[tuple[int, float]] = []

    def release(r, now, records):
        assert [rec.request_id for rec in records] == list(prereq[r])
        calls.append((r, now))
        return None if wl.requests[r].query_id in skip else 777

    return wl, Gates(prereq, release, "aggregation"), calls, agg


class Online(Policy):
    """Everything that arrives (or is released) goes to worker 0."""

    name, events = "online", frozenset({ARRIVAL})

    def decide(self, view, event):
        return [Dispatch(0, tuple(view.waiting()))] if view.waiting() else []


def test_gated_requests_are_released_when_their_prerequisites_finish_or_cancelled(rt):
    wl, gates, calls, agg = _gated(rt, skip={1})
    resp = rt.responses(wl, lambda q, e: 5 if e == "a" else 40)
    costs = rt.costs({e: rt.mcost(load_s=1.0) for e in ("a", "b", "agg")})
    loop, trace = _loop(rt, wl, resp, costs, 2, gates=gates)
    stage = loop.run(Online())
    recs = {r.request_id: r for r in trace.records if isinstance(r, RequestRecord)}
    assert sorted(recs) == sorted(set(range(6)) - {agg[1]})  # query 1's aggregator cancelled
    experts_end = max(recs[r].end for r in gates.prerequisites[agg[0]])
    assert dict(calls)[agg[0]] == pytest.approx(experts_end) and recs[agg[0]].start >= experts_end
    assert recs[agg[0]].prompt_tokens == 777 and recs[agg[0]].stage == "aggregation"
    assert {recs[r].stage for r in recs if r not in agg.values()} == {EXPERT_STAGE}
    assert (1, "agg") not in stage.responses.table


def test_a_held_request_cannot_be_dispatched(rt):
    wl, gates, _, _ = _gated(rt, skip=set())
    resp = rt.responses(wl, lambda q, e: 5)
    costs = rt.costs({e: rt.mcost() for e in ("a", "b", "agg")})
    loop, _ = _loop(rt, wl, resp, costs, 1, gates=gates)
    with pytest.raises(PlanError, match="held by their gates"):
        loop.run(Recorder({ARRIVAL}, first=lambda v: [Dispatch(0, tuple(range(6)))]))


def test_the_generator_form_takes_actions_from_outside(rt):
    wl = rt.workload([("a",)] * 4, experts=("a",))
    resp = rt.responses(wl, lambda q, e: 20)
    costs = rt.costs({"a": rt.mcost(max_batch=1), "agg": rt.mcost()})
    loop, trace = _loop(rt, wl, resp, costs, 2)
    steps = loop.decisions(frozenset({IDLE}))
    event, seen = next(steps), []
    try:
        while True:
            seen.append(event.kind)
            waiting = loop.waiting()
            event = steps.send([Dispatch(event.worker or 0, waiting[:1])] if waiting else [])
    except StopIteration:
        pass
    result = loop.result()
    assert seen[0] == START and seen.count(IDLE) >= 4
    assert len([r for r in trace.records if isinstance(r, RequestRecord)]) == 4 and result.end > 0


class Busy(Policy):
    """Random dispatches, steals and withdrawals at dry, idle, arrival and wake events (never finish)."""

    name = "busy"
    events = frozenset({DRY, IDLE, ARRIVAL, WAKE})

    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.log: list[tuple] = []

    def decide(self, view: View, event: Event):
        rng, ids, out = self.rng, list(view.cluster.ids), []
        state = tuple((view.queued(w), view.running(w), view.resident(w)) for w in ids)
        self.log.append((event.kind, event.worker, round(view.clock, 9), view.waiting(), state))
        if event.kind == START and rng.random() < 0.5:
            out.append(WakeAt(float(rng.uniform(0, 30))))
        for v in ids:
            tail = view.queued(v)[1:]
            if tail and rng.random() < 0.3:
                k = tuple(tail[-int(rng.integers(1, len(tail) + 1)) :])
                target = int(rng.choice(ids))
                out.append(Withdraw(v, k) if target == v else Steal(v, target, k))
                tail = ()
        waiting = [r for r in view.waiting()]
        for a in out:
            if isinstance(a, Withdraw):
                waiting += [r for r in a.request_ids if view.workload.queries[view.workload.requests[r].query_id]
                            .arrival <= view.clock + 1e-9]  # fmt: skip
        if waiting and rng.random() < 0.8:
            to = event.worker if event.worker is not None else int(rng.choice(ids))
            out.append(Dispatch(to, tuple(waiting[: int(rng.integers(1, len(waiting) + 1))])))
        elif not any(view.queued(w) or view.running(w) for w in ids) and view.waiting():
            out.append(Dispatch(ids[0], tuple(view.waiting())))
        return out


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_running_ahead_gives_the_records_and_decisions_of_strict_lockstep(rt, data):
    n = data.draw(st.integers(1, 16))
    experts = ("a", "b", "c")
    routes = [(data.draw(st.sampled_from(experts)),) for _ in range(n)]
    arrivals = [data.draw(st.floats(0.0, 40.0)) for _ in range(n)]
    wl = rt.workload(routes, experts=experts, arrivals=arrivals)
    seed = data.draw(st.integers(0, 10_000))
    lengths = np.random.default_rng(seed).integers(1, 300, size=n)
    resp = rt.responses(wl, lambda q, e: int(lengths[q]))
    table = {e: rt.mcost(load_s=data.draw(st.floats(0.1, 3.0)), max_batch=data.draw(st.integers(1, 4)))
             for e in (*experts, "agg")}  # fmt: skip
    costs = rt.costs(table)
    n_workers = data.draw(st.integers(1, 3))
    out = []
    for lookahead in (False, True):
        loop, trace = _loop(rt, wl, resp, costs, n_workers, lookahead=lookahead)
        pol = Busy(seed)
        try:
            loop.run(pol)
        except PlanError as e:  # the random policy may strand requests: then both must strand them alike
            out.append(("error", str(e), pol.log))
            continue
        out.append((sorted(map(repr, trace.records)), pol.log))
    assert out[0] == out[1]
