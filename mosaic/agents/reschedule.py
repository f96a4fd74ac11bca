"""Run-time rescheduling decisions on the runtime loop: what ``mosaic/Reschedule-v0`` steps through and what the
live RL agent (``rl-reschedule``) decides with, on any :class:`~mosaic.agents.policy.View`.

A :class:`Rescheduler` turns the loop's events into *decision points*: a worker whose queue ran dry (it admitted
its last queued request, or went idle) while work is left that it could take (requests waiting, or queued behind
the head on another worker). At each it builds the observation (:data:`OBS_BLOCKS`) and the valid-action mask, and
translates the chosen discrete action into the loop's actions (slot ``e`` is the e-th expert of the workload):

- ``e < n_slots``: serve expert ``e``: :class:`~mosaic.agents.policy.Dispatch` a quantum of its waiting requests
  (longest predicted first); with none waiting, :class:`~mosaic.agents.policy.Steal` the tail half of its queued
  work from the worker holding the most of it (replication).
- ``STEAL`` (``n_slots``): steal the tail half of the queued work of the most loaded worker's last expert.
- ``WAIT`` (``n_slots + 1``): take nothing; ask again when this worker has gone idle (if idle: when another has).

Only requests the loop lets move are stolen (:meth:`~mosaic.agents.policy.View.movable`: behind a queue's head, or
the head while it waits for the batch to drain), and none of an expert whose load is under way.
Several workers may decide at one event: each sees the actions decided before it (the view shows the state before
all of them; a per-event :class:`~mosaic.agents.reschedule_tables.Snapshot` adds them). Every second comes from the
loop.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Sequence
from itertools import chain
from operator import add

import numpy as np

from mosaic.agents.policy import ARRIVAL, DRY, IDLE, START, Action, Dispatch, Event, Policy, Steal, View
from mosaic.agents.reschedule_tables import (
    DEFAULT_BUCKETS,
    OBS_BLOCKS,
    OBS_HIGH,
    RescheduleTables,
    Seen,
    Snapshot,
    obs_sizes,
)
from mosaic.core.errors import ConfigError, PlanError
from mosaic.core.types import Plan

RESCHEDULE_EVENTS = frozenset({ARRIVAL, DRY, IDLE})
ACTIVE, WAIT_IDLE, WAIT_OTHER = 0, 1, 2  # a worker's mode: asked at its decision points; waits for its own idle,
# or another's


# every attribute of a Rescheduler (``Rescheduler.copy``; a test checks that the list is complete)
_STATE = ("t", "quantum", "plan", "steal_action", "wait_action", "mode", "assigned", "pool", "pwork", "pcount",
          "pool_total", "steals", "takes", "waits", "deciding", "_asks", "_actions", "_snap", "_decision",
          "_start_time", "_rows", "order")  # fmt: skip


class Rescheduler:
    """One run's decision state (see the module docstring): :meth:`notice` each event of the loop, then
    :meth:`next_decision` until None (``act`` on each), then :meth:`take` the loop's actions to apply."""

    events = RESCHEDULE_EVENTS

    def __init__(self, tables: RescheduleTables, quantum_frac: float = 0.25, plan: Plan | None = None) -> None:
        """``plan``: dispatched at the start (None: every request waits for the decisions)."""
        if not quantum_frac > 0:
            raise ConfigError(f"rescheduler: quantum_frac must be > 0, got {quantum_frac}")
        self.t, self.quantum, self.plan = tables, quantum_frac * tables.ref, plan
        n_w, n_s = tables.n_workers, tables.n_slots
        self.steal_action, self.wait_action = n_s, n_s + 1
        self.mode = [ACTIVE] * n_w
        self.assigned = [0.0] * n_w  # worker -> predicted seconds put on it (dispatched, stolen in, minus out)
        self.pool: list[list[int]] = [[] for _ in range(n_s)]  # slot -> waiting ids, longest predicted last
        self.pwork = [[0.0] * tables.n_buckets for _ in range(n_s)]  # slot x bucket -> predicted s waiting
        self.pcount = [0] * n_s
        self.pool_total = 0
        self.steals = self.takes = self.waits = 0
        self.deciding: int | None = None  # index of the worker whose decision is pending
        self._asks: list[int] = []  # worker indices to ask at this event, in order
        self._actions: list[Action] = []  # decided at this event, not yet taken
        self._snap: Snapshot | None = None
        self._decision: tuple[int, list[bool], list[list[float]], list[float]] | None = None  # mask cache
        self._start_time: float | None = None  # while set: the loop's start notices are ignored
        self._rows: list[Seen | None] = [None] * n_w  # each worker as last read (Snapshot's cache)
        self.order: list[list[int]] = [[] for _ in range(n_w)]  # worker -> what it got, in queue order (FIFO: the
        # order it admits them; stolen ones taken out)

    def copy(self) -> Rescheduler:
        """An independent copy (shares the read-only tables and plan); built attribute by attribute."""
        new = object.__new__(Rescheduler)
        for name in _STATE:
            setattr(new, name, getattr(self, name))
        new.mode, new.assigned, new.pcount = self.mode[:], self.assigned[:], self.pcount[:]
        new.pool, new.pwork = [p[:] for p in self.pool], [p[:] for p in self.pwork]
        new._asks, new._actions, new._decision = self._asks[:], self._actions[:], None
        new._rows, new.order = self._rows[:], [o[:] for o in self.order]  # rows: never modified (copy on write)
        new._snap = self._snap.copy() if self._snap is not None else None
        return new

    # --- events ------------------------------------------------------------------------------------------------

    def notice(self, view: View, event: Event) -> None:
        """Take in one event of the loop (start, arrival, dry, idle): who is asked next."""
        self._snap, self._decision = None, None
        kind, n_w = event.kind, self.t.n_workers
        if kind == START:
            self._start(view)
            self._asks = list(range(n_w))
            return
        if kind == ARRIVAL:
            self._add_waiting(event.requests)
            self.mode = [ACTIVE if m == WAIT_OTHER else m for m in self.mode]
            self._asks = list(range(n_w))
            return
        if kind not in (DRY, IDLE) or event.worker is None:
            return
        if self._start_time is not None:
            if event.time <= self._start_time:
                return  # a start notice: every worker was asked at the start
            self._start_time = None
        i = self.t.workers.index(event.worker)
        asks = [i]
        if kind == IDLE:
            if self.mode[i] == WAIT_IDLE:
                self.mode[i] = ACTIVE
            for j, m in enumerate(self.mode):
                if j != i and m == WAIT_OTHER:
                    self.mode[j] = ACTIVE
                    asks.append(j)
        self._asks = sorted(asks)

    def _start(self, view: View) -> None:
        self._start_time = view.clock
        planned: set[int] = set()
        if self.plan is not None:
            unknown = sorted(set(self.plan.order) - set(self.t.workers))
            if unknown:
                raise PlanError(f"plan {self.plan.scheduler!r} uses workers {unknown} that are not in the cluster")
            for w, ids in self.plan.order.items():
                if ids:
                    self._dispatch(view, self.t.workers.index(w), list(ids))
                    planned.update(ids)
        self._add_waiting([r for r in view.waiting() if r not in planned], fresh=True)

    def _add_waiting(self, ids: Sequence[int], fresh: bool = False) -> None:
        """Requests ``ids`` wait now (``fresh``: the pool is empty; built in one pass)."""
        t = self.t
        if fresh:
            waiting = set(ids)
            self.pool = [[r for r in reversed(order) if r in waiting] for order in t.pool_order]
        else:
            for r in ids:
                bisect.insort(self.pool[t.expert_of[r]], r, key=lambda q: (t.pred[q], -q))
        for r in ids:
            self.pwork[t.expert_of[r]][t.bucket[r]] += t.pred[r]
        self.pcount = [len(p) for p in self.pool]
        self.pool_total = sum(self.pcount)

    # --- decisions ---------------------------------------------------------------------------------------------

    def next_decision(self, view: View) -> int | None:
        """The next worker (id) to decide at this event with two or more valid actions (decisions with one valid
        action are applied on the way), or None: this event needs no more."""
        self.deciding = None
        while self._asks:
            i = self._asks.pop(0)
            if self.mode[i] != ACTIVE:
                continue
            snap = self._snapshot(view)
            if snap.queues[i] or not (self.pool_total or any(snap.queues)):
                continue
            mask = self._mask(i)
            n_valid = sum(mask)
            if n_valid >= 2:
                self.deciding = i
                return self.t.workers[i]
            if n_valid == 1:
                self._apply(view, i, mask.index(True))
        return None

    def mask(self) -> np.ndarray:
        """The valid actions of the pending decision (only wait when none is pending)."""
        if self.deciding is None:
            out = np.zeros(self.t.n_slots + 2, dtype=bool)
            out[self.wait_action] = True
            return out
        return np.array(self._mask(self.deciding), dtype=bool)

    def act(self, view: View, action: int) -> bool:
        """Apply ``action`` for the deciding worker; an invalid one is replaced by :meth:`fallback`'s. Returns
        whether ``action`` was valid."""
        i = self.deciding
        if i is None:
            raise PlanError("rescheduler: no decision is pending")
        mask = self._mask(i)
        valid = 0 <= action < len(mask) and mask[action]
        self._apply(view, i, int(action) if valid else self.fallback(mask))
        return bool(valid)

    def fallback(self, mask: Sequence[bool]) -> int:
        """The valid serve action with the most waiting work, else steal, else wait."""
        n_s = self.t.n_slots
        pooled = [sum(self.pwork[e]) + 1e-12 if mask[e] else -1.0 for e in range(n_s)]
        best = max(pooled)
        if best >= 0:
            return pooled.index(best)
        return self.steal_action if mask[self.steal_action] else self.wait_action

    @property
    def decided(self) -> tuple[Action, ...]:
        """The loop's actions decided at this event so far (not yet taken)."""
        return tuple(self._actions)

    def take(self) -> list[Action]:
        """The loop's actions decided since the last call."""
        out, self._actions = self._actions, []
        self._snap, self._decision = None, None  # the loop applies them next: the view will show them
        return out

    def _snapshot(self, view: View) -> Snapshot:
        if self._snap is None:
            self._snap = Snapshot(view, self.t, self._rows)
        return self._snap

    def _mask(self, i: int) -> list[bool]:
        """Valid actions of worker ``i`` (cached with its steal rows until the state changes; do not modify)."""
        d = self._decision
        if d is not None and d[0] == i:
            return d[1]
        snap, t = self._snap, self.t
        assert snap is not None
        steal = snap.stealable_rows(t)
        steal[i] = [0.0] * t.n_slots
        by_expert = list(map(sum, zip(*steal, strict=True)))
        mask = list(map(bool, map(add, self.pcount, by_expert)))  # waiting or stealable (both are >= 0)
        mask.append(sum(by_expert) > 0)
        mask.append(any(snap.queues) or any(snap.batch))  # wait: until some worker goes idle (not all are)
        self._decision = (i, mask, steal, by_expert)
        return mask

    def stealable_by_expert(self) -> list[float]:
        """Slot -> predicted seconds the deciding worker may steal (no worker excluded when none decides)."""
        if self.deciding is not None:
            self._mask(self.deciding)
            assert self._decision is not None
            return self._decision[3]
        snap, t = self._snap, self.t
        if snap is None:
            return [0.0] * t.n_slots
        return list(map(sum, zip(*snap.stealable_rows(t), strict=True)))

    # --- actions -----------------------------------------------------------------------------------------------

    def _apply(self, view: View, i: int, action: int) -> None:
        """Translate ``action`` (valid) of worker ``i`` into the loop's actions."""
        d = self._decision if self._decision is not None and self._decision[0] == i else None
        steal = d[2] if d is not None else None
        snap = self._snapshot(view)
        self.deciding = None
        if action == self.wait_action:
            self.waits += 1
            self.mode[i] = WAIT_OTHER if snap.idle(i) else WAIT_IDLE
            return
        self.mode[i] = ACTIVE
        if action < self.t.n_slots and self.pool[action]:
            self.takes += 1
            self._dispatch(view, i, self._take_pool(action))
            return
        if steal is None:
            self._mask(i)
            assert self._decision is not None
            steal = self._decision[2]
        if action < self.t.n_slots:
            column = [row[action] for row in steal]
            victim, expert = column.index(max(column)), action
        else:
            left = [q + max(a - q - b, 0.0) for q, a, b in zip(snap.qsum, self.assigned, snap.busy, strict=True)]
            loaded = [left[v] if sum(row) > 0 else -1.0 for v, row in enumerate(steal)]
            victim = loaded.index(max(loaded))
            expert = self._tail_expert(snap.movable(victim, self.t), steal[victim])
        self.steals += 1
        self._steal(snap, victim, i, expert, steal[victim][expert])

    def _dispatch(self, view: View, i: int, ids: list[int]) -> None:
        self._snapshot(view).enqueue(i, ids, self.t)
        pred = self.t.pred
        self.assigned[i] += sum(pred[r] for r in ids)
        self.order[i].extend(ids)
        self._actions.append(Dispatch(self.t.workers[i], tuple(ids)))
        self._decision = None

    def _take_pool(self, e: int) -> list[int]:
        """Pop the longest waiting requests of slot ``e`` until their predicted seconds reach the quantum."""
        ids, got, work = self.pool[e], [], 0.0
        t, pw = self.t, self.pwork[e]
        pred, bucket = t.pred, t.bucket
        while ids and (not got or work < self.quantum):
            r = ids.pop()
            got.append(r)
            work += pred[r]
            left = pw[bucket[r]] - pred[r]
            pw[bucket[r]] = left if left > 0.0 else 0.0  # no negative float residue
        if not ids:
            self.pwork[e] = [0.0] * len(pw)  # no float residue once the slot's pool is empty
        self.pool_total -= len(got)
        self.pcount[e] -= len(got)
        return got

    def _tail_expert(self, movable: Sequence[int], stealable: list[float]) -> int:
        """The slot of the last of the ``movable`` requests whose slot has stealable work."""
        expert_of = self.t.expert_of
        for r in reversed(movable):
            if stealable[expert_of[r]] > 0:
                return expert_of[r]
        raise PlanError("rescheduler: the victim has nothing to steal")  # the mask rules it out

    def _steal(self, snap: Snapshot, victim: int, thief: int, e: int, available: float) -> None:
        """Move the tail requests of slot ``e`` (about half of ``available`` seconds, of those that may move) from
        ``victim`` to ``thief``, in the victim's order."""
        t, got, work = self.t, [], 0.0
        for r in reversed(snap.movable(victim, t)):
            if t.expert_of[r] != e:
                continue
            if got and work >= available / 2:
                break
            got.append(r)
            work += t.pred[r]
        got.reverse()
        snap.remove(victim, got, e, work)
        snap.enqueue(thief, got, t)
        self.assigned[victim] -= work
        self.assigned[thief] += work
        taken = set(got)
        self.order[victim] = [r for r in self.order[victim] if r not in taken]
        self.order[thief].extend(got)
        self._actions.append(Steal(t.workers[victim], t.workers[thief], tuple(got)))
        self._decision = None

    # --- observation -------------------------------------------------------------------------------------------

    def observation(self, view: View) -> np.ndarray:
        """The observation (:data:`OBS_BLOCKS`, float32 in [0, OBS_HIGH]): raw values gathered in one list, block
        by block, then scaled by the tables' factors and clipped (plain list operations: it runs at every step)."""
        t, snap = self.t, self._snapshot(view)
        n_s, n_w, qwork, s1 = t.n_slots, t.n_workers, snap.qwork, t.n_slots + 1
        obs: list[float] = [0.0] * ((n_s + 2) * n_w)  # resident one-hot + deciding
        if self.deciding is not None:
            obs[s1 * n_w + self.deciding] = 1.0
        serving = [n_w - col.count(0.0) for col in zip(*qwork, strict=True)]  # queued work is never negative
        admitted, fill, max_batch, busy = [], [], t.max_batch, snap.busy
        for i, k in enumerate(snap.resident):
            obs[i * s1 + k] = 1.0
            if k < n_s and not qwork[i][k]:
                serving[k] += 1  # it holds the expert without queueing it
            left = self.assigned[i] - snap.qsum[i] - busy[i]
            admitted.append(left if left > 0.0 else 0.0)
            fill.append(snap.batch[i] / max_batch[k])
        queued = list(map(sum, qwork))
        pooled = list(chain.from_iterable(self.pwork))
        obs += queued
        obs += admitted
        obs += fill
        obs += map(bool, self.mode)  # waiting: any mode but ACTIVE (0)
        obs += pooled
        obs += self.stealable_by_expert()
        obs += t.load
        obs += serving
        obs += (view.clock, sum(pooled), sum(queued))
        out = np.array(obs, dtype=np.float32)
        out *= t.obs_scale
        return np.minimum(out, OBS_HIGH, out=out)  # every raw value is >= 0


