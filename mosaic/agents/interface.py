"""The Scheduler interface: workload + costs + cluster -> Plan, and the runtime policy that runs it."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping

import numpy as np

from mosaic.agents.policy import PlanReplay, Policy
from mosaic.core.types import Cluster, Plan, Workload
from mosaic.predictors.interface import CostModel


class Scheduler(ABC):
    """Decides what each worker loads and which requests it runs, in which order."""

    name: str = "base"
    plans_ahead: bool = True  # False: :meth:`plan` assigns nothing, the runtime policy dispatches everything

    @abstractmethod
    def plan(
        self,
        workload: Workload,
        costs: CostModel,
        cluster: Cluster,
        rng: np.random.Generator,
        resident: Mapping[int, str | None] | None = None,
    ) -> Plan:
        """A plan for every request of ``workload``. ``resident``: expert already loaded per worker."""

    def runtime_policy(self, plan: Plan) -> Policy:
        """How the runtime loop runs ``plan`` (this scheduler's plan of the stage): replayed as is by default;
        schedulers that correct their plan at run time return a policy that acts at events."""
        return PlanReplay(plan)
