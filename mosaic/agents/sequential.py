"""Sequential baseline: one GPU runs every expert, model after model (as Symbolic-MoE)."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from mosaic.agents.bounds import plan_with_estimates
from mosaic.agents.common import empty_order, normalize_resident, requests_by_expert, resident_first
from mosaic.agents.interface import Scheduler
from mosaic.agents.registry import SCHEDULERS
from mosaic.core.types import Cluster, Plan, Workload
from mosaic.predictors.interface import CostModel


@SCHEDULERS.register("sequential")
class SequentialScheduler(Scheduler):
    """One GPU (the first worker) runs every expert, model after model; the other workers idle.

    Experts run in the workload's expert order (the one resident on that worker first); each expert's
    requests in query order. Deterministic: ``rng`` is not used.
    """

    name = "sequential"

    def plan(
        self,
        workload: Workload,
        costs: CostModel,
        cluster: Cluster,
        rng: np.random.Generator,
        resident: Mapping[int, str | None] | None = None,
    ) -> Plan:
        order = empty_order(cluster)
        res = normalize_resident(cluster, resident)
        worker = cluster.workers[0].id
        groups = requests_by_expert(workload)
        for expert in resident_first(list(groups), res.get(worker)):
            order[worker].extend(groups[expert])
        return plan_with_estimates(self.name, workload, costs, cluster, order, res)