Chooser = Callable[[np.ndarray, np.ndarray], int]  # (observation, valid-action mask) -> action


class ReschedulePolicy(Policy):
    """A :class:`Rescheduler` as a runtime policy: at each decision point ``choose(observation, mask)`` picks the
    action (e.g. a trained agent's ``act``). ``plan``: dispatched at the start (None: everything waits);
    ``max_batch``: the runtime's batch cap, for the batch-fill feature (None: the profile's)."""

    events = RESCHEDULE_EVENTS

    def __init__(self, choose: Chooser, plan: Plan | None = None, n_slots: int = 8,
                 buckets: Sequence[float] = DEFAULT_BUCKETS, quantum_frac: float = 0.25,
                 max_batch: int | None = None, name: str = "reschedule") -> None:  # fmt: skip
        self.choose, self.plan, self.name = choose, plan, name
        self.n_slots, self.buckets, self.quantum_frac, self.max_batch = n_slots, tuple(buckets), quantum_frac, max_batch
        self.state: Rescheduler | None = None
        self.decisions = 0

    def decide(self, view: View, event: Event) -> Sequence[Action]:
        if event.kind == START:
            resident = {w: view.resident(w) for w in view.cluster.ids}
            tables = RescheduleTables.build(view.workload, view.costs, view.cluster, resident, self.n_slots,
                                            self.buckets, self.max_batch)  # fmt: skip
            self.state = Rescheduler(tables, self.quantum_frac, self.plan)
        r = self.state
        if r is None:
            raise PlanError(f"policy {self.name!r}: the loop did not start it")
        r.notice(view, event)
        while r.next_decision(view) is not None:
            self.decisions += 1
            r.act(view, self.choose(r.observation(view), r.mask()))
        return r.take()


def default_plan_scheduler() -> str:
    """``mosaic-ilp`` when the MOSAIC ILP scheduler is importable, else ``greedy-lpt`` (the start plan's
    scheduler of a rescheduler that starts from a plan)."""
    from mosaic.agents.registry import SCHEDULERS

    if "mosaic-ilp" not in SCHEDULERS:
        try:
            import mosaic.agents.ilp_scheduler  # noqa: F401  (registers 'mosaic-ilp')
        except ImportError:
            return "greedy-lpt"
    return "mosaic-ilp" if "mosaic-ilp" in SCHEDULERS else "greedy-lpt"


__all__ = ["ACTIVE", "DEFAULT_BUCKETS", "OBS_BLOCKS", "OBS_HIGH", "RESCHEDULE_EVENTS", "WAIT_IDLE", "WAIT_OTHER",
           "ReschedulePolicy", "RescheduleTables", "Rescheduler", "default_plan_scheduler", "obs_sizes"]  # fmt: skip
