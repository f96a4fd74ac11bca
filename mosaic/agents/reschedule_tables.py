"""The state a rescheduling decision reads: per-stage arrays (:class:`RescheduleTables`), the observation's
layout (:data:`OBS_BLOCKS`) and the engines as a view shows them at one event (:class:`Snapshot`), for
:mod:`mosaic.agents.reschedule`."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from mosaic.agents.bounds import lower_bound
from mosaic.agents.policy import View
from mosaic.core.errors import ConfigError, PlanError
from mosaic.core.types import Cluster, Workload
from mosaic.predictors.interface import CostModel

DEFAULT_BUCKETS = (512.0, 2048.0)  # predicted output tokens: edges of the short / medium / long buckets
OBS_HIGH = 16.0  # every observation entry is clipped to [0, OBS_HIGH]
# the observation's blocks in order: name -> (rows, columns) as functions of (workers W, expert slots S, buckets B)
OBS_BLOCKS = {
    "resident": lambda w, s, b: (w, s + 1),  # resident expert, one-hot (last column: none)
    "deciding": lambda w, s, b: (w, 1),  # the worker whose decision is pending
    "queued": lambda w, s, b: (w, 1),  # predicted seconds queued
    "admitted": lambda w, s, b: (w, 1),  # predicted seconds admitted, not yet covered by busy time
    "batch_fill": lambda w, s, b: (w, 1),  # batch size / max batch
    "waiting": lambda w, s, b: (w, 1),  # waiting flag (chose wait)
    "pooled": lambda w, s, b: (s, b),  # predicted seconds waiting per predicted-length bucket
    "stealable": lambda w, s, b: (s, 1),  # predicted seconds queued elsewhere that this worker may steal
    "load": lambda w, s, b: (s, 1),  # load seconds
    "serving": lambda w, s, b: (s, 1),  # workers queueing or holding the expert / W
    "elapsed": lambda w, s, b: (1, 1),  # seconds on the run's clock
    "pooled_total": lambda w, s, b: (1, 1),
    "queued_total": lambda w, s, b: (1, 1),
}
_SECONDS_BLOCKS = ("queued", "admitted", "pooled", "stealable", "load", "elapsed", "pooled_total", "queued_total")
MIN_WORK = 1e-12  # predicted seconds of any request (never 0: queued work can always be stolen)


def obs_sizes(n_workers: int, n_slots: int, n_buckets: int) -> list[int]:
    """Entries of each block of :data:`OBS_BLOCKS`, in order."""
    return [r * c for r, c in (block(n_workers, n_slots, n_buckets) for block in OBS_BLOCKS.values())]


@dataclass(frozen=True, slots=True, eq=False)
class RescheduleTables:
    """Per-stage arrays computed once (lists, for fast scalar access; read-only by convention). Predictions are on
    the first worker's GPU type; ``ref``: the stage's lower bound (seconds, the observation's unit)."""

    workers: tuple[int, ...]  # worker ids, in cluster order (the observation's rows)
    n_slots: int
    n_buckets: int
    experts: tuple[str, ...]
    slot: Mapping[str, int]  # expert name -> slot
    pred: list[float]  # request -> predicted seconds (at least MIN_WORK)
    bucket: list[int]  # request -> predicted-length bucket
    expert_of: list[int]  # request -> slot
    load: list[float]  # slot -> load seconds
    max_batch: list[int]  # slot -> max batch (n_slots + 1 entries; the last: no expert resident)
    ref: float
    pool_order: tuple[tuple[int, ...], ...]  # slot -> request ids, longest predicted first
    obs_scale: np.ndarray  # per observation entry (float32): 1 / ref for seconds, 1 / W for serving counts, else 1

    @classmethod
    def build(cls, workload: Workload, costs: CostModel, cluster: Cluster,
              resident: Mapping[int, str | None] | None = None, n_slots: int = 8,
              buckets: Sequence[float] = DEFAULT_BUCKETS,
              max_batch: int | None = None) -> RescheduleTables:  # fmt: skip
        """``max_batch``: the runtime's cap on every engine's batch (None: the profile's)."""
        if len(workload.experts) > n_slots:
            raise ConfigError(f"workload {workload.name!r} has {len(workload.experts)} experts; the rescheduler has "
                              f"{n_slots} expert slots")  # fmt: skip
        if not cluster.workers:
            raise PlanError("rescheduler: the cluster has no workers")
        experts = tuple(e.name for e in workload.experts)
        slot = {e: i for i, e in enumerate(experts)}
        gpu, reqs = cluster.workers[0].gpu_type, workload.requests
        pred = np.maximum(np.asarray(costs.seconds_array(reqs, gpu), dtype=float), MIN_WORK)
        tokens = np.fromiter((costs.predicted_tokens(r) for r in reqs), dtype=float, count=len(reqs))
        bucket = np.searchsorted(np.asarray(buckets, dtype=float), tokens, side="right")
        expert_of = np.fromiter((slot[r.expert] for r in reqs), dtype=np.int64, count=len(reqs))
        by_pred = np.argsort(-pred, kind="stable")
        load = [0.0] * n_slots
        for e, i in slot.items():
            load[i] = float(costs.load_seconds(e, gpu))
        caps = [costs.model_cost(e, gpu).max_batch for e in experts]
        caps = [min(c, max_batch) for c in caps] if max_batch is not None else caps
        n_w, n_b = len(cluster.workers), len(buckets) + 1
        ref = max(lower_bound(workload, costs, cluster, resident, placement=False), 1e-9)
        factor = {name: 1.0 / ref for name in _SECONDS_BLOCKS} | {"serving": 1.0 / n_w}
        scale = np.repeat([factor.get(name, 1.0) for name in OBS_BLOCKS], obs_sizes(n_w, n_slots, n_b))
        return cls(tuple(cluster.ids), n_slots, n_b, experts, slot, pred.tolist(), bucket.tolist(),
                   expert_of.tolist(), load, [*caps, *[1] * (n_slots + 1 - len(caps))], ref,
                   tuple(tuple(by_pred[expert_of[by_pred] == i].tolist()) for i in range(n_slots)),
                   scale.astype(np.float32))  # fmt: skip

    @property
    def n_workers(self) -> int:
        return len(self.workers)

    @property
    def obs_size(self) -> int:
        return len(self.obs_scale)


Rows = tuple[tuple[int, ...], list[float], list[int], float]  # a queue, its work and count per slot, its total
Seen = tuple[object, Rows, int, int, float, list[float]]  # a worker as read: (its View.version, rows, resident
# slot, batch, busy seconds, stealable row)


def queue_rows(queue: tuple[int, ...], t: RescheduleTables) -> Rows:
    """``queue`` with its predicted seconds and requests per slot, and its predicted seconds."""
    n_s, expert_of, pred = t.n_slots, t.expert_of, t.pred
    work, count = [0.0] * n_s, [0] * n_s
    for r in queue:
        e = expert_of[r]
        work[e] += pred[r]
        count[e] += 1
    return queue, work, count, sum(work)


def read_worker(view: View, w: int, t: RescheduleTables, last: Seen | None) -> Seen:
    """Worker ``w`` as ``view`` shows it (``last``: as read before; reused while its version holds, its rows while
    its queue is the same)."""
    version = view.version(w)
    if last is not None and version is not None and last[0] == version:
        return last
    q = view.queued(w)
    rows = last[1] if last is not None and last[1][0] == q else queue_rows(q, t)
    resident, batch = t.slot.get(view.resident(w), t.n_slots), view.batch_size(w)
    return version, rows, resident, batch, view.busy(w), stealable_row(q, rows[1], rows[2], resident, batch, t)


def stealable_row(q: Sequence[int], work: list[float], count: list[int], resident: int, batch: int,
                  t: RescheduleTables) -> list[float]:  # fmt: skip
    """Slot -> predicted seconds of queue ``q`` (``work``, ``count`` per slot) that others may steal: what may
    move (:meth:`View.movable`), and none of the expert whose load is under way (its batch drained, the head needs
    another expert: moving that expert's work would waste the load)."""
    row = work[:]
    if q:
        e = t.expert_of[q[0]]
        if e == resident or not batch:  # else the head waits for the drain: it may move too
            if count[e] == 1 or e != resident:  # e != resident here: its load is under way
                row[e] = 0.0
            else:
                row[e] = max(row[e] - t.pred[q[0]], MIN_WORK)
    return row


class Snapshot:
    """The engines as the view shows them at one event, plus the moves decided at it so far (per worker index).
    ``cache``: worker index -> :data:`Seen` (updated here). A worker's rows are shared with the cache until a move
    changes them (copy on write: most events move nothing)."""

    __slots__ = ("_owned", "_steal", "batch", "busy", "qcount", "qsum", "queues", "qwork", "resident")

    def __init__(self, view: View, t: RescheduleTables, cache: list[Seen | None]) -> None:
        for i, w in enumerate(t.workers):  # the common case first: the worker has not changed since it was read
            last = cache[i]
            if last is None or last[0] is None or last[0] != view.version(w):
                cache[i] = read_worker(view, w, t, last)
        _, rows, resident, batch, busy, steal = map(list, zip(*cache, strict=True))
        queues, qwork, qcount, qsum = map(list, zip(*rows, strict=True))
        self.queues: list[Sequence[int]] = queues
        self.qwork: list[list[float]] = qwork  # worker x slot -> predicted seconds queued
        self.qcount: list[list[int]] = qcount  # worker x slot -> requests queued
        self.qsum: list[float] = qsum  # worker -> predicted seconds queued
        self.resident: list[int] = resident  # worker -> slot of its resident expert (n_slots: none)
        self.batch: list[int] = batch
        self.busy: list[float] = busy  # worker -> seconds served so far
        self._steal: list[list[float] | None] = steal  # worker -> stealable row (None: stale)
        self._owned = [False] * len(queues)

    def copy(self) -> Snapshot:
        """An independent copy (every row its own)."""
        new = object.__new__(Snapshot)
        new.queues, new.qwork, new.qcount = [list(q) for q in self.queues], [w[:] for w in self.qwork], [
            c[:] for c in self.qcount]  # fmt: skip
        new.qsum, new.resident, new.batch, new.busy = self.qsum[:], self.resident, self.batch, self.busy
        new._owned, new._steal = [True] * len(self.batch), self._steal[:]  # steal rows: never modified
        return new

    def _own(self, i: int) -> None:
        if not self._owned[i]:
            self.queues[i], self.qwork[i], self.qcount[i] = list(self.queues[i]), self.qwork[i][:], self.qcount[i][:]
            self._owned[i] = True
        self._steal[i] = None

    def idle(self, i: int) -> bool:
        return not self.queues[i] and not self.batch[i]

    def enqueue(self, i: int, ids: Sequence[int], t: RescheduleTables) -> None:
        self._own(i)
        work, count, pred, expert_of = self.qwork[i], self.qcount[i], t.pred, t.expert_of
        self.queues[i].extend(ids)  # type: ignore[attr-defined]  # owned: a list
        for r in ids:
            work[expert_of[r]] += pred[r]
            count[expert_of[r]] += 1
            self.qsum[i] += pred[r]

    def remove(self, i: int, ids: Sequence[int], e: int, work: float) -> None:
        """Take ``ids`` (all of slot ``e``, ``work`` predicted seconds) out of worker ``i``'s queue."""
        self._own(i)
        taken = set(ids)
        self.queues[i] = [r for r in self.queues[i] if r not in taken]
        count = self.qcount[i]
        count[e] -= len(ids)
        left = self.qwork[i][e] - work
        self.qwork[i][e] = max(left, MIN_WORK) if count[e] else 0.0
        self.qsum[i] = max(self.qsum[i] - work, 0.0) if self.queues[i] else 0.0

    def head_free(self, i: int, t: RescheduleTables) -> bool:
        """Whether worker ``i``'s head may move too (:meth:`View.movable`: it waits for the batch to drain)."""
        q = self.queues[i]
        return bool(q) and bool(self.batch[i]) and t.expert_of[q[0]] != self.resident[i]

    def movable(self, i: int, t: RescheduleTables) -> Sequence[int]:
        """Worker ``i``'s queued requests that may move (:meth:`View.movable`)."""
        return self.queues[i] if self.head_free(i, t) else self.queues[i][1:]

    def stealable_rows(self, t: RescheduleTables) -> list[list[float]]:
        """Every worker's :meth:`stealable` row (a new list of the cached rows: do not modify the rows)."""
        if None in self._steal:
            for i in range(len(self._steal)):
                self.stealable(i, t)
        return self._steal[:]  # type: ignore[return-value]  # no None left

    def stealable(self, i: int, t: RescheduleTables) -> list[float]:
        """Slot -> predicted seconds queued on worker ``i`` that others may steal (:func:`stealable_row`; cached
        until a move changes the worker: do not modify)."""
        row = self._steal[i]
        if row is None:
            row = self._steal[i] = stealable_row(self.queues[i], self.qwork[i], self.qcount[i], self.resident[i],
                                                 self.batch[i], t)  # fmt: skip
        return row


__all__ = ["DEFAULT_BUCKETS", "MIN_WORK", "OBS_BLOCKS", "OBS_HIGH", "RescheduleTables", "Rows", "Seen", "Snapshot",
           "obs_sizes", "queue_rows", "read_worker", "stealable_row"]  # fmt: skip
