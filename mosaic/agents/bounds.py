"""Lower bound on any plan's makespan, predicted per-worker times of a plan, and plan assembly with both.

All figures come from the :class:`CostModel` (predictions, never true lengths). The lower bound is
valid for every plan of the stage when the predictions equal the truth and a request's cost does not
grow with the batch it shares (continuous batching amortises the decode steps).

Used by every scheduler (and by the MOSAIC ILP) to fill ``Plan.predicted_makespan``,
``Plan.lower_bound`` and ``Plan.stats``. Predictions charge a load that replaces a resident expert its
teardown too (``unload_seconds`` of the outgoing expert, as the simulator does); the lower bound leaves
teardown out (0 is a valid floor on it).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np

from mosaic.agents.common import normalize_resident, requests_by_expert, segments, worker_gpus
from mosaic.core.errors import PlanError
from mosaic.core.types import Cluster, Plan, Request, Responses, Workload, plan_from_order
from mosaic.predictors.costmodel import ProfiledCostModel
from mosaic.predictors.interface import CostModel
from mosaic.predictors.lengths import OracleLengthPredictor


@dataclass(frozen=True, slots=True)
class BoundTerms:
    """The terms of the lower bound, in seconds."""

    work_s: float  # (unavoidable loads + cheapest cost of every request) / number of workers
    chain_s: float  # longest single request alone, plus its expert's load unless resident
    placement_s: float = 0.0  # the placement relaxation (whole loads, divisible requests); 0 when not computed
    replication_s: float = 0.0  # replica counts vs. their loads (:func:`replication_bound`); 0 when not computed

    @property
    def value(self) -> float:
        """The lower bound: the largest term."""
        return max(self.work_s, self.chain_s, self.placement_s, self.replication_s)


def min_seconds_array(costs: CostModel, requests: Sequence[Request], gpu_type: str) -> np.ndarray:
    """Cheapest possible worker-seconds of each request on ``gpu_type``.

    Uses the cost model's vectorised ``min_seconds_array`` or per-request ``min_request_seconds`` when
    it has one, else ``seconds_array`` at max batch.
    """
    vectorised = getattr(costs, "min_seconds_array", None)
    if vectorised is not None:
        return np.asarray(vectorised(requests, gpu_type), dtype=float)
    fn = getattr(costs, "min_request_seconds", None)
    if fn is None:
        return np.asarray(costs.seconds_array(requests, gpu_type), dtype=float)
    return np.fromiter((fn(r, gpu_type) for r in requests), dtype=float, count=len(requests))


def latency_array(costs: CostModel, requests: Sequence[Request], gpu_type: str) -> np.ndarray:
    """``request_latency`` of each request on ``gpu_type`` (seconds alone, batch of one); uses the cost
    model's vectorised ``latency_array`` when it has one."""
    vectorised = getattr(costs, "latency_array", None)
    if vectorised is not None:
        return np.asarray(vectorised(requests, gpu_type), dtype=float)
    return np.fromiter((costs.request_latency(r, gpu_type) for r in requests), dtype=float, count=len(requests))


def load_offsets(
    experts: Sequence[str], costs: CostModel, cluster: Cluster, resident: Mapping[int, str | None] | None = None
) -> dict[str, dict[str, float]]:
    """Expert -> GPU type -> seconds before a worker of that type can serve it: 0 when some worker of
    that type already has it resident, else its load time there."""
    gpus = worker_gpus(cluster)
    res = normalize_resident(cluster, resident)
    loaded = {(gpus[w], e) for w, e in res.items()}
    types = tuple(dict.fromkeys(gpus.values()))
    return {e: {g: 0.0 if (g, e) in loaded else costs.load_seconds(e, g) for g in types} for e in experts}


def bound_terms(
    workload: Workload,
    costs: CostModel,
    cluster: Cluster,
    resident: Mapping[int, str | None] | None = None,
    placement: bool = True,
    placement_limit_s: float | None = None,
) -> BoundTerms:
    """The terms of :func:`lower_bound` (heterogeneous GPUs: the cheapest GPU type per item); ``placement=False``
    skips the placement relaxation (a MIP: up to its time limit, ``placement_limit_s`` or the relaxation's default;
    for callers that need the bound often)."""
    n_workers = len(worker_gpus(cluster))
    groups = requests_by_expert(workload)
    if not groups:
        return BoundTerms(0.0, 0.0)
    offsets = load_offsets(list(groups), costs, cluster, resident)
    types = tuple(next(iter(offsets.values())))
    reqs = workload.requests
    cheapest = np.min(np.stack([min_seconds_array(costs, reqs, g) for g in types]), axis=0)
    loads = sum(min(per_type.values()) for per_type in offsets.values())
    work = float(cheapest.sum())
    group_floor = getattr(costs, "min_group_seconds", None)
    chain = 0.0
    kv_work = 0.0
    for expert, ids in groups.items():
        group = [reqs[i] for i in ids]
        alone = np.stack([offsets[expert][g] + latency_array(costs, group, g) for g in types])
        chain = max(chain, float(alone.min(axis=0).max()))
        if group_floor is not None and len(types) == 1:  # KV-cache-aware floor (one GPU type: no split to price)
            kv_work += group_floor(group, types[0])
    work = max(work, kv_work)
    place = _placement_term(workload, costs, cluster, resident, chain, placement_limit_s) if placement else 0.0
    work_s = float(loads + work) / n_workers
    return BoundTerms(work_s, chain, place, replication_bound(workload, costs, cluster, resident, max(work_s, chain)))


