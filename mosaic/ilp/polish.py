"""Local search after extraction, on the cost model's own (non-linear) group costs.

The model prices a group with bucket means, a representative under-filled batch and exact straggler latencies;
the cost model prices it as ``sum_i a_i + max(sum_i d_i / min(cap_i, n), max_i d_i)`` over the group's actual
requests. Where the two differ (small groups of mixed lengths, mostly), moving or swapping single requests
between workers that already serve the same expert, or relocating a whole group to another worker, lowers the
real makespan; outside fixed mode a request may also start a new replica on one of the least busy workers, its
load paid there (up to ``spawn_max``). On small models (at most 16 expert x worker pairs), when no such move
helps, two more: an exchange of requests of two experts between the critical worker and one that serves both, and
a merge of one expert's two groups on other workers that saves a load (it frees a worker for the next replica).
A worker's busy time leaves out its last expert's teardown (it stays loaded). No move breaks memory or (fixed
mode) changes the placement.
Deterministic; bounded by a time budget.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterable, Iterator

import numpy as np

from mosaic.ilp.batches import MAX_EXACT, PAGED_EXACT, paged_steps, reserve_steps
from mosaic.ilp.instance import IlpInstance

CANDIDATES = 3  # requests tried per (expert, worker): the slowest alone and the costliest at full batch
SPAWN_TARGETS = 3  # least busy workers tried for a new replica of a critical worker's expert
SPAWN_MIN_PAIRS = 0  # no new replicas on models of at most this many expert x worker pairs
MERGE_PAIRS = 16  # models of at most this many expert x worker pairs also try merges off the critical worker
PAGED_PAIRS = 16  # paged groups get the counted price only on models of at most this many expert x worker pairs
PERMUTE_MAX = 5  # paged groups of at most this many requests (on such models) get the best of every order
TOL = 1e-9


def group_cost(inst: IlpInstance, t: int, ids: np.ndarray, e: int | None = None) -> float:
    """Seconds of expert ``e``'s ``ids`` on GPU type ``t`` (no load): :func:`priced_order`'s price."""
    return priced_order(inst, t, ids, e)[0] if len(ids) else 0.0


def priced_order(inst: IlpInstance, t: int, ids: np.ndarray, e: int | None = None) -> tuple[float, np.ndarray]:
    """(seconds, execution order) of expert ``e``'s ``ids`` on GPU type ``t`` (no load). The order is longest first;
    with a known engine (``e`` given) the price is the simulator's step count in that order (:mod:`mosaic.ilp.batches`;
    reserved KV: exact, up to ``MAX_EXACT`` requests; paged: at token granularity, preemptions' recomputed prefill
    included, up to ``PAGED_EXACT`` requests on models of at most ``PAGED_PAIRS`` expert x worker pairs, where polish
    prices few groups, and there every order of up to ``PERMUTE_MAX`` requests is counted and the cheapest kept:
    under paged KV the admission order decides who is preempted), else as ``CostModel.group_seconds`` prices them."""
    a, d, cap = inst.request_fixed[ids, t], inst.request_decode[ids, t], inst.request_cap[ids, t]
    order = ids[np.lexsort((ids, -inst.request_seconds[ids, t]))]
    closed = float(a.sum()) + max(float((d / np.minimum(cap, len(ids))).sum()), float(d.max()))
    if e is None or inst.engine is None:
        return closed, order
    if len(ids) > MAX_EXACT if inst.engine[e, t, 2] else (len(ids) > PAGED_EXACT or inst.allowed.size > PAGED_PAIRS):
        return closed, order
    batch, capacity, reserved, base, tps = inst.engine[e, t]
    own = float((a + d).sum() - base * inst.tokens[ids].sum())  # each alone, less its decode steps' fixed seconds
    if reserved:
        o = inst.tokens[order]
        return own + base * reserve_steps(o, inst.footprint[order], int(batch), float(capacity)), order
    priced = []
    for cand in itertools.permutations(order) if len(order) <= PERMUTE_MAX else [order]:  # longest first comes first
        cand = np.asarray(cand, dtype=np.int64)
        o = inst.tokens[cand]
        counted = paged_steps(inst.footprint[cand] - o, o, int(batch), float(capacity))
        if counted is not None:
            priced.append((own + base * counted[0] + counted[1] / tps, cand))
    return min(priced, key=lambda x: x[0]) if priced else (closed, order)  # ties: the earlier order


class _State:
    """Groups, their costs and the workers' busy times, updated move by move."""

    def __init__(self, inst: IlpInstance, per_worker: list[dict[int, list[int]]]) -> None:
        self.inst = inst
        self.groups = [{e: np.asarray(ids, dtype=np.int64) for e, ids in g.items()} for g in per_worker]
        self.cost = [{e: group_cost(inst, inst.worker_type[w], ids, e) for e, ids in g.items()}
                     for w, g in enumerate(self.groups)]  # fmt: skip
        self.busy = np.array([self._busy(w) for w in range(len(self.groups))])

    def _busy(self, w: int) -> float:
        return sum(self.inst.load[e, w] + c for e, c in self.cost[w].items()) - self._credit(w, self.cost[w])

    def _credit(self, w: int, experts: Iterable[int]) -> float:
        """The teardown ``load`` charges but the worker never pays: its last expert's, which stays loaded (the
        costliest one goes last; none when the aggregator, charged none, goes last)."""
        inst = self.inst
        if inst.unload is None:
            return 0.0
        names = [e for e in experts if inst.load[e, w] > 0]  # a resident expert runs first and is charged nothing
        if not names or any(inst.experts[e] == inst.aggregator for e in names):
            return 0.0
        return float(max(inst.unload[e, inst.worker_type[w]] for e in names))

    def priced(self, w: int, e: int, ids: np.ndarray) -> float:
        """Worker ``w``'s busy time if its group of ``e`` were ``ids``."""
        old = self.cost[w].get(e, 0.0) + (self.inst.load[e, w] if e in self.cost[w] else 0.0)
        new = group_cost(self.inst, self.inst.worker_type[w], ids, e) + (self.inst.load[e, w] if len(ids) else 0.0)
        after = [x for x in self.cost[w] if x != e] + ([e] if len(ids) else [])
        return float(self.busy[w] - old + new + self._credit(w, self.cost[w]) - self._credit(w, after))

    def set(self, w: int, e: int, ids: np.ndarray) -> None:
        if len(ids):
            self.groups[w][e] = ids
            self.cost[w][e] = group_cost(self.inst, self.inst.worker_type[w], ids, e)
        else:
            self.groups[w].pop(e, None)
            self.cost[w].pop(e, None)
        self.busy[w] = self._busy(w)


