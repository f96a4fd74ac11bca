"""The runtime loop on real engines, on the wall clock: the :class:`~mosaic.agents.policy.View` and the event and
action semantics of :class:`~mosaic.runtime.loop.SimLoop`, with worker sessions (:mod:`mosaic.runtime.worker_session`)
in place of simulated workers.

The loop keeps a mirror of every worker: its queue (dispatched, not yet in the engine), its batch, the expert it
holds and a load under way, which the workers' reports keep up to date (``admit``: jobs entering the engine,
``loading`` / ``load``, ``request``: a completion with its real output tokens, written to the trace at once).
Events for the policy follow from them as on the simulator: ``dry`` when an admission empties a queue, ``finish``
with the requests a worker reported since the last round, ``idle`` when a worker's last request finished; arrivals
(``Query.arrival`` seconds on the run clock) and ``wake`` timers come from the clock. While a policy decides, the
view's clock stands still at the event's time.

A ``Dispatch`` sends the jobs at once. ``Steal`` and ``Withdraw`` ask the worker, which answers which of the jobs
it actually took back: one that entered the engine meanwhile (or whose model load began) stays where it is, the
mirror records it so, and later actions of the same decision leave it out. Invalid actions raise the simulator's
:class:`~mosaic.core.errors.PlanError` s. Gated requests are held as on the simulator; a released one's job is
built from its prerequisites' records (the aggregator's prompt from the experts' texts).
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
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
from mosaic.core.trace import LoadRecord, RequestRecord, TraceWriter
from mosaic.core.types import Cluster, Response, Responses, Workload
from mosaic.predictors.interface import CostModel
from mosaic.runtime.interface import Gates, StageResult

INF = float("inf")
EPS = 1e-9  # as the simulator's ARRIVAL_EPS
MAX_DRAIN = 512  # worker reports applied in one round at most
Job = dict[str, Any]
_VERSIONS = itertools.count(1)


class EngineLink(Protocol):
    """What the loop needs of a real backend (:class:`~mosaic.runtime.engine_link.SessionLink`)."""

    def open(self, workers: Sequence[int], clock: Callable[[], float]) -> None:
        """Open a session on every worker; each one's clock starts at ``clock()`` when it gets the command."""

    def job(self, stage: str, request_id: int, prerequisites: Sequence[RequestRecord] = (),
            arrival: float | None = None, prompt_tokens: int | None = None) -> Job:  # fmt: skip
        """The job of a request; a released gated one's is built from its prerequisites' records (``arrival``: its
        release; ``prompt_tokens``: what its gate counted, for engines that take a token count)."""

    def restored(self, stage: str, request_id: int) -> RequestRecord | None:
        """The record of an earlier run when the request finished there (not run again), else None."""

    def enqueue(self, worker: int, jobs: list[Job]) -> None:
        """Append ``jobs`` to ``worker``'s queue."""

    def withdraw(self, worker: int, request_ids: tuple[int, ...]) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """Take queued jobs back: (those taken, those that had entered the engine)."""

    def next_event(self, until: float | None) -> tuple[int, Mapping[str, Any]] | None:
        """The next worker report, waiting for it until ``until`` on the run clock at most (None: as long as it
        takes; ``-inf``: not at all); None when none came. A worker's failure raises."""

    def record(self, worker: int, event: Mapping[str, Any]) -> RequestRecord:
        """The record of a ``request`` report."""

    def close(self, abort: bool = False) -> dict[int, Mapping[str, Any]]:
        """End the sessions (``abort``: at once) and return each worker's ``done`` report."""


@dataclass(eq=False)
class _Mirror:
    """The loop's picture of one worker session."""

    resident: str | None
    queued: dict[int, None] = field(default_factory=dict)  # dispatched, not in the engine yet, in order
    running: dict[int, None] = field(default_factory=dict)  # in the engine, not finished
    loading: tuple[str, float] | None = None  # (expert, predicted end) while a swap is under way
    busy: float = 0.0
    version: int = 0
    just: list[int] = field(default_factory=list)  # finished since the last round's notices
    dry: bool = False  # an admission emptied the queue since then

    @property
    def idle(self) -> bool:
        return not self.queued and not self.running and self.loading is None


