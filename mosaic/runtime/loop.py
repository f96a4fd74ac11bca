"""The runtime loop on simulated engines: one :class:`~mosaic.runtime.sim_worker.WorkerSim` per GPU, a policy
(:mod:`mosaic.agents.policy`) asked at the events it wants, its actions applied to the engines.

The loop always applies the earliest event next (lockstep on the simulated clock): an engine's, a request's
arrival, or a wake-up a policy asked for. It tells the policy when requests arrive, when a worker's queue runs dry
or it goes idle, and when requests finish. A policy that wants no events (a static plan) is answered once at the
start, after which every engine runs to the end without stopping: exactly the static simulation, at its speed. A
policy that wants neither ``finish`` events nor gated requests lets a worker run ahead of the others up to the first
moment any other source could call for a decision (the others' dry bounds, the next arrival or wake-up): the same
decisions at the same states, in fewer calls.

Gated requests (:class:`Gates`) are held until their prerequisites finish (an aggregator request until its
query's experts have answered), then released as arrivals or cancelled (the query skips the aggregator).

:meth:`SimLoop.decisions` is the loop as a generator (it yields each event, takes the actions as its reply), for
callers that decide one event at a time from outside (the Gymnasium environments); :meth:`SimLoop.run` drives it
with a :class:`~mosaic.agents.policy.Policy`.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Generator, Mapping, Sequence
from dataclasses import replace
from typing import Any, Protocol

from mosaic.agents.policy import (
    ARRIVAL,
    DRY,
    FINISH,
    IDLE,
    START,
    WAKE,
    Action,
    Dispatch,
    Event,
    Policy,
    Steal,
    View,
    WakeAt,
    Withdraw,
)
from mosaic.core.errors import PlanError
from mosaic.core.trace import Record, RequestRecord, TraceWriter
from mosaic.core.types import Cluster, Response, Responses, Workload
from mosaic.predictors.interface import CostModel
from mosaic.runtime.interface import Gates, StageResult
from mosaic.runtime.sim_worker import ARRIVAL_EPS, SimRequest, WorkerSim

INF = float("inf")
_MANY = 1 << 62  # "no limit" on the number of events
Decisions = Generator[Event, Sequence[Action], None]


class Engines(Protocol):
    """What the loop needs of the simulator backend: simulated workers and the stage's requests."""

    def make_worker(self, worker: Any, stage: str, start: float, resident: str | None, emit: Any) -> WorkerSim: ...

    def sim_requests(self, workload: Workload, request_ids: tuple[int, ...], out: Any) -> list[SimRequest]: ...


