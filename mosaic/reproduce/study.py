"""Run the paper study end to end: the grid with a progress bar, then the report folder and one W&B run."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import matplotlib.pyplot as plt
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from mosaic.agents.bounds import true_lower_bound
from mosaic.core.config import TrackingCfg
from mosaic.pipeline import Experiment
from mosaic.report.gantt import plot_gantt  # also selects the Agg backend
from mosaic.report.table import PAPER_FIGURES
from mosaic.report.tracking import log_run
from mosaic.reproduce.page import Page, wandb_tables, write_page
from mosaic.reproduce.paper import (
    MOSAIC,
    POLICIES,
    SCHEDULERS,
    Cell,
    Setup,
    cells_as_dicts,
    grid,
    measure,
    ratios,
)
from mosaic.reproduce.tables import bound_table, grid_table, skip_table, speedup_table

INTRO = (
    "The paper's three workloads (4 x A100-80GB, six experts, k = 3 by skill routing) under round-robin, "
    "data parallelism and the MOSAIC ILP, each always aggregating and with adaptive aggregation at T = 1 and "
    "T = 2/3. The paper's figures are from PAPER_NOTES.md (secondary sources, see there)."
)


def experiment_bound(exp: Experiment) -> float | None:
    """The true-length lower bound of the experiment's expert stage (:func:`mosaic.agents.bounds.true_lower_bound`:
    from the lengths the simulator replays, valid for every plan in both memory modes)."""
    return true_lower_bound(exp.workload, exp.responses, exp.costs, exp.cluster).value


def speedup_chart(cells: Sequence[Cell], workloads: Sequence[str], path: Path) -> Path:
    """End-to-end speedup over round-robin (always) of every scheduler x policy, with the paper's MOSAIC figure."""
    fig, ax = plt.subplots(figsize=(10, 4))
    bars = [(s, p) for s in SCHEDULERS[1:] for p in POLICIES]
    width = 0.8 / len(bars)
    for i, (sch, pol) in enumerate(bars):
        values = [ratios(cells, w, sch, pol, "end_to_end_s") for w in workloads]
        xs = [j + (i - (len(bars) - 1) / 2) * width for j in range(len(workloads))]
        ax.bar(xs, [v[0] for v in values], width, yerr=[v[1] for v in values], label=f"{sch}, {pol}", capsize=2)
    paper = [PAPER_FIGURES.get(w, {}).get("end_to_end") for w in workloads]
    ax.scatter([j for j, p in enumerate(paper) if p], [p for p in paper if p], marker="*", s=160, color="black",
               zorder=5, label="paper, MOSAIC end to end")  # fmt: skip
    ax.axhline(1.0, color="grey", lw=0.8)
    ax.set_xticks(range(len(workloads)), workloads)
    ax.set_ylabel("end-to-end speedup over round-robin (always)")
    ax.legend(fontsize=7, ncol=3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def run_paper(setup: Setup, out: Path, command: str, tracking: TrackingCfg, wandb_dir: Path) -> Page:
    """Measure the grid (progress bar), write ``out``'s report (index.md/.html, PNGs, results.json) and log it as
    one W&B run under ``wandb_dir``."""
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    total, started = len(grid(setup)), [0]
    with Progress(*columns) as progress:
        task = progress.add_task("reproduce paper", total=total)

        def step(label: str) -> None:  # called as each run starts: the runs before it are done
            progress.update(task, completed=started[0], description=label)
            started[0] += 1

        cells, gantt_runs = measure(setup, experiment_bound, step)
        progress.update(task, completed=total, description="reproduce paper: done")
    out.mkdir(parents=True, exist_ok=True)
    results = {"setup": _setup_dict(setup), "command": command, "cells": cells_as_dicts(cells)}
    (out / "results.json").write_text(json.dumps(results, indent=1), encoding="utf-8")
    images = [("End-to-end speedup over round-robin", speedup_chart(cells, setup.workloads, out / "speedups.png").name)]
    for w, runs in gantt_runs.items():
        workers = sorted({x for r in runs for x in r.metrics.workers})
        path = plot_gantt({r.name: r.records for r in runs}, workers, out / f"gantt_{w}.png",
                          f"{w}, seed {setup.seeds[0]}, always aggregating")  # fmt: skip
        images.append((f"Gantt: {w} (seed {setup.seeds[0]}, always aggregating)", path.name))
    ws = setup.workloads
    tables = (speedup_table(cells, ws), skip_table(cells, ws), grid_table(cells, ws), bound_table(cells, ws))
    intro = f"{INTRO} Seeds {', '.join(map(str, setup.seeds))}; backend {setup.backend}; {len(cells)} runs."
    page = Page("Reproducing the MOSAIC paper", command, intro, tables, tuple(images))
    write_page(page, out)
    log_run(tracking, "reproduce-paper", {"setup": _setup_dict(setup), "command": command}, wandb_dir,
            wandb_tables(tables), {c: out / n for c, n in images}, _summary(cells, ws))  # fmt: skip
    return page


def _setup_dict(setup: Setup) -> dict:
    return {"seeds": list(setup.seeds), "backend": setup.backend, "overrides": list(setup.overrides),
            "workloads": list(setup.workloads)}  # fmt: skip


def _summary(cells: Sequence[Cell], workloads: Sequence[str]) -> dict[str, float]:
    out = {}
    for w in workloads:
        for pol in POLICIES:
            out[f"{w}/{MOSAIC}/{pol}/end_to_end_x"] = ratios(cells, w, MOSAIC, pol, "end_to_end_s")[0]
        out[f"{w}/{MOSAIC}/expert_x"] = ratios(cells, w, MOSAIC, "always", "expert_s")[0]
    return out
