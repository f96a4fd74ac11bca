"""The ILP instance: one stage's workload, costs and cluster reduced to per-expert buckets of requests.

Requests of one expert are grouped into at most ``buckets`` buckets of similar predicted output length, so the model's
size depends on experts x buckets x workers, never on the number of queries. Every figure comes from the
:class:`CostModel` (predictions only). Per request ``i`` on GPU type ``g`` the cost model gives
``s(b) = request_seconds(i, g, b)``; MOSAIC reads it as ``a_i + d_i / min(b, cap_i)``: ``a_i`` the
batch-independent seconds (prefill, per-sequence compute, own KV reads), ``d_i`` the decode-step seconds a
batch shares (``d_i = 2 (s(1) - s(2))``, ``a_i = s(1) - d_i``). A worker running ``n`` requests of one expert
then costs ``sum a + max(sum d / min(cap, n), max d)`` (``CostModel.group_seconds``): every request's own
seconds plus the shared decode steps, at least those of the amortised batch and at least the slowest request's
own steps, which it shares with the rest of the group. The model bounds it by the full-batch cost
``sum s_full``, the under-filled batch ``sum a + mean d`` (exact for requests of one predicted length) and
``sum a + d`` of its straggler (see :mod:`mosaic.ilp.model`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from mosaic.core.errors import ConfigError, PlanError
from mosaic.core.types import Cluster, Request, Workload, requests_by_expert
from mosaic.ilp.replication import replication_caps
from mosaic.predictors.interface import CostModel

REL_TIE = 1e-9  # requests whose predicted lengths differ by less than this (relative) share a bucket


class IlpError(PlanError):
    """The MOSAIC ILP cannot produce a plan; the message names the constraint that cannot be met."""


@dataclass(frozen=True, slots=True)
class InstanceOptions:
    """How a stage becomes an instance."""

    buckets: int = 4  # most buckets of predicted output length per expert (stragglers not counted)
    straggler_share: float = 0.2  # a request alone taking >= this share of the mean worker's work is a straggler
    max_straggler_vars: int = 16000  # stragglers x workers at most (the slowest kept; 1,000 left 15 on 64 workers)
    replication_ratio: float = 1.0  # R_max(e) = floor(work_e / (ratio * load_e)), clamped to [1, workers]
    r_max: Mapping[str, int] | None = None  # expert -> R_max override (experts absent from the stage are ignored)
    uncapped_pairs: int = 16  # stages of at most this many expert x worker pairs: no R_max rule (size is no concern)
    coresident_memory: bool = False  # experts placed on one worker must fit its memory together
    placement: Mapping[int, Sequence[str]] | None = None  # worker id -> experts it may serve (fixed mode)

    def __post_init__(self) -> None:
        if isinstance(self.buckets, bool) or not isinstance(self.buckets, int) or self.buckets < 1:
            raise ConfigError(f"ilp: buckets must be an integer >= 1, got {self.buckets!r}")
        if not self.straggler_share > 0:
            raise ConfigError(f"ilp: straggler_share must be > 0, got {self.straggler_share!r}")
        if not self.replication_ratio > 0:
            raise ConfigError(f"ilp: replication_ratio must be > 0, got {self.replication_ratio!r}")


@dataclass(frozen=True, slots=True)
class IlpInstance:
    """Everything the model needs, as arrays indexed by position (experts, buckets, worker positions, GPU types).

    Arrays are read-only. ``load`` already holds 0 where an expert is resident (it then runs first there)
    and includes each expert's teardown (:func:`_switch_seconds`).
    """

    experts: tuple[str, ...]  # experts with requests, workload order
    workers: tuple[int, ...]  # worker position -> worker id (cluster order)
    gpu_types: tuple[str, ...]  # distinct GPU types, order of first appearance
    worker_type: tuple[int, ...]  # worker position -> index into gpu_types
    bucket_expert: tuple[int, ...]  # bucket -> expert index
    bucket_requests: tuple[tuple[int, ...], ...]  # bucket -> request ids, longest (predicted) first
    straggler: tuple[bool, ...]  # bucket -> a single straggler request (its latency is modelled exactly)
    bucket_seconds: np.ndarray  # buckets x types: mean full-batch seconds per request
    bucket_fixed: np.ndarray  # buckets x types: mean batch-independent seconds per request (a)
    decode_mean: np.ndarray  # experts x types: mean shared decode seconds (d) of its non-straggler requests
    latency_max: np.ndarray  # experts x types: seconds of the slowest request alone
    decode_max: np.ndarray  # experts x types: largest shared decode seconds (d) of its requests
    bucket_latency: np.ndarray  # buckets x types: seconds of the bucket's slowest request alone
    load: np.ndarray  # experts x workers: load + own teardown seconds (0 where resident; see _switch_seconds)
    memory_need: np.ndarray  # experts x types: GB on the GPU (weights + runtime)
    memory_cap: tuple[float, ...]  # worker position -> GB
    allowed: np.ndarray  # experts x workers (bool): the expert may be placed there
    fixed: bool  # placement given: ``allowed`` is the placement and loads are not decided
    r_max: tuple[int, ...]  # expert -> most workers it may be placed on
    coresident_memory: bool  # co-resident experts must fit a worker's memory together
    request_seconds: np.ndarray  # request id -> full-batch seconds on each type (requests x types)
    request_fixed: np.ndarray  # request id -> batch-independent seconds a on each type (requests x types)
    request_decode: np.ndarray  # request id -> shared decode seconds d on each type (requests x types)
    request_cap: np.ndarray  # request id -> largest batch that still lowers its cost, per type (requests x types)
    resident: Mapping[int, str]  # worker id -> expert resident there (only experts of this stage)
    aggregator: str  # the workload's aggregator (served last where placed, so it stays resident)
    unload: np.ndarray | None = None  # experts x types: teardown seconds (freeing it before another load)
    tokens: np.ndarray | None = None  # request id -> predicted output tokens
    footprint: np.ndarray | None = None  # request id -> prompt + predicted output tokens (its KV reservation)
    engine: np.ndarray | None = None  # experts x types x (max batch, KV capacity, reserved?, step base s, prefill tps)
    spawn_max: tuple[int, ...] | None = None  # expert -> most replicas polish may grow it to (a user's r_max, else
    # the cluster or its requests: the R_max rule only keeps the MIP small); None: ``r_max``

    @property
    def n_buckets(self) -> int:
        return len(self.bucket_expert)

    def expert_buckets(self, e: int) -> list[int]:
        """The buckets of expert ``e``."""
        return [b for b, x in enumerate(self.bucket_expert) if x == e]

    def demand(self) -> np.ndarray:
        """Expert -> number of requests."""
        out = np.zeros(len(self.experts), dtype=np.int64)
        for b, e in enumerate(self.bucket_expert):
            out[e] += len(self.bucket_requests[b])
        return out


def _frozen(a: np.ndarray) -> np.ndarray:
    a = np.ascontiguousarray(a, dtype=float)
    a.flags.writeable = False
    return a


def _switch_seconds(
    costs: CostModel, experts: Sequence[str], ids: Sequence[int], gpus: Sequence[str], res: Mapping[int, str],
    aggregator: str,
) -> np.ndarray:  # fmt: skip
    """Experts x workers: what serving an expert costs a worker that does not hold it: its load plus its own
    teardown (``unload_seconds``), paid when the worker's next load frees it; the aggregator, served last and
    left loaded, pays no teardown. 0 where resident (it runs first). Exact for a worker with nothing resident
    whose order ends with the aggregator; otherwise off by one teardown at most (a resident freed by the first
    load is not counted; a last expert other than the aggregator is, though it stays loaded)."""
    return np.array([[0.0 if res.get(w) == e else costs.load_seconds(e, g) + (0.0 if e == aggregator else
                      costs.unload_seconds(e, g)) for w, g in zip(ids, gpus, strict=True)]
                     for e in experts]).reshape(-1, len(ids))  # fmt: skip


def _per_type(costs: CostModel, reqs: Sequence[Request], gpu: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(full-batch seconds, batch-independent seconds a, shared decode seconds d) of each request on ``gpu``."""
    full = np.asarray(costs.seconds_array(reqs, gpu), dtype=float)
    lat_fn = getattr(costs, "latency_array", None)
    alone = np.asarray(lat_fn(reqs, gpu) if lat_fn else costs.seconds_array(reqs, gpu, 1), dtype=float)
    pair = np.asarray(costs.seconds_array(reqs, gpu, 2), dtype=float)
    fixed = np.clip(2.0 * pair - alone, 0.0, full)
    return full, fixed, alone - fixed


