"""Bucket counts (buckets x workers integer matrix): the model's view of a plan, its busy times, and warm starts.

A plan in count form says how many requests of each bucket each worker runs. :func:`counts_from_order` reads a
plan (e.g. greedy LPT's) in that form; :func:`repair` moves work so it respects the instance's placement limits
(memory, fixed placement, R_max); :func:`busy_times` prices counts exactly as the model does; :func:`start_values`
turns counts into a MIP start.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from mosaic.ilp.instance import IlpInstance
from mosaic.ilp.model import Variables, interchangeable


def counts_from_order(inst: IlpInstance, order: Mapping[int, Sequence[int]]) -> np.ndarray:
    """Buckets x workers counts of ``order`` (worker id -> request ids); requests of other stages are ignored."""
    n = len(inst.request_seconds)
    bucket_of = np.full(n, -1, dtype=np.int64)
    for b, ids in enumerate(inst.bucket_requests):
        bucket_of[list(ids)] = b
    pos = {wid: k for k, wid in enumerate(inst.workers)}
    counts = np.zeros((inst.n_buckets, len(inst.workers)), dtype=np.int64)
    for wid, ids in order.items():
        if wid not in pos or not len(ids):
            continue
        arr = np.asarray(ids, dtype=np.int64)
        b = bucket_of[arr[(arr >= 0) & (arr < n)]]
        np.add.at(counts[:, pos[wid]], b[b >= 0], 1)
    return counts


def placed(inst: IlpInstance, counts: np.ndarray) -> np.ndarray:
    """Experts x workers (bool): the expert runs at least one request there."""
    out = np.zeros((len(inst.experts), len(inst.workers)), dtype=bool)
    for b, e in enumerate(inst.bucket_expert):
        out[e] |= counts[b] > 0
    return out


def group_seconds(inst: IlpInstance, counts: np.ndarray) -> np.ndarray:
    """Experts x workers: model seconds of each expert's group (no load), 0 where it runs nothing."""
    t = np.asarray(inst.worker_type)
    full = np.zeros((len(inst.experts), len(inst.workers)))
    own = np.zeros_like(full)  # batch-independent seconds a of the group
    for b, e in enumerate(inst.bucket_expert):
        full[e] += inst.bucket_seconds[b, t] * counts[b]
        own[e] += inst.bucket_fixed[b, t] * counts[b]
    pinned = np.array([r == 1 and not inst.fixed for r in inst.r_max], dtype=bool)
    slow = np.where(pinned[:, None], inst.decode_max[:, t], 0.0)  # decode steps of its slowest request
    for b, e in enumerate(inst.bucket_expert):
        if inst.straggler[b]:
            dec = inst.bucket_latency[b, t] - inst.bucket_fixed[b, t]
            slow[e] = np.maximum(slow[e], dec * (counts[b] > 0))
    tail = np.maximum(inst.decode_mean[:, t], slow)
    return np.where(placed(inst, counts), np.maximum(full, own + tail), 0.0)


def busy_times(inst: IlpInstance, counts: np.ndarray) -> np.ndarray:
    """Worker position -> model seconds (loads of the experts it serves + their groups)."""
    on = placed(inst, counts)
    return (np.where(on, inst.load, 0.0) + group_seconds(inst, counts)).sum(axis=0)


def _move(inst: IlpInstance, counts: np.ndarray, e: int, keep: np.ndarray) -> None:
    """Move expert ``e``'s requests off the workers not in ``keep`` onto the least busy kept ones (in place)."""
    for b in inst.expert_buckets(e):
        excess = int(counts[b, ~keep].sum())
        counts[b, ~keep] = 0
        targets = np.flatnonzero(keep)
        step = max(1, excess // (4 * len(targets)))
        while excess > 0:
            w = targets[int(np.argmin(busy_times(inst, counts)[targets]))]
            n = min(step, excess)
            counts[b, w] += n
            excess -= n


def repair(inst: IlpInstance, counts: np.ndarray) -> np.ndarray:
    """``counts`` changed as little as simply possible to respect allowed placements, R_max (dynamic mode) and a
    fixed placement's "every placed expert runs something"."""
    out = counts.copy()
    for e in range(len(inst.experts)):
        mine = out[inst.expert_buckets(e)].sum(axis=0)
        allowed = inst.allowed[e]
        cap = int(allowed.sum()) if inst.fixed else inst.r_max[e]
        used = (mine > 0) & allowed
        if not (mine > 0)[~allowed].any() and used.sum() <= cap:
            continue
        rank = np.lexsort((np.arange(len(mine)), -mine))  # most requests first
        keep = np.zeros_like(allowed)
        for w in rank:
            if allowed[w] and keep.sum() < cap and (mine[w] > 0 or not keep.any()):
                keep[w] = True
        _move(inst, out, e, keep)
    if inst.fixed:
        _fill_fixed(inst, out)
    return out


def _fill_fixed(inst: IlpInstance, counts: np.ndarray) -> None:
    """Give every placed (expert, worker) of a fixed placement at least one request when the expert has enough."""
    demand = inst.demand()
    for e in range(len(inst.experts)):
        if demand[e] < int(inst.allowed[e].sum()):
            continue
        buckets = inst.expert_buckets(e)
        for w in np.flatnonzero(inst.allowed[e]):
            if counts[buckets, w].sum() > 0:
                continue
            donors = counts[buckets].sum(axis=0)
            src = int(np.argmax(donors))
            b = next(b for b in buckets if counts[b, src] > 0)
            counts[b, src] -= 1
            counts[b, w] += 1


def symmetric_order(inst: IlpInstance, counts: np.ndarray) -> np.ndarray:
    """``counts`` with interchangeable workers permuted so their busy times do not increase (as the model's
    symmetry constraints require)."""
    out = counts.copy()
    busy = busy_times(inst, counts)
    for ws in interchangeable(inst):
        ranked = sorted(ws, key=lambda w: -busy[w])
        out[:, ws] = counts[:, ranked]
    return out


def start_values(inst: IlpInstance, v: Variables, counts: np.ndarray, makespan: float) -> dict[str, float]:
    """Variable name -> value of the plan ``counts`` (a MIP start)."""
    on = placed(inst, counts)
    groups = group_seconds(inst, counts)
    values = {v.makespan.name: makespan}
    for (e, w), y in v.y.items():
        if not isinstance(y, float):
            values[y.name] = float(on[e, w])
    for (b, w), x in v.x.items():
        values[x.name] = float(counts[b, w])
    for (e, w), g in v.g.items():
        values[g.name] = float(groups[e, w])
    return values
