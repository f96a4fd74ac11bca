"""Aggregation without a stage barrier: a query's aggregator request is released when its experts have answered
(the runtime's gates) and must be dispatched then, while other queries' experts still run.

:class:`AggregateOnRelease` wraps a scheduler's run-time policy for the expert requests: a policy that takes its own
arrivals (an online policy, e.g. ``greedy-online``) dispatches the aggregator requests too; for any other (a plan,
a plan with stealing) each released aggregator request goes to the worker predicted to reach it first: the least
predicted work left, plus a load when the aggregator would not be loaded there by then.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from mosaic.agents.policy import ARRIVAL, START, Action, Dispatch, Event, Policy, Steal, View, Withdraw
from mosaic.aggregation.interface import Load


class AggregateOnRelease(Policy):
    """``inner`` for the expert requests (ids below ``first_gated``); released aggregator requests (``first_gated``
    and above) dispatched as they arrive, unless ``inner`` takes arrivals itself."""

    def __init__(self, inner: Policy, first_gated: int) -> None:
        self.inner, self.first_gated = inner, first_gated
        self.name = inner.name
        self.events = inner.events | {ARRIVAL}
        self._own = ARRIVAL not in inner.events  # dispatch the released requests here
        self._seconds: dict[str, np.ndarray] = {}  # GPU type -> predicted seconds of every request
        self._work: dict[int, float] = {}  # worker -> predicted seconds dispatched to it so far
        self._last: dict[int, str | None] = {}  # worker -> expert of the last request dispatched to it
        self._gpu: dict[int, str] = {}  # worker -> GPU type
        self._view: View | None = None
        self._live: set[int] = set()  # aggregator requests released, not known to be finished

    def load(self) -> Load:
        """The aggregator's queue now: released aggregator requests not finished, and their predicted seconds."""
        view = self._view
        if view is None:
            return Load(0.0, 0, 0.0, 0)
        done = view.finished()
        self._live = {r for r in self._live if r not in done}
        seconds = self._seconds[next(iter(self._seconds))] if self._seconds else None
        queued_s = float(sum(seconds[r] for r in self._live)) if seconds is not None else 0.0
        return Load(view.clock, len(self._live), queued_s, len(self._gpu))

    def decide(self, view: View, event: Event) -> Sequence[Action]:
        if event.kind == START:
            self._start(view)
        elif event.kind == ARRIVAL:
            self._live.update(r for r in event.requests if r >= self.first_gated)
        acts = list(self.inner.decide(view, event)) if event.kind in self.inner.events | {START} else []
        if not self._own:  # the inner policy dispatches the released requests itself
            return acts
        for a in acts:
            self._track(view, a)
        if event.kind != ARRIVAL:
            return acts
        taken = {r for a in acts if isinstance(a, Dispatch) for r in a.request_ids}
        for r in event.requests:
            if r >= self.first_gated and r not in taken:
                a = Dispatch(self._best(view, r), (r,))
                self._track(view, a)
                acts.append(a)
        return acts

    def _start(self, view: View) -> None:
        self._view, self._live = view, set()
        ws = view.cluster.workers
        self._gpu = {w.id: w.gpu_type for w in ws}
        for gpu in dict.fromkeys(self._gpu.values()):
            self._seconds[gpu] = np.asarray(view.costs.seconds_array(view.workload.requests, gpu), dtype=float)
        self._work = {w.id: 0.0 for w in ws}
        self._last = {w.id: view.resident(w.id) for w in ws}

    def _pred(self, view: View, worker: int, r: int) -> float:
        return float(self._seconds[self._gpu[worker]][r])

    def _track(self, view: View, a: Action) -> None:
        if isinstance(a, Dispatch):
            self._work[a.worker] = max(self._work[a.worker], view.clock) + sum(
                self._pred(view, a.worker, r) for r in a.request_ids
            )
            self._last[a.worker] = view.workload.requests[a.request_ids[-1]].expert
        elif isinstance(a, Steal | Withdraw):
            source = a.source if isinstance(a, Steal) else a.worker
            self._work[source] -= sum(self._pred(view, source, r) for r in a.request_ids)
            if isinstance(a, Steal):
                self._track(view, Dispatch(a.target, a.request_ids))

    def _best(self, view: View, r: int) -> int:
        """The worker predicted to reach request ``r`` first (its work left, plus a load of ``r``'s expert there
        when its last request is another's)."""
        expert = view.workload.requests[r].expert

        def reach(w: int) -> tuple[float, int]:
            load = 0.0 if self._last[w] == expert else view.costs.load_seconds(expert, self._gpu[w])
            return max(self._work[w] - view.clock, 0.0) + load, w

        return min(self._work, key=reach)


__all__ = ["AggregateOnRelease"]