def _caps(full: np.ndarray, fixed: np.ndarray, decode: np.ndarray) -> np.ndarray:
    """Batch cap of each request: ``full = a + d / cap``, so ``cap = d / (full - a)`` (huge where d or the
    difference vanishes: the batch size does not matter then)."""
    share = full - fixed
    with np.errstate(divide="ignore", invalid="ignore"):
        cap = np.where(share > 1e-12 * np.maximum(decode, 1e-300), decode / share, np.inf)
    return np.where(decode > 0, np.maximum(np.round(cap), 1.0), np.inf)


def split_buckets(length: np.ndarray, seconds: np.ndarray, ids: np.ndarray, buckets: int) -> list[np.ndarray]:
    """``ids`` cut into buckets of predicted ``length``: one per distinct length when there are at most
    ``buckets`` of them, else ``buckets`` chunks of (nearly) equal count in length order. Each bucket's ids are
    sorted by ``seconds`` descending (ties by id).

    Buckets follow predicted *lengths*, not seconds: requests of one predicted length differ in seconds only by
    their prompts, and splitting on that would let the model hand whole prompt-length ranges (which may hide
    long true outputs) to single workers; within a bucket, extraction spreads prompt lengths evenly instead.
    """
    if ids.size == 0:
        return []
    order = np.lexsort((ids, -length))
    s = length[order]
    cuts = np.flatnonzero(np.abs(np.diff(s)) > REL_TIE * np.maximum(np.abs(s[:-1]), 1e-12)) + 1
    chunks = np.split(order, cuts) if len(cuts) + 1 <= buckets else np.array_split(order, buckets)
    return [ids[c[np.lexsort((ids[c], -seconds[c]))]] for c in chunks if c.size]


