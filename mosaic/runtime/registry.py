"""Registry of backends (sim, vllm, ray)."""

from __future__ import annotations

from typing import Protocol

from mosaic.core.config import RunConfig
from mosaic.core.registry import Registry
from mosaic.core.types import Responses
from mosaic.predictors.interface import CostModel
from mosaic.runtime.interface import Backend


class BackendFactory(Protocol):
    """What ``runtime.backend`` selects: the run's config, the ground-truth responses (the simulator replays them)
    and the cost model -> a :class:`Backend`."""

    def __call__(self, cfg: RunConfig, responses: Responses, costs: CostModel) -> Backend: ...


BACKENDS: Registry[BackendFactory] = Registry("backend")
