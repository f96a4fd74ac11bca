"""The runtime loop on simulated engines: one :class:`~mosaic.runtime.sim_worker.WorkerSim` per GPU, a policy
(:mod:`mosaic.agents.policy`) asked at the events it wants, its actions applied to the engines.

The loop always applies the earliest event next (lockstep on the simulated clock): an engine's, or a request's
arrival; it tells the policy when requests arrive (``arrival``) and when a worker runs out of work (``idle``). A
policy that wants no events (a static plan) is answered once at the start, after which every engine runs to the
end without stopping: exactly the static simulation, at its speed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from mosaic.agents.policy import ARRIVAL, IDLE, START, Action, Dispatch, Event, Policy, Steal, View
from mosaic.core.errors import PlanError
from mosaic.core.trace import Record, RequestRecord, TraceWriter
from mosaic.core.types import Cluster, Response, Responses, Workload
from mosaic.predictors.interface import CostModel
from mosaic.runtime.interface import StageResult
from mosaic.runtime.sim_worker import ARRIVAL_EPS, SimRequest, WorkerSim

INF = float("inf")


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
    ) -> None:
        self.workload, self.costs, self.cluster, self.stage = workload, costs, cluster, stage
        self.trace, self.start = trace, float(start)
        self.seen: dict[tuple[int, str], Response] = {}
        self.items: list[SimRequest] = backend.sim_requests(workload, tuple(range(len(workload.requests))), self.seen)
        self._undispatched: dict[int, None] = dict.fromkeys(range(len(self.items)))  # an ordered set
        self._ready: dict[int, None] = {}  # undispatched and arrived, in arrival order (once arrivals are tracked)
        self._arrivals: list[int] | None = None  # request ids by arrival; built when a policy first needs them
        self._next_arrival = 0  # index into _arrivals of the first request not yet arrived
        self._finished: dict[int, float] = {}
        self._clock = self.start
        self._backend, self._resident = backend, dict(resident or {})
        self.sims: dict[int, WorkerSim] = {}

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
        arrival = [it.arrival for it in self.items]
        self._arrivals = sorted(range(len(arrival)), key=arrival.__getitem__)  # stable: ties in id order
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

    # --- the loop ------------------------------------------------------------------------------------------------

    def run(self, policy: Policy) -> StageResult:
        """Ask ``policy`` at the start, then at every event it wants, until every engine is idle."""
        emit = self._emit if policy.events else self.trace.write  # a static plan needs no completion tracking
        self.sims = {w.id: self._backend.make_worker(w, self.stage, self.start, self._resident.get(w.id), emit)
                     for w in self.cluster.workers}  # fmt: skip
        self._apply(policy.decide(self, Event(START, self._clock)), first=True)
        if not policy.events:
            for sim in self.sims.values():
                sim.run_until_idle()
        else:
            self._lockstep(policy)
        if self._undispatched:
            left, n = list(self._undispatched)[:5], len(self._undispatched)
            raise PlanError(f"policy {policy.name!r} left {n} request(s) undispatched, e.g. {left}")
        return self._result()

    def _lockstep(self, policy: Policy) -> None:
        """Apply the earliest event, one at a time: an engine's, or (when the policy wants them) an arrival, which
        goes first on a tie; tell the policy when a worker runs out of work and when requests arrive."""
        wants_idle, wants_arrival = IDLE in policy.events, ARRIVAL in policy.events
        if self._arrivals is None:
            self._track_arrivals()
        idle = [w for w, sim in self.sims.items() if sim.is_idle]
        while True:
            if wants_idle:
                for w in idle:
                    self._apply(policy.decide(self, Event(IDLE, self._clock, w)))
            w, t = min(((w, s.next_event_time()) for w, s in self.sims.items()), key=lambda p: p[1])
            ta = self._arrival_time() if wants_arrival else INF
            if ta <= t and ta < INF:
                self._clock = max(self._clock, ta)
                self._arrive(self._clock)
                self._apply(policy.decide(self, Event(ARRIVAL, self._clock)))
                idle = []
                continue
            if t == INF:
                return
            sim = self.sims[w]
            sim.step()
            self._clock = sim.clock
            self._arrive(self._clock)
            idle = [w] if sim.is_idle else []

    def _arrival_time(self) -> float:
        """When the next undispatched request arrives (inf: none left to arrive)."""
        order, items, undispatched = self._arrivals or [], self.items, self._undispatched
        while self._next_arrival < len(order) and order[self._next_arrival] not in undispatched:
            self._next_arrival += 1
        return items[order[self._next_arrival]].arrival if self._next_arrival < len(order) else INF

    def _arrive(self, t: float) -> None:
        """Every undispatched request that has arrived by ``t`` becomes waiting (when arrivals are tracked)."""
        order, items, undispatched = self._arrivals or [], self.items, self._undispatched
        i = self._next_arrival
        while i < len(order) and items[order[i]].arrival <= t + ARRIVAL_EPS:
            if order[i] in undispatched:
                self._ready[order[i]] = None
            i += 1
        self._next_arrival = i

    def _emit(self, rec: Record) -> None:
        if isinstance(rec, RequestRecord):
            self._finished[rec.request_id] = rec.end
        self.trace.write(rec)

    def _apply(self, actions: Sequence[Action], first: bool = False) -> None:
        for a in actions:
            if isinstance(a, Dispatch):
                self._dispatch(a, first)
            elif isinstance(a, Steal):
                self._steal(a)
            else:
                raise PlanError(f"a policy returned {a!r}, which is not an action (Dispatch, Steal)")

    def _sim(self, worker: int, action: Action) -> WorkerSim:
        sim = self.sims.get(worker)
        if sim is None:
            raise PlanError(f"{action!r} names worker {worker}, which is not in the cluster {sorted(self.sims)}")
        return sim

    def _dispatch(self, a: Dispatch, first: bool) -> None:
        sim = self._sim(a.worker, a)
        ids, undispatched, ready = a.request_ids, self._undispatched, self._ready
        if not undispatched.keys() >= set(ids) or len(set(ids)) != len(ids):
            what = [r for r in ids if r not in undispatched] or "listed twice"
            raise PlanError(f"{a!r}: request(s) {what} cannot be dispatched (dispatched before, or no such request)")
        for r in ids:
            del undispatched[r]
        if ready:
            for r in ids:
                ready.pop(r, None)
        items = [self.items[r] for r in a.request_ids]
        sim.enqueue(items) if first else sim.enqueue(items, now=self._clock)

    def _steal(self, a: Steal) -> None:
        source, target = self._sim(a.source, a), self._sim(a.target, a)
        queued = [r.request_id for r in source.pending()]
        movable = set(queued[1:])
        bad = [r for r in a.request_ids if r not in movable]
        if bad or a.source == a.target:
            raise PlanError(f"{a!r}: request(s) {bad or 'to itself'} cannot move (not queued behind the head)")
        taken = {r.request_id: r for r in source.remove_pending(a.request_ids)}
        target.enqueue([taken[r] for r in a.request_ids], now=self._clock)

    def _result(self) -> StageResult:
        sims = self.sims
        ends = {w: s.last_end for w, s in sims.items()}
        end = max(ends.values(), default=self.start)
        return StageResult(self.stage, self.start, end, ends, {w: s.resident for w, s in sims.items()},
                           Responses(self.seen), {w: s.busy_s for w, s in sims.items()},
                           {w: s.loading_s for w, s in sims.items()})  # fmt: skip


__all__ = ["SimLoop"]
