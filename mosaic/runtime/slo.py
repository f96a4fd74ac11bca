"""Each query's latency on an idle cluster, the yardstick of SLO attainment: its expert requests, each alone on a
worker with its model loaded, in parallel; then its aggregator request alone (when it ran). Priced by the
simulator's own timing (:class:`~mosaic.runtime.sim_worker.WorkerSim`) on the tokens the trace recorded."""

from __future__ import annotations

from collections.abc import Iterable

from mosaic.core.trace import AGGREGATION_STAGE, Record, RequestRecord
from mosaic.core.types import Cluster
from mosaic.predictors.interface import CostModel
from mosaic.runtime.sim_worker import SimRequest, WorkerSim, discard


def alone_seconds(costs: CostModel, gpu_type: str, expert: str, prompt: int, output: int) -> float:
    """Seconds one request takes alone on an idle ``gpu_type`` worker with ``expert`` loaded."""
    sim = WorkerSim(0, lambda e: costs.model_cost(e, gpu_type), resident=expert, emit=discard)
    sim.enqueue([SimRequest(0, 0, expert, int(prompt), int(output), 0.0)])
    return sim.run_until_idle()


def idle_latencies(records: Iterable[Record], costs: CostModel, cluster: Cluster) -> dict[int, float]:
    """Query id -> its latency on an idle cluster (each request priced on the GPU type of the worker that ran it)."""
    gpu = {w.id: w.gpu_type for w in cluster.workers}
    cache: dict[tuple[str, str, int, int], float] = {}
    experts: dict[int, float] = {}
    agg: dict[int, float] = {}
    for r in records:
        if not isinstance(r, RequestRecord):
            continue
        key = (gpu.get(r.worker, cluster.workers[0].gpu_type), r.expert, r.prompt_tokens, r.output_tokens)
        s = cache.get(key)
        if s is None:
            s = cache[key] = alone_seconds(costs, *key)
        into = agg if r.stage == AGGREGATION_STAGE else experts
        into[r.query_id] = max(into.get(r.query_id, 0.0), s)
    return {q: experts.get(q, 0.0) + agg.get(q, 0.0) for q in experts.keys() | agg.keys()}


__all__ = ["alone_seconds", "idle_latencies"]