_PLACEMENT_MEMO: OrderedDict[tuple, tuple[Workload, CostModel, float]] = OrderedDict()
_MEMO_SIZE = 16


def _placement_term(
    workload: Workload, costs: CostModel, cluster: Cluster, resident: Mapping[int, str | None] | None, chain: float,
    limit_s: float | None = None,
) -> float:  # fmt: skip
    """:func:`mosaic.ilp.relaxation.placement_bound`, 0 where it is not computed (imported here: PuLP is heavy).

    Memoised for the last few stages (by the identity of the workload and cost model, which the memo keeps alive,
    and the cluster and resident experts, which also fix ``chain``): every scheduler compared on one stage gets the
    bound of one solve."""
    from mosaic.ilp.relaxation import placement_bound

    key = (id(workload), id(costs), cluster, tuple(sorted(normalize_resident(cluster, resident).items())), limit_s)
    if key in _PLACEMENT_MEMO:
        _PLACEMENT_MEMO.move_to_end(key)
        return _PLACEMENT_MEMO[key][2]
    extra = {} if limit_s is None else {"time_limit_s": limit_s}
    value = placement_bound(workload, costs, cluster, resident, chain=chain, **extra)
    value = 0.0 if math.isnan(value) else value
    _PLACEMENT_MEMO[key] = (workload, costs, value)
    while len(_PLACEMENT_MEMO) > _MEMO_SIZE:
        _PLACEMENT_MEMO.popitem(last=False)
    return value


def lower_bound(
    workload: Workload,
    costs: CostModel,
    cluster: Cluster,
    resident: Mapping[int, str | None] | None = None,
    placement: bool = True,
) -> float:
    """Seconds no plan of this stage can beat (0 for a workload without requests): the largest of

    - work: (sum over experts with requests of its cheapest load, 0 if resident on some worker, plus the
      sum over requests of its cheapest cost, ``min_request_seconds``, or, with one GPU type and a cost model
      that has it, the larger sum of ``min_group_seconds`` per expert, which also counts that a decode step's KV
      reservations fit the cache) / number of workers;
    - chain: max over requests of min over workers of (its expert's load unless resident there, plus
      its ``request_latency``);
    - replication (one GPU type): :func:`replication_bound`, each expert's replicas against their loads;
    - placement (one GPU type, ``placement=True``): the placement relaxation of :mod:`mosaic.ilp.relaxation`,
      which counts every load whole on the worker that makes it (requests divisible) and the longest
      requests' decode steps on the workers that run them.

    Heterogeneous GPUs: each item at its cheapest GPU type. Teardown of replaced experts (``unload_s``) is
    left out: a worker with nothing resident loads without it, so 0 is a valid floor.
    """
    return bound_terms(workload, costs, cluster, resident, placement).value


def expert_floors(workload: Workload, costs: CostModel, gpu: str) -> dict[str, float]:
    """Expert -> least worker-seconds its requests need on ``gpu`` over all workers together (``min_group_seconds``
    when the cost model has it, else the sum of ``min_request_seconds``); additive over any split of the requests."""
    group_floor = getattr(costs, "min_group_seconds", None)
    reqs = workload.requests
    out = {}
    for expert, ids in requests_by_expert(workload).items():
        group = [reqs[i] for i in ids]
        cheapest = float(min_seconds_array(costs, group, gpu).sum())
        out[expert] = max(cheapest, group_floor(group, gpu)) if group_floor is not None else cheapest
    return out


