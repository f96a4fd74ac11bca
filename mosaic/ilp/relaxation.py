"""A placement-aware lower bound on any plan's makespan: a small relaxation of the scheduling problem, solved as a MIP.

The work bound of :mod:`mosaic.agents.bounds` divides all work and loads evenly over the workers, as if a load could
be split; when loads are a large share of the stage (few queries, many experts) it sits far below every plan. This
relaxation keeps what makes loads expensive and drops the rest:

- ``y[e, w]`` binary: expert ``e`` is loaded on worker ``w`` (its load counted whole, 0 where resident);
- ``u[e, w] >= 0``: the floor seconds (``m_i`` below) of the expert's requests that ``w`` runs, ``sum_w u = M_e``,
  and ``u <= M_e y`` (work only where loaded): requests become divisible, the only thing relaxed;
- ``z[e, j, w]`` binary: where each of the expert's (up to ``MAX_TOP``, at most one per worker counted) longest-decoding
  requests ``j`` runs, placed whole (only those that decode longer than its shortest);
- the expert's seconds on ``w`` are at least ``alpha_e u``, ``beta_e u``, ``rho_e u + d_min y`` and, for each kept ``i``
  it runs, ``sum_j (a_j - rho_e m_j) z_j + rho_e u + d_i z_i`` (its own seconds plus the steps of its longest
  request; ``u >= sum_j m_j z_j``);
- every worker's loads plus seconds ``<= C``; ``C`` at least the chain bound; minimise ``C``.

Per request ``a`` (batch-independent seconds), ``d`` (decode seconds at batch one), ``1/max_batch`` and the KV share
(see ``ProfiledCostModel.floor_terms``): one expert's group ``G`` on one worker takes at least
``sum_G a + max(sum_G d / max_batch, sum_G d x share, max_G d)``, because a batch never exceeds ``max_batch``, its
reservations fit the KV cache, and the slowest request's own decode steps are steps of the group. With
``m = a + d max(1/max_batch, share)``: ``alpha_e``, ``beta_e``, ``rho_e`` are the least ratios of ``a + d/max_batch``,
``a + d share`` and ``a`` to ``m`` over the expert's requests, so each constraint holds for every subset ``G``
(exact for requests of one predicted length, the per-expert-mean cost model). Every plan's worker times satisfy
these constraints, so the solver's dual bound (valid even when a time limit stops it) is a lower bound on every
plan's makespan under the cost model. Teardown (``unload_s``) and memory are left out (both only add time).

One GPU type only (requests are not divisible across types in one measure); ``nan`` otherwise, when the instance
has more than ``max_pairs`` (expert, worker) pairs (the LP relaxation of a big instance is the work bound anyway), or
when every expert is resident wherever it may run (no load to count).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pulp

from mosaic.core.types import Cluster, Workload, requests_by_expert
from mosaic.ilp.instance import _per_type
from mosaic.ilp.model import _var
from mosaic.ilp.solve import mip_dual_bound
from mosaic.predictors.interface import CostModel

MAX_PAIRS = 512  # expert x worker pairs above which the relaxation is not built (16 x 32: ~2 s, as good at 10 s)
TIME_LIMIT_S = 2.0  # solver limit; its dual bound at the limit is still valid
MAX_TOP = 4  # longest-decoding requests per expert placed whole (at most one per worker counts)


@dataclass(frozen=True, slots=True)
class ExpertFloor:
    """One expert's relaxation coefficients on one GPU type (seconds)."""

    total: float  # M_e: sum of the floor seconds m of its requests
    alpha: float  # least (a + d / max_batch) / m
    beta: float  # least (a + d x share) / m
    rho: float  # least a / m
    d_min: float  # least decode seconds at batch one
    d_max: float  # largest decode seconds at batch one
    top: tuple[tuple[float, float, float], ...] = ()  # (a, d, m) of its longest-decoding requests, longest first