def busy_of(inst: IlpInstance, per_worker: list[dict[int, list[int]]]) -> np.ndarray:
    """Worker position -> busy seconds of its groups as polish prices them (loads, group costs, the last expert's
    teardown left out)."""
    return _State(inst, per_worker).busy


def _candidates(inst: IlpInstance, t: int, ids: np.ndarray, slow_first: bool) -> np.ndarray:
    alone = inst.request_fixed[ids, t] + inst.request_decode[ids, t]
    full = inst.request_seconds[ids, t]
    key = -alone if slow_first else alone
    picks = list(ids[np.lexsort((ids, key))][:CANDIDATES])
    if slow_first:
        picks += list(ids[np.lexsort((ids, -full))][:CANDIDATES])
    return np.unique(np.asarray(picks, dtype=np.int64))


def _rest(busy: np.ndarray, w: int, v: int) -> float:
    """Largest busy time of the workers other than ``w`` and ``v``."""
    mask = np.ones(len(busy), dtype=bool)
    mask[[w, v]] = False
    return float(busy[mask].max(initial=0.0))


def _fits(s: _State, e: int, v: int) -> bool:
    """Expert ``e`` may join worker ``v`` (memory fits; co-resident memory when that is on)."""
    inst = s.inst
    if not inst.allowed[e, v]:
        return False
    if not inst.coresident_memory:
        return True
    t = inst.worker_type[v]
    return float(inst.memory_need[[*s.groups[v], e], t].sum()) <= inst.memory_cap[v] + 1e-9


