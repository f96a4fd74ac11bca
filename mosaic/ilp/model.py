"""The MOSAIC ILP as a PuLP problem: :func:`build` returns it unsolved, with its variables (never leaves the package).

Indices: ``e`` expert, ``b`` bucket (of expert ``e(b)``), ``w`` worker position, ``t(w)`` its GPU type.

- ``y[e, w]`` binary: expert ``e`` is loaded on worker ``w`` (only where its memory fits; fixed mode: constant 1
  on the given placement);
- ``x[b, w]``: requests of bucket ``b`` that worker ``w`` runs (integer for small buckets and stragglers,
  continuous for large buckets, rounded at extraction: see :func:`integer_buckets`);
- ``g[e, w]`` seconds of expert ``e``'s group on ``w`` (no load): at least its full-batch cost
  ``sum_b s[b, t] x[b, w]``, at least its under-filled cost ``sum_b a[b, t] x[b, w] + d_mean[e, t] y[e, w]``,
  and at least the group's batch-independent seconds plus the decode steps of any straggler (a one-request
  bucket ``b``) it runs, ``sum_{b' != b} a[b', t] x[b', w] + lat[b, t] x[b, w]`` (the straggler's steps are
  shared with the rest of the group, which pays its own seconds meanwhile: ``CostModel.group_seconds``'
  ``sum a + max d``; ``x[b, w]`` is 0 or 1, and at 0 this is implied by the under-filled cost). A pinned expert
  (R_max = 1) runs all its requests in one group: ``sum_b a[b, t] x[b, w] + d_max[e, t] y[e, w]``;
- ``C`` makespan.

Constraints: every bucket covered (``sum_w x[b, w] = n_b``); a worker runs an expert's requests only where it is
loaded (``sum_b x[b, w] <= n_e y[e, w]``, and, given a known plan of makespan ``U``,
``g[e, w] <= (U - load[e, w]) y[e, w]``); each worker's loads plus groups ``<= C``; at most ``R_max(e)``
replicas; optionally the co-resident experts of a worker fit its memory; identical workers ordered by busy time
(symmetry). Objective: ``C`` plus a tiny weight on load seconds (fewer loads among equal makespans).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import pulp

from mosaic.ilp.instance import IlpInstance


@dataclass(frozen=True, slots=True)
class ModelOptions:
    """Knobs of the formulation (not of the instance)."""

    upper_bound: float | None = None  # makespan of a known feasible plan (seconds): tightens the linking
    tie_break: float = 1e-4  # objective weight per load second
    symmetry: bool = True  # order interchangeable workers by busy time
    integer_per_worker: float = 20.0  # x[b, w] integer when bucket b has fewer requests than this x its workers


@dataclass(frozen=True, slots=True)
class Variables:
    """The model's variables; PuLP objects, internal to :mod:`mosaic.ilp`."""

    y: dict[tuple[int, int], pulp.LpVariable | float]  # (expert, worker) -> placed (binary; fixed mode: 1.0)
    x: dict[tuple[int, int], pulp.LpVariable]  # (bucket, worker) -> requests of the bucket there (integer)
    g: dict[tuple[int, int], pulp.LpVariable]  # (expert, worker) -> seconds of the expert's group there
    makespan: pulp.LpVariable
    busy: dict[int, pulp.LpAffineExpression]  # worker -> its loads + groups (seconds)


def _expr(terms: list[tuple[pulp.LpVariable, float]], constant: float = 0.0) -> pulp.LpAffineExpression:
    return pulp.LpAffineExpression([t for t in terms if t[1] != 0.0], constant=constant)


def integer_buckets(inst: IlpInstance, per_worker: float) -> list[bool]:
    """Bucket -> its counts are integer variables: small buckets (fewer than ``per_worker`` requests per worker
    that may serve the expert) and stragglers. Large buckets get continuous counts, rounded at extraction (an
    error of at most one request per bucket and worker, against hundreds): the MIP then branches on placements
    only."""
    allowed = inst.allowed.sum(axis=1)
    return [inst.straggler[b] or len(ids) < per_worker * allowed[inst.bucket_expert[b]]
            for b, ids in enumerate(inst.bucket_requests)]  # fmt: skip


