"""mosaic.runtime: the Backend interface, the discrete-event simulator, the Executor and aggregation policies.

Importing this package registers the ``'sim'`` backend in :data:`mosaic.runtime.registry.BACKENDS`.
"""

from mosaic.aggregation.interface import AggregationPolicy, AlwaysAggregate, ThresholdPolicy, confidence
from mosaic.runtime import ray_backend, vllm_backend  # noqa: F401  (register 'vllm', 'ray'; vLLM/Ray load lazily)
from mosaic.runtime.executor import AGGREGATOR_TEMPLATE_TOKENS, Executor, RunResult, aggregation_workload
from mosaic.runtime.interface import Backend, StageResult
from mosaic.runtime.registry import BACKENDS
from mosaic.runtime.sim import SimBackend, make_sim_backend
from mosaic.runtime.sim_worker import ARRIVAL_EPS, SimRequest, WorkerSim

__all__ = [
    "AGGREGATOR_TEMPLATE_TOKENS",
    "ARRIVAL_EPS",
    "BACKENDS",
    "AggregationPolicy",
    "AlwaysAggregate",
    "Backend",
    "Executor",
    "RunResult",
    "SimBackend",
    "SimRequest",
    "StageResult",
    "ThresholdPolicy",
    "WorkerSim",
    "aggregation_workload",
    "confidence",
    "make_sim_backend",
]
