"""How the runtime loop (:class:`~mosaic.runtime.loop.SimLoop`) applies a policy's actions to its simulated engines:
validated (a :class:`~mosaic.core.errors.PlanError` names what is wrong), then handed to the workers."""

from __future__ import annotations

import heapq
from collections.abc import Sequence

from mosaic.agents.policy import Action, Dispatch, Steal, WakeAt, Withdraw
from mosaic.core.errors import PlanError
from mosaic.runtime.sim_worker import ARRIVAL_EPS, SimRequest, WorkerSim


class LoopActions:
    """The actions part of :class:`~mosaic.runtime.loop.SimLoop` (a mixin: the state is the loop's)."""

    sims: dict[int, WorkerSim]
    items: list[SimRequest]
    _undispatched: dict[int, None]
    _ready: dict[int, None]
    _held: dict[int, int]
    _late: list[tuple[float, int]]
    _wakes: list[float]
    _clock: float

    def _touched(self, w: int) -> None:
        raise NotImplementedError

    def _collect(self, sim: WorkerSim) -> None:
        raise NotImplementedError

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
        """The worker an action names (which it changes: its cached bound goes)."""
        sim = self.sims.get(worker)
        if sim is None:
            raise PlanError(f"{action!r} names worker {worker}, which is not in the cluster {sorted(self.sims)}")
        self._touched(worker)
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
        if first:
            sim.enqueue(items)
        else:
            sim.enqueue(items, now=self._clock)
            self._collect(sim)

    def _behind_head(self, worker: int, ids: tuple[int, ...], a: Action) -> WorkerSim:
        """The source worker of a Steal / Withdraw of ``ids`` (all movable: :meth:`View.movable`)."""
        source = self._sim(worker, a)
        pending = source.pending()
        free = pending and source.batch_size and pending[0].expert != source.resident  # waits for the drain
        movable = {r.request_id for r in (pending if free else pending[1:])}
        bad = [r for r in ids if r not in movable]
        if bad or len(set(ids)) != len(ids):
            raise PlanError(f"{a!r}: request(s) {bad or 'listed twice'} cannot move (not queued behind the head, "
                            f"nor a head waiting for the batch to drain)")  # fmt: skip
        return source

    def _steal(self, a: Steal) -> None:
        if a.source == a.target:
            raise PlanError(f"{a!r}: request(s) cannot move to itself")
        source, target = self._behind_head(a.source, a.request_ids, a), self._sim(a.target, a)
        taken = {r.request_id: r for r in source.remove_pending(a.request_ids)}
        target.enqueue([taken[r] for r in a.request_ids], now=self._clock)
        self._collect(target)

    def _withdraw(self, a: Withdraw) -> None:
        self._behind_head(a.worker, a.request_ids, a).remove_pending(a.request_ids)
        for r in a.request_ids:
            self._undispatched[r] = None
            arrival = self.items[r].arrival
            if arrival <= self._clock + ARRIVAL_EPS:
                self._ready[r] = None
            else:
                heapq.heappush(self._late, (arrival, r))


__all__ = ["LoopActions"]
