"""McNaughton's wrap-around rule with loads: a fast, near-optimal start for the MIP on large instances.

For a target makespan ``C``, experts (heaviest first) are poured into workers in order: a worker takes a load and
then as many of the expert's requests as fit under ``C`` (priced like the model prices a group); when it is full,
the rest of the expert continues on the next worker with another load. Each expert is a stream of its requests:
stragglers first (so they share one group), then its buckets interleaved in proportion. A binary search finds
the smallest ``C`` for which everything fits. With identical workers the result is within about one load per
worker of the work bound, which greedy request-by-request LPT is not when experts must be replicated.
"""

from __future__ import annotations

import numpy as np

from mosaic.ilp.instance import IlpInstance

SEARCH_STEPS = 40


class _Streams:
    """Per expert: its buckets and the cumulative bucket counts of every prefix of its request stream."""

    def __init__(self, inst: IlpInstance) -> None:
        self.inst = inst
        self.buckets = [np.asarray(inst.expert_buckets(e), dtype=np.int64) for e in range(len(inst.experts))]
        self.cum = [self._cumulative(bs) for bs in self.buckets]

    def _cumulative(self, bs: np.ndarray) -> np.ndarray:
        inst = self.inst
        strag = [b for b in bs if inst.straggler[b]]
        rest = [b for b in bs if not inst.straggler[b]]
        sizes = np.array([len(inst.bucket_requests[b]) for b in rest], dtype=np.int64)
        labels = np.repeat(np.arange(len(rest)), sizes)
        pos = np.concatenate([(np.arange(n) + 0.5) / n for n in sizes]) if len(rest) else np.zeros(0)
        stream = np.concatenate([np.array([list(bs).index(b) for b in strag], dtype=np.int64),
                                 np.array([list(bs).index(rest[k]) for k in labels[np.argsort(pos, kind="stable")]],
                                          dtype=np.int64)])  # fmt: skip
        onehot = np.zeros((len(stream) + 1, len(bs)), dtype=np.int64)
        onehot[np.arange(1, len(stream) + 1), stream] = 1
        return np.cumsum(onehot, axis=0)

    def cost(self, e: int, t: int, i: int, j: int) -> float:
        """Model seconds (no load) of requests ``[i, j)`` of expert ``e``'s stream on GPU type ``t``."""
        if j <= i:
            return 0.0
        inst, bs = self.inst, self.buckets[e]
        c = self.cum[e][j] - self.cum[e][i]
        full = float(inst.bucket_seconds[bs, t] @ c)
        own = float(inst.bucket_fixed[bs, t] @ c)
        slow = max((float(inst.bucket_latency[b, t] - inst.bucket_fixed[b, t]) for b, k in zip(bs, c, strict=True)
                    if k and inst.straggler[b]), default=0.0)  # fmt: skip
        return max(full, own + max(float(inst.decode_mean[e, t]), slow))

    def longest_fit(self, e: int, t: int, i: int, room: float) -> int:
        """Largest ``j`` with ``cost(i, j) <= room`` (``i`` when not even one request fits)."""
        lo, hi = i, len(self.cum[e]) - 1
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if self.cost(e, t, i, mid) <= room:
                lo = mid
            else:
                hi = mid - 1
        return lo


def _place_whole(s: _Streams, order: list[int], target: float, counts: np.ndarray, busy: np.ndarray) -> bool:
    """Experts that may not be split (R_max 1), heaviest first, each whole on the fullest worker it still fits."""
    inst = s.inst
    for e in order:
        if inst.r_max[e] > 1:
            continue
        n = len(s.cum[e]) - 1
        after = [busy[w] + inst.load[e, w] + s.cost(e, inst.worker_type[w], 0, n) if inst.allowed[e, w] else np.inf
                 for w in range(len(busy))]  # fmt: skip
        fits = [w for w, a in enumerate(after) if a <= target]
        if not fits:
            return False
        w = max(fits, key=lambda k: (after[k], -k))
        counts[s.buckets[e], w] += s.cum[e][n]
        busy[w] = after[w]
    return True


def _pour(s: _Streams, order: list[int], target: float) -> np.ndarray | None:
    """Counts (buckets x workers) of the wrap-around schedule under ``target``, or None if it does not fit:
    unsplittable experts first (:func:`_place_whole`), then the others poured into the room left, in worker order."""
    inst = s.inst
    n_w = len(inst.workers)
    counts = np.zeros((inst.n_buckets, n_w), dtype=np.int64)
    busy = np.zeros(n_w)
    if not _place_whole(s, order, target, counts, busy):
        return None
    w = 0
    for e in (e for e in order if inst.r_max[e] > 1):
        i, n, pieces = 0, len(s.cum[e]) - 1, 0
        while i < n:
            if w >= n_w:
                return None
            t, load = inst.worker_type[w], float(inst.load[e, w])
            j = s.longest_fit(e, t, i, target - busy[w] - load) if inst.allowed[e, w] else i
            if not (j > i and (busy[w] == 0.0 or j == n or s.cost(e, t, i, j) >= load)):
                if busy[w] == 0.0 and inst.allowed[e, w]:
                    return None  # not even one request fits an empty worker
                w += 1
                continue
            counts[s.buckets[e], w] += s.cum[e][j] - s.cum[e][i]
            busy[w] += load + s.cost(e, t, i, j)
            pieces += 1
            if pieces > inst.r_max[e]:
                return None
            i = j
            if i < n:
                w += 1
    return counts


def wraparound(inst: IlpInstance, lower: float, upper: float) -> np.ndarray | None:
    """The best wrap-around counts found by binary search on the target in ``[lower, upper]`` (None: none fits,
    or the instance has constraints the rule does not handle: fixed placement, co-resident memory)."""
    if inst.fixed or inst.coresident_memory or inst.n_buckets == 0:
        return None
    s = _Streams(inst)
    work = [-float(inst.bucket_seconds[s.buckets[e], 0] @ s.cum[e][-1]) for e in range(len(inst.experts))]
    order = [int(e) for e in np.argsort(work, kind="stable")]
    best = _pour(s, order, upper)
    if best is None:
        return None
    lo, hi = lower, upper
    for _ in range(SEARCH_STEPS):
        if hi - lo <= 1e-4 * hi:
            break
        mid = 0.5 * (lo + hi)
        found = _pour(s, order, mid)
        if found is None:
            lo = mid
        else:
            best, hi = found, mid
    return best
