"""The runtime loop as a resumable state machine: begin / apply / advance, copies, timing-only runs, running out,
the view's extras (movable heads, versions, batch sizes, busy seconds)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mosaic.agents.policy import DRY, IDLE, START, Dispatch, Event, Policy, Steal, View
from mosaic.core.errors import PlanError
from mosaic.core.trace import EXPERT_STAGE, RequestRecord, TraceWriter
from mosaic.runtime.loop import _LOOP_STATE, SimLoop
from mosaic.runtime.sim import SimBackend


def _case(rt, n=12, seed=0, workers=3, **kw):
    """Random requests of three experts (batches of up to 3), and a loop over ``workers`` workers."""
    rng = np.random.default_rng(seed)
    experts = ("a", "b", "c")
    wl = rt.workload([(experts[int(rng.integers(3))],) for _ in range(n)], experts=experts)
    lengths = rng.integers(5, 300, size=n)
    resp = rt.responses(wl, lambda q, e: int(lengths[q]))
    costs = rt.costs({e: rt.mcost(load_s=1.0 + i, max_batch=3) for i, e in enumerate((*experts, "agg"))})
    loop = SimLoop(SimBackend(resp, costs), EXPERT_STAGE, wl, costs, rt.cluster(workers), TraceWriter(None), **kw)
    return wl, loop


class Thief(Policy):
    """Everything to worker 0 at the start; at each dry or idle event, the worker steals what the view says may
    move from the worker with most queued (seeded coin flips: sometimes all of it, sometimes its last one)."""

    name = "thief"
    events = frozenset({DRY, IDLE})

    def __init__(self, seed: int = 0) -> None:
        self.rng = np.random.default_rng(seed)
        self.heads = 0  # steals that took a queue's head

    def decide(self, view: View, event: Event):
        if event.kind == START:
            return [Dispatch(0, tuple(view.waiting()))]
        victim = max(view.cluster.ids, key=lambda w: len(view.queued(w)))
        movable = view.movable(victim)
        if victim == event.worker or not movable:
            return []
        take = movable if self.rng.random() < 0.5 else movable[-1:]
        self.heads += take[0] == view.queued(victim)[0]
        return [Steal(victim, event.worker, take)]


def _records(loop: SimLoop) -> list[str]:
    return sorted(map(repr, loop.trace.records))


def test_begin_apply_advance_is_run(rt) -> None:
    _, a = _case(rt)
    a.run(Thief())
    _, b = _case(rt)
    pol = Thief()
    event = b.begin(pol.events, pol.name)
    kinds = []
    while event is not None:
        kinds.append(event.kind)
        b.apply(pol.decide(b, event))
        event = b.advance()
    assert _records(a) == _records(b) and kinds[0] == START and b.advance() is None
    assert b.result().end == a.result().end == b.last_end()
    with pytest.raises(PlanError, match="begun"):
        b.begin()
    with pytest.raises(PlanError, match="ended"):
        b.apply([])


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(n=st.integers(2, 14), seed=st.integers(0, 1000), workers=st.integers(2, 3))
def test_stealing_movable_heads_gives_the_records_of_strict_lockstep(rt, n, seed, workers) -> None:
    """A head that waits for its batch to drain moves too (View.movable); run-ahead still gives lockstep's
    records."""
    out = []
    for lookahead in (False, True):
        _, loop = _case(rt, n, seed, workers, lookahead=lookahead)
        loop.run(Thief(seed))
        out.append(_records(loop))
    assert out[0] == out[1]


def test_movable_heads_are_stolen_sometimes(rt) -> None:
    heads = 0
    for seed in range(20):
        _, loop = _case(rt, 14, seed)
        pol = Thief(seed)
        loop.run(pol)
        heads += pol.heads
    assert heads > 0


def test_a_head_under_load_does_not_move(rt) -> None:
    _, loop = _case(rt, 6, workers=2)
    loop.begin()
    loop.apply([Dispatch(0, tuple(range(6)))])  # worker 0 idle: its head's load starts at once
    assert loop.movable(0) == loop.queued(0)[1:]
    with pytest.raises(PlanError, match="cannot move"):
        loop.apply([Steal(0, 1, loop.queued(0)[:1])])


def test_copy_is_complete_and_independent(rt) -> None:
    _, loop = _case(rt, 14, seed=3)
    pol = Thief(3)
    event = loop.begin(pol.events, pol.name)
    for _ in range(3):  # a few events in
        loop.apply(pol.decide(loop, event))
        event = loop.advance()
    assert set(vars(loop)) == set(_LOOP_STATE)
    twin = loop.copy()
    assert twin.trace is not loop.trace and twin.trace.records == loop.trace.records
    assert all(twin.sims[w] is not loop.sims[w] for w in loop.sims)
    runs = []
    for lp in (twin, loop):  # the copy first: the original must still be where the copy started
        p, ev = Thief(3), event
        p.rng = np.random.default_rng(7)
        while ev is not None:
            lp.apply(p.decide(lp, ev))
            ev = lp.advance()
        runs.append((_records(lp), lp.result().end))
    assert runs[0] == runs[1]
    with TraceWriter(None) as trace:
        static = SimLoop(loop._backend, EXPERT_STAGE, loop.workload, loop.costs, loop.cluster, trace)
        static.begin()
        static.apply([Dispatch(0, tuple(range(len(loop.items))))])
        static.advance()  # a static plan runs to the end in one go
        with pytest.raises(PlanError, match="static"):
            static.copy()


def test_a_timing_only_loop_times_alike(rt) -> None:
    _, full = _case(rt, 14, seed=5)
    full.run(Thief(5))
    _, bare = _case(rt, 14, seed=5, keep_records=False)
    bare.run(Thief(5))
    assert bare.trace.records == [] and full.trace.records
    assert bare.result().end == full.result().end and bare.result().busy == full.result().busy
    with pytest.raises(PlanError, match="no records"):
        bare.finished()
    _, other = _case(rt, keep_records=False)
    with pytest.raises(PlanError, match="finish events"):
        other.begin(frozenset({"finish"}))


def test_running_out_ends_as_carrying_on(rt) -> None:
    _, a = _case(rt, 14, seed=2)
    a.run(Thief(2))
    _, b = _case(rt, 14, seed=2)
    pol = Thief(2)
    event = b.begin(pol.events, pol.name)
    while event is not None:
        b.apply(pol.decide(b, event))
        if not any(map(b.queued, b.cluster.ids)) and not b.undispatched():
            b.run_out()  # nothing is queued any more: the thief would do nothing
            break
        event = b.advance()
    assert event is not None and b.advance() is None  # it ran out before the end
    assert _records(a) == _records(b) and a.result().end == b.result().end


def test_views_extras(rt) -> None:
    _, loop = _case(rt, 9, seed=1)
    event = loop.begin(frozenset({DRY, IDLE}))
    before = {w: loop.version(w) for w in loop.cluster.ids}
    loop.apply([Dispatch(1, tuple(range(9)))])
    assert loop.version(1) != before[1] and loop.version(0) == before[0]
    seen = 0
    while event is not None:
        for w in loop.cluster.ids:
            assert loop.batch_size(w) == len(loop.running(w))
            assert loop.busy(w) == loop.sims[w].busy_s
        done = {r.request_id for r in loop.trace.records if isinstance(r, RequestRecord)}
        assert set(loop.finished()) == done
        seen += 1
        event = loop.advance()
    assert seen > 2 and loop.busy(1) > 0 and loop.busy(0) == 0.0
