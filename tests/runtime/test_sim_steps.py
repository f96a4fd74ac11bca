"""Paged-KV block counts of a fixed batch, against counting step by step."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from mosaic.runtime.sim_steps import blocks_allocated, steps_that_fit


def _per_step(tokens: list[int], block: int, n: int) -> list[int]:
    """New blocks at each of n steps: one per request whose tokens are a multiple of the block size."""
    return [sum((t + j) % block == 0 for t in tokens) for j in range(n)]


@given(tokens=st.lists(st.integers(0, 70), min_size=1, max_size=9), block=st.sampled_from([1, 2, 3, 4, 16]),
       s=st.integers(0, 500), n=st.integers(0, 80), free=st.integers(0, 60))  # fmt: skip
def test_blocks_and_fitting_steps_match_counting(tokens, block, s, n, free):
    cls = [0] * block
    for t in tokens:
        cls[(t - s) % block] += 1
    steps = _per_step(tokens, block, n)
    assert blocks_allocated(cls, s, block, len(tokens), n) == sum(steps)
    m = steps_that_fit(cls, s, block, len(tokens), free, n)
    assert sum(steps[:m]) <= free and (m == n or sum(steps[: m + 1]) > free)
