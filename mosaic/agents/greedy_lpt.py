"""Greedy LPT: longest predicted request first onto the worker where it would finish earliest, loads counted.

A load is priced with the teardown of the expert it replaces, as the simulator and real workers pay it.

:func:`greedy_lpt_order` is the reusable core (the MOSAIC ILP uses it as a warm start);
:class:`GreedyLPTScheduler` wraps it into a :class:`Plan`.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from mosaic.agents.bounds import plan_with_estimates
from mosaic.agents.common import empty_order, normalize_resident, requests_by_expert, resident_first, worker_gpus
from mosaic.agents.interface import Scheduler
from mosaic.agents.registry import SCHEDULERS
from mosaic.core.types import Cluster, Plan, Workload
from mosaic.predictors.interface import CostModel


def cost_matrix(workload: Workload, costs: CostModel, cluster: Cluster) -> np.ndarray:
    """Requests x workers (cluster order): ``seconds_array`` at max batch on each worker's GPU type."""
    gpus = list(worker_gpus(cluster).values())
    types = list(dict.fromkeys(gpus))
    per_type = np.stack([np.asarray(costs.seconds_array(workload.requests, g), dtype=float) for g in types])
    return np.ascontiguousarray(per_type[[types.index(g) for g in gpus]].T)


def _switch_costs(
    experts: list[str], costs: CostModel, cluster: Cluster, res: Mapping[int, str]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Experts x workers load seconds and teardown seconds on each worker's GPU type, and per worker the
    teardown of what it holds at the start (its resident expert; 0 with nothing resident)."""
    gpus = worker_gpus(cluster)
    load = np.array([[costs.load_seconds(e, g) for g in gpus.values()] for e in experts]).reshape(-1, len(gpus))
    unload = np.array([[costs.unload_seconds(e, g) for g in gpus.values()] for e in experts]).reshape(-1, len(gpus))
    held = np.array([costs.unload_seconds(res[w], g) if w in res else 0.0 for w, g in gpus.items()])
    return load, unload, held


def _assign(
    cost: np.ndarray, expert_of: list[int], switch: tuple[np.ndarray, np.ndarray, np.ndarray], new: np.ndarray,
    rank: list[int], start: np.ndarray | None = None,
) -> tuple[list[int], float]:  # fmt: skip
    """Place requests in ``rank`` order, each on the worker (column) where it finishes first; ties -> lowest.

    ``new`` (experts x workers, True where the worker does not serve the expert yet) is consumed: a worker
    pays an expert's load once, plus the teardown of the expert it last loaded (or of its resident), which
    is exactly what the worker's final order (resident first, then experts in order of first assignment)
    frees before that load. ``start``: when each worker is free (default 0). Returns the column of every request
    and the greedy's own makespan estimate.
    """
    load, unload, held = switch
    pending = np.where(new, load + held, 0.0)  # what serving each expert would add on each worker now
    finish = np.zeros(cost.shape[1]) if start is None else np.array(start, dtype=float)
    where = [0] * len(expert_of)
    for i in rank:
        e = expert_of[i]
        cand = finish + cost[i] + pending[e]
        w = int(cand.argmin())
        finish[w] = cand[w]
        if new[e, w]:
            new[e, w] = False
            pending[:, w] = np.where(new[:, w], load[:, w] + unload[e, w], 0.0)
        where[i] = w
    return where, float(finish.max(initial=0.0))


def greedy_lpt_order(
    workload: Workload,
    costs: CostModel,
    cluster: Cluster,
    resident: Mapping[int, str | None] | None = None,
    available: Mapping[int, float] | None = None,
) -> tuple[dict[int, list[int]], float]:
    """Worker id -> request ids in execution order, and the greedy's own makespan estimate (seconds).
    ``available``: seconds until each worker is free of the work it has already (default: free now).

    Requests sorted by predicted seconds at max batch (cheapest GPU type) descending, ties by request id;
    each goes to the worker minimising its finish time = worker's time + its cost there + the expert's
    load if that worker does not serve that expert yet (resident counts as served), plus the teardown
    (``unload_seconds``) of the expert that load frees; ties -> first worker in cluster order. Each worker
    then runs its experts in order of first assignment (the resident one first), each expert's requests
    longest first. Deterministic; O(requests x workers) with numpy rows.
    """
    res = normalize_resident(cluster, resident)
    order = empty_order(cluster)
    groups = requests_by_expert(workload)
    if not groups:
        return order, 0.0
    experts = list(groups)
    index = {e: k for k, e in enumerate(experts)}
    expert_of = [index[r.expert] for r in workload.requests]
    cost = cost_matrix(workload, costs, cluster)
    ids = list(order)
    rank = np.argsort(-cost.min(axis=1), kind="stable").tolist()
    new = np.array([[res.get(w) != e for w in ids] for e in experts]).reshape(-1, len(ids))
    start = None if available is None else np.array([float(available.get(w, 0.0)) for w in ids])
    where, estimate = _assign(cost, expert_of, _switch_costs(experts, costs, cluster, res), new, rank, start)
    per_worker: list[dict[str, list[int]]] = [{} for _ in ids]
    for i in rank:
        per_worker[where[i]].setdefault(experts[expert_of[i]], []).append(i)
    for k, w in enumerate(ids):
        for e in resident_first(list(per_worker[k]), res.get(w)):
            run = np.array(per_worker[k][e])
            order[w].extend(run[np.argsort(-cost[run, k], kind="stable")].tolist())
    return order, estimate


@SCHEDULERS.register("greedy-lpt")
class GreedyLPTScheduler(Scheduler):
    """Greedy LPT: longest predicted request first onto the worker where it finishes earliest, loads counted.

    See :func:`greedy_lpt_order`. Replicates an expert only when the load pays off against waiting,
    handles heterogeneous GPU types through per-worker costs. Deterministic: ``rng`` is not used.
    Stats add ``greedy_estimate_s`` (its makespan estimate at max-batch costs).
    """

    name = "greedy-lpt"

    def plan(
        self,
        workload: Workload,
        costs: CostModel,
        cluster: Cluster,
        rng: np.random.Generator,
        resident: Mapping[int, str | None] | None = None,
        available: Mapping[int, float] | None = None,
    ) -> Plan:
        """``available``: seconds until each worker is free of work it already has (a re-plan at run time)."""
        order, estimate = greedy_lpt_order(workload, costs, cluster, resident, available)
        stats = {"greedy_estimate_s": estimate}
        return plan_with_estimates(self.name, workload, costs, cluster, order, resident, stats)

    def plan_order(
        self,
        workload: Workload,
        costs: CostModel,
        cluster: Cluster,
        rng: np.random.Generator,
        resident: Mapping[int, str | None] | None = None,
        available: Mapping[int, float] | None = None,
    ) -> dict[int, list[int]]:
        """Worker id -> request ids of :meth:`plan`, without its estimates and bound (for re-plans)."""
        return greedy_lpt_order(workload, costs, cluster, resident, available)[0]
