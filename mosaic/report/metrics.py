"""Run metrics from a trace: stage times, per-worker busy/idle/loading, bound gap, accuracy, skip rate."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

from mosaic.core.trace import AGGREGATION_STAGE, EXPERT_STAGE, AggregationRecord, LoadRecord, Record, RequestRecord


@dataclass(frozen=True, slots=True)
class WorkerUsage:
    """Seconds one worker spent in a stage."""

    busy: float  # at least one request running
    loading: float  # loading a model
    idle: float  # neither, until the stage ended


@dataclass(frozen=True, slots=True)
class RunMetrics:
    """What one scheduler achieved on one workload."""

    scheduler: str
    expert_makespan: float  # seconds, expert stage
    aggregation_time: float  # seconds, aggregation stage
    end_to_end: float  # seconds, both stages
    lower_bound: float  # seconds, expert-stage bound valid for any plan
    predicted_makespan: float  # seconds, what the scheduler expected for the expert stage
    requests: int
    loads: int  # model loads in the expert stage
    aggregated: int  # queries that ran the aggregator
    skip_rate: float  # share of queries whose aggregator call was skipped
    accuracy: float | None  # final answers vs gold, when gold is known
    workers: Mapping[int, WorkerUsage] = field(default_factory=dict)  # worker id -> expert-stage usage
    accuracy_always: float | None = None  # accuracy had every query gone to the aggregator (when known)
    stats: Mapping[str, float | int | str] = field(default_factory=dict)  # the scheduler's own figures
    latency: Mapping[str, float] = field(default_factory=dict)  # per-query latency: mean, p50, p90, p99 (seconds)
    slo: Mapping[str, float] = field(default_factory=dict)  # "5x"/"10x" -> share of queries within that many
    # times their latency on an idle cluster
    throughput: float | None = None  # queries answered per second, first arrival to last answer
    utilisation: Mapping[int, float] = field(default_factory=dict)  # worker -> share of the run serving requests

    @property
    def gap(self) -> float:
        """Relative distance of the expert-stage makespan above the lower bound."""
        return self.expert_makespan / self.lower_bound - 1.0 if self.lower_bound > 0 else 0.0

    @property
    def plan_gap(self) -> float:
        """Relative distance of the scheduler's *predicted* makespan above the lower bound (both from the cost
        model): how close to optimal the plan is in the scheduler's own terms, prediction error aside."""
        return self.predicted_makespan / self.lower_bound - 1.0 if self.lower_bound > 0 else 0.0

    @property
    def accuracy_delta_pp(self) -> float | None:
        """Accuracy change of this run's aggregation policy against always aggregating, in percentage points."""
        if self.accuracy is None or self.accuracy_always is None:
            return None
        return 100.0 * (self.accuracy - self.accuracy_always)

    @property
    def idle_share(self) -> float:
        """Share of worker-seconds idle in the expert stage."""
        total = sum(u.busy + u.loading + u.idle for u in self.workers.values())
        return sum(u.idle for u in self.workers.values()) / total if total > 0 else 0.0

    def as_dict(self) -> dict:
        d = asdict(self)
        d["workers"] = {str(w): asdict(u) for w, u in self.workers.items()}
        d["stats"] = dict(self.stats)
        d["latency"] = dict(self.latency)
        d["slo"] = dict(self.slo)
        d["utilisation"] = {str(w): u for w, u in self.utilisation.items()}
        d["gap"] = self.gap
        d["plan_gap"] = self.plan_gap if math.isfinite(self.plan_gap) else None
        if not math.isfinite(self.predicted_makespan):  # a scheduler that plans nothing ahead predicts nothing
            d["predicted_makespan"] = None
        d["idle_share"] = self.idle_share
        d["accuracy_delta_pp"] = self.accuracy_delta_pp
        return d


def _union_length(intervals: list[tuple[float, float]]) -> float:
    total, cur_s, cur_e = 0.0, None, None
    for s, e in sorted(intervals):
        if cur_e is None or s > cur_e:
            if cur_e is not None:
                total += cur_e - cur_s
            cur_s, cur_e = s, e
        else:
            cur_e = max(cur_e, e)
    if cur_e is not None:
        total += cur_e - cur_s
    return total


def worker_usage(
    records: Iterable[Record], worker_ids: Sequence[int], stage: str, start: float, end: float
) -> dict[int, WorkerUsage]:
    """Busy, loading and idle seconds of each worker between ``start`` and ``end`` of ``stage``."""
    busy: dict[int, list[tuple[float, float]]] = {w: [] for w in worker_ids}
    loading: dict[int, float] = dict.fromkeys(worker_ids, 0.0)
    for r in records:
        if isinstance(r, RequestRecord) and r.stage == stage:
            busy.setdefault(r.worker, []).append((r.start, r.end))
        elif isinstance(r, LoadRecord) and r.stage == stage:
            loading[r.worker] = loading.get(r.worker, 0.0) + (r.end - r.start)
    span = max(end - start, 0.0)
    out = {}
    for w in sorted(set(busy) | set(loading)):
        b = _union_length(busy.get(w, []))
        ld = loading.get(w, 0.0)
        out[w] = WorkerUsage(busy=b, loading=ld, idle=max(span - b - ld, 0.0))
    return out


