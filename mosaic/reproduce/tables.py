"""The paper study's tables, as (title, header, rows) of strings: rendered to Markdown, HTML and W&B alike."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from mosaic.report.table import PAPER_FIGURES
from mosaic.reproduce.paper import (
    BASELINE,
    MOSAIC,
    POLICIES,
    SCHEDULERS,
    Cell,
    accuracy_delta_pp,
    ratios,
    stat,
    true_gap,
)


@dataclass(frozen=True, slots=True)
class TableData:
    """One table of a report: a title, its column names, its rows (strings) and a note under it."""

    title: str
    header: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]
    note: str = ""


def fmt(mean_hw: tuple[float, float], unit: str = "", digits: int = 2, signed: bool = False) -> str:
    """``mean ± half-width`` (the half-width left out when there is one seed; ``signed``: always a sign)."""
    mean, hw = mean_hw
    if not math.isfinite(mean):
        return "-"
    head = f"{mean:+,.{digits}f}" if signed else f"{mean:,.{digits}f}"
    if hw == 0 or not math.isfinite(hw):
        return f"{head}{unit}"
    return f"{head} ± {hw:,.{digits}f}{unit}"


def _paper(workload: str, key: str, unit: str = "x", signed: bool = False) -> str:
    value = PAPER_FIGURES.get(workload, {}).get(key)
    if value is None:
        return "-"
    return f"{value:+.2f}{unit}" if signed else f"{value:.2f}{unit}"


def speedup_table(cells: Sequence[Cell], workloads: Sequence[str]) -> TableData:
    """The 3x3 table: expert, aggregation and end-to-end speedup of mosaic-ilp over round-robin (always aggregating),
    ours under T=1 and T=2/3 beside the paper's."""
    rows = []
    for w in workloads:
        rows.append((
            w,
            fmt(ratios(cells, w, MOSAIC, "always", "expert_s"), "x"), _paper(w, "expert"), fmt(ceiling(cells, w), "x"),
            fmt(ratios(cells, w, MOSAIC, "T=1", "aggregation_s"), "x"),
            fmt(ratios(cells, w, MOSAIC, "T=2/3", "aggregation_s"), "x"), _paper(w, "aggregation"),
            fmt(ratios(cells, w, MOSAIC, "T=1", "end_to_end_s"), "x"),
            fmt(ratios(cells, w, MOSAIC, "T=2/3", "end_to_end_s"), "x"), _paper(w, "end_to_end"),
        ))  # fmt: skip
    header = ("workload", "expert", "paper", "expert ceiling", "aggregation T=1", "aggregation T=2/3", "paper",
              "end-to-end T=1", "end-to-end T=2/3", "paper")  # fmt: skip
    note = ("Speedup of mosaic-ilp with adaptive aggregation over round-robin that always aggregates, mean ± 95% "
            "interval over seeds; the paper does not say which T its stage speedups use. Expert ceiling: "
            "round-robin's expert stage / the true-length lower bound, a speedup no plan can beat.")  # fmt: skip
    return TableData("MOSAIC vs round-robin, beside the paper", header, tuple(rows), note)


def ceiling(cells: Sequence[Cell], workload: str) -> tuple[float, float]:
    """Mean and 95% half-width over seeds of round-robin's expert stage / the true-length lower bound."""
    return stat(cells, workload, BASELINE, "always",
                lambda c: c.expert_s / c.true_bound_s if c.true_bound_s else None)  # fmt: skip


def skip_table(cells: Sequence[Cell], workloads: Sequence[str]) -> TableData:
    """Aggregator skip rate and accuracy change against always aggregating, ours beside the paper's."""
    rows = []
    for w in workloads:
        skip = {p: fmt(stat(cells, w, MOSAIC, p, lambda c: 100 * c.skip_rate), "%", 1) for p in ("T=1", "T=2/3")}
        acc = {p: fmt(stat(cells, w, MOSAIC, p, accuracy_delta_pp), " pp", signed=True) for p in ("T=1", "T=2/3")}
        rows.append(
            (
                w,
                skip["T=1"],
                _paper(w, "skip_t1", "%"),
                skip["T=2/3"],
                _paper(w, "skip_t23", "%"),
                acc["T=1"],
                _paper(w, "acc_t1", " pp", True),
                acc["T=2/3"],
                _paper(w, "acc_t23", " pp", True),
            )
        )
    header = ("workload", "skipped T=1", "paper", "skipped T=2/3", "paper", "Δacc T=1", "paper", "Δacc T=2/3", "paper")
    note = "Δacc: accuracy minus the always-aggregate accuracy of the same questions, percentage points."
    return TableData("Adaptive aggregation: skip rate and accuracy", header, tuple(rows), note)


def grid_table(cells: Sequence[Cell], workloads: Sequence[str]) -> TableData:
    """Every scheduler x policy: end-to-end speedup over round-robin always aggregating."""
    rows = []
    for w in workloads:
        for sch in SCHEDULERS:
            rows.append((w, sch, fmt(ratios(cells, w, sch, "always", "expert_s"), "x"),
                         *(fmt(ratios(cells, w, sch, p, "end_to_end_s"), "x") for p in POLICIES)))  # fmt: skip
    header = ("workload", "scheduler", "expert stage", *(f"end-to-end, {p}" for p in POLICIES))
    note = "Speedups over round-robin always aggregating (the first row of each workload is 1x by definition)."
    return TableData("All schedulers and aggregation policies", header, tuple(rows), note)


def bound_table(cells: Sequence[Cell], workloads: Sequence[str]) -> TableData:
    """How far each scheduler's simulated expert stage is above the true-length lower bound."""
    rows = []
    for w in workloads:
        for sch in SCHEDULERS:
            rows.append((w, sch, fmt(stat(cells, w, sch, "always", lambda c: c.expert_s), " s", 1),
                         fmt(stat(cells, w, sch, "always", lambda c: c.true_bound_s), " s", 1),
                         fmt(stat(cells, w, sch, "always", true_gap), "%", 1),
                         fmt(stat(cells, w, sch, "always", lambda c: c.model_bound_s), " s", 1)))  # fmt: skip
    header = ("workload", "scheduler", "expert stage", "true bound", "gap to true bound", "model bound")
    note = ("true bound: a lower bound on any schedule's expert stage from the true lengths the simulator replays "
            "(docs: plan quality); model bound: the plan's bound from the predicted costs, which is not a bound on "
            "the simulated makespan.")  # fmt: skip
    return TableData("Expert stage against its lower bounds", header, tuple(rows), note)
