"""A scheduler in 30 lines: each expert's requests stay together on one worker (no replication), experts placed
largest-first on the worker predicted to free up first (longest-processing-time packing of whole experts)."""

from __future__ import annotations

import numpy as np

from mosaic.agents import SCHEDULERS, Scheduler
from mosaic.agents.bounds import plan_with_estimates
from mosaic.agents.common import empty_order, normalize_resident, worker_gpus
from mosaic.core.types import Cluster, Plan, Workload, requests_by_expert
from mosaic.predictors.interface import CostModel


@SCHEDULERS.register("pack-experts", help="whole experts, largest first, on the least-loaded worker")
class PackExperts(Scheduler):
    name = "pack-experts"

    def plan(self, workload: Workload, costs: CostModel, cluster: Cluster, rng: np.random.Generator,
             resident=None) -> Plan:  # fmt: skip
        gpus, order = worker_gpus(cluster), empty_order(cluster)
        load = dict.fromkeys(gpus, 0.0)
        groups = requests_by_expert(workload)  # expert -> its request ids
        work = {e: costs.group_seconds([workload.requests[i] for i in ids], cluster.workers[0].gpu_type)
                for e, ids in groups.items()}  # fmt: skip
        for expert in sorted(groups, key=work.get, reverse=True):
            w = min(load, key=load.get)  # the worker predicted to be free first
            order[w].extend(groups[expert])
            load[w] += costs.load_seconds(expert, gpus[w]) + work[expert]
        return plan_with_estimates(self.name, workload, costs, cluster, order, normalize_resident(cluster, resident))