def query_latencies(records: Iterable[Record], arrivals: Sequence[float]) -> np.ndarray:
    """Seconds from each query's arrival to its final answer, in query order (see :func:`answer_times`)."""
    done = answer_times(records)
    return np.array([done[q] - arrivals[q] for q in sorted(done)], dtype=float)


def answer_times(records: Iterable[Record]) -> dict[int, float]:
    """Query id -> when its final answer came: its aggregator request's end, or its last expert's when the
    aggregator was skipped (queries with no answer yet are left out)."""
    expert_end: dict[int, float] = {}
    agg_end: dict[int, float] = {}
    skipped: set[int] = set()
    for r in records:
        if isinstance(r, RequestRecord):
            ends = agg_end if r.stage == AGGREGATION_STAGE else expert_end
            ends[r.query_id] = max(ends.get(r.query_id, r.end), r.end)
        elif isinstance(r, AggregationRecord) and r.skipped:
            skipped.add(r.query_id)
    return {q: expert_end[q] for q in skipped if q in expert_end} | agg_end


SLO_FACTORS = (5.0, 10.0)  # an SLO: latency <= factor x the query's latency on an idle cluster


def slo_attainment(done: Mapping[int, float], arrivals: Sequence[float], idle: Mapping[int, float],
                   factors: Sequence[float] = SLO_FACTORS) -> dict[str, float]:  # fmt: skip
    """Factor (as ``"5x"``) -> share of the answered queries whose latency is within ``factor`` x ``idle[q]``."""
    qs = [q for q in done if q in idle]
    if not qs:
        return {}
    lat = np.array([done[q] - arrivals[q] for q in qs])
    ref = np.array([idle[q] for q in qs])
    return {f"{f:g}x": float(np.mean(lat <= f * ref + 1e-9)) for f in factors}


def throughput(done: Mapping[int, float], arrivals: Sequence[float]) -> float | None:
    """Queries answered per second, from the first arrival to the last answer."""
    if not done:
        return None
    span = max(done.values()) - min(arrivals[q] for q in done)
    return len(done) / span if span > 0 else None


def utilisation(records: Iterable[Record], worker_ids: Sequence[int], start: float, end: float) -> dict[int, float]:
    """Worker -> share of ``start``..``end`` with at least one request running (both stages)."""
    busy: dict[int, list[tuple[float, float]]] = {w: [] for w in worker_ids}
    for r in records:
        if isinstance(r, RequestRecord):
            busy.setdefault(r.worker, []).append((r.start, r.end))
    span = end - start
    return {w: _union_length(iv) / span if span > 0 else 0.0 for w, iv in sorted(busy.items())}


def latency_summary(latencies: np.ndarray) -> dict[str, float]:
    """Mean and the 50th, 90th and 99th percentiles (empty when there is no latency)."""
    if latencies.size == 0:
        return {}
    p50, p90, p99 = np.percentile(latencies, [50, 90, 99])
    return {"mean": float(latencies.mean()), "p50": float(p50), "p90": float(p90), "p99": float(p99)}


def count_loads(records: Iterable[Record], stage: str = EXPERT_STAGE) -> int:
    return sum(1 for r in records if isinstance(r, LoadRecord) and r.stage == stage)


def aggregation_summary(records: Iterable[Record]) -> tuple[int, float, float | None]:
    """(aggregated queries, skip rate, accuracy of the final answers where known)."""
    decisions = [r for r in records if isinstance(r, AggregationRecord)]
    if not decisions:
        return 0, 0.0, None
    skipped = sum(d.skipped for d in decisions)
    known = [d.correct for d in decisions if d.correct is not None]
    acc = sum(known) / len(known) if known else None
    return len(decisions) - skipped, skipped / len(decisions), acc


def stage_requests(records: Iterable[Record], stage: str = AGGREGATION_STAGE) -> list[RequestRecord]:
    return [r for r in records if isinstance(r, RequestRecord) and r.stage == stage]


def speedup(baseline: float, value: float) -> float:
    """baseline / value, with 0-second stages reported as 1x when both are 0."""
    if value <= 0:
        return 1.0 if baseline <= 0 else float("inf")
    return baseline / value


def mean_ci(values: Sequence[float]) -> tuple[float, float]:
    """(mean, half-width of the 95% confidence interval of the mean, Student t); half-width 0 for one value."""
    x = np.asarray(values, dtype=float)
    if x.size == 0:
        return math.nan, math.nan
    if x.size == 1:
        return float(x[0]), 0.0
    try:
        from scipy.stats import t

        q = float(t.ppf(0.975, x.size - 1))
    except ImportError:  # pragma: no cover - scipy comes with scikit-learn
        q = 1.96
    return float(x.mean()), q * float(x.std(ddof=1)) / math.sqrt(x.size)
