"""Re-planning at run time: a planner (mosaic-ilp, greedy-lpt) solved again on the work not yet started.

:class:`Replanning` plans what is waiting at the start (an offline batch: the scheduler's own plan), then re-plans
every ``period`` simulated seconds, and as soon as a worker goes idle or requests arrive while one is idle:

- ``window`` mode plans only the requests that arrived since (waiting, held by no worker) and appends them to the
  workers' queues (a windowed ILP);
- ``rolling`` mode also takes back every queued request not yet started (behind each queue's head) and plans them
  together with the new ones (rolling re-planning).

Each worker is priced as holding the expert it will have loaded when it reaches the new work (its queue's head, or
what it runs or loads now). A solve is charged to the clock: its actions apply ``solve_charge`` seconds after the
decision (a fixed figure keeps runs reproducible; ``"measured"`` charges the solve's wall time, which varies from run
to run). Registered as ``<planner>+window`` and ``<planner>+rolling`` for greedy-lpt and mosaic-ilp, with options
``period``, ``solve_charge`` and the planner's own. (Round-robin per window re-places the experts every window and
thrashes loads; its online form is its static plan, served as requests arrive.)
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Mapping, Sequence
from typing import NamedTuple

import numpy as np

from mosaic.agents.bounds import order_worker_times
from mosaic.agents.greedy_lpt import GreedyLPTScheduler
from mosaic.agents.ilp_scheduler import MosaicIlpScheduler
from mosaic.agents.interface import Scheduler
from mosaic.agents.policy import (
    ARRIVAL,
    IDLE,
    START,
    WAKE,
    Action,
    Dispatch,
    Event,
    Policy,
    View,
    WakeAt,
    Withdraw,
    plan_dispatches,
)
from mosaic.agents.registry import SCHEDULERS
from mosaic.core.errors import ConfigError
from mosaic.core.types import Cluster, Plan, Request, Workload
from mosaic.predictors.interface import CostModel

MODES = ("window", "rolling")


def subset_workload(workload: Workload, ids: Sequence[int]) -> Workload:
    """``workload`` with only the requests ``ids``, renumbered 0.. in that order (queries and experts kept)."""
    reqs = workload.requests
    sub = tuple(Request(j, reqs[i].query_id, reqs[i].expert, reqs[i].prompt_tokens) for j, i in enumerate(ids))
    by_query: dict[int, list[str]] = {}
    for r in sub:
        by_query.setdefault(r.query_id, []).append(r.expert)
    routes: list[tuple[str, ...]] = [()] * len(workload.queries)  # a re-plan touches few queries: O(1) per other
    for q, experts in by_query.items():
        routes[q] = tuple(experts)
    return Workload(f"{workload.name}:replan", workload.queries, workload.experts, tuple(routes),
                    workload.aggregator, sub)  # fmt: skip


class _Replan(NamedTuple):
    """One re-plan's inputs: the requests, their sub-workload and costs, and what each worker holds and keeps."""

    ids: list[int]
    sub: Workload
    costs: CostModel
    cluster: Cluster
    holds: dict[int, str | None]
    kept: dict[int, float]


