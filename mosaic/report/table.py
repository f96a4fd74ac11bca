"""The comparison table: stage times, speedups against a baseline, gaps to the true bound and the oracle plan, the
predicted gap, idle share, skip rate, accuracy (every column: docs/plan_quality.md)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from rich.table import Table

from mosaic.report.metrics import RunMetrics, speedup

# Published MOSAIC figures (PAPER_NOTES.md): preset -> metric -> value.
PAPER_FIGURES: Mapping[str, Mapping[str, float]] = {
    "mmlu_pro": {"expert": 1.69, "aggregation": 1.74, "end_to_end": 1.71, "skip_t1": 45.71, "skip_t23": 84.62,
                 "acc_t1": 0.24, "acc_t23": -0.62},
    "medmcqa": {"expert": 1.53, "aggregation": 4.23, "end_to_end": 2.04, "skip_t1": 47.48, "skip_t23": 90.18,
                "acc_t1": -0.04, "acc_t23": 0.32},
    "gpqa": {"expert": 2.54, "aggregation": 1.53, "end_to_end": 2.34, "skip_t1": 37.37, "skip_t23": 87.37,
             "acc_t1": 1.00, "acc_t23": 0.49},
}  # fmt: skip

COLUMNS = (
    "scheduler", "expert s", "expert x", "aggregation s", "aggregation x", "end-to-end s", "end-to-end x",
    "true LB s", "gap %", "vs oracle %", "pred LB s", "pred gap %", "loads", "idle %", "skip %", "accuracy %",
    "Δacc pp",
)  # fmt: skip


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.1f}"


def _stat(m: RunMetrics, key: str) -> float:
    """A float stat of the run (``true_lb_s``, ``oracle_s``: added by ``mosaic.pipeline.compare``), nan if absent."""
    v = m.stats.get(key)
    return float(v) if isinstance(v, int | float) and not isinstance(v, bool) else math.nan


def true_gaps(m: RunMetrics) -> tuple[float, float]:
    """(simulated expert stage / true-length lower bound - 1, simulated expert stage / oracle plan's - 1); nan
    where the compare did not compute them (a real backend: no true lengths before the run)."""
    bound, oracle = _stat(m, "true_lb_s"), _stat(m, "oracle_s")
    gap = m.expert_makespan / bound - 1.0 if bound > 0 else math.nan
    return gap, m.expert_makespan / oracle - 1.0 if oracle > 0 else math.nan


def _fin(v: float, fmt: str) -> str:
    return format(v, fmt) if math.isfinite(v) else "-"


def rows(metrics: Sequence[RunMetrics], baseline: str) -> list[list[str]]:
    """One row of strings per run; speedups against the run named ``baseline`` (else the first)."""
    base = next((m for m in metrics if m.scheduler == baseline), metrics[0])
    out = []
    for m in metrics:
        gap, vs_oracle = true_gaps(m)
        out.append([
            m.scheduler,
            f"{m.expert_makespan:,.1f}",
            f"{speedup(base.expert_makespan, m.expert_makespan):.2f}",
            f"{m.aggregation_time:,.1f}",
            f"{speedup(base.aggregation_time, m.aggregation_time):.2f}",
            f"{m.end_to_end:,.1f}",
            f"{speedup(base.end_to_end, m.end_to_end):.2f}",
            _fin(_stat(m, "true_lb_s"), ",.1f"),
            _fin(100 * gap, ".1f"),
            _fin(100 * vs_oracle, "+.1f"),
            f"{m.lower_bound:,.1f}",
            _fin(100 * m.plan_gap, ".1f"),
            str(m.loads),
            _pct(m.idle_share),
            _pct(m.skip_rate),
            _pct(m.accuracy),
            "-" if m.accuracy_delta_pp is None else f"{m.accuracy_delta_pp:+.2f}",
        ])  # fmt: skip
    return out


def comparison_table(metrics: Sequence[RunMetrics], baseline: str, title: str = "") -> Table:
    """A rich table; ``x`` columns are speedups over ``baseline``."""
    base = baseline if any(m.scheduler == baseline for m in metrics) else metrics[0].scheduler
    table = Table(
        title=title or None,
        caption=f"x = speedup over {base}; true LB = lower bound on any plan's expert stage from the true lengths, "
        "gap = simulated expert stage above it; vs oracle = above mosaic-ilp planned with the true lengths; pred LB "
        "and pred gap = the cost model's bound and the predicted makespan above it (model-only); Δacc = accuracy "
        "minus always-aggregate accuracy (docs/plan_quality.md)",
    )
    for i, c in enumerate(COLUMNS):
        table.add_column(c, justify="left" if i == 0 else "right", no_wrap=True)
    for r in rows(metrics, base):
        table.add_row(*r)
    return table


LATENCY_COLUMNS = ("scheduler", "mean s", "p50 s", "p90 s", "p99 s", "SLO 5x %", "SLO 10x %", "queries/s", "util %")


def latency_rows(metrics: Sequence[RunMetrics]) -> list[list[str]]:
    """Per-query latency, SLO attainment, throughput and mean worker utilisation of each run."""
    out = []
    for m in metrics:
        lat, util = m.latency, list(m.utilisation.values())
        out.append([
            m.scheduler,
            *(f"{lat[k]:,.1f}" if k in lat else "-" for k in ("mean", "p50", "p90", "p99")),
            *(_pct(m.slo.get(k)) for k in ("5x", "10x")),
            f"{m.throughput:.3f}" if m.throughput is not None else "-",
            _pct(sum(util) / len(util) if util else None),
        ])  # fmt: skip
    return out


def latency_table(metrics: Sequence[RunMetrics], title: str = "") -> Table:
    """A rich table of :func:`latency_rows`."""
    table = Table(
        title=title or None,
        caption="latency: query arrival to final answer; SLO Nx: share of queries "
        "within N x their latency on an idle cluster; util: share of the run a worker serves requests",
    )
    for i, c in enumerate(LATENCY_COLUMNS):
        table.add_column(c, justify="left" if i == 0 else "right", no_wrap=True)
    for r in latency_rows(metrics):
        table.add_row(*r)
    return table


def paper_line(preset: str) -> str | None:
    """The paper's published speedups for a preset, for printing beside ours."""
    f = PAPER_FIGURES.get(preset)
    if not f:
        return None
    return (
        f"paper (MOSAIC vs round-robin, {preset}): expert {f['expert']:.2f}x, aggregation {f['aggregation']:.2f}x, "
        f"end-to-end {f['end_to_end']:.2f}x; aggregator skipped {f['skip_t1']:.1f}% at T=1, "
        f"{f['skip_t23']:.1f}% at T=2/3"
    )
