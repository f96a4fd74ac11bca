"""Round-robin baseline of the paper: each expert loaded once, on one worker, assigned round-robin."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from mosaic.agents.bounds import plan_with_estimates
from mosaic.agents.common import empty_order, normalize_resident, requests_by_expert, resident_first
from mosaic.agents.interface import Scheduler
from mosaic.agents.registry import SCHEDULERS
from mosaic.core.types import Cluster, Plan, Workload
from mosaic.predictors.interface import CostModel


def round_robin_experts(workload: Workload, cluster: Cluster) -> dict[int, list[str]]:
    """Worker id -> experts it serves: the i-th expert with requests (workload order) goes to worker i % W."""
    ids = cluster.ids
    served: dict[int, list[str]] = {w: [] for w in ids}
    for i, expert in enumerate(requests_by_expert(workload)):
        served[ids[i % len(ids)]].append(expert)
    return served


@SCHEDULERS.register("round-robin")
class RoundRobinScheduler(Scheduler):
    """Paper baseline: each expert loaded once on one worker, experts dealt to workers round-robin.

    The i-th expert that has requests (in the workload's expert order) goes to worker i % W, so 6
    experts on 4 workers give workers 0 and 1 two experts each. Experts with no requests are skipped
    (they take no turn). Within a worker, experts in list order, except that an expert already
    resident there runs first; each expert's requests in query order. No replication, no cost model
    used for decisions. Deterministic: ``rng`` is not used.
    """

    name = "round-robin"

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
        groups = requests_by_expert(workload)
        for worker, experts in round_robin_experts(workload, cluster).items():
            for expert in resident_first(experts, res.get(worker)):
                order[worker].extend(groups[expert])
        return plan_with_estimates(self.name, workload, costs, cluster, order, res)
