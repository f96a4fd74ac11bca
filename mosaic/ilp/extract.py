"""From a solved model to a Plan: integer counts -> concrete requests per worker -> execution order.

Each bucket's requests (sorted longest first) are dealt to workers by systematic sampling: a worker with ``q`` of
the bucket's ``n`` requests takes those at evenly spaced ranks ``(k + 1/2) n / q``, so every worker gets a
representative slice and its predicted seconds match the bucket-mean figure the model used.

Within a worker (see :func:`worker_order`): the resident expert first (no load), the aggregator last (it stays
resident for the aggregation stage), the others by descending mean request seconds (long work starts early);
each expert's requests longest first, so the batch drains on short requests (on models small enough that polish
counts paged groups, the cheapest order of a small paged group: :func:`mosaic.ilp.polish.priced_order`).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from mosaic.core.types import Plan, Workload, plan_from_order
from mosaic.ilp.instance import IlpInstance
from mosaic.ilp.model import Variables
from mosaic.ilp.polish import busy_of, polish, priced_order


def counts_from_solution(inst: IlpInstance, v: Variables) -> np.ndarray:
    """Buckets x workers integer counts of the solver's values, rounded so each bucket sums to its size."""
    raw = np.zeros((inst.n_buckets, len(inst.workers)))
    for (b, w), x in v.x.items():
        raw[b, w] = max(float(x.value() or 0.0), 0.0)
    counts = np.floor(raw + 0.5).astype(np.int64)
    for b, ids in enumerate(inst.bucket_requests):
        diff = len(ids) - int(counts[b].sum())
        allowed = np.flatnonzero(inst.allowed[inst.bucket_expert[b]])
        while diff != 0:
            frac = raw[b, allowed] - counts[b, allowed]
            k = allowed[int(np.argmax(frac))] if diff > 0 else allowed[int(np.argmin(frac + (counts[b, allowed] == 0)))]
            counts[b, k] += 1 if diff > 0 else -1
            diff += -1 if diff > 0 else 1
    return counts


def deal(ids: tuple[int, ...], quotas: np.ndarray) -> np.ndarray:
    """Worker position of each of ``ids`` (in order) such that worker ``w`` gets ``quotas[w]`` of them, spread
    evenly over the ranks."""
    n = len(ids)
    workers = np.repeat(np.arange(len(quotas)), quotas)
    pos = np.concatenate([(np.arange(q) + 0.5) * n / q for q in quotas if q > 0]) if n else np.zeros(0)
    return workers[np.argsort(pos, kind="stable")]


def assign(inst: IlpInstance, counts: np.ndarray) -> list[dict[int, list[int]]]:
    """Worker position -> expert index -> request ids it runs."""
    out: list[dict[int, list[int]]] = [{} for _ in inst.workers]
    for b, ids in enumerate(inst.bucket_requests):
        e = inst.bucket_expert[b]
        for r, w in zip(ids, deal(ids, counts[b]).tolist(), strict=True):
            out[w].setdefault(e, []).append(r)
    return out


def worker_order(inst: IlpInstance, w: int, groups: Mapping[int, list[int]], aggregator_last: bool = True) -> list[int]:
    """Request ids worker ``w`` runs, in execution order (see the module docstring)."""
    t = inst.worker_type[w]
    sec = inst.request_seconds[:, t]
    resident = inst.resident.get(inst.workers[w])

    def rank(e: int) -> tuple[int, float, int]:
        name = inst.experts[e]
        first = 0 if name == resident else (3 if aggregator_last and name == inst.aggregator else 1)
        return first, -float(sec[groups[e]].mean()), e

    ranked = sorted(groups, key=rank)
    last = _teardown_last(inst, t, ranked, resident, aggregator_last)
    order: list[int] = []
    for e in [x for x in ranked if x != last] + ([last] if last is not None else []):
        order += priced_order(inst, t, np.asarray(groups[e], dtype=np.int64), e)[1].tolist()
    return order


def _teardown_last(
    inst: IlpInstance, t: int, ranked: list[int], resident: str | None, aggregator_last: bool
) -> int | None:
    """The expert to run last on a worker: the last one is never freed, so the one with the costliest teardown
    (unless the aggregator goes last, or only the resident one is there); None when the ranked order stands."""
    if inst.unload is None or len(ranked) < 2:
        return None
    names = [inst.experts[e] for e in ranked]
    if aggregator_last and inst.aggregator in names:
        return None
    movable = [e for e in ranked if inst.experts[e] != resident]
    if not movable:
        return None
    best = max(movable, key=lambda e: (float(inst.unload[e, t]), -ranked.index(e)))
    return best if inst.unload[best, t] > inst.unload[ranked[-1], t] else None


def exact_busy(inst: IlpInstance, per_worker: list[dict[int, list[int]]]) -> np.ndarray:
    """Worker position -> busy seconds of its groups as the cost model prices them (loads + ``group_cost``, the
    last expert's teardown left out: :func:`mosaic.ilp.polish.busy_of`)."""
    return busy_of(inst, per_worker)


def extract(
    scheduler: str,
    workload: Workload,
    inst: IlpInstance,
    counts: np.ndarray,
    bound: float,
    aggregator_last: bool = True,
    polish_s: float = 0.0,
) -> tuple[Plan, dict[str, float | int]]:
    """The plan of ``counts`` (after at most ``polish_s`` seconds of :func:`polish`) and extraction stats.

    Predicted makespan: the cost model's figure for the extracted groups; lower bound: ``bound``.
    """
    per_worker = assign(inst, counts)
    before = float(exact_busy(inst, per_worker).max(initial=0.0))
    moves = 0
    if polish_s > 0:
        per_worker, moves, _ = polish(inst, per_worker, polish_s)
    order = {inst.workers[w]: worker_order(inst, w, g, aggregator_last) for w, g in enumerate(per_worker)}
    makespan = float(exact_busy(inst, per_worker).max(initial=0.0))
    stats = {"ilp_extracted_s": before, "ilp_polish_moves": moves, "ilp_polish_gain_s": before - makespan}
    return plan_from_order(scheduler, workload, order, makespan, bound), stats