class Replanning(Policy):
    """Re-plans with ``planner`` at run time (see the module docstring)."""

    events = frozenset({ARRIVAL, IDLE, WAKE})

    def __init__(self, planner: Scheduler, plan: Plan, rng: np.random.Generator, mode: str = "rolling",
                 period: float = 30.0, solve_charge: float | str = 1.0) -> None:  # fmt: skip
        self.planner, self.plan, self.rng, self.mode = planner, plan, rng, mode
        self.period, self.solve_charge = float(period), solve_charge
        self.name = f"{planner.name}+{mode}"
        self._pending: dict[int, list[int]] | None = None  # the solved plan, applied when its wake-up comes
        self._apply_at = self._next_tick = self._last_arrival = 0.0
        self.solves, self.solve_s = 0, 0.0
        self.min_gain = 0.01  # a re-shuffle must be predicted to finish at least this much sooner
        fast = getattr(planner, "plan_order", planner.plan)
        self._takes_available = "available" in inspect.signature(fast).parameters

    def decide(self, view: View, event: Event) -> Sequence[Action]:
        if event.kind == START:
            self._last_arrival = max((q.arrival for q in view.workload.queries), default=0.0)
            return [*self._first(view), *self._tick(view)]
        tick = event.kind == WAKE and view.clock >= self._next_tick - 1e-9
        out = self._tick(view) if tick else []
        if self._pending is not None:
            if event.kind == WAKE and view.clock >= self._apply_at - 1e-9:
                out += self._apply(view)
            return out
        if tick or (view.waiting() and any(self._idle(view, w) for w in view.cluster.ids)):
            out += self._solve(view)
        return out

    def _tick(self, view: View) -> list[Action]:
        """The next periodic wake-up, while anything is left that a re-plan could move (or is still to arrive)."""
        ids = view.cluster.ids
        busy = any(view.queued(w) or view.running(w) or view.loading(w) for w in ids) or view.waiting()
        if not busy and view.clock >= self._last_arrival:
            return []
        self._next_tick = view.clock + self.period
        return [WakeAt(self._next_tick)]

    def _first(self, view: View) -> list[Action]:
        """The scheduler's plan when what waits is what it planned (an offline batch); else a plan of what waits."""
        waiting = view.waiting()
        if set(waiting) == {r for ids in self.plan.order.values() for r in ids}:
            return plan_dispatches(self.plan)
        if not waiting:
            return []
        order = self._plan_of(self._context(view, list(waiting)))
        return [Dispatch(w, tuple(ids)) for w, ids in order.items() if ids]

    @staticmethod
    def _idle(view: View, w: int) -> bool:
        return not view.queued(w) and not view.running(w) and view.loading(w) is None

    def _movable(self, view: View) -> list[int]:
        """The requests this re-plan covers: waiting ones, and (rolling) every queued one behind a head."""
        ids = list(view.waiting())
        if self.mode == "rolling":
            ids += [r for w in view.cluster.ids for r in view.queued(w)[1:]]
        return ids

    def _solve(self, view: View) -> list[Action]:
        ids = self._movable(view)
        if not ids:
            return []
        t0 = time.perf_counter()
        ctx = self._context(view, ids)
        plan = self._plan_of(ctx)
        took = time.perf_counter() - t0
        if not view.waiting() and not self._better(view, ctx, plan):
            return []  # a re-shuffle of queued work that is not predicted to finish sooner
        self._pending = plan
        self.solves, self.solve_s = self.solves + 1, self.solve_s + took
        charge = took if self.solve_charge == "measured" else float(self.solve_charge)
        self._apply_at = view.clock + charge
        return [WakeAt(self._apply_at)]

    def _context(self, view: View, ids: list[int]) -> _Replan:
        sub = subset_workload(view.workload, ids)
        holds = {w: self._will_hold(view, w) for w in view.cluster.ids}
        return _Replan(ids, sub, view.costs.bind(sub), view.cluster, holds, self._kept(view))

    def _plan_of(self, ctx: _Replan) -> dict[int, list[int]]:
        """Worker -> ``ctx.ids`` in its planned order, priced with what each worker will hold when it gets to them
        (and, for a planner that takes it, when each is free of the work it keeps)."""
        extra = {"available": ctx.kept} if self._takes_available else {}
        planned = self._order(ctx.sub, ctx.costs, ctx.cluster, self.rng, ctx.holds, **extra)
        return {w: [ctx.ids[j] for j in order] for w, order in planned.items()}

    def _order(self, *args: object, **kwargs: object) -> Mapping[int, Sequence[int]]:
        """The planner's order: its ``plan_order`` when it has one (no estimates, no bound), else its plan's."""
        fast = getattr(self.planner, "plan_order", None)
        return fast(*args, **kwargs) if fast is not None else self.planner.plan(*args, **kwargs).order  # type: ignore[arg-type]

    @staticmethod
    def _kept(view: View) -> dict[int, float]:
        """Worker -> predicted seconds of the work a re-plan leaves it: its running batch and its queue's head
        (their whole predicted seconds: how long they have run is not counted)."""
        reqs, costs, out = view.workload.requests, view.costs, {}
        for w in view.cluster.workers:
            keep = [reqs[r] for r in (*view.running(w.id), *view.queued(w.id)[:1])]
            out[w.id] = costs.group_seconds(keep, w.gpu_type) if keep else 0.0
        return out

    def _better(self, view: View, ctx: _Replan, plan: dict[int, list[int]]) -> bool:
        """Whether ``plan`` of the queued requests ``ctx.ids`` is predicted to finish sooner than their queues now."""
        local = {r: j for j, r in enumerate(ctx.ids)}
        now = {w: [local[r] for r in view.queued(w)[1:]] for w in view.cluster.ids}
        new = {w: [local[r] for r in order] for w, order in plan.items()}

        def finish(order: dict[int, list[int]]) -> float:
            times = order_worker_times(order, ctx.sub, ctx.costs, ctx.cluster, ctx.holds)
            return max(ctx.kept[w] + t for w, t in times.items())

        return finish(new) < (1.0 - self.min_gain) * finish(now)

    @staticmethod
    def _will_hold(view: View, w: int) -> str | None:
        queued = view.queued(w)
        if queued:
            return view.workload.requests[queued[0]].expert
        loading = view.loading(w)
        return loading[0] if loading is not None else view.resident(w)

    def _apply(self, view: View) -> list[Action]:
        """The pending plan on the state now: requests started meanwhile are left where they are; those that
        arrived meanwhile wait for the next re-plan."""
        plan, self._pending = self._pending or {}, None
        out: list[Action] = []
        behind = {w: view.queued(w)[1:] for w in view.cluster.ids}
        if self.mode == "rolling":
            out += [Withdraw(w, ids) for w, ids in behind.items() if ids]
        free = set(view.waiting()) | ({r for ids in behind.values() for r in ids} if self.mode == "rolling" else set())
        out += [Dispatch(w, tuple(r for r in ids if r in free)) for w, ids in plan.items()
                if any(r in free for r in ids)]  # fmt: skip
        return out


