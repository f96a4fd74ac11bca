"""One call from a stage to a plan: instance -> warm start -> build -> solve -> extract, with stats.

:func:`schedule` is what the schedulers in :mod:`mosaic.agents.ilp_scheduler` call. It returns a :class:`Plan`
whose predicted makespan and lower bound are the model's own figures, and the stats that describe the solve.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from mosaic.core.types import Cluster, Plan, Workload, plan_from_order
from mosaic.ilp.counts import busy_times, counts_from_order, placed, repair, start_values, symmetric_order
from mosaic.ilp.extract import counts_from_solution, extract
from mosaic.ilp.instance import IlpError, IlpInstance, InstanceOptions, build_instance
from mosaic.ilp.model import ModelOptions, build
from mosaic.ilp.solve import SolveOptions, SolveResult, solve
from mosaic.ilp.wraparound import wraparound
from mosaic.predictors.interface import CostModel

RESTART_PAIRS = 16  # models of at most this many expert x worker pairs also polish the start, keeping the better

Stats = dict[str, float | int | str]


@dataclass(frozen=True, slots=True)
class IlpOptions:
    """Everything that shapes one ILP schedule."""

    instance: InstanceOptions = field(default_factory=InstanceOptions)
    solve: SolveOptions = field(default_factory=SolveOptions)
    symmetry: bool = True  # order interchangeable workers by busy time
    tie_break: float = 1e-4  # objective weight per load second
    aggregator_last: bool = True  # serve the aggregator last where placed (it stays resident)
    integer_per_worker: float = 20.0  # counts of buckets smaller than this x workers are integer variables
    wraparound: bool = True  # also try McNaughton's wrap-around rule as a start (the better start is used)
    polish_s: float = 1.5  # seconds of local search on the cost model's own group costs after extraction


@dataclass(frozen=True, slots=True)
class IlpOutcome:
    """The plan (model figures) and the solve's stats."""

    plan: Plan
    stats: Mapping[str, float | int | str]


def _named(inst: IlpInstance, values: Sequence[int]) -> str:
    return ",".join(f"{e}={v}" for e, v in zip(inst.experts, values, strict=True))


def _size(prob) -> tuple[int, int, int]:
    variables = prob.variables()
    return len(variables), sum(v.cat == "Integer" for v in variables), prob.numConstraints()


def _tie_slack(inst: IlpInstance, tie_break: float) -> float:
    """Largest tie-break term of any plan: every expert on its R_max costliest workers."""
    total = 0.0
    for e in range(len(inst.experts)):
        loads = np.sort(inst.load[e][inst.allowed[e]])[::-1]
        total += loads[: len(loads) if inst.fixed else inst.r_max[e]].sum()
    return tie_break * float(total)


def _search_range(inst: IlpInstance) -> tuple[float, float]:
    """(a lower bound, a feasible makespan) of the model: work bound vs. everything on one worker."""
    n = inst.demand()
    work = sum(float(inst.bucket_seconds[b].min()) * len(ids) for b, ids in enumerate(inst.bucket_requests))
    loads = float(inst.load.min(axis=1).sum())
    lat = float(inst.latency_max.max(initial=0.0))
    top = (
        float(inst.bucket_seconds.max(axis=1) @ [len(ids) for ids in inst.bucket_requests])
        + inst.load.max(axis=1).sum()
        + float(inst.decode_mean.max(axis=1).sum())
        + lat * len(n)
    )
    return max((work + loads) / len(inst.workers), lat), top


def _warm(
    inst: IlpInstance, order: Mapping[int, Sequence[int]] | None, wrap: bool
) -> tuple[np.ndarray | None, float, str]:
    """The best start among greedy LPT's plan (repaired to the instance's limits) and wrap-around:
    (counts, model makespan, which)."""
    candidates: list[tuple[float, str, np.ndarray]] = []
    if order is not None:
        greedy = repair(inst, counts_from_order(inst, order))
        candidates.append((float(busy_times(inst, greedy).max(initial=0.0)), "greedy-lpt", greedy))
    if wrap:
        counts = wraparound(inst, *_search_range(inst))
        if counts is not None:
            candidates.append((float(busy_times(inst, counts).max(initial=0.0)), "wrap-around", counts))
    candidates = [c for c in candidates if _memory_ok(inst, c[2])]
    if not candidates:
        return None, math.nan, "none"
    span, name, counts = min(candidates, key=lambda c: c[0])
    return symmetric_order(inst, counts), span, name


def _memory_ok(inst: IlpInstance, counts: np.ndarray) -> bool:
    """The plan ``counts`` meets co-resident memory (always true when that constraint is off)."""
    if not inst.coresident_memory:
        return True
    on = placed(inst, counts)
    need = inst.memory_need[:, list(inst.worker_type)]
    return bool(((need * on).sum(axis=0) <= np.asarray(inst.memory_cap) + 1e-9).all())


def _coresident_message(inst: IlpInstance) -> str:
    need = [float(inst.memory_need[e, list(inst.worker_type)].min()) for e in range(len(inst.experts))]
    return (
        f"co-resident memory: the {len(need)} experts need {sum(need):.1f} GB when each is loaded once, "
        f"and they cannot be packed onto workers of {', '.join(f'{c:.1f}' for c in inst.memory_cap)} GB"
    )


def _check_fixed_memory(inst: IlpInstance) -> None:
    if not (inst.fixed and inst.coresident_memory):
        return
    for w, wid in enumerate(inst.workers):
        on = np.flatnonzero(inst.allowed[:, w])
        need = float(inst.memory_need[on, inst.worker_type[w]].sum())
        if need > inst.memory_cap[w] + 1e-9:
            names = ", ".join(inst.experts[e] for e in on)
            raise IlpError(f"fixed placement puts {names} on worker {wid}: {need:.1f} GB > {inst.memory_cap[w]:.1f} GB")