def _options(s: _State, w: int, e: int, ids: np.ndarray) -> list[tuple[int, np.ndarray, np.ndarray]]:
    """(other worker, new group of ``e`` on ``w``, new group on it): single moves and swaps with workers that serve
    ``e`` already; outside fixed mode also the whole group relocated (or merged) onto any worker it fits."""
    inst, out = s.inst, []
    others = [v for v in range(len(s.groups)) if v != w and e in s.groups[v]]
    keep_one = inst.fixed and len(ids) == 1
    for r in _candidates(inst, inst.worker_type[w], ids, slow_first=True):
        mine = ids[ids != r]
        for v in others:
            theirs = s.groups[v][e]
            if not keep_one:
                out.append((v, mine, np.append(theirs, r)))
            for q in _candidates(inst, inst.worker_type[v], theirs, slow_first=False):
                out.append((v, np.append(mine, q), np.append(theirs[theirs != q], r)))
    if not inst.fixed:
        empty = ids[:0]
        for v in range(len(s.groups)):
            if v != w and (e in s.groups[v] or _fits(s, e, v)):
                out.append((v, empty, np.append(s.groups[v].get(e, empty), ids)))
        out += _spawns(s, w, e, ids)
    return out


def _spawns(s: _State, w: int, e: int, ids: np.ndarray) -> list[tuple[int, np.ndarray, np.ndarray]]:
    """A new replica, while ``e`` has fewer than its ``spawn_max`` (a user's r_max; past the R_max rule, which only
    bounds the MIP's size, when workers sit idle): one of the group's slowest or costliest requests moved to
    one of the ``SPAWN_TARGETS`` least busy workers that do not serve ``e`` (paying its load there). Not on models of
    at most ``SPAWN_MIN_PAIRS`` expert x worker pairs: there the MIP decides replicas without an R_max rule, and a
    spawn priced by the closed form made paged plans slower (exhaustive test)."""
    cap = (s.inst.spawn_max or s.inst.r_max)[e]
    if len(ids) < 2 or s.inst.allowed.size <= SPAWN_MIN_PAIRS or sum(e in g for g in s.groups) >= cap:
        return []
    free = [v for v in np.argsort(s.busy, kind="stable").tolist() if v != w and e not in s.groups[v]]
    targets = [v for v in free if _fits(s, e, v)][:SPAWN_TARGETS]
    out = []
    for r in _candidates(s.inst, s.inst.worker_type[w], ids, slow_first=True):
        out += [(v, ids[ids != r], np.array([r], dtype=np.int64)) for v in targets]
    return out


def _best_move(s: _State, w: int) -> tuple[float, tuple] | None:
    """Best move, swap or relocation off worker ``w`` (the critical one): (new makespan, move), or None."""
    best = None
    for e, ids in sorted(s.groups[w].items()):
        for v, new_mine, new_theirs in _options(s, w, e, ids):
            span = max(s.priced(w, e, new_mine), s.priced(v, e, new_theirs), _rest(s.busy, w, v))
            if span < s.busy[w] - TOL * max(s.busy[w], 1.0) and (best is None or span < best[0] - TOL):
                best = (span, ((w, e, new_mine), (v, e, new_theirs)))
    if best is None and s.inst.allowed.size <= MERGE_PAIRS:
        best = _best_exchange(s, w)
    return best