class ReplanningScheduler(Scheduler):
    """A planner (``wraps``, built with its options) run with :class:`Replanning`."""

    wraps: type[Scheduler] = MosaicIlpScheduler
    mode: str = "rolling"

    def __init__(self, period: float = 30.0, solve_charge: float | str = 1.0, **options: object) -> None:
        if not period > 0:
            raise ConfigError(f"{self.wraps.name}+{self.mode}: period must be > 0 seconds, got {period!r}")
        if solve_charge != "measured" and not (isinstance(solve_charge, int | float) and solve_charge >= 0):
            raise ConfigError(f"{self.wraps.name}+{self.mode}: solve_charge must be seconds >= 0 or 'measured', "
                              f"got {solve_charge!r}")  # fmt: skip
        self.inner = self.wraps(**options)  # type: ignore[arg-type]
        self.name = f"{self.inner.name}+{self.mode}"
        self.period, self.solve_charge = float(period), solve_charge
        self._rng = np.random.default_rng(0)

    def plan(self, workload: Workload, costs: CostModel, cluster: Cluster, rng: np.random.Generator,
             resident: Mapping[int, str | None] | None = None) -> Plan:  # fmt: skip
        self._rng = rng  # the re-plans draw from the run's generator
        return self.inner.plan(workload, costs, cluster, rng, resident)

    def runtime_policy(self, plan: Plan) -> Replanning:
        return Replanning(self.inner, plan, self._rng, self.mode, self.period, self.solve_charge)


def _register(base: type[Scheduler], mode: str) -> type[ReplanningScheduler]:
    name = f"{base.name}+{mode}"
    what = "the new arrivals" if mode == "window" else "everything not started"
    doc = f"{base.name} re-solved at run time on {what} (every period s, and when a worker idles)"
    cls = type(f"{base.__name__}{mode.title()}", (ReplanningScheduler,),
               {"wraps": base, "mode": mode, "name": name, "__doc__": doc})  # fmt: skip
    return SCHEDULERS.register(name, help=doc)(cls)


for _base in (GreedyLPTScheduler, MosaicIlpScheduler):
    for _mode in MODES:
        _register(_base, _mode)

__all__ = ["MODES", "Replanning", "ReplanningScheduler", "subset_workload"]