class WallLoop(View):
    """One stage on real engines under a policy; :meth:`run` returns the stage's result."""

    def __init__(self, link: EngineLink, stage: str, workload: Workload, costs: CostModel, cluster: Cluster,
                 trace: TraceWriter, start: float = 0.0, resident: Mapping[int, str | None] | None = None,
                 gates: Gates | None = None, timer: Callable[[], float] = time.perf_counter) -> None:  # fmt: skip
        self.workload, self.costs, self.cluster, self.stage = workload, costs, cluster, stage
        self.trace, self.start, self.gates = trace, float(start), gates
        self._link, self._timer, self._t0, self._clock = link, timer, 0.0, self.start
        self._gpu = {w.id: w.gpu_type for w in cluster.workers}
        self.w = {w: _Mirror((resident or {}).get(w)) for w in cluster.ids}
        n = len(workload.requests)
        self._arrival = [float(workload.queries[r.query_id].arrival) for r in workload.requests]
        self._undispatched: dict[int, None] = dict.fromkeys(range(n))
        self._ready: dict[int, None] = {}
        self._new: list[int] = []  # became ready since the last arrival notice
        held = gates.prerequisites if gates is not None else {}
        self._order = sorted((r for r in range(n) if r not in held), key=self._arrival.__getitem__)
        self._next_arrival = 0
        self._late: list[tuple[float, int]] = []  # (arrival, id): withdrawn before they arrived
        self._wakes: list[float] = []
        self._finished: dict[int, float] = {}
        self._held: dict[int, int] = {}
        self._dependents: dict[int, list[int]] = {}
        self._pre_records: dict[int, RequestRecord] = {}
        self._released: list[int] = []
        self._jobs: dict[int, Job] = {}
        self._lost: set[int] = set()  # asked back in this decision, kept by their worker
        self._touched: dict[int, bool] = {}  # worker -> idle before this round's reports
        self.seen: dict[tuple[int, str], Response] = {}
        self._events: frozenset[str] = frozenset()
        self._name = "policy"
        if gates is not None:
            self._gate(gates)

    def _gate(self, gates: Gates) -> None:
        self._held, self._dependents = gates.index(len(self.workload.requests))
        for g in [g for g, k in self._held.items() if k == 0]:
            self._release(g, self.start)

    # --- View ----------------------------------------------------------------------------------------------------

    @property
    def clock(self) -> float:
        return self._clock

    def waiting(self) -> tuple[int, ...]:
        return tuple(self._ready)

    def queued(self, worker: int) -> tuple[int, ...]:
        return tuple(self.w[worker].queued)

    def running(self, worker: int) -> tuple[int, ...]:
        return tuple(self.w[worker].running)

    def resident(self, worker: int) -> str | None:
        return self.w[worker].resident

    def loading(self, worker: int) -> tuple[str, float] | None:
        return self.w[worker].loading

    def finished(self) -> Mapping[int, float]:
        return self._finished

    def held(self) -> int:
        return sum(1 for k in self._held.values() if k > 0)

    def version(self, worker: int) -> object | None:
        return self.w[worker].version

    def batch_size(self, worker: int) -> int:
        return len(self.w[worker].running)

    def busy(self, worker: int) -> float:
        return self.w[worker].busy

    # --- the loop ------------------------------------------------------------------------------------------------

    def now(self) -> float:
        """Seconds on the run clock now (the view's :attr:`clock` stands still while a policy decides)."""
        return self.start + self._timer() - self._t0

    def run(self, policy: Policy) -> StageResult:
        """Open the sessions, ask ``policy`` at the start and at every event it wants until every worker is idle
        and nothing is left to come; then end the sessions."""
        self._events, self._name = policy.events, policy.name
        self._t0 = self._timer()
        self._link.open(self.cluster.ids, self.now)
        try:
            self._clock = self.now()
            self._arrive()
            self._released, self._new = [], []
            self._decide(policy, Event(START, self._clock))
            for ev in self._start_notices():
                self._decide(policy, ev)
            while not self._over():
                for ev in self._round():
                    self._decide(policy, ev)
        except BaseException:
            with contextlib.suppress(Exception):  # the first error is the one to report
                self._link.close(abort=True)
            raise
        done = self._link.close()
        self._check_dispatched()
        return self._result(done)

    def _decide(self, policy: Policy, event: Event) -> None:
        self._lost = set()
        self._apply(policy.decide(self, event))

    def _start_notices(self) -> list[Event]:
        out = [Event(DRY, self._clock, w) for w, m in self.w.items() if not m.queued] if DRY in self._events else []
        out += [Event(IDLE, self._clock, w) for w, m in self.w.items() if m.idle] if IDLE in self._events else []
        return out

    def _over(self) -> bool:
        """Every worker idle, and nothing left that could come: with every request dispatched, a wake-up the
        policy asked for can change nothing (no wall-clock wait for it, the simulator's records all the same)."""
        if not all(m.idle for m in self.w.values()):
            return False
        if not self._undispatched:
            return True
        return not self._wakes and (ARRIVAL not in self._events or self._arrival_time() == INF)

    def _round(self) -> list[Event]:
        """Wait for the next report or timer; apply every report that came; the events they and the clock give."""
        due = min(self._arrival_time() if ARRIVAL in self._events else INF, self._wakes[0] if self._wakes else INF)
        got = self._link.next_event(None if due == INF else due)
        for _ in range(MAX_DRAIN):
            if got is None:
                break
            self._on_report(*got)
            got = self._link.next_event(-INF)
        self._clock = self.now()
        self._arrive()
        return self._notices()

    def _notices(self) -> list[Event]:
        events, now, out = self._events, self._clock, []
        if self._released:
            if ARRIVAL in events:
                out.append(Event(ARRIVAL, now, None, tuple(self._released)))
            self._released = []
        for w, was_idle in self._touched.items():
            m = self.w[w]
            if m.just and FINISH in events:
                out.append(Event(FINISH, now, w, tuple(m.just)))
            if m.dry and DRY in events:
                out.append(Event(DRY, now, w))
            if not was_idle and m.idle and IDLE in events:
                out.append(Event(IDLE, now, w))
            m.just, m.dry = [], False
        self._touched = {}
        arrived = [r for r in self._new if r in self._ready]
        self._new = []
        if arrived and ARRIVAL in events:
            out.append(Event(ARRIVAL, now, None, tuple(arrived)))
        while self._wakes and self._wakes[0] <= now + EPS:
            heapq.heappop(self._wakes)
            if WAKE in events:
                out.append(Event(WAKE, now))
        return out

    def _touch(self, w: int) -> _Mirror:
        """Worker ``w``'s mirror, about to change: it gets a new version."""
        m = self.w[w]
        m.version = next(_VERSIONS)
        return m

    def _on_report(self, w: int, ev: Mapping[str, Any]) -> None:
        kind = ev.get("event")
        if w not in self.w or kind not in ("admit", "loading", "load", "switch", "request"):
            return  # not a session report (e.g. a late answer of another command)
        self._touched.setdefault(w, self.w[w].idle)
        m, t = self._touch(w), self._clock
        if kind == "admit":
            had, t = bool(m.queued), float(ev.get("time", t))
            for r in ev["request_ids"]:
                m.queued.pop(r, None)
                if r not in self._finished:
                    m.running[r] = None
            m.dry = m.dry or (had and not m.queued)
        elif kind == "loading":
            m.loading = (ev["expert"], self._swap_end(w, ev["expert"], float(ev["start"])))
        elif kind in ("load", "switch"):  # a switch: to a co-resident engine, no load
            m.resident, m.loading = ev["expert"], None
            if kind == "load":
                self.trace.write(LoadRecord(ev["stage"], w, ev["expert"], ev["start"], ev["end"]))
        else:
            rec = self._link.record(w, ev)
            m.queued.pop(rec.request_id, None)
            m.running.pop(rec.request_id, None)
            m.busy, t = float(ev.get("busy", m.busy)), rec.end
            self.trace.write(rec)
            self._finish(m, rec)
        self._refresh(w, t)

    def _refresh(self, w: int, t: float) -> None:
        """A worker whose batch is empty and whose queue's head needs another expert swaps now (as the simulator
        says: from the moment its batch drained), until its ``load`` report says otherwise."""
        m = self.w[w]
        if m.queued and not m.running and m.loading is None:
            expert = self.workload.requests[next(iter(m.queued))].expert
            if expert != m.resident:
                m.loading = (expert, self._swap_end(w, expert, t))

    def _swap_end(self, w: int, expert: str, t: float) -> float:
        """When a swap of worker ``w`` to ``expert`` begun at ``t`` is predicted to end (free, then load)."""
        held, gpu = self.w[w].resident, self._gpu[w]
        free = self.costs.unload_seconds(held, gpu) if held is not None and held != expert else 0.0
        return t + free + self.costs.load_seconds(expert, gpu)

    def _finish(self, m: _Mirror, rec: RequestRecord) -> None:
        """``rec``'s request finished on the worker ``m`` mirrors: its gates count it."""
        rid = rec.request_id
        self._finished[rid] = rec.end
        m.just.append(rid)
        self.seen[(rec.query_id, rec.expert)] = Response(rec.output_tokens, rec.answer, rec.correct, rec.text)
        deps = self._dependents.get(rid, ())
        if deps:
            self._pre_records[rid] = rec
        for g in deps:
            self._held[g] -= 1
            if not self._held[g]:
                self._release(g, rec.end)

    def _release(self, g: int, now: float) -> None:
        """Gated request ``g``'s prerequisites have finished: it arrives now (its job built), or is cancelled."""
        assert self.gates is not None
        records = tuple(self._pre_records[p] for p in self.gates.prerequisites[g])
        prompt = self.gates.release(g, now, records)
        if prompt is None:
            del self._undispatched[g]
            return
        self._jobs[g] = self._link.job(self.gates.stage, g, records, now, int(prompt))
        self._ready[g] = None
        self._released.append(g)

    def _arrival_time(self) -> float:
        """When the next undispatched request arrives (inf: none left to arrive)."""
        order, undispatched = self._order, self._undispatched
        while self._next_arrival < len(order) and order[self._next_arrival] not in undispatched:
            self._next_arrival += 1
        nxt = self._arrival[order[self._next_arrival]] if self._next_arrival < len(order) else INF
        return min(nxt, self._late[0][0] if self._late else INF)

    def _arrive(self) -> None:
        """Every undispatched request that has arrived by the clock becomes waiting."""
        order, t, i = self._order, self._clock + EPS, self._next_arrival
        while i < len(order) and self._arrival[order[i]] <= t:
            if order[i] in self._undispatched:
                self._ready[order[i]] = None
                self._new.append(order[i])
            i += 1
        self._next_arrival = i
        while self._late and self._late[0][0] <= t:
            r = heapq.heappop(self._late)[1]
            if r in self._undispatched:
                self._ready[r] = None
                self._new.append(r)

    def _check_dispatched(self) -> None:
        if self._undispatched:
            left, n = list(self._undispatched)[:5], len(self._undispatched)
            held = f" ({self.held()} still held by their gates)" if self.held() else ""
            raise PlanError(f"policy {self._name!r} left {n} request(s) undispatched{held}, e.g. {left}")

    def _result(self, done: Mapping[int, Mapping[str, Any]]) -> StageResult:
        ids = self.cluster.ids
        ends = {w: float(done[w]["end"]) if w in done else self.start for w in ids}
        return StageResult(self.stage, self.start, max(ends.values(), default=self.start), ends,
                           {w: self.w[w].resident for w in ids}, Responses(self.seen),
                           {w: float(done[w]["busy"]) if w in done else 0.0 for w in ids},
                           {w: float(done[w]["loading"]) if w in done else 0.0 for w in ids})  # fmt: skip

    # --- actions -------------------------------------------------------------------------------------------------

    def _apply(self, actions: Sequence[Action]) -> None:
        for a in actions:
            if isinstance(a, Dispatch):
                self._dispatch(a)
            elif isinstance(a, Steal):
                self._steal(a)
            elif isinstance(a, Withdraw):
                self._withdraw(a)
            elif isinstance(a, WakeAt):
                if not a.time >= self._clock - EPS:
                    raise PlanError(f"{a!r}: the clock is at {self._clock:.6g} s already")
                heapq.heappush(self._wakes, max(float(a.time), self._clock))
            else:
                raise PlanError(f"a policy returned {a!r}, which is not an action (Dispatch, Steal, Withdraw, WakeAt)")

    def _mirror(self, worker: int, action: Action) -> _Mirror:
        if worker not in self.w:
            raise PlanError(f"{action!r} names worker {worker}, which is not in the cluster {sorted(self.w)}")
        return self.w[worker]

    def _stage_of(self, r: int) -> str:
        return self.gates.stage if self.gates is not None and r in self.gates.prerequisites else self.stage

    def _dispatch(self, a: Dispatch) -> None:
        self._mirror(a.worker, a)
        ids, undispatched, held = tuple(r for r in a.request_ids if r not in self._lost), self._undispatched, self._held
        if not undispatched.keys() >= set(ids) or len(set(ids)) != len(ids):
            what = [r for r in ids if r not in undispatched] or "listed twice"
            raise PlanError(f"{a!r}: request(s) {what} cannot be dispatched (dispatched before, or no such request)")
        if held and any(held.get(r, 0) for r in ids):
            raise PlanError(f"{a!r}: request(s) {[r for r in ids if held.get(r, 0)]} are held by their gates")
        for r in ids:
            del undispatched[r]
            self._ready.pop(r, None)
        self._send(a.worker, ids)

    def _send(self, w: int, ids: Sequence[int]) -> None:
        """Queue ``ids`` on ``w`` (in the mirror and on the worker); those finished in an earlier run finish now."""
        m, jobs = self._touch(w), []
        for r in ids:
            old = self._link.restored(self._stage_of(r), r)
            if old is not None:  # not run again: it finishes now (its record is in the trace already)
                self._touched[w] = False  # it did work: an idle event follows
                self._finish(m, replace(old, worker=w, start=self._clock, end=self._clock))
                continue
            m.queued[r] = None
            job = self._jobs.get(r)
            if job is None:
                job = self._jobs[r] = self._link.job(self._stage_of(r), r)
            jobs.append(job)
        if jobs:
            self._link.enqueue(w, jobs)
        self._refresh(w, self._clock)

    def _movable(self, worker: int, ids: tuple[int, ...], a: Action) -> tuple[int, ...]:
        """``ids`` less those kept by their worker in this decision, checked movable (:meth:`View.movable`)."""
        self._mirror(worker, a)
        ids = tuple(r for r in ids if r not in self._lost)
        movable = set(self.movable(worker))
        bad = [r for r in ids if r not in movable]
        if bad or len(set(ids)) != len(ids):
            raise PlanError(f"{a!r}: request(s) {bad or 'listed twice'} cannot move (not queued behind the head, "
                            f"nor a head waiting for the batch to drain)")  # fmt: skip
        return ids

    def _take(self, worker: int, ids: tuple[int, ...]) -> tuple[int, ...]:
        """Ask ``worker`` for ``ids`` back; the mirror follows its answer. Returns those taken, in ``ids`` order."""
        if not ids:
            return ()
        taken, admitted = self._link.withdraw(worker, ids)
        m, got, entered = self._touch(worker), set(taken), set(admitted)
        for r in ids:
            if r in got:
                del m.queued[r]
                continue
            self._lost.add(r)
            if r in entered and r in m.queued:
                del m.queued[r]
                if r not in self._finished:
                    m.running[r] = None
        self._refresh(worker, self._clock)
        return tuple(r for r in ids if r in got)

    def _steal(self, a: Steal) -> None:
        if a.source == a.target:
            raise PlanError(f"{a!r}: request(s) cannot move to itself")
        ids = self._movable(a.source, a.request_ids, a)
        self._mirror(a.target, a)
        self._send(a.target, self._take(a.source, ids))

    def _withdraw(self, a: Withdraw) -> None:
        for r in self._take(a.worker, self._movable(a.worker, a.request_ids, a)):
            self._undispatched[r] = None
            if self._arrival_of(r) <= self._clock + EPS:
                self._ready[r] = None
            else:
                heapq.heappush(self._late, (self._arrival_of(r), r))

    def _arrival_of(self, r: int) -> float:
        job = self._jobs.get(r)
        return float(job["arrival"]) if job is not None and "arrival" in job else self._arrival[r]


__all__ = ["EngineLink", "WallLoop"]
