"""Registry of workloads (the paper presets and custom files)."""

from __future__ import annotations

from typing import Any

from mosaic.core.registry import Registry

WORKLOADS: Registry[Any] = Registry("workload")  # preset name -> builder