def predicted_lengths(costs: CostModel, workload: Workload) -> np.ndarray:
    """Predicted output tokens of every request (the cost model's ``tokens`` array when it has one)."""
    tokens = getattr(costs, "tokens", None)
    if isinstance(tokens, np.ndarray) and tokens.shape == (len(workload.requests),):
        return np.asarray(tokens, dtype=float)
    return np.fromiter((costs.predicted_tokens(r) for r in workload.requests), dtype=float,
                       count=len(workload.requests))  # fmt: skip


def _workers(cluster: Cluster) -> tuple[tuple[int, ...], tuple[str, ...], tuple[int, ...]]:
    ids = tuple(w.id for w in cluster.workers)
    if not ids:
        raise IlpError("cluster has no workers: the ILP needs at least one")
    if len(set(ids)) != len(ids):
        raise IlpError(f"cluster repeats worker ids: {list(ids)}")
    types = tuple(dict.fromkeys(w.gpu_type for w in cluster.workers))
    return ids, types, tuple(types.index(w.gpu_type) for w in cluster.workers)


def _min_loads(costs: CostModel, experts: Sequence[str], types: Sequence[str]) -> float:
    return float(sum(min(costs.load_seconds(e, g) for g in types) for e in experts))


def _expert_decode(
    decode: np.ndarray, b_expert: Sequence[int], b_ids: Sequence[tuple[int, ...]], strag: Sequence[bool], n: int
) -> np.ndarray:
    """Experts x types: mean shared decode seconds over each expert's non-straggler requests (all of them when
    every request is a straggler)."""
    out = np.zeros((n, decode.shape[1]))
    for e in range(n):
        rest = [r for b, x in enumerate(b_expert) if x == e and not strag[b] for r in b_ids[b]]
        rest = rest or [r for b, x in enumerate(b_expert) if x == e for r in b_ids[b]]
        out[e] = decode[rest].mean(axis=0)
    return out


def _bucket_mean(values: np.ndarray, buckets: Sequence[tuple[int, ...]]) -> np.ndarray:
    """Buckets x types: mean of ``values`` (requests x types) over each bucket's requests."""
    return np.array([values[list(r)].mean(axis=0) for r in buckets]).reshape(-1, values.shape[1])


