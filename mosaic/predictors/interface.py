"""Cost interfaces: per-(expert, GPU type) costs, length predictors, and the CostModel schedulers use."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from mosaic.core.types import Request, Workload

STEP_MODELS = ("sum", "max")  # how an analytic profile prices a decode step (see mosaic.predictors.roofline)
MEMORY_MODES = ("reserve", "paged")  # how a simulated engine holds KV cache (see mosaic.runtime.sim_worker)


@dataclass(frozen=True, slots=True)
class ModelCost:
    """Profiled costs of one expert on one GPU type.

    A decode step of a batch of ``b`` sequences holding ``kv`` tokens of KV cache takes the larger of two lines,
    ``step_base_s + step_per_seq_s * b + step_per_kv_token_s * kv`` (the first, e.g. memory time) and
    ``step_compute_base_s + step_compute_per_seq_s * b + step_compute_per_kv_token_s * kv`` (the second, e.g.
    compute time). The second line defaults to 0, so a profile that does not set it prices a step by the first
    line alone (the sum model of earlier profiles). ``memory_mode`` says how the engine holds KV cache:
    ``reserve`` (a request's whole prompt + output up front) or ``paged`` (blocks of ``kv_block_tokens`` as tokens
    are generated, preempting by recompute when they run out, as vLLM). A load that replaces a resident expert
    first frees it: ``unload_s`` of the outgoing expert, then ``load_s`` of the incoming one (a worker's first load,
    with nothing resident, costs ``load_s`` only).
    """

    load_s: float  # seconds to load the weights and start the engine
    prefill_tps: float  # prompt tokens per second
    step_base_s: float  # seconds per decode step, fixed part (weights read once)
    step_per_seq_s: float  # extra seconds per step per sequence in the batch
    step_per_kv_token_s: float  # extra seconds per step per KV-cache token
    memory_gb: float  # weights + runtime overhead on the GPU
    max_batch: int = 256  # engine's max concurrent sequences
    kv_capacity_tokens: int = 1_000_000  # KV-cache tokens that fit next to the weights
    unload_s: float = 0.0  # seconds to free this expert's engine before another expert loads in its place
    step_compute_base_s: float = 0.0  # second step line (max with the first): fixed seconds per step
    step_compute_per_seq_s: float = 0.0  # second step line: seconds per sequence in the batch
    step_compute_per_kv_token_s: float = 0.0  # second step line: seconds per KV-cache token
    kv_block_tokens: int = 16  # paged KV: tokens per block (vLLM's default block size)
    memory_mode: str = "reserve"  # "reserve" | "paged" (MEMORY_MODES)

    @property
    def has_compute_line(self) -> bool:
        """Whether the second step line is set (a step is then the max of both)."""
        return bool(self.step_compute_base_s or self.step_compute_per_seq_s or self.step_compute_per_kv_token_s)

    def step_time(self, batch: int, kv_tokens: float) -> float:
        first = self.step_base_s + self.step_per_seq_s * batch + self.step_per_kv_token_s * kv_tokens
        if not self.has_compute_line:
            return first
        second = (self.step_compute_base_s + self.step_compute_per_seq_s * batch
                  + self.step_compute_per_kv_token_s * kv_tokens)  # fmt: skip
        return first if first >= second else second


class LengthPredictor(ABC):
    """Predicts output tokens per request (the paper: per-expert mean; we add per-query models)."""

    name: str = "base"

    @abstractmethod
    def predict(self, workload: Workload, requests: Sequence[Request]) -> np.ndarray:
        """Predicted output tokens, one float per request, in the order given."""

    def predict_spread(self, workload: Workload, requests: Sequence[Request]) -> np.ndarray | None:
        """How uncertain each prediction is: the standard deviation of the log output length around
        :meth:`predict`'s mean (a lognormal predictive distribution), one float per request; None when the
        predictor gives point predictions only. Cost models may price requests by their expected cost under it."""
        return None

    def missing(self, experts: Sequence[str]) -> list[str]:
        """Those of ``experts`` this predictor cannot predict for (checked before a run starts; default: none)."""
        return []


class CostModel(ABC):
    """Seconds per request and per model load, as schedulers and bounds see them (never true lengths).

    A cost model is bound to one workload (:meth:`bind`), so per-request predictions are computed
    once; the executor binds it again for the aggregation stage's workload.
    """

    @abstractmethod
    def bind(self, workload: Workload) -> CostModel:
        """A cost model of the same profile and predictor whose predictions cover ``workload``."""

    @abstractmethod
    def model_cost(self, expert: str, gpu_type: str) -> ModelCost:
        """The profiled costs of ``expert`` on ``gpu_type``."""

    @abstractmethod
    def predicted_tokens(self, request: Request) -> float:
        """Predicted output tokens of ``request``."""

    def load_seconds(self, expert: str, gpu_type: str) -> float:
        return self.model_cost(expert, gpu_type).load_s

    def unload_seconds(self, expert: str, gpu_type: str) -> float:
        """Seconds to free resident ``expert`` before another expert loads in its place."""
        return self.model_cost(expert, gpu_type).unload_s

    @abstractmethod
    def request_seconds(self, request: Request, gpu_type: str, batch: int | None = None) -> float:
        """Worker-seconds ``request`` adds when it shares a batch of ``batch`` sequences
        (default: the engine's max batch): prefill plus its share of the decode steps."""

    @abstractmethod
    def request_latency(self, request: Request, gpu_type: str) -> float:
        """Seconds ``request`` takes alone (batch of one): a floor on any schedule that runs it."""

    def seconds_array(self, requests: Sequence[Request], gpu_type: str, batch: int | None = None) -> np.ndarray:
        """``request_seconds`` of each request as one float array (implementations vectorise this)."""
        return np.array([self.request_seconds(r, gpu_type, batch) for r in requests], dtype=float)

    def group_seconds(self, requests: Sequence[Request], gpu_type: str) -> float:
        """Estimated seconds for one worker to run ``requests`` of one expert with continuous batching (no load):
        the larger of the amortised work at the batch the group can fill and the slowest request's decode steps
        shared with the rest (every request's own, batch-independent seconds plus the slowest one's shared steps).

        The batch-independent part of a request is recovered from its costs at batch 1 and 2 (the shared part
        halves from one to the other)."""
        if not requests:
            return 0.0
        mc = self.model_cost(requests[0].expert, gpu_type)
        batch = max(1, min(len(requests), mc.max_batch))
        work = np.array([self.request_seconds(r, gpu_type, batch) for r in requests])
        alone = np.array([self.request_latency(r, gpu_type) for r in requests])
        pair = np.array([self.request_seconds(r, gpu_type, 2) for r in requests])
        own = np.clip(2.0 * pair - alone, 0.0, work)
        return float(max(work.sum(), own.sum() + (alone - own).max()))
