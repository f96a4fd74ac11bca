"""Moved to :mod:`mosaic.core.aggregation` (below the workloads and agents that use it); re-exported here for the
runtime's callers."""

from mosaic.core.aggregation import (
    SKIP_TOLERANCE,
    AggregationPolicy,
    AlwaysAggregate,
    ThresholdPolicy,
    confidence,
)

__all__ = [
    "SKIP_TOLERANCE",
    "AggregationPolicy",
    "AlwaysAggregate",
    "ThresholdPolicy",
    "confidence",
]
