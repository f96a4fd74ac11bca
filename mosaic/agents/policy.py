"""The decision interface: a :class:`Policy` acts at the runtime loop's events on a read-only :class:`View`.

The loop (:mod:`mosaic.runtime.loop`) owns the clock and the engines; a policy only answers, at each event it asked
for, with :data:`Action` s: hand requests to a worker (:class:`Dispatch`), move requests a worker has not started
to another (:class:`Steal`) or take them back (:class:`Withdraw`), ask to be woken later (:class:`WakeAt`). A
static plan is one policy (:class:`PlanReplay`: everything dispatched at the start, nothing afterwards);
:class:`WorkStealing` is a plan that reacts when a worker runs out of work.

A policy in a few lines (each request, as it arrives, to the worker with the fewest queued)::

    class FewestQueued(Policy):
        name = "fewest-queued"
        events = frozenset({ARRIVAL})

        def decide(self, view, event):
            queued = {w.id: len(view.queued(w.id)) for w in view.cluster.workers}
            out = []
            for r in view.waiting():
                w = min(queued, key=queued.__getitem__)
                queued[w] += 1  # the view shows the state before these actions
                out.append(Dispatch(w, (r,)))
            return out

Every request must end up dispatched: the loop raises when it is idle with requests no worker holds (a policy that
dispatches as requests arrive asks for ``arrival`` events).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar

from mosaic.core.types import Cluster, Plan, Workload
from mosaic.predictors.interface import CostModel

# event kinds: the stage begins; requests arrive (or are released: their prerequisites finished); a worker's
# queue ran dry (it may still be running a batch); a worker has nothing queued or running; requests finished on a
# worker; a time the policy asked to be woken at (:class:`WakeAt`)
START, ARRIVAL, DRY, IDLE, FINISH, WAKE = "start", "arrival", "dry", "idle", "finish", "wake"
EVENT_KINDS = (START, ARRIVAL, DRY, IDLE, FINISH, WAKE)


@dataclass(frozen=True, slots=True)
class Event:
    """What happened: ``kind`` (:data:`EVENT_KINDS`) at ``time``, on ``worker`` (None for ``start``, ``arrival``
    and ``wake``); ``requests``: the requests that finished (``finish``) or arrived (``arrival``)."""

    kind: str
    time: float
    worker: int | None = None
    requests: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class Dispatch:
    """Append ``request_ids`` (no worker holds them yet) to ``worker``'s queue, in this order. A request that has not
    arrived may be dispatched too (a plan made ahead): the engine admits it when it arrives."""

    worker: int
    request_ids: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Steal:
    """Move ``request_ids``, queued on ``source`` and not started, to the end of ``target``'s queue, in this order.
    Only :meth:`View.movable` requests move: the head of ``source``'s queue stays (its admission or model load may
    be under way) unless it waits for the running batch to drain before its expert is loaded."""

    source: int
    target: int
    request_ids: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Withdraw:
    """Take ``request_ids``, queued on ``worker`` and not started (:meth:`View.movable`), back: they wait again (to be
    dispatched anew, e.g. by a re-plan)."""

    worker: int
    request_ids: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class WakeAt:
    """Ask for a ``wake`` event at ``time`` (seconds, run clock; not before now): a timer, or a decision whose
    computing time is charged to the clock (decide now, apply when woken)."""

    time: float


Action = Dispatch | Steal | Withdraw | WakeAt


class View(ABC):
    """The loop's state as a policy may read it (the runtime implements it; nothing here changes it)."""

    workload: Workload  # the stage's requests
    costs: CostModel  # predicted costs, bound to ``workload``
    cluster: Cluster

    @property
    @abstractmethod
    def clock(self) -> float:
        """Seconds on the run's clock now."""

    @abstractmethod
    def waiting(self) -> tuple[int, ...]:
        """Requests that have arrived and that no worker holds yet, in arrival order."""

    @abstractmethod
    def queued(self, worker: int) -> tuple[int, ...]:
        """Requests queued on ``worker`` and not started, in execution order."""

    @abstractmethod
    def running(self, worker: int) -> tuple[int, ...]:
        """Requests in ``worker``'s batch now."""

    @abstractmethod
    def resident(self, worker: int) -> str | None:
        """The expert loaded on ``worker`` now (None: nothing)."""

    @abstractmethod
    def loading(self, worker: int) -> tuple[str, float] | None:
        """(expert, when its load ends) while ``worker`` is swapping to another expert, else None."""

    @abstractmethod
    def finished(self) -> Mapping[int, float]:
        """Request id -> when it finished, for every finished request."""

    @abstractmethod
    def held(self) -> int:
        """How many requests wait for prerequisites (e.g. aggregator requests before their experts answer)."""

    def version(self, worker: int) -> object | None:
        """A token that changes whenever ``worker``'s state may have changed, so that a policy can keep what it
        read of it (None: unknown, read anew every time)."""
        return None

    def batch_size(self, worker: int) -> int:
        """How many requests ``worker``'s batch holds now (``len(running(worker))``, which runtimes may answer
        faster)."""
        return len(self.running(worker))

    def movable(self, worker: int) -> tuple[int, ...]:
        """Queued requests of ``worker`` that :class:`Steal` and :class:`Withdraw` may take: those behind the head,
        and the head too while it waits for the running batch to drain before its expert is loaded (nothing has
        started for it)."""
        queued = self.queued(worker)
        if queued and self.running(worker) and self.workload.requests[queued[0]].expert != self.resident(worker):
            return queued
        return queued[1:]

    def busy(self, worker: int) -> float:
        """Seconds ``worker`` has served so far (its batch non-empty, prefill included); runtimes that cannot tell
        raise NotImplementedError."""
        raise NotImplementedError(f"{type(self).__name__} does not report busy seconds")


class Policy(ABC):
    """Decides at the loop's events. ``events``: the kinds it wants to hear about besides ``start``; a policy that
    wants none acts only at the start, which lets the loop run the engines without stopping."""

    name: str = "base"
    events: ClassVar[frozenset[str]] = frozenset()

    @abstractmethod
    def decide(self, view: View, event: Event) -> Sequence[Action]:
        """The actions to apply now (none: carry on)."""


def plan_dispatches(plan: Plan) -> list[Action]:
    """Every worker's requests of ``plan``, in plan order."""
    return [Dispatch(w, tuple(ids)) for w, ids in plan.order.items() if ids]


class PlanReplay(Policy):
    """A static plan: every worker gets its requests in plan order at the start; nothing is decided later."""

    name = "plan"

    def __init__(self, plan: Plan) -> None:
        self.plan = plan

    def decide(self, view: View, event: Event) -> Sequence[Action]:
        return plan_dispatches(self.plan) if event.kind == START else []


__all__ = ["ARRIVAL", "DRY", "EVENT_KINDS", "FINISH", "IDLE", "START", "WAKE", "Action", "Dispatch", "Event",
           "PlanReplay", "Policy", "Steal", "View", "WakeAt", "Withdraw", "plan_dispatches"]  # fmt: skip
