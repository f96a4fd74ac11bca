"""The discrete-event simulator backend: replays true output lengths through simulated continuous-batching workers.

Timing semantics live in :mod:`mosaic.runtime.sim_worker` (one :class:`WorkerSim` per GPU); stages run on the
runtime loop (:mod:`mosaic.runtime.loop`) under a policy. A static plan makes the workers of a stage independent,
so the loop runs them one after another; the trace then holds each worker's records together (time-ordered within
a worker). Registered as ``'sim'`` in ``BACKENDS``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any

from mosaic.agents.policy import PlanReplay, Policy
from mosaic.core.config import RunConfig
from mosaic.core.errors import ConfigError, PlanError, WorkloadError
from mosaic.core.trace import TraceWriter
from mosaic.core.types import Cluster, Plan, Response, Responses, Worker, Workload
from mosaic.predictors.interface import CostModel, ModelCost
from mosaic.runtime.interface import Backend, Gates, StageResult
from mosaic.runtime.loop import SimLoop
from mosaic.runtime.registry import BACKENDS
from mosaic.runtime.sim_worker import SimRequest, WorkerSim


class SimBackend(Backend):
    """Simulates each stage from ``responses`` (true output tokens, answers) and ``costs`` (per-expert ModelCost).

    ``max_batch`` (optional) caps every engine's ``ModelCost.max_batch`` (the runtime's max concurrent sequences).
    """

    name = "sim"
    runs_policies = True

    def __init__(self, responses: Responses, costs: CostModel, max_batch: int | None = None) -> None:
        if max_batch is not None and max_batch < 1:
            raise ConfigError(f"sim backend: max_batch must be >= 1, got {max_batch}")
        self.responses = responses
        self.costs = costs
        self.max_batch = max_batch
        self._model_costs: dict[tuple[str, str], ModelCost] = {}

    def model_cost(self, expert: str, gpu_type: str) -> ModelCost:
        """``costs.model_cost(expert, gpu_type)`` with the max-batch cap applied (cached)."""
        key = (expert, gpu_type)
        mc = self._model_costs.get(key)
        if mc is None:
            mc = self.costs.model_cost(expert, gpu_type)
            if self.max_batch is not None and mc.max_batch > self.max_batch:
                mc = replace(mc, max_batch=self.max_batch)
            self._model_costs[key] = mc
        return mc

    def cost_of(self, gpu_type: str) -> Callable[[str], ModelCost]:
        """Expert -> ModelCost on ``gpu_type`` (what a :class:`WorkerSim` takes)."""
        return lambda expert: self.model_cost(expert, gpu_type)

    def make_worker(
        self,
        worker: Worker,
        stage: str,
        start: float = 0.0,
        resident: str | None = None,
        emit: Callable[[Any], None] | None = None,
    ) -> WorkerSim:
        """A fresh simulated ``worker`` (for environments that drive workers themselves)."""
        return WorkerSim(worker.id, self.cost_of(worker.gpu_type), stage, start, resident, emit)

    def sim_requests(
        self, workload: Workload, request_ids: tuple[int, ...], out: dict[tuple[int, str], Response] | None = None
    ) -> list[SimRequest]:
        """The requests ``request_ids`` of ``workload`` with their replayed responses (also stored in ``out``)."""
        reqs, queries, get = workload.requests, workload.queries, self.responses.table.get
        n = len(reqs)
        if request_ids and (min(request_ids) < 0 or max(request_ids) >= n):
            bad = next(rid for rid in request_ids if not 0 <= rid < n)
            raise PlanError(f"request {bad} does not exist in workload {workload.name!r} ({n} requests)")
        items: list[SimRequest] = []
        append, make = items.append, tuple.__new__  # tuple.__new__: 2.5x faster than the NamedTuple's own __new__
        for rid in request_ids:  # the simulator's per-request setup: kept flat (bench_sim)
            r = reqs[rid]
            q, expert, prompt = r.query_id, r.expert, r.prompt_tokens
            resp = get((q, expert))
            if resp is None:
                raise WorkloadError(f"no recorded response of expert {expert!r} to query {q}")
            out_tokens = resp.output_tokens
            if out_tokens < 0 or prompt < 0:
                raise WorkloadError(f"request {rid} has negative tokens ({prompt}, {out_tokens})")
            append(make(SimRequest, (rid, q, expert, prompt, out_tokens, queries[q].arrival, resp)))
        if out is not None:
            out.update(((it.query_id, it.expert), it.response) for it in items)
        return items

    def run_stage(
        self,
        stage: str,
        plan: Plan,
        workload: Workload,
        cluster: Cluster,
        trace: TraceWriter,
        start: float = 0.0,
        resident: Mapping[int, str | None] | None = None,
    ) -> StageResult:
        """Simulate every worker of ``plan`` from ``start`` with ``resident`` loaded; records go to ``trace``."""
        plan.require_workers(cluster)
        return self.run_policy(stage, PlanReplay(plan), workload, self.costs, cluster, trace, start, resident)

    def run_policy(
        self,
        stage: str,
        policy: Policy,
        workload: Workload,
        costs: CostModel,
        cluster: Cluster,
        trace: TraceWriter,
        start: float = 0.0,
        resident: Mapping[int, str | None] | None = None,
        gates: Gates | None = None,
    ) -> StageResult:
        """Simulate the stage under ``policy`` on the runtime loop (:class:`~mosaic.runtime.loop.SimLoop`)."""
        return SimLoop(self, stage, workload, costs, cluster, trace, start, resident, gates).run(policy)


def make_sim_backend(cfg: RunConfig, responses: Responses, costs: CostModel) -> SimBackend:
    """BACKENDS factory: ``cfg.runtime.max_batch`` caps the engines' batch size."""
    return SimBackend(responses, costs, cfg.runtime.max_batch)


BACKENDS.register("sim", help="discrete-event simulator: replays recorded output lengths with profiled costs")(
    make_sim_backend
)