def _stragglers(
    groups: Mapping[str, list[int]], latency: np.ndarray, threshold: float, n_workers: int, max_vars: int
) -> set[int]:
    """Request ids that get a bucket of their own: per expert its slowest requests alone (at most one per worker)
    whose latency is at least ``threshold``; overall at most ``max_vars // n_workers``, slowest first."""
    found: list[int] = []
    for ids in groups.values():
        mine = np.asarray(ids)
        slow = mine[np.lexsort((mine, -latency[mine]))][:n_workers]
        found += slow[latency[slow] >= threshold].tolist()
    found.sort(key=lambda r: (-latency[r], r))
    return set(found[: max(max_vars // n_workers, 0)])


def _bucketize(
    groups: Mapping[str, list[int]],
    length: np.ndarray,
    seconds: np.ndarray,
    stragglers: set[int],
    buckets: int,
) -> tuple[list[int], list[tuple[int, ...]], list[bool]]:
    """(bucket -> expert, bucket -> request ids, bucket -> straggler) of every expert: each straggler alone (so the
    model sees the group latency it imposes), the rest by :func:`split_buckets`."""
    b_expert: list[int] = []
    b_ids: list[tuple[int, ...]] = []
    b_strag: list[bool] = []
    for e, name in enumerate(groups):
        mine = np.asarray(groups[name])
        slow = np.array([r for r in groups[name] if r in stragglers], dtype=np.int64)
        for r in slow[np.lexsort((slow, -seconds[slow]))].tolist():
            b_expert.append(e)
            b_ids.append((r,))
            b_strag.append(True)
        rest = mine[~np.isin(mine, slow)]
        for chunk in split_buckets(length[rest], seconds[rest], rest, buckets):
            b_expert.append(e)
            b_ids.append(tuple(chunk.tolist()))
            b_strag.append(chunk.size == 1)  # a lone request: its latency is modelled exactly too
    return b_expert, b_ids, b_strag


def _resident(cluster: Cluster, resident: Mapping[int, str | None] | None, experts: Sequence[str]) -> dict[int, str]:
    if not resident:
        return {}
    unknown = sorted(set(resident) - {w.id for w in cluster.workers})
    if unknown:
        raise IlpError(f"resident map names workers {unknown} that are not in the cluster {list(cluster.ids)}")
    return {w: e for w, e in resident.items() if e is not None and e in experts}


def _fit(experts: Sequence[str], need: np.ndarray, cap: np.ndarray, wtype: Sequence[int]) -> np.ndarray:
    """Experts x workers: the expert's memory fits the worker; an expert that fits nowhere raises IlpError."""
    per_worker = need[:, list(wtype)]
    ok = per_worker <= cap[None, :] + 1e-9
    for e, name in enumerate(experts):
        if not ok[e].any():
            raise IlpError(
                f"expert {name!r} needs {per_worker[e].min():.1f} GB, no worker has more than {cap.max():.1f} GB free"
            )
    return ok


def _placement(
    placement: Mapping[int, Sequence[str]], experts: Sequence[str], ids: Sequence[int], fit: np.ndarray
) -> np.ndarray:
    """Experts x workers of a given placement, checked: known workers, every expert placed, memory fits."""
    unknown = sorted(set(placement) - set(ids))
    if unknown:
        raise IlpError(f"fixed placement names workers {unknown} that are not in the cluster {list(ids)}")
    given = np.zeros(fit.shape, dtype=bool)
    for k, w in enumerate(ids):
        for name in placement.get(w, ()):
            if name in experts:
                given[experts.index(name), k] = True
    for e, name in enumerate(experts):
        if not given[e].any():
            raise IlpError(f"fixed placement gives expert {name!r} no worker, but it has requests to run")
        bad = np.flatnonzero(given[e] & ~fit[e])
        if bad.size:
            raise IlpError(f"fixed placement puts expert {name!r} on worker {ids[bad[0]]}, whose memory it exceeds")
    return given


def _engines(costs: CostModel, experts: Sequence[str], types: Sequence[str]) -> np.ndarray:
    """Experts x types x (max_batch, KV capacity tokens, 1 if the KV cache is reserved up front else 0, the step's
    fixed seconds ``step_base_s``, prefill tokens per second)."""
    out = np.zeros((len(experts), len(types), 5))
    for e, name in enumerate(experts):
        for t, gpu in enumerate(types):
            mc = costs.model_cost(name, gpu)
            reserve = float(getattr(mc, "memory_mode", "reserve") == "reserve")
            out[e, t] = (mc.max_batch, mc.kv_capacity_tokens, reserve, mc.step_base_s, mc.prefill_tps)
    return out


def build_instance(
    workload: Workload,
    costs: CostModel,
    cluster: Cluster,
    resident: Mapping[int, str | None] | None = None,
    options: InstanceOptions | None = None,
) -> IlpInstance:
    """The instance of one stage (``costs`` bound to ``workload``). Raises :class:`IlpError` when an expert
    fits no worker or a fixed placement misses an expert."""
    opt = options or InstanceOptions()
    ids, types, wtype = _workers(cluster)
    groups = requests_by_expert(workload)
    experts = tuple(groups)
    reqs = workload.requests
    full, fixed, decode = (np.zeros((len(reqs), len(types))) for _ in range(3))
    for t, gpu in enumerate(types):
        if reqs:
            full[:, t], fixed[:, t], decode[:, t] = _per_type(costs, reqs, gpu)
    lat = fixed + decode
    ref = (full[:, 0].sum() + _min_loads(costs, experts, types)) / len(ids)
    slow = _stragglers(groups, lat[:, 0], opt.straggler_share * ref, len(ids), opt.max_straggler_vars)
    tokens = predicted_lengths(costs, workload)
    b_expert, b_ids, b_strag = _bucketize(groups, tokens, full[:, 0], slow, opt.buckets)
    b_sec, b_fix = _bucket_mean(full, b_ids), _bucket_mean(fixed, b_ids)
    b_lat = np.array([lat[list(r)].max(axis=0) for r in b_ids]).reshape(-1, len(types))
    d_mean = _expert_decode(decode, b_expert, b_ids, b_strag, len(experts))
    lat_max = np.array([lat[groups[e]].max(axis=0) for e in experts]).reshape(-1, len(types))
    dec_max = np.array([decode[groups[e]].max(axis=0) for e in experts]).reshape(-1, len(types))
    res = _resident(cluster, resident, experts)
    load = _switch_seconds(costs, experts, ids, [types[t] for t in wtype], res, workload.aggregator.name)
    need = np.array([[costs.model_cost(e, g).memory_gb for g in types] for e in experts]).reshape(-1, len(types))
    cap = np.array([w.memory_gb for w in cluster.workers], dtype=float)
    allowed = _fit(experts, need, cap, wtype)
    if opt.placement is not None:
        allowed = _placement(opt.placement, experts, ids, allowed)
    demand = [len(groups[e]) for e in experts]
    work = [float(full[groups[e], 0].sum()) for e in experts]
    small = len(experts) * len(ids) <= opt.uncapped_pairs  # the rule limits model size; a small model needs no cap
    caps = replication_caps(experts, work, [0.0] * len(experts) if small else load.min(axis=1, initial=np.inf).tolist(),
                            demand, len(ids), opt.replication_ratio, opt.r_max)  # fmt: skip
    spawn = replication_caps(experts, work, [0.0] * len(experts), demand, len(ids), opt.replication_ratio, opt.r_max)
    allowed.flags.writeable = False
    return IlpInstance(
        experts, ids, types, wtype, tuple(b_expert), tuple(b_ids), tuple(b_strag), _frozen(b_sec), _frozen(b_fix),
        _frozen(d_mean), _frozen(lat_max), _frozen(dec_max), _frozen(b_lat), _frozen(load), _frozen(need),
        tuple(cap.tolist()), allowed, opt.placement is not None, caps, opt.coresident_memory, _frozen(full),
        _frozen(fixed), _frozen(decode), _frozen(_caps(full, fixed, decode)), res, workload.aggregator.name,
        _frozen(np.array([[costs.unload_seconds(e, g) for g in types] for e in experts]).reshape(-1, len(types))),
        _frozen(tokens), _frozen(tokens + np.array([r.prompt_tokens for r in reqs], dtype=float)),
        _frozen(_engines(costs, experts, types)), spawn,
    )  # fmt: skip
