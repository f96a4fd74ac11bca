"""Decode steps of one expert's group on one engine, as the simulator admits it (reserved KV: exact; paged KV: at
token granularity).

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
PAGED_EXACT = 16  # paged groups larger than this keep the closed form (the count is O(events x batch) in Python)
PAGED_EVENTS = 4000  # a paged count with more batch changes than this gives up (a cache that thrashes step by step)


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


def paged_steps(prompt: np.ndarray, tokens: np.ndarray, max_batch: int, capacity: float) -> tuple[int, float] | None:
    """(decode steps, recomputed prefill tokens) of requests (in queue order) with paged KV, as the simulator runs
    them at token granularity (its blocks are left out): the head joins while the batch has room and its prefill
    plus the next step of the whole batch fit; a request holds its prompt and what it has generated; when the next
    step does not fit, the most recently admitted running requests are preempted (never the earliest), keep their
    tokens and go back to the queue's front, and re-admitted they prefill prompt + generated again.
    None after ``PAGED_EVENTS`` batch changes."""
    queue = [(int(i), 0) for i in range(len(tokens))][::-1]  # a stack: the head is last
    run: list[list[int]] = []  # [request, generated]
    step, held, recompute, events = 0, 0.0, 0.0, 0
    while queue or run:
        events += 1
        if events > PAGED_EVENTS:
            return None
        while queue and len(run) < max_batch:
            i, g = queue[-1]
            if run and held + prompt[i] + g + len(run) + 1 > capacity:
                break
            queue.pop()
            run.append([i, g])
            held += prompt[i] + g
            recompute += prompt[i] + g if g else 0.0
        b = len(run)
        n = min(int(tokens[i]) - g for i, g in run)
        if b > 1:
            n = max(min(n, int((capacity - held) // b)), 1)
        step += n
        held += b * n
        for r in run:
            r[1] += n
        held -= sum(prompt[i] + g for i, g in run if g >= tokens[i])
        run = [r for r in run if r[1] < tokens[r[0]]]
        while len(run) > 1 and held + len(run) > capacity:  # the next step does not fit: preempt the latest
            i, g = run.pop()
            held -= prompt[i] + g
            queue.append((i, g))
    return step, recompute
