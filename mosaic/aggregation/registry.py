"""Registry of aggregation (skip) policies: ``aggregation.mode`` selects one by name (``mosaic list``)."""

from __future__ import annotations

from mosaic.aggregation.interface import AggregationPolicy
from mosaic.core.registry import Registry

AGGREGATION_POLICIES: Registry[type[AggregationPolicy]] = Registry("aggregation policy")