def _var(prob: pulp.LpProblem, name: str, low: float | None, up: float | None, cat: str) -> pulp.LpVariable:
    """A variable of ``prob``: ``add_variable`` where PuLP has it (3.3+, the non-deprecated way), else
    ``LpVariable`` (PuLP 2.x)."""
    add = getattr(prob, "add_variable", None)
    return add(name, low, up, cat=cat) if add is not None else pulp.LpVariable(name, low, up, cat=cat)


def _variables(prob: pulp.LpProblem, inst: IlpInstance, lower: float, opt: ModelOptions) -> Variables:
    n_w = len(inst.workers)
    pairs = [(e, w) for e in range(len(inst.experts)) for w in range(n_w) if inst.allowed[e, w]]
    if inst.fixed:
        y: dict = dict.fromkeys(pairs, 1.0)
    else:
        y = {(e, w): _var(prob, f"y_{e}_{w}", 0, 1, pulp.LpBinary) for e, w in pairs}
    x = {}
    integer = integer_buckets(inst, opt.integer_per_worker)
    for b, e in enumerate(inst.bucket_expert):
        n_b = len(inst.bucket_requests[b])
        cat = pulp.LpInteger if integer[b] else pulp.LpContinuous
        for w in range(n_w):
            if inst.allowed[e, w]:
                x[b, w] = _var(prob, f"x_{b}_{w}", 0, n_b, cat)
    g = {(e, w): _var(prob, f"g_{e}_{w}", 0, None, pulp.LpContinuous) for e, w in pairs}
    c = _var(prob, "C", lower, None, pulp.LpContinuous)
    return Variables(y, x, g, c, {})


def _y_terms(v: Variables, e: int, w: int, coef: float) -> tuple[list[tuple[pulp.LpVariable, float]], float]:
    """(terms, constant) of ``coef * y[e, w]``: a constant in fixed mode."""
    y = v.y[e, w]
    return ([], coef * y) if isinstance(y, float) else ([(y, coef)], 0.0)


def _group_constraints(prob: pulp.LpProblem, inst: IlpInstance, v: Variables, opt: ModelOptions) -> None:
    """Group cost (full and under-filled batch) and linking of x to y, per placed pair."""
    demand = inst.demand()
    buckets = [inst.expert_buckets(e) for e in range(len(inst.experts))]
    for (e, w), g in v.g.items():
        t = inst.worker_type[w]
        xs = [(v.x[b, w], 1.0) for b in buckets[e]]
        full = [(v.x[b, w], float(inst.bucket_seconds[b, t])) for b in buckets[e]]
        prob += _expr([(g, 1.0)] + [(x, -c) for x, c in full]) >= 0, f"full_e{e}_w{w}"
        y_terms, y_const = _y_terms(v, e, w, float(inst.decode_mean[e, t]))
        fill = [(v.x[b, w], -float(inst.bucket_fixed[b, t])) for b in buckets[e]]
        prob += _expr([(g, 1.0), *fill] + [(y, -c) for y, c in y_terms], -y_const) >= 0, f"fill_e{e}_w{w}"
        _straggler_constraints(prob, inst, v, e, w, buckets[e])
        if inst.fixed:
            if demand[e] >= int(inst.allowed[e].sum()):
                prob += _expr(xs) >= 1, f"used_e{e}_w{w}"
            continue
        y = v.y[e, w]
        prob += _expr([*xs, (y, -float(demand[e]))]) <= 0, f"count_e{e}_w{w}"
        if opt.upper_bound is not None:
            room = max(opt.upper_bound - float(inst.load[e, w]), 0.0)
            prob += _expr([(g, 1.0), (y, -room)]) <= 0, f"ub_e{e}_w{w}"


