"""Registries of schedulers and aggregation (skip) policies."""

from __future__ import annotations

from typing import Any

from mosaic.agents.interface import Scheduler
from mosaic.core.registry import Registry

SCHEDULERS: Registry[type[Scheduler]] = Registry("scheduler")
AGGREGATION_POLICIES: Registry[Any] = Registry("aggregation policy")


def make_scheduler(name: str, **kwargs: Any) -> Scheduler:
    """Instantiate the scheduler registered as ``name``."""
    return SCHEDULERS.get(name)(**kwargs)
