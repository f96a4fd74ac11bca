"""mosaic.aggregation: everything about the aggregator stage's decision in one package, below the schedulers and
the runtime that use it.

- :mod:`~mosaic.aggregation.answers`: answer extraction (choice letters, numbers, code) from responses;
- :mod:`~mosaic.aggregation.agreement`: inter-expert agreement (exact match, embeddings);
- :mod:`~mosaic.aggregation.prompts`: the aggregator's prompt;
- :mod:`~mosaic.aggregation.interface`: the one policy interface, :class:`AggregationPolicy` (``decide`` per
  query: skip the aggregator or not), and the paper's confidence;
- :mod:`~mosaic.aggregation.thresholds`: the registered policies (always, fixed threshold, learned, calibrated,
  load-aware), :mod:`~mosaic.aggregation.reliability` and :mod:`~mosaic.aggregation.skip_front`: reliability-
  weighted agreement, calibrated skip models and their evaluation against the fixed-T front.

Importing this package registers the policies in :data:`~mosaic.aggregation.registry.AGGREGATION_POLICIES`.
"""

from mosaic.aggregation.interface import AggregationPolicy, AlwaysAggregate, ThresholdPolicy, confidence
from mosaic.aggregation.registry import AGGREGATION_POLICIES
from mosaic.aggregation.thresholds import make_aggregation_policy

__all__ = [
    "AGGREGATION_POLICIES",
    "AggregationPolicy",
    "AlwaysAggregate",
    "ThresholdPolicy",
    "confidence",
    "make_aggregation_policy",
]
