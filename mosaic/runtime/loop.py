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

The loop is a resumable state machine: :meth:`SimLoop.begin` returns the ``start`` event, :meth:`SimLoop.apply`
applies actions, :meth:`SimLoop.advance` runs to the next event (None at the end), and :meth:`SimLoop.copy` branches
the run between events (the Gymnasium environments reset from a copy of their first decision point).
:meth:`SimLoop.run` drives it with a :class:`~mosaic.agents.policy.Policy`; :meth:`SimLoop.decisions` is the same
as a generator (it yields each event, takes the actions as its reply).
"""

from __future__ import annotations

import heapq
import itertools
import math
import operator
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
    Event,
    Policy,
    View,
)
from mosaic.core.errors import PlanError
from mosaic.core.trace import Record, RequestRecord, TraceWriter
from mosaic.core.types import Cluster, Response, Responses, Workload
from mosaic.predictors.interface import CostModel
from mosaic.runtime.interface import Gates, StageResult
from mosaic.runtime.loop_actions import LoopActions
from mosaic.runtime.sim_worker import ARRIVAL_EPS, SimRequest, WorkerSim, discard

INF = float("inf")
_MANY = 1 << 62  # "no limit" on the number of events
_NEW, _AT_START, _RUNNING, _DONE = range(4)  # phases: before begin(), at the start event, running, ended
_ID = operator.itemgetter(0)  # a SimRequest's request_id
_LAST_END = operator.attrgetter("last_end")
_TICKETS = itertools.count(1)  # worker versions: never the same twice in a process (a copy keeps its original's)
Decisions = Generator[Event, Sequence[Action], None]


class Engines(Protocol):
    """What the loop needs of the simulator backend: simulated workers and the stage's requests."""

    def make_worker(self, worker: Any, stage: str, start: float, resident: str | None, emit: Any) -> WorkerSim: ...

    def sim_requests(self, workload: Workload, request_ids: tuple[int, ...], out: Any) -> list[SimRequest]: ...


# every attribute of a SimLoop (``SimLoop.copy``; a test checks that the list is complete), and those copied (the
# others never change once built, or are replaced: sims, trace)
_LOOP_STATE = ("lookahead", "keep_records", "workload", "costs", "cluster", "stage", "trace", "start", "gates",
               "seen", "items", "_undispatched", "_ready", "_arrivals", "_next_arrival", "_late", "_wakes",
               "_finished", "_just_finished", "_held", "_dependents", "_released", "_pre_records", "_clock",
               "_backend", "_resident", "sims", "_phase", "_name", "_events", "_tracked", "_wants_arrival", "_fast",
               "_pending", "_times", "_versions")  # fmt: skip
_COPIED = frozenset({"seen", "items", "_undispatched", "_ready", "_late", "_wakes", "_finished", "_just_finished",
                     "_held", "_released", "_pre_records", "_pending", "_times",
                     "_versions"})  # fmt: skip
_GATED = frozenset({"seen", "items", "_held", "_released", "_pre_records"})  # changed by gates only


