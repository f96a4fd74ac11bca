"""Adaptive aggregation, minimal form: agreement confidence of the k expert answers and pluggable skip policies.

A policy looks at a query, its experts' extracted answers and their confidence, and decides whether the
aggregator call can be skipped (the final answer is then the majority answer).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from mosaic.core.errors import ConfigError
from mosaic.core.types import Query

SKIP_TOLERANCE = 1e-9  # confidence >= threshold - SKIP_TOLERANCE skips (2/3 >= 0.6666666667 must hold)


def confidence(answers: Sequence[str | None]) -> tuple[float, str | None]:
    """(share of the k answers equal to the most common non-None answer, that answer); ties -> first seen.

    ``None`` (no extractable answer) never agrees with anything but counts in k. No answers -> ``(0.0, None)``.
    """
    counts: dict[str, int] = {}
    for a in answers:
        if a is not None:
            counts[a] = counts.get(a, 0) + 1
    if not counts:
        return 0.0, None
    best = max(counts, key=counts.__getitem__)  # max keeps the first maximal key in insertion (first-seen) order
    return counts[best] / len(answers), best


@dataclass(frozen=True, slots=True)
class Load:
    """What the serving loop knows when a query's experts have answered (runs without a stage barrier)."""

    now: float  # the run clock, seconds
    queued: int  # aggregator requests released and not finished (waiting, queued or running)
    queued_s: float  # their predicted seconds
    workers: int

    @property
    def backlog_s(self) -> float:
        """Predicted aggregator seconds queued per worker."""
        return self.queued_s / self.workers if self.workers else 0.0


LoadProbe = Callable[[], Load]


class AggregationPolicy(ABC):
    """Decides per query whether to skip the aggregator."""

    name: str = "base"

    def watch(self, probe: LoadProbe | None) -> None:
        """Called before each run: ``probe()`` gives the :class:`Load` at a decision (None: not known, e.g. with a
        stage barrier). Policies blind to the load ignore it."""
        return None

    @abstractmethod
    def decide(self, query: Query, answers: Sequence[str | None], confidence: float) -> bool:
        """True: skip the aggregator and answer with the majority; False: run the aggregator."""


class AlwaysAggregate(AggregationPolicy):
    """Never skips: every query goes to the aggregator (the paper's baseline MoA)."""

    name = "always"

    def decide(self, query: Query, answers: Sequence[str | None], confidence: float) -> bool:
        return False

    def __repr__(self) -> str:
        return "AlwaysAggregate()"


class ThresholdPolicy(AggregationPolicy):
    """Skips when ``confidence >= threshold`` (within :data:`SKIP_TOLERANCE`); ``threshold`` in [0, 1]."""

    name = "threshold"

    def __init__(self, threshold: float) -> None:
        if not (isinstance(threshold, int | float) and math.isfinite(threshold) and 0.0 <= threshold <= 1.0):
            raise ConfigError(f"aggregation threshold must be a number in [0, 1], got {threshold!r}")
        self.threshold = float(threshold)

    def decide(self, query: Query, answers: Sequence[str | None], confidence: float) -> bool:
        return confidence >= self.threshold - SKIP_TOLERANCE

    def __repr__(self) -> str:
        return f"ThresholdPolicy({self.threshold:g})"