class SimLoop(View):
    """One stage on simulated engines under a policy; :meth:`run` returns the stage's result."""

    def __init__(
        self,
        backend: Engines,
        stage: str,
        workload: Workload,
        costs: CostModel,
        cluster: Cluster,
        trace: TraceWriter,
        start: float = 0.0,
        resident: Mapping[int, str | None] | None = None,
        gates: Gates | None = None,
        lookahead: bool = True,
    ) -> None:
        """``lookahead``: let a worker run ahead when no decision can come from elsewhere (False: strict lockstep,
        for tests; the same records either way)."""
        self.lookahead = lookahead
        self.workload, self.costs, self.cluster, self.stage = workload, costs, cluster, stage
        self.trace, self.start, self.gates = trace, float(start), gates
        self.seen: dict[tuple[int, str], Response] = {}
        self.items: list[SimRequest] = backend.sim_requests(workload, tuple(range(len(workload.requests))), self.seen)
        self._undispatched: dict[int, None] = dict.fromkeys(range(len(self.items)))  # an ordered set
        self._ready: dict[int, None] = {}  # undispatched and arrived, in arrival order (once arrivals are tracked)
        self._arrivals: list[int] | None = None  # request ids by arrival; built when a policy first needs them
        self._next_arrival = 0  # index into _arrivals of the first request not yet arrived
        self._late: list[tuple[float, int]] = []  # (arrival, id): withdrawn before they arrived
        self._wakes: list[float] = []  # heap of wake-up times
        self._finished: dict[int, float] = {}
        self._just_finished: list[int] = []
        self._held: dict[int, int] = {}  # gated request -> prerequisites not finished yet
        self._dependents: dict[int, list[int]] = {}  # request -> gated requests waiting for it
        self._released: list[int] = []
        self._pre_records: dict[int, RequestRecord] = {}  # prerequisite -> its record, until its gates open
        self._clock = self.start
        self._backend, self._resident = backend, dict(resident or {})
        self.sims: dict[int, WorkerSim] = {}
        if gates is not None:
            self._gate(gates)

    def _gate(self, gates: Gates) -> None:
        n = len(self.items)
        for g, pre in gates.prerequisites.items():
            if not 0 <= g < n or any(not 0 <= p < n or p == g or p in gates.prerequisites for p in pre):
                raise PlanError(f"gates: request {g} with prerequisites {pre} (ids must exist, not be gated)")
            self._held[g] = len(pre)
            for p in pre:
                self._dependents.setdefault(p, []).append(g)
        for g in [g for g, k in self._held.items() if k == 0]:
            self._release(g, self.start)

    # --- View ----------------------------------------------------------------------------------------------------

    @property
    def clock(self) -> float:
        return self._clock

    def waiting(self) -> tuple[int, ...]:
        if self._arrivals is None:
            self._track_arrivals()
        return tuple(self._ready)

    def _track_arrivals(self) -> None:
        """Start tracking arrivals (a static plan never asks: the engines hold requests until they arrive)."""
        arrival, held = [it.arrival for it in self.items], self._held
        order = sorted(range(len(arrival)), key=arrival.__getitem__)  # stable: ties in id order
        self._arrivals = [r for r in order if r not in held] if held else order
        self._arrive(self._clock)

    def queued(self, worker: int) -> tuple[int, ...]:
        return tuple(r.request_id for r in self.sims[worker].pending())

    def running(self, worker: int) -> tuple[int, ...]:
        return tuple(r.request_id for r in self.sims[worker].running())

    def resident(self, worker: int) -> str | None:
        sim = self.sims.get(worker)
        return sim.resident if sim is not None else self._resident.get(worker)

    def loading(self, worker: int) -> tuple[str, float] | None:
        sim = self.sims.get(worker)
        expert = sim.loading if sim is not None else None
        return (expert, sim.next_event_time()) if expert is not None else None

    def finished(self) -> Mapping[int, float]:
        return self._finished

    def held(self) -> int:
        return sum(1 for k in self._held.values() if k > 0)

    # --- the loop ------------------------------------------------------------------------------------------------

    def run(self, policy: Policy) -> StageResult:
        """Ask ``policy`` at the start, then at every event it wants, until every engine is idle."""
        steps = self.decisions(policy.events, policy.name)
        try:
            event = next(steps)
            while True:
                event = steps.send(policy.decide(self, event))
        except StopIteration:
            pass
        return self.result()

    def decisions(self, events: frozenset[str] = frozenset(), name: str = "policy") -> Decisions:
        """The loop as a generator: yields each event of the kinds in ``events`` (and ``start``), takes the actions
        to apply as the reply to each; ends when every engine is idle (then :meth:`result`)."""
        tracked = bool(events) or self.gates is not None
        emit = self._emit if tracked else self.trace.write  # a static plan needs no completion tracking
        self.sims = {w.id: self._backend.make_worker(w, self.stage, self.start, self._resident.get(w.id), emit)
                     for w in self.cluster.workers}  # fmt: skip
        self._apply((yield Event(START, self._clock)), first=True)
        self._released = []  # released before the start: waiting already
        if not tracked:
            for sim in self.sims.values():
                sim.run_until_idle()
        else:
            yield from self._lockstep(events)
        if self._undispatched:
            left, n = list(self._undispatched)[:5], len(self._undispatched)
            held = f" ({self.held()} still held by their gates)" if self.held() else ""
            raise PlanError(f"policy {name!r} left {n} request(s) undispatched{held}, e.g. {left}")

    def _lockstep(self, events: frozenset[str]) -> Decisions:
        """Apply the earliest event, one at a time (an arrival goes first on a tie, then engines, then wake-ups),
        and yield the events the policy wants."""
        wants_arrival = ARRIVAL in events
        fast = self.lookahead and FINISH not in events and self.gates is None
        if self._arrivals is None:
            self._track_arrivals()
        notices = self._start_notices(events)
        while True:
            for ev in notices:
                self._apply((yield ev))
            w, t = min(((w, s.next_event_time()) for w, s in self.sims.items()), key=lambda p: p[1])
            ta = self._arrival_time() if wants_arrival else INF
            tw = self._wakes[0] if self._wakes else INF
            if ta <= t and ta <= tw and ta < INF:
                notices = self._arrival_notice(ta)
            elif tw < t:
                self._clock = max(self._clock, heapq.heappop(self._wakes))
                self._arrive(self._clock)
                notices = [Event(WAKE, self._clock)] if WAKE in events else []
            elif t == INF:
                return
            else:
                limit = min(math.nextafter(ta, -INF), tw, self._calm(w)) if fast else -INF
                notices = self._advance(w, limit, events)

    def _start_notices(self, events: frozenset[str]) -> list[Event]:
        out = [Event(DRY, self._clock, w) for w, s in self.sims.items() if not s.queued] if DRY in events else []
        out += [Event(IDLE, self._clock, w) for w, s in self.sims.items() if s.is_idle] if IDLE in events else []
        return out

    def _arrival_notice(self, ta: float) -> list[Event]:
        self._clock = max(self._clock, ta)
        before = len(self._ready)
        self._arrive(self._clock)
        arrived = tuple(list(self._ready)[before:])
        return [Event(ARRIVAL, self._clock, None, arrived)] if arrived else []

    def _calm(self, w: int) -> float:
        """No other worker can call for a decision before this (its dry bound with 2+ queued, else its next event)."""
        return min((s.dry_bound() if s.queued >= 2 else s.next_event_time() for u, s in self.sims.items() if u != w),
                   default=INF)  # fmt: skip

    def _advance(self, w: int, limit: float, events: frozenset[str]) -> list[Event]:
        """Worker ``w``'s next event (and, up to ``limit``, the ones after it that call for no decision); the
        events that follow from them, with the other workers caught up to the same moment."""
        sim = self.sims[w]
        had, was_idle, ahead = sim.queued, sim.is_idle, limit > sim.next_event_time()
        if not ahead:
            sim.step()
        elif had:
            sim.advance_until_dry(limit)
        else:
            sim.advance(limit, _MANY)
        self._clock = max(self._clock, sim.clock)
        self._arrive(self._clock)
        notices = self._notices(w, bool(had), was_idle, events)
        if notices and ahead:  # the others catch up (their events before now call for no decision)
            notices = self._catch_up(w, events) + notices
        return notices

    def _catch_up(self, w: int, events: frozenset[str]) -> list[Event]:
        now, out = self._clock, []
        for u, s in self.sims.items():
            if u != w and (s.next_event_time() < now or (u < w and s.next_event_time() == now)):
                had, was_idle = s.queued, s.is_idle
                s.advance_until_dry(now) if had else s.advance(now, _MANY)
                out += self._notices(u, bool(had), was_idle, events)
        return out

    def _notices(self, w: int, had: bool, was_idle: bool, events: frozenset[str]) -> list[Event]:
        """The events worker ``w``'s last advance caused (``had``: it had requests queued; ``was_idle``)."""
        sim, out, now = self.sims[w], [], self._clock
        if self._released:
            if ARRIVAL in events:
                out.append(Event(ARRIVAL, now, None, tuple(self._released)))
            self._released = []
        if self._just_finished:
            if FINISH in events:
                out.append(Event(FINISH, now, w, tuple(self._just_finished)))
            self._just_finished = []
        if had and not sim.queued and DRY in events:
            out.append(Event(DRY, now, w))
        if not was_idle and sim.is_idle and IDLE in events:
            out.append(Event(IDLE, now, w))
        return out

    def _arrival_time(self) -> float:
        """When the next undispatched request arrives (inf: none left to arrive)."""
        order, items, undispatched = self._arrivals or [], self.items, self._undispatched
        while self._next_arrival < len(order) and order[self._next_arrival] not in undispatched:
            self._next_arrival += 1
        late = self._late[0][0] if self._late else INF
        return min(items[order[self._next_arrival]].arrival if self._next_arrival < len(order) else INF, late)

    def _arrive(self, t: float) -> None:
        """Every undispatched request that has arrived by ``t`` becomes waiting (when arrivals are tracked)."""
        order, items, undispatched = self._arrivals or [], self.items, self._undispatched
        i = self._next_arrival
        while i < len(order) and items[order[i]].arrival <= t + ARRIVAL_EPS:
            if order[i] in undispatched:
                self._ready[order[i]] = None
            i += 1
        self._next_arrival = i
        while self._late and self._late[0][0] <= t + ARRIVAL_EPS:
            r = heapq.heappop(self._late)[1]
            if r in undispatched:
                self._ready[r] = None

    def _emit(self, rec: Record) -> None:
        if isinstance(rec, RequestRecord):
            rid = rec.request_id
            self._finished[rid] = rec.end
            self._just_finished.append(rid)
            if self.gates is not None:
                if rid in self._held:
                    rec = replace(rec, stage=self.gates.stage)
                deps = self._dependents.get(rid, ())
                if deps:
                    self._pre_records[rid] = rec
                for g in deps:
                    self._held[g] -= 1
                    if not self._held[g]:
                        self._release(g, rec.end)
        self.trace.write(rec)

    def _release(self, g: int, now: float) -> None:
        """Gated request ``g``'s prerequisites have finished: it arrives now, or is cancelled."""
        assert self.gates is not None
        pre = self.gates.prerequisites[g]
        prompt = self.gates.release(g, now, tuple(self._pre_records[p] for p in pre))
        item = self.items[g]
        if prompt is None:
            del self._undispatched[g]
            self.seen.pop((item.query_id, item.expert), None)
            return
        self.items[g] = item._replace(prompt_tokens=int(prompt), arrival=now)
        self._ready[g] = None
        self._released.append(g)

    # --- actions -------------------------------------------------------------------------------------------------

    def _apply(self, actions: Sequence[Action], first: bool = False) -> None:
        for a in actions:
            if isinstance(a, Dispatch):
                self._dispatch(a, first)
            elif isinstance(a, Steal):
                self._steal(a)
            elif isinstance(a, Withdraw):
                self._withdraw(a)
            elif isinstance(a, WakeAt):
                if not a.time >= self._clock - ARRIVAL_EPS:
                    raise PlanError(f"{a!r}: the clock is at {self._clock:.6g} s already")
                heapq.heappush(self._wakes, max(float(a.time), self._clock))
            else:
                raise PlanError(f"a policy returned {a!r}, which is not an action (Dispatch, Steal, Withdraw, WakeAt)")

    def _sim(self, worker: int, action: Action) -> WorkerSim:
        sim = self.sims.get(worker)
        if sim is None:
            raise PlanError(f"{action!r} names worker {worker}, which is not in the cluster {sorted(self.sims)}")
        return sim

    def _dispatch(self, a: Dispatch, first: bool) -> None:
        sim = self._sim(a.worker, a)
        ids, undispatched, ready, held = a.request_ids, self._undispatched, self._ready, self._held
        if not undispatched.keys() >= set(ids) or len(set(ids)) != len(ids):
            what = [r for r in ids if r not in undispatched] or "listed twice"
            raise PlanError(f"{a!r}: request(s) {what} cannot be dispatched (dispatched before, or no such request)")
        if held and any(held.get(r, 0) for r in ids):
            raise PlanError(f"{a!r}: request(s) {[r for r in ids if held.get(r, 0)]} are held by their gates")
        for r in ids:
            del undispatched[r]
        if ready:
            for r in ids:
                ready.pop(r, None)
        items = [self.items[r] for r in a.request_ids]
        sim.enqueue(items) if first else sim.enqueue(items, now=self._clock)

    def _behind_head(self, worker: int, ids: tuple[int, ...], a: Action) -> WorkerSim:
        source = self._sim(worker, a)
        movable = {r.request_id for r in source.pending()[1:]}
        bad = [r for r in ids if r not in movable]
        if bad or len(set(ids)) != len(ids):
            raise PlanError(f"{a!r}: request(s) {bad or 'listed twice'} cannot move (not queued behind the head)")
        return source

    def _steal(self, a: Steal) -> None:
        if a.source == a.target:
            raise PlanError(f"{a!r}: request(s) cannot move to itself")
        source, target = self._behind_head(a.source, a.request_ids, a), self._sim(a.target, a)
        taken = {r.request_id: r for r in source.remove_pending(a.request_ids)}
        target.enqueue([taken[r] for r in a.request_ids], now=self._clock)

    def _withdraw(self, a: Withdraw) -> None:
        self._behind_head(a.worker, a.request_ids, a).remove_pending(a.request_ids)
        for r in a.request_ids:
            self._undispatched[r] = None
            arrival = self.items[r].arrival
            if arrival <= self._clock + ARRIVAL_EPS:
                self._ready[r] = None
            else:
                heapq.heappush(self._late, (arrival, r))

    def result(self) -> StageResult:
        """The stage as run (after :meth:`decisions` ended)."""
        sims = self.sims
        ends = {w: s.last_end for w, s in sims.items()}
        end = max(ends.values(), default=self.start)
        return StageResult(self.stage, self.start, end, ends, {w: s.resident for w, s in sims.items()},
                           Responses(self.seen), {w: s.busy_s for w, s in sims.items()},
                           {w: s.loading_s for w, s in sims.items()})  # fmt: skip


__all__ = ["Gates", "SimLoop"]
