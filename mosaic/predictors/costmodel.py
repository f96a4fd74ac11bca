"""The profiled cost model: a :class:`CostProfile` plus a :class:`LengthPredictor`, vectorised with numpy.

Request ``r`` with ``p`` prompt tokens and ``o`` predicted output tokens, on an engine whose
:class:`ModelCost` has decode step ``step_time(b, kv) = base + seq * b + kvc * kv``:

- **Own KV token-steps** ``K = o * p + o * max(o - 1, 0) / 2``: at its ``j``-th decode step the request
  holds ``p + j`` KV tokens (prefill writes the prompt; each step adds one token), ``j = 0 .. o-1``.
- ``request_seconds(r, b) = p / prefill_tps + o * (base / b' + seq) + kvc * K``: prefill plus its share of
  ``o`` decode steps of a batch of ``b'`` similar sequences (``kv = b' x`` its own KV, so the share
  ``step_time(b', kv) / b'`` holds ``kvc x`` its own KV whatever the batch). ``b' = min(b, max_batch,
  floor(kv_capacity_tokens / (p + o)))``, at least 1: like the simulator, an engine admits a request only
  when its whole ``p + o`` reservation fits the KV cache, so a batch of such requests is capped by the
  capacity (rather than clamping ``kv`` to the capacity, which would make steps cheaper than any that can run).
- ``request_latency(r) = request_seconds(r, 1)`` (alone: ``p / prefill_tps + o * step_time(1, .)`` summed).
- ``min_request_seconds(r) = p / prefill_tps + o * (base / max_batch + seq) + kvc * K``: the cheapest
  any schedule can make ``r``. In any batch of ``b_t <= max_batch`` sequences, a step costs each member
  ``base / b_t + seq + kvc x (its own KV)`` when split by sequence, and these sum to the step time; so with
  predictions equal to the truth, total work >= the sum of ``min_request_seconds`` (the work lower bound),
  and ``min_request_seconds <= request_seconds(r, b)`` for every ``b``.
- ``group_seconds(G) = sum_G a + base x max(sum_G o / f, max_G o)`` with ``a = p / prefill_tps + o x seq + kvc x K``
  (the batch-independent seconds) and ``f = min(max_batch, |G|, kv batch)`` per request: the makespan of one
  engine running ``G`` (one expert, all queued) longest first. Exactly, it is ``sum_G a + base x S`` for ``S``
  decode steps (prefill, per-sequence compute and every request's own KV reads are paid whichever step they
  fall in); ``S`` is at least the amortised steps ``sum o / f`` and at least the slowest request's ``o``
  steps, which it shares with the rest of the group, whose members pay their own seconds meanwhile (2-3x
  slower steps than alone). It is >= the amortised work ``sum_G request_seconds(r, min(|G|, max_batch))`` and
  >= every ``request_latency``. Against the simulator on random groups of the paper profiles (instruct and
  reasoning, 1-600 requests, lognormal lengths with and without a long tail) it is within 2.2% (mean +0.07%);
  the former floor, the slowest request *alone*, was up to 66% under. What it leaves out: the steps of a batch
  that drains unevenly (list-scheduling slack: ``max_batch + 1`` requests of one length take twice the steps of
  ``max_batch``), small for groups of varied lengths, and KV-capped batches of mixed reservation sizes.

**Expected costs** (``expected=True``, with a predictor that gives a spread, :meth:`LengthPredictor.predict_spread`):
a request's length is read as lognormal with mean ``o`` and log-std ``sigma``, and its batch-independent seconds,
effective KV batch and KV share are expectations over it. The KV terms grow with the square of the length, so a
point prediction underprices long, uncertain requests: on held-out MMLU-Pro queries (``experiments/ilp_lengths.py``,
means and spreads fitted on the other half) greedy LPT's plan is predicted at 1047 s with expected costs and runs
1309 s in the simulator; point costs predict 686 s for a plan that runs 1419 s. Generation caps (``max_tokens``)
are not modelled: the expectation runs over the untruncated tail.

**Second step line** (``ModelCost.has_compute_line``: the simulator prices a step as the larger of two lines): the
costs here use the first line only, a lower bound on every step, so every floor above stays a floor; estimates
are exact while the first line is the larger (the roofline's ``max`` model: its memory line, up to the batch
where compute takes over).

Predictions are computed once per workload by :meth:`ProfiledCostModel.bind` (array indexed by request id);
per-GPU-type arrays are built on first use. Requests must belong to the bound workload.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import NamedTuple

import numpy as np

from mosaic.core.errors import ProfileError, WorkloadError
from mosaic.core.types import Request, Workload
from mosaic.predictors.interface import CostModel, LengthPredictor, ModelCost
from mosaic.predictors.profile import CostProfile


class _GpuArrays(NamedTuple):
    """Per-request cost terms on one GPU type (arrays indexed by request id)."""

    fixed: np.ndarray  # prefill + per-sequence decode compute + own KV reads (seconds, batch-independent)
    decode_base: np.ndarray  # o * step_base_s: weight reads, shared by the batch
    max_batch: np.ndarray  # engine's max batch (int)
    kv_batch: np.ndarray  # largest batch of such requests whose reservations fit the KV cache (>= 1; expected: mean)
    kv_share: np.ndarray  # share of the KV cache it holds per decode step: reserve (p + o) / cap; paged: its mean


class _Bound(NamedTuple):
    """Everything computed once when binding to a workload."""

    workload: Workload
    tokens: np.ndarray  # request id -> predicted output tokens
    prompt: np.ndarray  # request id -> prompt tokens
    kv_steps: np.ndarray  # request id -> own KV token-steps K
    expert_idx: np.ndarray  # request id -> index into experts
    experts: tuple[str, ...]  # distinct experts of the requests
    spread: np.ndarray | None = None  # request id -> std of log length (expected costs); None: point costs


class ProfiledCostModel(CostModel):
    """Batching-aware costs from a profile and a length predictor (see the module docstring for the formulas)."""

    def __init__(
        self, profile: CostProfile, predictor: LengthPredictor, workload: Workload | None = None, expected: bool = False
    ) -> None:
        self.profile = profile
        self.predictor = predictor
        self.expected = expected  # price requests by their expected cost under the predictor's spread
        self._bound: _Bound | None = None if workload is None else _bind(predictor, workload, expected)
        self._gpu: dict[str, _GpuArrays] = {}  # GPU type -> per-request terms (filled on first use)

    # ----------------------------------------------------------------- binding
    def bind(self, workload: Workload) -> ProfiledCostModel:
        if self._bound is not None and self._bound.workload is workload:
            return self
        return ProfiledCostModel(self.profile, self.predictor, workload, self.expected)

    @property
    def workload(self) -> Workload | None:
        """The bound workload (None when unbound)."""
        return None if self._bound is None else self._bound.workload

    def _state(self) -> _Bound:
        if self._bound is None:
            raise WorkloadError(
                "ProfiledCostModel is not bound to a workload: call costs.bind(workload) before per-request costs"
            )
        return self._bound

    @property
    def tokens(self) -> np.ndarray:
        """Predicted output tokens of every request of the bound workload (read-only, indexed by request id)."""
        view = self._state().tokens.view()
        view.flags.writeable = False
        return view

    def model_cost(self, expert: str, gpu_type: str) -> ModelCost:
        return self.profile.get(expert, gpu_type)

    def predicted_tokens(self, request: Request) -> float:
        return float(self._state().tokens[self._index(request)])

    # ----------------------------------------------------------------- request lookup
    def _index(self, request: Request) -> int:
        reqs = self._state().workload.requests
        i = request.id
        if not 0 <= i < len(reqs) or (reqs[i] is not request and reqs[i] != request):
            self._foreign(request)
        return i

    def _indices(self, requests: Sequence[Request]) -> np.ndarray | slice:
        reqs = self._state().workload.requests
        if requests is reqs:
            return slice(None)
        n = len(reqs)
        ids = np.fromiter((r.id for r in requests), dtype=np.int64, count=len(requests))
        if ids.size and (ids.min() < 0 or ids.max() >= n):
            self._foreign(requests[int(np.argmax((ids < 0) | (ids >= n)))])
        for i, r in zip(ids.tolist(), requests, strict=True):
            if reqs[i] is not r and reqs[i] != r:
                self._foreign(r)
        return ids

    def _foreign(self, request: Request) -> None:
        wl = self._state().workload
        raise WorkloadError(
            f"request {request.id} (expert {request.expert!r}, query {request.query_id}) is not a request of the "
            f"bound workload {wl.name!r} ({len(wl.requests)} requests): bind the cost model to its workload first"
        )

    # ----------------------------------------------------------------- per-GPU terms
    def _arrays(self, gpu_type: str) -> _GpuArrays:
        arrays = self._gpu.get(gpu_type)
        if arrays is None:
            arrays = _gpu_arrays(self._state(), self.profile, gpu_type)
            self._gpu[gpu_type] = arrays
        return arrays

    def _checked(self, out: np.ndarray, idx: np.ndarray | slice, gpu_type: str) -> np.ndarray:
        """``out``, unless a request's expert is not profiled on ``gpu_type`` (NaN): then the profile's error."""
        if np.isnan(out).any():
            first = int(np.argmax(np.isnan(out)))
            b = self._state()
            self.profile.get(b.experts[b.expert_idx[idx][first]], gpu_type)
        return out

    def _scalar(self, value: np.floating, i: int, gpu_type: str) -> float:
        if math.isnan(value):
            b = self._state()
            self.profile.get(b.experts[b.expert_idx[i]], gpu_type)
        return float(value)

    def _seconds(self, idx: np.ndarray | slice, gpu_type: str, batch: int | None) -> np.ndarray:
        a = self._arrays(gpu_type)
        cap = np.minimum(a.max_batch[idx], a.kv_batch[idx])
        eff = cap if batch is None else np.minimum(cap, _check_batch(batch))
        return self._checked(a.fixed[idx] + a.decode_base[idx] / eff, idx, gpu_type)

    # ----------------------------------------------------------------- scalar costs
    def request_seconds(self, request: Request, gpu_type: str, batch: int | None = None) -> float:
        i = self._index(request)
        a = self._arrays(gpu_type)
        cap = min(a.max_batch[i], a.kv_batch[i])
        eff = cap if batch is None else min(cap, _check_batch(batch))
        return self._scalar(a.fixed[i] + a.decode_base[i] / eff, i, gpu_type)

    def request_latency(self, request: Request, gpu_type: str) -> float:
        i = self._index(request)
        a = self._arrays(gpu_type)
        return self._scalar(a.fixed[i] + a.decode_base[i], i, gpu_type)

    def min_request_seconds(self, request: Request, gpu_type: str) -> float:
        """The cheapest any schedule can make ``request`` on ``gpu_type`` (amortised at max batch, own KV only)."""
        i = self._index(request)
        a = self._arrays(gpu_type)
        return self._scalar(a.fixed[i] + a.decode_base[i] / a.max_batch[i], i, gpu_type)

    # ----------------------------------------------------------------- vectorised costs
    def seconds_array(self, requests: Sequence[Request], gpu_type: str, batch: int | None = None) -> np.ndarray:
        return self._seconds(self._indices(requests), gpu_type, batch)

    def latency_array(self, requests: Sequence[Request], gpu_type: str) -> np.ndarray:
        """``request_latency`` of each request."""
        idx = self._indices(requests)
        a = self._arrays(gpu_type)
        return self._checked(a.fixed[idx] + a.decode_base[idx], idx, gpu_type)

    def min_seconds_array(self, requests: Sequence[Request], gpu_type: str) -> np.ndarray:
        """``min_request_seconds`` of each request."""
        idx = self._indices(requests)
        a = self._arrays(gpu_type)
        return self._checked(a.fixed[idx] + a.decode_base[idx] / a.max_batch[idx], idx, gpu_type)

    def min_group_seconds(self, requests: Sequence[Request], gpu_type: str) -> float:
        """The least worker-seconds any schedule needs for ``requests`` (one expert) on ``gpu_type``, over all
        workers together: batch-independent terms plus the shared decode steps, which are at least
        ``sum(o) / max_batch`` and at least ``sum(o * share)`` (a step's reservations never exceed the KV cache;
        ``share`` = the request's reservation over the capacity, capped at 1 for requests that run alone)."""
        if len(requests) == 0:
            return 0.0
        idx = self._indices(requests)
        a = self._arrays(gpu_type)
        shared = a.decode_base[idx]
        steps = max(float((shared / a.max_batch[idx]).sum()), float((shared * a.kv_share[idx]).sum()))
        return float(self._checked(a.fixed[idx], idx, gpu_type).sum()) + steps

    def floor_terms(self, requests: Sequence[Request], gpu_type: str) -> tuple[np.ndarray, ...]:
        """Per request, the pieces of :meth:`min_group_seconds`: batch-independent seconds ``a``, decode seconds
        ``d`` at batch one, ``1 / max_batch`` and the KV share (its reservation over the capacity, at most 1).
        Any group of one expert on one worker takes at least ``sum a + max(sum d / max_batch, sum d x share,
        max d)``."""
        idx = self._indices(requests)
        a = self._arrays(gpu_type)
        fixed = self._checked(a.fixed[idx], idx, gpu_type)
        return fixed, a.decode_base[idx], 1.0 / a.max_batch[idx], a.kv_share[idx]

    def group_seconds(self, requests: Sequence[Request], gpu_type: str) -> float:
        """Seconds for one worker to run ``requests`` (one expert) longest first: every request's
        batch-independent seconds plus the shared decode steps, at least the amortised steps at the batch the
        group fills and at least the slowest request's own steps (see the module docstring)."""
        if len(requests) == 0:
            return 0.0
        idx = self._indices(requests)
        a = self._arrays(gpu_type)
        fill = np.minimum(np.minimum(a.max_batch[idx], len(requests)), a.kv_batch[idx])
        fixed = self._checked(a.fixed[idx], idx, gpu_type)
        shared = a.decode_base[idx]
        return float(fixed.sum() + max(float((shared / fill).sum()), float(shared.max())))

    def __repr__(self) -> str:
        wl = "unbound" if self._bound is None else f"bound to {self._bound.workload.name!r}"
        return f"ProfiledCostModel(predictor={self.predictor.name!r}, gpu_types={list(self.profile.gpu_types)}, {wl})"


def _check_batch(batch: int) -> int:
    if isinstance(batch, bool) or not isinstance(batch, int | np.integer) or batch < 1:
        raise ProfileError(f"cost model: batch must be an integer >= 1, got {batch!r}")
    return int(batch)


def _bind(predictor: LengthPredictor, workload: Workload, expected: bool = False) -> _Bound:
    """Predict every request's output tokens once (and, with ``expected``, their spread) and lay the per-request
    inputs out as arrays."""
    reqs = workload.requests
    n = len(reqs)
    tokens = np.array(predictor.predict(workload, reqs), dtype=float)  # a copy: frozen below
    name = getattr(predictor, "name", type(predictor).__name__)
    if tokens.shape != (n,):
        raise WorkloadError(f"length predictor {name!r} returned shape {tokens.shape} for {n} requests")
    if n and not (np.isfinite(tokens).all() and tokens.min() >= 0):
        bad = int(np.argmax(~np.isfinite(tokens) | (tokens < 0)))
        raise WorkloadError(f"length predictor {name!r} predicted {tokens[bad]} tokens for request {bad}")
    prompt = np.fromiter((r.prompt_tokens for r in reqs), dtype=float, count=n)
    experts = tuple(dict.fromkeys(r.expert for r in reqs))
    pos = {e: k for k, e in enumerate(experts)}
    expert_idx = np.fromiter((pos[r.expert] for r in reqs), dtype=np.int64, count=n)
    kv_steps = tokens * prompt + tokens * np.maximum(tokens - 1.0, 0.0) / 2.0
    tokens.flags.writeable = False
    spread = _spread(predictor, workload, name) if expected else None
    return _Bound(workload, tokens, prompt, kv_steps, expert_idx, experts, spread)


def _spread(predictor: LengthPredictor, workload: Workload, name: str) -> np.ndarray | None:
    """The predictor's spread of every request (None when it gives none, or all are 0: point costs are exact)."""
    raw = predictor.predict_spread(workload, workload.requests)
    if raw is None:
        return None
    spread = np.array(raw, dtype=float)
    n = len(workload.requests)
    if spread.shape != (n,) or (n and not (np.isfinite(spread).all() and spread.min() >= 0)):
        raise WorkloadError(f"length predictor {name!r} returned spreads that are not {n} finite values >= 0")
    return spread if n and spread.max() > 0 else None


_MISSING = ModelCost(*(math.nan,) * 6, max_batch=1, kv_capacity_tokens=1)  # costs NaN: not in the profile


def _gpu_arrays(b: _Bound, profile: CostProfile, gpu_type: str) -> _GpuArrays:
    """Per-request cost terms of the bound workload on ``gpu_type``; NaN for experts the profile lacks there
    (the error is raised when such a request's cost is asked for)."""
    per_gpu = profile.table.get(gpu_type, {})
    mcs = [per_gpu.get(e, _MISSING) for e in b.experts]

    def col(attr: str, dtype: type = float) -> np.ndarray:
        return np.array([getattr(mc, attr) for mc in mcs], dtype=dtype)[b.expert_idx]

    if b.spread is not None:
        return _expected_arrays(b, col)
    fixed = b.prompt / col("prefill_tps") + b.tokens * col("step_per_seq_s") + col("step_per_kv_token_s") * b.kv_steps
    footprint = np.maximum(b.prompt + b.tokens, 1.0)
    capacity = col("kv_capacity_tokens")
    kv_batch = np.maximum(np.floor(capacity / footprint), 1.0).astype(np.int64)
    kv_share = np.minimum(footprint, capacity) / capacity
    paged = np.array([mc.memory_mode == "paged" for mc in mcs], dtype=bool)[b.expert_idx]
    if paged.any():
        kv_share = np.where(paged, _paged_share(b.prompt, b.tokens, capacity), kv_share)
    return _GpuArrays(fixed, b.tokens * col("step_base_s"), col("max_batch", np.int64), kv_batch, kv_share)


def _paged_share(prompt: np.ndarray, tokens: np.ndarray, capacity: np.ndarray) -> np.ndarray:
    """Paged KV: a request's mean share of the cache over its decode steps, ``mean_j min((p + j) / cap, 1)`` for
    ``j = 0 .. o-1`` (it holds what it has generated, not its whole reservation). A step of two or more requests
    holds at most the cache (the simulator preempts before a step's blocks overflow), so the shares of a step's
    requests sum to at most 1 and ``sum o x share`` stays a floor on the decode steps."""
    o = np.maximum(tokens, 0.0)
    below = np.clip(np.ceil(capacity - prompt), 0.0, o)  # steps j < cap - p, where p + j < cap
    held = below * prompt + below * np.maximum(below - 1.0, 0.0) / 2.0  # sum of p + j over those steps
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(o > 0, (held / capacity + (o - below)) / np.where(o > 0, o, 1.0), 0.0)


_NODES, _WEIGHTS = np.polynomial.hermite.hermgauss(32)
_WEIGHTS = _WEIGHTS / math.sqrt(math.pi)  # E[f(Z)] = sum w f(sqrt(2) x), Z standard normal


def _expected_arrays(b: _Bound, col: Callable[..., np.ndarray]) -> _GpuArrays:
    """The per-request terms as expectations over a lognormal output length with mean ``tokens`` and log-std
    ``spread`` (Gauss-Hermite, 32 nodes: within ~1% of Monte Carlo even for the KV batch, whose floor is not
    smooth): the batch-independent seconds (their KV reads grow with the square of the length), the effective
    batch of the decode steps (long requests fit the KV cache fewer at a time) and the KV share. The shared decode
    seconds are linear in the length, so their expectation is the point value."""
    sig = b.spread[:, None]
    o = b.tokens[:, None] * np.exp(math.sqrt(2.0) * sig * _NODES - sig * sig / 2.0)  # E[o] = tokens
    p = b.prompt[:, None]
    kv = o * p + o * np.maximum(o - 1.0, 0.0) / 2.0
    fixed = (p / col("prefill_tps")[:, None] + o * col("step_per_seq_s")[:, None]
             + col("step_per_kv_token_s")[:, None] * kv) @ _WEIGHTS  # fmt: skip
    capacity, max_batch = col("kv_capacity_tokens")[:, None], col("max_batch", np.int64)
    footprint = np.maximum(p + o, 1.0)
    per_fill = (o / np.minimum(max_batch[:, None], np.maximum(np.floor(capacity / footprint), 1.0))) @ _WEIGHTS
    fill = np.where(per_fill > 0, b.tokens / np.where(per_fill > 0, per_fill, 1.0), max_batch)  # E[o] / E[o / fill]
    share = ((o * np.minimum(footprint, capacity) / capacity) @ _WEIGHTS) / np.maximum(b.tokens, 1e-12)
    return _GpuArrays(fixed, b.tokens * col("step_base_s"), max_batch, fill, share)
