"""Decode steps of one expert's group on one engine with reserved KV, as the simulator admits it (exact).

With every request queued at once and the KV cache reserved up front (``memory_mode: reserve``), the simulator's
engine admits the queue's head whenever the batch has room (``max_batch``) and its prompt + output fit the
reservations left (an oversized request runs alone); a request leaves after its output tokens' steps. The step
count ``S`` of the group then depends on the order and the lengths only, and the group takes ``sum a + base x S``
seconds under the first step line (prefill, per-sequence and KV terms are each request's own ``a``). The cost
model's closed form (``sum a + base x max(sum o / fill, max o)``) prices a request by the batch its own copies would
fill, so a long request that could share the cache with short ones is priced as running alone; this count does not.
"""

from __future__ import annotations

import heapq

import numpy as np

MAX_EXACT = 512  # groups larger than this keep the closed form (the count is O(n log n) in Python)


def reserve_steps(tokens: np.ndarray, footprint: np.ndarray, max_batch: int, capacity: float) -> int:
    """Decode steps of requests (in queue order) with ``tokens`` outputs and ``footprint`` reserved KV tokens each."""
    heap: list[tuple[int, float]] = []
    step, reserved, i, n = 0, 0.0, 0, len(tokens)
    while i < n or heap:
        while i < n and len(heap) < max_batch and (not heap or reserved + footprint[i] <= capacity):
            heapq.heappush(heap, (step + int(tokens[i]), float(footprint[i])))
            reserved += footprint[i]
            i += 1
        end, freed = heapq.heappop(heap)
        step = max(step, end)
        reserved -= freed
        while heap and heap[0][0] <= step:
            reserved -= heapq.heappop(heap)[1]
    return step