def replication_bound(
    workload: Workload, costs: CostModel, cluster: Cluster, resident: Mapping[int, str | None] | None = None,
    lower: float = 0.0,
) -> float:  # fmt: skip
    """Least ``C`` for which replica counts exist (one GPU type; 0 otherwise): an expert on ``r`` workers leaves
    one of them at least ``F_e / r`` of its floor ``F_e`` (:func:`expert_floors`) plus its load (unless resident
    somewhere), so ``r_e >= F_e / (C - load_e)``; and all workers together carry ``sum_e F_e`` plus a load for
    every replica beyond the resident ones, at most ``W x C``. Found by bisection from ``lower`` (a valid floor)."""
    gpus = worker_gpus(cluster)
    types = set(gpus.values())
    floors = expert_floors(workload, costs, next(iter(types))) if len(types) == 1 and workload.requests else {}
    if not floors:
        return 0.0
    n_w, gpu = len(gpus), next(iter(types))
    held = {e: sum(1 for x in normalize_resident(cluster, resident).values() if x == e) for e in floors}
    load = {e: costs.load_seconds(e, gpu) for e in floors}
    total = sum(floors.values())

    def fits(c: float) -> bool:
        used = total
        for e, f in floors.items():
            room = c - (0.0 if held[e] else load[e])
            if room <= 0:
                return False
            r = max(1, math.ceil(f / room - 1e-12))
            if r > n_w:
                return False
            used += max(r - held[e], 0) * load[e]
        return used <= n_w * c * (1 + 1e-12)

    lo = max(lower, total / n_w)
    hi = max(lo, max(load.values()) + total) * 2.0 + 1.0
    if fits(lo):
        return lo
    for _ in range(100):
        if hi - lo <= 1e-9 * hi:
            break
        mid = 0.5 * (lo + hi)
        lo, hi = (lo, mid) if fits(mid) else (mid, hi)
    return lo


def order_worker_times(
    order: Mapping[int, Sequence[int]],
    workload: Workload,
    costs: CostModel,
    cluster: Cluster,
    resident: Mapping[int, str | None] | None = None,
) -> dict[int, float]:
    """Worker id -> predicted busy seconds when it runs ``order`` (every cluster worker; idle ones 0).

    Each run of consecutive same-expert requests costs a load (skipped only for a worker's first run
    when that expert is already resident there) plus ``costs.group_seconds`` of the run. A load that
    replaces an expert (every load but a worker's first with nothing resident) also costs the outgoing
    expert's ``costs.unload_seconds``.
    """
    gpus = worker_gpus(cluster)
    res = normalize_resident(cluster, resident)
    unknown = sorted(set(order) - set(gpus))
    if unknown:
        raise PlanError(f"order uses workers {unknown} that are not in the cluster {list(gpus)}")
    times = dict.fromkeys(gpus, 0.0)
    for w, ids in order.items():
        total = 0.0
        current = res.get(w)
        for expert, run in segments(workload, ids):
            if expert != current:
                if current is not None:
                    total += costs.unload_seconds(current, gpus[w])
                total += costs.load_seconds(expert, gpus[w])
                current = expert
            total += costs.group_seconds(run, gpus[w])
        times[w] = total
    return times


def predicted_worker_times(
    plan: Plan,
    workload: Workload,
    costs: CostModel,
    cluster: Cluster,
    resident: Mapping[int, str | None] | None = None,
) -> dict[int, float]:
    """Worker id -> predicted busy seconds of ``plan`` (see :func:`order_worker_times`); makespan = max."""
    return order_worker_times(plan.order, workload, costs, cluster, resident)


def plan_stats(plan: Plan, resident: Mapping[int, str]) -> dict[str, int]:
    """Counts every scheduler reports: loads (resident skips excluded), replicas, workers used."""
    skipped = sum(1 for w, seq in plan.placement.items() if seq and resident.get(w) == seq[0])
    replicas = plan.replicas()
    return {
        "loads": sum(len(seq) for seq in plan.placement.values()) - skipped,
        "resident_hits": skipped,
        "replicas": sum(len(ws) for ws in replicas.values()),
        "max_replicas": max((len(ws) for ws in replicas.values()), default=0),
        "workers_used": sum(1 for ids in plan.order.values() if ids),
    }


def plan_with_estimates(
    scheduler: str,
    workload: Workload,
    costs: CostModel,
    cluster: Cluster,
    order: Mapping[int, Sequence[int]],
    resident: Mapping[int, str | None] | None = None,
    stats: Mapping[str, float | int | str] | None = None,
) -> Plan:
    """A :class:`Plan` of ``order`` with its predicted makespan, lower bound and stats filled in.

    ``stats`` (scheduler-specific figures) are added to the common ones of :func:`plan_stats` and the
    bound's terms (``lb_work_s``, ``lb_chain_s``).
    """
    res = normalize_resident(cluster, resident)
    draft = plan_from_order(scheduler, workload, order, 0.0, 0.0)
    makespan = max(order_worker_times(draft.order, workload, costs, cluster, res).values())
    terms = bound_terms(workload, costs, cluster, res)
    all_stats: dict[str, float | int | str] = {**plan_stats(draft, res), "lb_work_s": terms.work_s,
                                               "lb_chain_s": terms.chain_s, "lb_placement_s": terms.placement_s,
                                               "lb_replication_s": terms.replication_s,
                                               **(stats or {})}  # fmt: skip
    return replace(draft, predicted_makespan=makespan, lower_bound=terms.value, stats=all_stats)


