"""Write a comparison's results: table (terminal + text file), metrics JSON, Gantt PNG, W&B run."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import yaml
from rich.console import Console

from mosaic.core.config import RunConfig, config_to_dict
from mosaic.report.gantt import plot_gantt
from mosaic.report.table import COLUMNS, comparison_table, latency_table, paper_line, rows
from mosaic.report.tracking import Tracker


@dataclass(frozen=True, slots=True)
class ReportFiles:
    """Where a report's artefacts landed."""

    out_dir: Path
    table: Path
    metrics: Path
    gantt: Path
    wandb_dir: Path | None


def run_dir(cfg: RunConfig, command: str, stamp: str, out: str | None) -> Path:
    """``--out`` when given, else ``<out_dir>/<name>__<command>__seed<seed>__<stamp>`` (CleanRL-style)."""
    if out:
        return Path(out)
    return Path(cfg.out_dir) / f"{cfg.name}__{command}__seed{cfg.seed}__{stamp}"


STATUS_FILE = "status.json"  # {"status": "running" | "finished" | "failed", "command", "started", "ended", "error"}


def _write_status(out_dir: Path, status: str, command: str, started: float, error: str | None = None) -> None:
    info = {"status": status, "command": command, "started": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(started))}
    if status != "running":
        info["ended"] = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime())
    if error is not None:
        info["error"] = error
    (out_dir / STATUS_FILE).write_text(json.dumps(info, indent=1) + "\n", encoding="utf-8")


@contextmanager
def run_status(out_dir: Path, command: str) -> Iterator[Path]:
    """Create ``out_dir`` and mark it ``running`` while the block runs, then ``finished``, or ``failed`` with the
    error (which is raised on). A killed process leaves ``running``: never a folder that looks finished."""
    out_dir.mkdir(parents=True, exist_ok=True)
    started = time.time()
    _write_status(out_dir, "running", command, started)
    try:
        yield out_dir
    except BaseException as err:
        _write_status(out_dir, "failed", command, started, f"{type(err).__name__}: {err}")
        raise
    _write_status(out_dir, "finished", command, started)


def write_report(
    cfg: RunConfig,
    runs: Sequence,  # SchedulerRun (mosaic.pipeline)
    out_dir: Path,
    console: Console,
    title: str,
    arrivals: Sequence[float] | None = None,
) -> ReportFiles:
    """Print the table (and the paper's figures when the preset has them) and write every artefact
    (``arrivals``: the queries' arrival times, shown on the Gantt chart)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    metrics = [r.metrics for r in runs]
    table = comparison_table(metrics, cfg.baseline, title)
    console.print(table)
    online = cfg.workload.arrival_rate is not None
    latency = latency_table(metrics, f"{title}: latency ({cfg.workload.arrival_process} arrivals, "
                            f"{cfg.workload.arrival_rate} queries/s)") if online else None  # fmt: skip
    if latency is not None:
        console.print(latency)
    paper = paper_line(cfg.workload.preset)
    if paper:
        console.print(f"[dim]{paper}[/dim]")
    (out_dir / "config.yaml").write_text(yaml.safe_dump(config_to_dict(cfg), sort_keys=False), encoding="utf-8")
    table_path = out_dir / "table.txt"
    with table_path.open("w", encoding="utf-8") as fh:
        Console(file=fh, width=200, color_system=None).print(table)
        if latency is not None:
            Console(file=fh, width=200, color_system=None).print(latency)
        if paper:
            fh.write(paper + "\n")
    metrics_path = out_dir / "metrics.json"
    metrics_path.write_text(json.dumps([m.as_dict() for m in metrics], indent=2), encoding="utf-8")
    workers = sorted({w for r in runs for w in r.metrics.workers})
    gantt = plot_gantt({r.name: r.records for r in runs}, workers, out_dir / "gantt.png", title, arrivals)
    wandb_dir = _track(cfg, runs, out_dir, title, gantt)
    console.print(f"results: {out_dir}  (table.txt, metrics.json, gantt.png, traces, {STATUS_FILE})")
    if wandb_dir:
        console.print(f"W&B ({cfg.tracking.mode}): {wandb_dir}")
    return ReportFiles(out_dir, table_path, metrics_path, gantt, wandb_dir)


def _track(cfg: RunConfig, runs: Sequence, out_dir: Path, title: str, gantt: Path) -> Path | None:
    tracker = Tracker(cfg.tracking, f"{cfg.name}__{title}__seed{cfg.seed}", config_to_dict(cfg), out_dir)
    try:
        for r in runs:
            d = r.metrics.as_dict()
            d.pop("workers")
            d.pop("stats")
            d.update({f"latency_{k}": v for k, v in d.pop("latency").items()})
            d.update({f"slo_{k}": v for k, v in d.pop("slo").items()})
            util = list(d.pop("utilisation").values())
            if util:
                d["utilisation_mean"] = sum(util) / len(util)
            tracker.log_metrics(d, prefix=f"{r.name}/")
            if r.trace_path and r.trace_path.exists():
                tracker.log_file(f"trace-{r.name}", r.trace_path)
        tracker.log_table("comparison", COLUMNS, rows([r.metrics for r in runs], cfg.baseline))
        tracker.log_image("gantt", gantt)
        return tracker.directory
    finally:
        tracker.finish()
