"""Core types, registry, config and trace IO. Imports nothing heavy."""

from mosaic.core.errors import ConfigError, MosaicError, PlanError, ProfileError, RegistryError, WorkloadError
from mosaic.core.registry import Registry
from mosaic.core.trace import (
    AGGREGATION_STAGE,
    EXPERT_STAGE,
    AggregationRecord,
    LoadRecord,
    Record,
    RequestRecord,
    TraceWriter,
    read_trace,
)
from mosaic.core.types import (
    Cluster,
    Expert,
    ExpertKind,
    Plan,
    Query,
    Request,
    Response,
    Responses,
    Worker,
    Workload,
    plan_from_order,
    serving_sequence,
)

__all__ = [
    "AGGREGATION_STAGE",
    "EXPERT_STAGE",
    "AggregationRecord",
    "Cluster",
    "ConfigError",
    "Expert",
    "ExpertKind",
    "LoadRecord",
    "MosaicError",
    "Plan",
    "PlanError",
    "ProfileError",
    "Query",
    "Record",
    "Registry",
    "RegistryError",
    "Request",
    "RequestRecord",
    "Response",
    "Responses",
    "TraceWriter",
    "Worker",
    "Workload",
    "WorkloadError",
    "plan_from_order",
    "read_trace",
    "serving_sequence",
]