class SimLoop(LoopActions, View):
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
        keep_records: bool = True,
    ) -> None:
        """``lookahead``: let a worker run ahead when no decision can come from elsewhere (False: strict lockstep,
        for tests; the same records either way). ``keep_records`` False: the engines make no records (faster, for
        callers that need only the timing: the Gymnasium envs); the trace stays empty, :meth:`finished` is not
        available, and neither are ``finish`` events or gates."""
        self.lookahead, self.keep_records = lookahead, keep_records
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
        self._phase, self._name, self._events = _NEW, "policy", frozenset()
        self._tracked = self._wants_arrival = self._fast = False
        self._pending: list[Event] = []  # events to hand out before the loop advances again
        self._times: dict[int, tuple[float, float]] = {}  # worker -> (its next event's end, no decision can come
        # from it before): _tick's cache, dropped when the loop touches the worker
        self._versions: dict[int, int] = {}  # worker -> its version (View.version; unique in the process)
        if gates is not None:
            self._gate(gates)

    def _gate(self, gates: Gates) -> None:
        self._held, self._dependents = gates.index(len(self.items))
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
        return tuple(map(_ID, self.sims[worker].pending()))

    def running(self, worker: int) -> tuple[int, ...]:
        return tuple(map(_ID, self.sims[worker].running()))

    def version(self, worker: int) -> object | None:
        return self._versions.get(worker)

    def batch_size(self, worker: int) -> int:
        sim = self.sims.get(worker)
        return sim.batch_size if sim is not None else 0

    def resident(self, worker: int) -> str | None:
        sim = self.sims.get(worker)
        return sim.resident if sim is not None else self._resident.get(worker)

    def loading(self, worker: int) -> tuple[str, float] | None:
        sim = self.sims.get(worker)
        expert = sim.loading if sim is not None else None
        return (expert, sim.next_event_time()) if expert is not None else None

    def finished(self) -> Mapping[int, float]:
        if not self.keep_records:
            raise PlanError("finished(): this loop keeps no records (keep_records=False)")
        return self._finished

    def held(self) -> int:
        return sum(1 for k in self._held.values() if k > 0)

    def busy(self, worker: int) -> float:
        sim = self.sims.get(worker)
        return sim.busy_s if sim is not None else 0.0

    def last_end(self) -> float:
        """When the last request finished so far (the start before any)."""
        return max(map(_LAST_END, self.sims.values()), default=self.start)

    # --- the loop ------------------------------------------------------------------------------------------------

    def run(self, policy: Policy) -> StageResult:
        """Ask ``policy`` at the start, then at every event it wants, until every engine is idle."""
        event: Event | None = self.begin(policy.events, policy.name)
        while event is not None:
            self.apply(policy.decide(self, event))
            event = self.advance()
        return self.result()

    def decisions(self, events: frozenset[str] = frozenset(), name: str = "policy") -> Decisions:
        """The loop as a generator: yields each event of the kinds in ``events`` (and ``start``), takes the actions
        to apply as the reply to each; ends when every engine is idle (then :meth:`result`)."""
        event: Event | None = self.begin(events, name)
        while event is not None:
            self.apply((yield event))
            event = self.advance()

    def begin(self, events: frozenset[str] = frozenset(), name: str = "policy") -> Event:
        """Start the stage for a policy that wants ``events`` (besides ``start``): builds the engines and returns
        the ``start`` event; then :meth:`apply` the policy's actions and :meth:`advance`, until it returns None."""
        if self._phase != _NEW:
            raise PlanError("the loop has begun already (one run per SimLoop; copy() to branch)")
        self._events, self._name = frozenset(events), name
        self._tracked = bool(events) or self.gates is not None
        if not self.keep_records and (FINISH in self._events or self.gates is not None):
            raise PlanError("a loop that keeps no records has no finish events and no gates")
        emit = None if self._tracked else self.trace.write  # a static plan needs no completion tracking; tracked:
        # each engine keeps its records until _collect (so that copy() copies them with the engine)
        emit = emit if self.keep_records else discard
        self.sims = {w.id: self._backend.make_worker(w, self.stage, self.start, self._resident.get(w.id), emit)
                     for w in self.cluster.workers}  # fmt: skip
        for w in self.sims:
            self._touched(w)
        self._phase = _AT_START
        return Event(START, self._clock)

    def apply(self, actions: Sequence[Action]) -> None:
        """Apply a policy's actions now, in order (the view shows them at once; call it between events)."""
        if self._phase not in (_AT_START, _RUNNING):
            raise PlanError("apply: the loop has not begun, or it has ended")
        self._apply(actions, self._phase == _AT_START)

    def advance(self) -> Event | None:
        """Run to the next event the policy wants and return it; None once every engine is idle (then
        :meth:`result`). Raises :class:`PlanError` when requests are left that no worker holds."""
        if self._phase == _AT_START:
            self._start_running()
        notices = self._pending
        while not notices:
            if self._phase != _RUNNING:
                return None
            notices = self._pending = self._tick()
        return notices.pop(0)

    def run_out(self) -> None:
        """Run every engine to the end without handing out any more events, for a policy that knows it will
        decide nothing more (nothing is left to dispatch, steal or wait for); then :meth:`result`. Raises
        :class:`PlanError` when requests are left that no worker holds."""
        if self._phase == _AT_START:
            self._start_running()
        if self._phase != _RUNNING:
            return
        for sim in self.sims.values():
            sim.run_until_idle()
            self._collect(sim)
        self._pending = []
        for w in self.sims:
            self._touched(w)
        self._clock = max(self._clock, self.last_end())
        self._finish()

    def undispatched(self) -> int:
        """How many requests no worker holds (waiting, not arrived yet, or held by their gates)."""
        return len(self._undispatched)

    def _start_running(self) -> None:
        self._released = []  # released before the start: waiting already
        if not self._tracked:
            for sim in self.sims.values():
                sim.run_until_idle()
            self._finish()
            return
        events = self._events
        self._wants_arrival = ARRIVAL in events
        self._fast = self.lookahead and FINISH not in events and self.gates is None
        if self._arrivals is None:
            self._track_arrivals()
        self._phase = _RUNNING
        self._pending = self._start_notices(events)

    def _finish(self) -> None:
        self._phase = _DONE
        if self._undispatched:
            left, n = list(self._undispatched)[:5], len(self._undispatched)
            held = f" ({self.held()} still held by their gates)" if self.held() else ""
            raise PlanError(f"policy {self._name!r} left {n} request(s) undispatched{held}, e.g. {left}")

    def _tick(self) -> list[Event]:
        """Apply the earliest event (an arrival goes first on a tie, then engines, then wake-ups); the events it
        gives the policy."""
        events, fast, times = self._events, self._fast, self._times
        w, t, w1, b1, b2 = -1, INF, -1, INF, INF  # the earliest worker; the two lowest bounds
        for u, s in self.sims.items():  # one plain pass: the hot path
            c = times.get(u)
            if c is None:
                x = s.next_event_time()
                c = times[u] = (x, s.dry_bound() if fast and s.queued >= 2 else x)
            if c[0] < t:
                w, t = u, c[0]
            if c[1] < b1:
                w1, b1, b2 = u, c[1], b1
            elif c[1] < b2:
                b2 = c[1]
        ta = self._arrival_time() if self._wants_arrival else INF
        tw = self._wakes[0] if self._wakes else INF
        if ta <= t and ta <= tw and ta < INF:
            return self._arrival_notice(ta)
        if tw < t:
            self._clock = max(self._clock, heapq.heappop(self._wakes))
            self._arrive(self._clock)
            return [Event(WAKE, self._clock)] if WAKE in events else []
        if t == INF:
            self._finish()
            return []
        # calm: no other worker can call for a decision before its bound (its dry bound with 2+ queued, else its
        # next event)
        limit = min(math.nextafter(ta, -INF), tw, b2 if w1 == w else b1) if fast else -INF
        return self._advance(w, t, limit, events)

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

    def _touched(self, w: int) -> None:
        """Worker ``w`` changed (or is about to): its cached times go (:meth:`_tick`), it gets a new version."""
        self._times.pop(w, None)
        self._versions[w] = next(_TICKETS)

    def _advance(self, w: int, t: float, limit: float, events: frozenset[str]) -> list[Event]:
        """Worker ``w``'s next event (ending at ``t``; and, up to ``limit``, the ones after it that call for no
        decision); the events that follow from them, with the other workers caught up to the same moment."""
        sim = self.sims[w]
        had, was_idle, ahead = sim.queued, sim.is_idle, limit > t
        if not ahead:
            sim.step()
        elif had:
            sim.advance_until_dry(limit)
        else:
            sim.advance(limit, _MANY)
        self._collect(sim)
        self._touched(w)
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
                self._collect(s)
                self._touched(u)
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
        if self._next_arrival >= len(order) and not self._late:
            return INF  # everything has arrived (the common case once a batch is in)
        while self._next_arrival < len(order) and order[self._next_arrival] not in undispatched:
            self._next_arrival += 1
        late = self._late[0][0] if self._late else INF
        return min(items[order[self._next_arrival]].arrival if self._next_arrival < len(order) else INF, late)

    def _arrive(self, t: float) -> None:
        """Every undispatched request that has arrived by ``t`` becomes waiting (when arrivals are tracked)."""
        order, items, undispatched = self._arrivals or [], self.items, self._undispatched
        i = self._next_arrival
        if i >= len(order) and not self._late:
            return
        while i < len(order) and items[order[i]].arrival <= t + ARRIVAL_EPS:
            if order[i] in undispatched:
                self._ready[order[i]] = None
            i += 1
        self._next_arrival = i
        while self._late and self._late[0][0] <= t + ARRIVAL_EPS:
            r = heapq.heappop(self._late)[1]
            if r in undispatched:
                self._ready[r] = None

    def _collect(self, sim: WorkerSim) -> None:
        """Hand the records ``sim`` made in its last call on (a tracked run's engines keep them until then)."""
        recs = sim.records if self.keep_records else None
        if not recs:
            return
        if self.gates is None:  # the common case, inlined (env steps make a few records each)
            finished, just, write = self._finished, self._just_finished, self.trace.write
            for rec in recs:
                if type(rec) is RequestRecord:
                    finished[rec.request_id] = rec.end
                    just.append(rec.request_id)
                write(rec)
        else:
            for rec in recs:
                self._emit(rec)
        recs.clear()

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

    def copy(self, trace: TraceWriter | None = None) -> SimLoop:
        """An independent copy of the loop at this moment (between events), which writes its records to ``trace``
        (default: an in-memory trace holding a copy of the records so far; a trace to a file must be given). It
        shares what never changes (workload, costs, backend, gates: a gate's ``release`` must then be
        stateless). Only a loop that tracks events (or has not begun) can be copied: a static run ends in one go."""
        if self._phase != _NEW and not self._tracked:
            raise PlanError("copy: a loop running a static plan (no events) cannot be copied")
        if trace is None:
            if self.trace.path is not None:
                raise PlanError(f"copy: this loop writes to {self.trace.path}; give the copy a trace of its own")
            trace = TraceWriter(None)
            trace.records = self.trace.records[:]
        new = object.__new__(SimLoop)
        copied = _COPIED if self.gates is not None else _COPIED - _GATED  # without gates these never change
        for name in _LOOP_STATE:
            value = getattr(self, name)
            setattr(new, name, type(value)(value) if name in copied else value)
        new.sims = {w: s.copy() for w, s in self.sims.items()}
        new.trace = trace
        return new

    def result(self) -> StageResult:
        """The stage as run (after :meth:`decisions` ended)."""
        sims = self.sims
        ends = {w: s.last_end for w, s in sims.items()}
        end = max(ends.values(), default=self.start)
        return StageResult(self.stage, self.start, end, ends, {w: s.resident for w, s in sims.items()},
                           Responses(self.seen), {w: s.busy_s for w, s in sims.items()},
                           {w: s.loading_s for w, s in sims.items()})  # fmt: skip


__all__ = ["Gates", "SimLoop"]