def _straggler_constraints(
    prob: pulp.LpProblem, inst: IlpInstance, v: Variables, e: int, w: int, buckets: list[int]
) -> None:
    """The group pays every request's own seconds ``a`` while its slowest request decodes: per straggler bucket
    (and, for a pinned expert, its slowest decode), ``g >= sum_b a x + d`` of it."""
    t, g = inst.worker_type[w], v.g[e, w]
    fixed = {b: float(inst.bucket_fixed[b, t]) for b in buckets}
    if inst.r_max[e] == 1 and not inst.fixed:  # pinned: its one group holds all its requests
        y_dec, y_dec_const = _y_terms(v, e, w, float(inst.decode_max[e, t]))
        terms = [(g, 1.0)] + [(v.x[b, w], -c) for b, c in fixed.items()] + [(y, -c) for y, c in y_dec]
        prob += _expr(terms, -y_dec_const) >= 0, f"pin_e{e}_w{w}"
    for b in buckets:
        if inst.straggler[b]:
            lat = {**fixed, b: float(inst.bucket_latency[b, t])}
            prob += _expr([(g, 1.0)] + [(v.x[k, w], -c) for k, c in lat.items()]) >= 0, f"lat_b{b}_w{w}"


def _worker_constraints(prob: pulp.LpProblem, inst: IlpInstance, v: Variables) -> None:
    """Busy time <= C per worker; co-resident memory."""
    for w in range(len(inst.workers)):
        terms: list[tuple[pulp.LpVariable, float]] = []
        const = 0.0
        mem: list[tuple[pulp.LpVariable, float]] = []
        for e in range(len(inst.experts)):
            if (e, w) not in v.g:
                continue
            y_terms, y_const = _y_terms(v, e, w, float(inst.load[e, w]))
            terms += [*y_terms, (v.g[e, w], 1.0)]
            const += y_const
            mem += _y_terms(v, e, w, float(inst.memory_need[e, inst.worker_type[w]]))[0]
        busy = _expr(terms, const)
        v.busy[w] = busy
        prob += busy - v.makespan <= 0, f"time_w{w}"
        if inst.coresident_memory and mem:
            prob += _expr(mem) <= inst.memory_cap[w], f"mem_w{w}"


def interchangeable(inst: IlpInstance) -> list[list[int]]:
    """Classes of worker positions that any plan may permute: same GPU type and memory, nothing resident,
    same allowed experts. Only classes of two or more."""
    resident = set(inst.resident)
    classes: dict[tuple, list[int]] = {}
    for w, wid in enumerate(inst.workers):
        if wid in resident:
            continue
        key = (inst.worker_type[w], inst.memory_cap[w], inst.allowed[:, w].tobytes())
        classes.setdefault(key, []).append(w)
    return [ws for ws in classes.values() if len(ws) > 1]


def build(inst: IlpInstance, options: ModelOptions | None = None) -> tuple[pulp.LpProblem, Variables]:
    """The unsolved problem of ``inst`` and its variables."""
    opt = options or ModelOptions()
    prob = pulp.LpProblem("mosaic", pulp.LpMinimize)
    v = _variables(prob, inst, _chain_bound(inst), opt)
    loads = [(y, opt.tie_break * float(inst.load[e, w])) for (e, w), y in v.y.items() if not isinstance(y, float)]
    prob += _expr([(v.makespan, 1.0), *loads])
    for b in range(inst.n_buckets):
        row = [(v.x[b, w], 1.0) for w in range(len(inst.workers)) if (b, w) in v.x]
        prob += _expr(row) == len(inst.bucket_requests[b]), f"cover_b{b}"
    _group_constraints(prob, inst, v, opt)
    _worker_constraints(prob, inst, v)
    if not inst.fixed:
        for e, cap in enumerate(inst.r_max):
            row = [(y, 1.0) for (k, _), y in v.y.items() if k == e]
            if cap < len(row):
                prob += _expr(row) <= cap, f"rmax_e{e}"
    if opt.symmetry:
        for ws in interchangeable(inst):
            for w0, w1 in itertools.pairwise(ws):
                prob += v.busy[w0] - v.busy[w1] >= 0, f"sym_w{w1}"
    return prob, v


def _chain_bound(inst: IlpInstance) -> float:
    """No plan beats any expert's slowest request alone plus its cheapest load (where it may run)."""
    best = 0.0
    for e in range(len(inst.experts)):
        per_worker = [float(inst.load[e, w] + inst.latency_max[e, t]) for w, t in enumerate(inst.worker_type)
                      if inst.allowed[e, w]]  # fmt: skip
        best = max(best, min(per_worker, default=0.0))
    return best