def _best_exchange(s: _State, w: int) -> tuple[float, tuple] | None:
    """Best exchange of a request of ``e`` on the critical ``w`` with one of another expert ``f`` on ``v``, where
    ``v`` serves ``e`` and ``w`` serves ``f`` (small models only: four groups change)."""
    best = None
    for change in _exchanges(s, w):
        span = max(_two(s, change, w), _two(s, change, change[1][0]), _rest(s.busy, w, change[1][0]))
        if span < s.busy[w] - TOL * max(s.busy[w], 1.0) and (best is None or span < best[0] - TOL):
            best = (span, change)
    return best


def _exchanges(s: _State, w: int) -> Iterator[tuple]:
    """Every exchange of :func:`_best_exchange` among the candidates (a few of each group), as its four (worker,
    expert, new group) changes."""
    g = s.groups
    for e, mine in sorted(g[w].items()):
        for v in (v for v in range(len(g)) if v != w and e in g[v]):
            for f in (f for f in sorted(g[v]) if f != e and f in g[w]):
                theirs, t, tv = g[v][f], s.inst.worker_type[w], s.inst.worker_type[v]
                for r, q in itertools.product(
                    _candidates(s.inst, t, mine, True), _candidates(s.inst, tv, theirs, False)
                ):
                    yield ((w, e, mine[mine != r]), (v, e, np.append(g[v][e], r)), (v, f, theirs[theirs != q]),
                           (w, f, np.append(g[w][f], q)))  # fmt: skip


def _two(s: _State, change: tuple, worker: int) -> float:
    """Busy seconds of ``worker`` after the group changes of ``change`` that are on it."""
    groups = {e: ids for e, ids in s.groups[worker].items()}
    for wk, e, ids in change:
        if wk == worker:
            groups[e] = ids
    t, inst = s.inst.worker_type[worker], s.inst
    kept = [e for e, ids in groups.items() if len(ids)]
    return sum(inst.load[e, worker] + group_cost(inst, t, groups[e], e) for e in kept) - s._credit(worker, kept)


def _best_merge(s: _State) -> tuple[float, tuple] | None:
    """Best merge of one expert's two groups on non-critical workers (the whole group of ``v`` onto ``u``, which
    serves the expert too) that saves a load without raising the makespan: it frees a worker for the critical
    one's next move (a new replica there), which no single move off the critical worker reaches. (saved, move)."""
    span, crit, best = float(s.busy.max(initial=0.0)), int(np.argmax(s.busy)), None
    empty = np.zeros(0, dtype=np.int64)
    for v, groups in enumerate(s.groups):
        for e, ids in sorted(groups.items()):
            for u in (u for u in range(len(s.groups)) if v != crit and u not in (v, crit) and e in s.groups[u]):
                merged = np.append(s.groups[u][e], ids)
                after_u, after_v = s.priced(u, e, merged), s.priced(v, e, empty)
                saved = float(s.busy[u] + s.busy[v] - after_u - after_v)
                if after_u <= span * (1 - TOL) and saved > TOL * max(span, 1.0) and (best is None or saved > best[0]):
                    best = (saved, ((u, e, merged), (v, e, empty)))
    return best


def polish(inst: IlpInstance, per_worker: list[dict[int, list[int]]], budget_s: float) -> tuple[list, int, float]:
    """(improved worker -> expert -> request ids, moves applied, seconds of makespan saved)."""
    s = _State(inst, per_worker)
    start, moves = float(s.busy.max(initial=0.0)), 0
    deadline = time.perf_counter() + budget_s
    while time.perf_counter() < deadline and len(s.busy) > 1:
        w = int(np.argmax(s.busy))
        found = _best_move(s, w)
        if found is None and inst.allowed.size <= MERGE_PAIRS:
            found = _best_merge(s)
        if found is None:
            break
        for worker, e, ids in found[1]:  # the move: each changed group
            s.set(worker, e, ids)
        moves += 1
    out = [{e: ids.tolist() for e, ids in g.items()} for g in s.groups]
    return out, moves, start - float(s.busy.max(initial=0.0))
