"""Closed forms of the simulator's decode spans: step counts and seconds of a fixed batch (one step line or the max
of two), and the paged KV blocks it allocates. Used by :mod:`mosaic.runtime.sim_worker`'s event loop.

Paged blocks: a request holding ``t`` KV tokens holds ``ceil(t / block)`` blocks, and a step writes one token per
request, so a step takes a new block for every request whose ``t`` is a multiple of ``block``. Token counts and the
step counter grow together, so ``(t - step) mod block`` is fixed per request: ``cls[c]`` counts the running
requests of phase ``c``, and step ``g`` allocates ``cls[-g mod block]`` blocks, every request once per ``block``
steps.
"""

from __future__ import annotations

import math

_NEVER = 1 << 62  # "no step count reaches it" (decode that costs nothing cannot reach a later arrival)


def steps_to_reach(gap: float, c0: float, h: float) -> int:
    """Smallest ``n >= 1`` with ``n * c0 + h * n (n - 1) / 2 >= gap`` (``gap > 0``, ``c0, h >= 0``)."""
    if h <= 0.0:
        if c0 <= 0.0 or gap / c0 >= _NEVER:  # free (or denormal-cheap) steps never reach the gap
            return _NEVER
        n = max(1, math.ceil(gap / c0))
    else:
        bq = c0 - 0.5 * h
        n = max(1, math.ceil((-bq + math.sqrt(bq * bq + 2.0 * h * gap)) / h))
    while n > 1 and (n - 1) * c0 + h * (n - 1) * (n - 2) * 0.5 >= gap:
        n -= 1
    while n * c0 + h * n * (n - 1) * 0.5 < gap:
        n += 1
    return n


def split_lines(c1: float, h1: float, c2: float, h2: float) -> tuple[float, float, float, float, int]:
    """Steps ``j = 0, 1, ...`` costing ``max(c1 + h1 j, c2 + h2 j)``: ``(cA, hA, cB, hB, k)`` with line A the larger
    for ``j < k`` and line B from ``k`` on (``k = _NEVER``: A stays the larger). Two lines cross at most once."""
    d0, dd = c2 - c1, h2 - h1
    if d0 > 0.0 or (d0 == 0.0 and dd > 0.0):  # the second line leads: swap, so that line 1 leads at j = 0
        c1, h1, c2, h2, d0, dd = c2, h2, c1, h1, -d0, -dd
    if dd <= 0.0 or -d0 / dd >= _NEVER:
        return c1, h1, c2, h2, _NEVER
    k = int(-d0 / dd) + 1  # first j with d0 + dd j > 0; corrected for rounding below
    while k > 1 and d0 + dd * (k - 1) > 0.0:
        k -= 1
    while d0 + dd * k <= 0.0:
        k += 1
    return c1, h1, c2, h2, k


def split_seconds(n: int, ca: float, ha: float, cb: float, hb: float, k: int) -> float:
    """Seconds of steps ``0 .. n-1`` of :func:`split_lines`' lines (A before step ``k``, B from it)."""
    if n <= k:
        return n * ca + ha * (n * (n - 1) * 0.5)
    m = n - k
    return k * ca + ha * (k * (k - 1) * 0.5) + m * (cb + hb * k) + hb * (m * (m - 1) * 0.5)


def split_steps_to_reach(gap: float, ca: float, ha: float, cb: float, hb: float, k: int) -> int:
    """Smallest ``n >= 1`` whose :func:`split_seconds` reach ``gap`` (> 0), as :func:`steps_to_reach` per line."""
    if k >= _NEVER:
        return steps_to_reach(gap, ca, ha)
    first = k * ca + ha * (k * (k - 1) * 0.5)
    if first >= gap:
        return steps_to_reach(gap, ca, ha)
    return k + steps_to_reach(gap - first, cb + hb * k, hb)


def blocks_allocated(cls: list[int], s: int, block: int, b: int, n: int) -> int:
    """Blocks ``b`` running requests of phase counts ``cls`` take over steps ``s .. s+n-1``."""
    q, r = divmod(n, block)
    total = q * b
    if r:  # steps s .. s+r-1 allocate the phases a, a-1, ..., a-r+1 (mod block)
        a = -s % block
        lo = a - r + 1
        total += sum(cls[lo : a + 1]) if lo >= 0 else sum(cls[: a + 1]) + sum(cls[lo:])
    return total


def steps_that_fit(cls: list[int], s: int, block: int, b: int, free: int, n: int) -> int:
    """Most steps ``m <= n`` from step ``s`` whose blocks (:func:`blocks_allocated`) fit ``free`` blocks (b >= 1)."""
    q = max(free, 0) // b
    if q * block >= n:
        return n
    rem, m, a = free - q * b, q * block, -s % block
    for j in range(block):  # a whole cycle takes b > rem blocks: this stops within it
        c = cls[(a - j) % block]
        if c > rem:
            break
        rem -= c
        m += 1
    return min(m, n)
