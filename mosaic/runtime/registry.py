"""Registry of backends (sim, vllm, ray)."""

from __future__ import annotations

from typing import Any

from mosaic.core.registry import Registry

BACKENDS: Registry[Any] = Registry("backend")  # name -> factory(config, responses, costs) -> Backend