@dataclass(frozen=True, slots=True)
class TrueBound:
    """A lower bound on the simulated expert-stage makespan of every plan, from the true output lengths (seconds)."""

    work_s: float  # (unavoidable loads + every expert's floor) / number of workers
    chain_s: float  # slowest request alone (its decode-latency floor) plus its expert's load unless resident
    replication_s: float  # per-expert replica counts vs. their loads (:func:`replication_bound`)
    placement_s: float  # the placement relaxation with true costs (:mod:`mosaic.ilp.relaxation`); 0 if not computed

    @property
    def value(self) -> float:
        """The bound: the largest part."""
        return max(self.work_s, self.chain_s, self.replication_s, self.placement_s)

    def as_dict(self) -> dict[str, float]:
        return {"work_s": self.work_s, "chain_s": self.chain_s, "replication_s": self.replication_s,
                "placement_s": self.placement_s, "value_s": self.value}  # fmt: skip


TRUE_PLACEMENT_LIMIT_S = 20.0  # the true bound is computed once per compare: its relaxation may take longer (its
# dual bound at a wall-clock limit depends on the machine's load; the paper configs' solve in 1-2 s when idle)


def true_costs(workload: Workload, responses: Responses, costs: CostModel) -> CostModel:
    """``costs`` (a :class:`ProfiledCostModel`) with every request priced at its true output length, bound to
    ``workload``: what an oracle scheduler and the true bound see."""
    profile = getattr(costs, "profile", None)
    if profile is None:
        raise PlanError(f"true costs need a profiled cost model (with a profile), got {type(costs).__name__}")
    return ProfiledCostModel(profile, OracleLengthPredictor(responses), workload)


def true_lower_bound(
    workload: Workload,
    responses: Responses,
    costs: CostModel,
    cluster: Cluster,
    resident: Mapping[int, str | None] | None = None,
    placement: bool = True,
) -> TrueBound:
    """The true-length lower bound of one stage and its parts. Valid for the simulated makespan of every plan (any
    placement, replication and order, static or not) in both memory modes and both step models: every floor
    prices a decode step by its first (memory) line, which the ``max`` model never undercuts, and counts the KV
    cache as the mode holds it (reserved or paged, ``ProfiledCostModel.floor_terms``); teardown is left out."""
    true = true_costs(workload, responses, costs)
    terms = bound_terms(workload, true, cluster, resident, placement, TRUE_PLACEMENT_LIMIT_S)
    return TrueBound(terms.work_s, terms.chain_s, terms.replication_s, terms.placement_s)


def prediction_is_exact(
    order: Mapping[int, Sequence[int]], workload: Workload, costs: CostModel, cluster: Cluster
) -> bool:
    """Whether the simulator runs ``order`` in exactly its predicted seconds (when the predicted lengths are true):
    every run of one expert on a worker is a single batch (at most ``max_batch`` requests whose prompts and outputs
    fit the KV cache together, so all are admitted at once and none is preempted) and the step's first line is the
    larger over the whole run (checked at the corners of its batch and KV range: both lines are linear). The cost
    model then prices prefill, steps and loads as the simulator does. Only for a profiled cost model (with
    ``model_cost`` and predicted ``tokens``)."""
    tokens = getattr(costs, "tokens", None)
    if not isinstance(tokens, np.ndarray) or tokens.shape != (len(workload.requests),):
        return False
    gpus = worker_gpus(cluster)
    for w, ids in order.items():
        for expert, run in segments(workload, ids):
            mc = costs.model_cost(expert, gpus[w])
            held = sum(r.prompt_tokens + float(tokens[r.id]) for r in run)
            block = mc.kv_block_tokens * len(run) if mc.memory_mode == "paged" else 0  # a part-filled block each
            if len(run) > mc.max_batch or (len(run) > 1 and held + block > mc.kv_capacity_tokens):
                return False
            if mc.has_compute_line and any(
                mc.step_time(b, kv) > mc.step_base_s + mc.step_per_seq_s * b + mc.step_per_kv_token_s * kv
                for b in (1, len(run)) for kv in (0.0, held)
            ):  # fmt: skip
                return False
    return True