def _terms(costs: CostModel, reqs: list, gpu: str) -> tuple[np.ndarray, ...]:
    """(a, d, 1/max_batch, KV share) per request: the cost model's ``floor_terms`` or, without it, derived from
    its seconds at batch 1, 2 and the cheapest batch (KV share 0)."""
    fn = getattr(costs, "floor_terms", None)
    if fn is not None:
        return tuple(np.asarray(x, dtype=float) for x in fn(reqs, gpu))
    _, a, d = _per_type(costs, reqs, gpu)
    cheapest = np.asarray(getattr(costs, "min_seconds_array", costs.seconds_array)(reqs, gpu), dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        inv = np.where(d > 0, np.clip((cheapest - a) / d, 0.0, 1.0), 0.0)
    return a, d, inv, np.zeros_like(a)


def expert_floor(costs: CostModel, reqs: list, gpu: str, top: int = 0) -> ExpertFloor:
    """The relaxation coefficients of one expert's requests (see the module docstring); ``top``: keep the terms of
    that many longest-decoding requests (each then placed whole by the relaxation)."""
    a, d, inv, share = _terms(costs, reqs, gpu)
    m = a + d * np.maximum(inv, share)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratios = [np.where(m > 0, x / m, 1.0).min() for x in (a + d * inv, a + d * share, a)]
    longest = np.argsort(-d, kind="stable")[: min(top, len(reqs)) if len(reqs) > 1 else 0]
    kept = tuple((float(a[i]), float(d[i]), float(m[i])) for i in longest if d[i] > d.min() * (1 + 1e-9))
    return ExpertFloor(float(m.sum()), *(float(r) for r in ratios), float(d.min()), float(d.max()), kept)


def placement_bound(
    workload: Workload,
    costs: CostModel,
    cluster: Cluster,
    resident: Mapping[int, str | None] | None = None,
    chain: float = 0.0,
    time_limit_s: float = TIME_LIMIT_S,
    max_pairs: int = MAX_PAIRS,
    max_top: int = MAX_TOP,
) -> float:
    """Lower bound (seconds) on every plan's makespan from the placement relaxation; ``nan`` when not computed
    (several GPU types, too many pairs, or no bound from the solver). ``chain``: a known valid floor on ``C``."""
    groups = requests_by_expert(workload)
    types = {w.gpu_type for w in cluster.workers}
    if not groups or len(types) != 1 or len(groups) * len(cluster.workers) > max_pairs:
        return math.nan
    gpu = types.pop()
    reqs = workload.requests
    top = min(len(cluster.workers), max_top)
    floors = {e: expert_floor(costs, [reqs[i] for i in ids], gpu, top) for e, ids in groups.items()}
    res = {w: e for w, e in (resident or {}).items() if e is not None}
    loads = {(e, w.id): 0.0 if res.get(w.id) == e else costs.load_seconds(e, gpu)
             for e in groups for w in cluster.workers}  # fmt: skip
    if not any(v > 0 for v in loads.values()):
        return math.nan  # nothing to load: whole loads add nothing to the work and chain bounds
    prob = _problem(floors, loads, [w.id for w in cluster.workers], set(res), chain)
    return mip_dual_bound(prob, time_limit_s)


def _problem(
    floors: Mapping[str, ExpertFloor], loads: Mapping[tuple[str, int], float], workers: list[int],
    resident_workers: set[int], chain: float,
) -> pulp.LpProblem:  # fmt: skip
    """The relaxation as a PuLP problem (objective: ``C``)."""
    prob = pulp.LpProblem("mosaic_placement_bound", pulp.LpMinimize)
    c = _var(prob, "C", chain, None, pulp.LpContinuous)
    prob += c
    busy: dict[int, list] = {w: [] for w in workers}
    for k, (e, f) in enumerate(floors.items()):
        zs: dict[int, list] = {j: [] for j in range(len(f.top))}
        us = []
        for w in workers:
            y = _var(prob, f"y_{k}_{w}", 0, 1, pulp.LpBinary)
            u = _var(prob, f"u_{k}_{w}", 0, None, pulp.LpContinuous)
            g = _var(prob, f"g_{k}_{w}", 0, None, pulp.LpContinuous)
            prob += u - f.total * y <= 0
            prob += g - max(f.alpha, f.beta) * u >= 0
            prob += g - f.rho * u - f.d_min * y >= 0
            _top_requests(prob, f, k, w, y, u, g, zs)
            busy[w] += [loads[e, w] * y, g]
            us.append(u)
        prob += pulp.lpSum(us) == f.total
        for col in zs.values():
            prob += pulp.lpSum(col) == 1
    for w in workers:
        prob += pulp.lpSum(busy[w]) - c <= 0
    free = [w for w in workers if w not in resident_workers]  # interchangeable: order by busy time
    for w0, w1 in itertools.pairwise(free):
        prob += pulp.lpSum(busy[w0]) - pulp.lpSum(busy[w1]) >= 0
    return prob


def _top_requests(prob: pulp.LpProblem, f: ExpertFloor, k: int, w: int, y, u, g, zs: dict[int, list]) -> None:
    """The expert's longest-decoding requests placed whole: ``z[j, w]`` binary (request ``j`` runs on ``w``, only where
    the expert is loaded); ``w``'s floor seconds hold theirs (``u >= sum_j m_j z_j``), its own seconds are at least
    theirs plus ``rho`` x the rest (``a_i >= rho m_i`` for every request), and its decode steps at least those of each
    one it runs: ``g >= sum_j (a_j - rho m_j) z_j + rho u + d_i z_i`` for every kept ``i``."""
    if not f.top:
        return
    z = [_var(prob, f"z_{k}_{j}_{w}", 0, 1, pulp.LpBinary) for j in range(len(f.top))]
    for j, zj in enumerate(z):
        prob += zj - y <= 0
        zs[j].append(zj)
    prob += u - pulp.lpSum(m * zj for (_, _, m), zj in zip(f.top, z, strict=True)) >= 0
    own = pulp.lpSum((a - f.rho * m) * zj for (a, _, m), zj in zip(f.top, z, strict=True)) + f.rho * u
    for (_, d, _), zi in zip(f.top, z, strict=True):
        prob += g - own - d * zi >= 0
