"""Helpers shared by the schedulers and the bounds: input checks, grouping requests by expert, GPU types.

Everything here is pure and deterministic; nothing imports a heavy library.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from itertools import groupby

from mosaic.core.errors import PlanError
from mosaic.core.types import Cluster, Request, Workload, requests_by_expert  # noqa: F401  (re-exported)


def worker_gpus(cluster: Cluster) -> dict[int, str]:
    """Worker id -> GPU type, in cluster order. Raises :class:`PlanError` on an empty cluster or repeated ids."""
    gpus = {w.id: w.gpu_type for w in cluster.workers}
    if not gpus:
        raise PlanError("cluster has no workers: a plan needs at least one")
    if len(gpus) != len(cluster.workers):
        raise PlanError(f"cluster repeats worker ids: {[w.id for w in cluster.workers]}")
    return gpus


def gpu_types(cluster: Cluster) -> tuple[str, ...]:
    """The distinct GPU types of ``cluster``, in order of first appearance."""
    return tuple(dict.fromkeys(worker_gpus(cluster).values()))


def normalize_resident(cluster: Cluster, resident: Mapping[int, str | None] | None) -> dict[int, str]:
    """Worker id -> expert already loaded there; workers with nothing loaded are left out.

    Raises :class:`PlanError` when ``resident`` names a worker that is not in ``cluster``.
    """
    if not resident:
        return {}
    unknown = sorted(set(resident) - set(worker_gpus(cluster)))
    if unknown:
        raise PlanError(f"resident map names workers {unknown} that are not in the cluster {list(cluster.ids)}")
    return {w: e for w, e in resident.items() if e is not None}


def resident_first(experts: Sequence[str], resident: str | None) -> list[str]:
    """``experts`` with ``resident`` moved to the front when it is among them (so its load is skipped)."""
    if resident is None or resident not in experts:
        return list(experts)
    return [resident, *(e for e in experts if e != resident)]


def empty_order(cluster: Cluster) -> dict[int, list[int]]:
    """Worker id -> an empty list, for every worker of ``cluster``."""
    return {w: [] for w in worker_gpus(cluster)}


def segments(workload: Workload, request_ids: Sequence[int]) -> list[tuple[str, list[Request]]]:
    """Consecutive runs of same-expert requests in ``request_ids``: (expert, its requests), in order."""
    reqs = workload.requests
    n = len(reqs)
    for r in request_ids:
        if not 0 <= r < n:
            raise PlanError(f"request {r} does not exist in workload {workload.name!r} ({n} requests)")
    return [(e, list(run)) for e, run in groupby((reqs[r] for r in request_ids), key=lambda q: q.expert)]
