"""Data-parallel baseline of the paper: every expert on every worker, its requests split evenly."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from mosaic.agents.bounds import plan_with_estimates
from mosaic.agents.common import empty_order, normalize_resident, requests_by_expert, resident_first
from mosaic.agents.interface import Scheduler
from mosaic.agents.registry import SCHEDULERS
from mosaic.core.types import Cluster, Plan, Workload
from mosaic.predictors.interface import CostModel


def split_even(ids: Sequence[int], parts: int, start: int = 0) -> list[list[int]]:
    """``ids`` cut into ``parts`` contiguous chunks whose sizes differ by at most one.

    The ``len(ids) % parts`` larger chunks are the ones at positions ``start, start+1, ...`` (mod parts),
    so callers can rotate who gets the remainder.
    """
    base, extra = divmod(len(ids), parts)
    bigger = {(start + k) % parts for k in range(extra)}
    chunks, pos = [], 0
    for p in range(parts):
        size = base + (p in bigger)
        chunks.append(list(ids[pos : pos + size]))
        pos += size
    return chunks


@SCHEDULERS.register("data-parallel")
class DataParallelScheduler(Scheduler):
    """Paper baseline: every expert on every worker, each expert's requests split evenly across workers.

    Each expert's requests (query order) are cut into W contiguous chunks, chunk k to the k-th worker;
    the remainder requests go one each to the next workers in turn, continuing where the previous
    expert's remainder stopped, so no worker collects every remainder. Every worker whose chunk is not
    empty loads the expert. Every worker runs the experts in the same (workload) order, except that
    an expert already resident there runs first. Deterministic: ``rng`` is not used.
    """

    name = "data-parallel"

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
        ids = cluster.ids
        chunks: dict[str, list[list[int]]] = {}
        start = 0
        for expert, reqs in requests_by_expert(workload).items():
            chunks[expert] = split_even(reqs, len(ids), start)
            start = (start + len(reqs)) % len(ids)
        for k, worker in enumerate(ids):
            for expert in resident_first(list(chunks), res.get(worker)):
                order[worker].extend(chunks[expert][k])
        return plan_with_estimates(self.name, workload, costs, cluster, order, res)