def _infeasible(inst: IlpInstance, result: SolveResult) -> IlpError:
    if inst.coresident_memory:
        return IlpError(_coresident_message(inst))
    return IlpError(f"the MOSAIC ILP is {result.status} with solver {result.solver} (no constraint family identified)")


def _solve(
    inst: IlpInstance, opt: IlpOptions, warm: np.ndarray | None, ub: float, deadline: float
) -> tuple[SolveResult, Stats, object]:
    t0 = time.perf_counter()
    mopt = ModelOptions(
        upper_bound=None if warm is None else ub,
        tie_break=opt.tie_break,
        symmetry=opt.symmetry,
        integer_per_worker=opt.integer_per_worker,
    )
    prob, v = build(inst, mopt)
    build_s = time.perf_counter() - t0
    start_c = max(ub, v.makespan.lowBound or 0.0) if warm is not None else math.nan
    start = None if warm is None else start_values(inst, v, warm, start_c)
    sopt = opt.solve
    if sopt.time_limit_s is not None:
        sopt = replace(sopt, time_limit_s=max(deadline - time.perf_counter(), 0.05))
    result = solve(prob, v, sopt, start, _tie_slack(inst, opt.tie_break), start_c)
    n_var, n_int, n_con = _size(prob)
    stats: Stats = {"ilp_model_build_s": build_s, "ilp_variables": n_var, "ilp_integer_variables": n_int,
                    "ilp_constraints": n_con}  # fmt: skip
    return result, stats, v


def schedule(
    scheduler: str,
    workload: Workload,
    costs: CostModel,
    cluster: Cluster,
    resident: Mapping[int, str | None] | None = None,
    options: IlpOptions | None = None,
    warm_order: Mapping[int, Sequence[int]] | None = None,
) -> IlpOutcome:
    """Plan one stage with the MOSAIC ILP; ``warm_order`` (worker id -> request ids, e.g. greedy LPT's) seeds the
    search and the linking bounds. Raises :class:`IlpError` when no plan satisfies the constraints."""
    opt = options or IlpOptions()
    t0 = time.perf_counter()
    inst = build_instance(workload, costs, cluster, resident, opt.instance)
    if not workload.requests:
        empty = plan_from_order(scheduler, workload, {w: () for w in inst.workers}, 0.0, 0.0)
        return IlpOutcome(empty, {"ilp_status": "empty"})
    _check_fixed_memory(inst)
    warm, warm_makespan, warm_name = _warm(inst, warm_order, opt.wraparound)
    limit = opt.solve.time_limit_s
    deadline = t0 + (limit - min(opt.polish_s, 0.5 * limit) if limit is not None else math.inf)  # polish within it
    result, stats, v = _solve(inst, opt, warm, warm_makespan, deadline)
    if result.status == "infeasible" and warm is not None:  # the warm bound cuts should never cut everything
        result, stats, v = _solve(inst, opt, None, math.nan, deadline + (limit or 0.0))
    if result.has_solution:
        counts, status = counts_from_solution(inst, v), result.status
    elif warm is not None and result.status == "not-solved":
        counts, status = warm, "warm-start"
    elif result.status in ("infeasible", "not-solved"):
        raise (
            _infeasible(inst, result)
            if result.status == "infeasible"
            else IlpError(f"the MOSAIC ILP found no plan within {opt.solve.time_limit_s} s; raise time_limit_s")
        )
    else:
        raise IlpError(f"the MOSAIC ILP solver {result.solver} failed (status {result.status})")
    polish_s = opt.polish_s
    if limit is not None and polish_s > 0 and status != "optimal":  # the search ran short: polish gets the rest
        polish_s = max(min(polish_s, 0.5 * limit), t0 + 0.95 * limit - time.perf_counter())  # 5%: extraction
    plan, extracted = extract(scheduler, workload, inst, counts, result.bound, opt.aggregator_last, polish_s)
    if warm is not None and inst.allowed.size <= RESTART_PAIRS and not np.array_equal(warm, counts):
        alt, alt_stats = extract(scheduler, workload, inst, warm, result.bound, opt.aggregator_last, polish_s)
        if alt.predicted_makespan < plan.predicted_makespan * (1 - 1e-9):  # polished from the start, priced lower
            plan, extracted = alt, alt_stats | {"ilp_polish_start": warm_name}
    stats |= extracted | {"ilp_warm_start": warm_name}
    stats |= _stats(inst, result, counts, status, warm_makespan, time.perf_counter() - t0)
    return IlpOutcome(replace(plan, stats=stats), stats)


def _stats(inst: IlpInstance, r: SolveResult, counts: np.ndarray, status: str, warm_s: float, total_s: float) -> Stats:
    on = placed(inst, counts)
    makespan = float(busy_times(inst, counts).max(initial=0.0))
    return {
        "ilp_status": status,
        "ilp_solver": r.solver,
        "ilp_solve_s": r.seconds,
        "ilp_lp_s": r.lp_seconds,
        "ilp_total_s": total_s,
        "ilp_makespan_s": makespan,
        "ilp_bound_s": r.bound,
        "ilp_lp_bound_s": r.lp_bound,
        "ilp_gap": replace(r, makespan=makespan).gap if status != "warm-start" else math.nan,
        "ilp_nodes": r.nodes,
        "ilp_proof": r.proof,
        "ilp_buckets": inst.n_buckets,
        "ilp_warm_start_s": warm_s,
        "ilp_r_max": _named(inst, inst.r_max),
        "ilp_replicas": _named(inst, on.sum(axis=1).tolist()),
    }
