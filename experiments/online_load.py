"""Online serving: per-query latency and SLO attainment of each scheduler at several loads (Poisson arrivals).

The load is a share of what round-robin sustains: its throughput on the same queries as one offline batch (every
query at t=0, no stage barrier), ``capacity = queries / end-to-end``. At each load share ``L`` the queries arrive as
a Poisson process of rate ``L x capacity`` and every scheduler serves them on the simulator without a stage
barrier (each query aggregated when its experts answer). Reported per scheduler and load: latency mean / p50 / p90 /
p99 (query arrival to final answer), SLO attainment (latency <= 5x and 10x the query's latency on an idle cluster),
throughput; mean and 95% interval over the seeds; a latency-vs-load plot (p50 and p99).

Run: ``python experiments/online_load.py --seeds 0 1 2`` (MedMCQA, 4 x A100; results.json, table.txt,
latency_vs_load.png and an offline W&B run under ``--out``).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from mosaic.core.config import TRACKING_MODES, TrackingCfg, config_to_dict, load_config
from mosaic.core.script_args import choice_field, parse_dataclass_args
from mosaic.pipeline import prepare, run_scheduler
from mosaic.report.gantt import plt  # matplotlib with the Agg backend
from mosaic.report.metrics import mean_ci
from mosaic.report.tracking import Tracker

CONFIG = Path(__file__).resolve().parent / "configs" / "medmcqa.yaml"
SCHEDULERS = ("round-robin", "data-parallel", "greedy-online", "mosaic-ilp+window", "mosaic-ilp+rolling",
              "mosaic-ilp+steal")  # fmt: skip
METRICS = ("mean", "p50", "p90", "p99", "slo_5x", "slo_10x", "throughput")


@dataclass(frozen=True)
class Args:
    """Command-line arguments (each field is a --flag; tuples take several values)."""

    config: str = str(CONFIG)  # scenario (the paper's MedMCQA workload: 4183 questions, 4 workers)
    seeds: tuple[int, ...] = (0, 1, 2)  # workload and arrival seeds
    loads: tuple[float, ...] = (0.5, 0.8, 0.95)  # arrival rate as a share of round-robin's capacity
    schedulers: tuple[str, ...] = SCHEDULERS
    set: tuple[str, ...] = ()  # config overrides KEY=VALUE (e.g. workload.num_queries=500)
    out: str = "runs/online_load"  # folder for results.json, table.txt, latency_vs_load.png and the W&B run
    wandb: str = choice_field("offline", TRACKING_MODES)  # W&B mode of the run


def _cfg(args: Args, seed: int, rate: float | None):
    arrivals = [f"workload.arrival_rate={rate}", "workload.arrival_process=poisson"] if rate else []
    return load_config(args.config, [*args.set, f"seed={seed}", "runtime.barrier=false", "tracking.mode=disabled",
                                     *arrivals])  # fmt: skip


def capacity(args: Args, seed: int) -> float:
    """Queries per second round-robin sustains: its throughput on the queries as one offline batch."""
    exp = prepare(_cfg(args, seed, None))
    return len(exp.workload.queries) / run_scheduler(exp, "round-robin").metrics.end_to_end


def measure(args: Args, console: Console) -> tuple[dict, dict[int, float]]:
    """(scheduler -> load -> metric -> [one value per seed], seed -> capacity)."""
    runs = {s: {str(ld): {m: [] for m in METRICS} for ld in args.loads} for s in args.schedulers}
    caps: dict[int, float] = {}
    with Progress(console=console) as bar:
        task = bar.add_task("simulating", total=len(args.seeds) * (1 + len(args.loads) * len(args.schedulers)))
        for seed in args.seeds:
            caps[seed] = capacity(args, seed)
            bar.advance(task)
            for load in args.loads:
                exp = prepare(_cfg(args, seed, load * caps[seed]))
                for name in args.schedulers:
                    m = run_scheduler(exp, name).metrics
                    row = runs[name][str(load)]
                    for k in ("mean", "p50", "p90", "p99"):
                        row[k].append(m.latency[k])
                    row["slo_5x"].append(m.slo["5x"])
                    row["slo_10x"].append(m.slo["10x"])
                    row["throughput"].append(m.throughput)
                    bar.advance(task)
    return runs, caps


def summary(runs: dict) -> dict:
    """scheduler -> load -> metric -> (mean, 95% half-width)."""
    return {s: {ld: {k: mean_ci(v) for k, v in row.items()} for ld, row in by.items()} for s, by in runs.items()}


def table(args: Args, summ: dict, caps: dict[int, float]) -> Table:
    cap = float(np.mean(list(caps.values())))
    t = Table("load", "scheduler", "mean s", "p50 s", "p99 s", "SLO 5x %", "SLO 10x %", "queries/s",
              title=f"online serving on {Path(args.config).stem}: Poisson arrivals at a share of round-robin's "
              f"capacity ({cap:.3f} queries/s), {len(args.seeds)} seeds, no stage barrier (mean ± 95% CI)")  # fmt: skip

    def f(ci: tuple[float, float], scale: float = 1.0, digits: int = 1) -> str:
        return f"{scale * ci[0]:,.{digits}f} ± {scale * ci[1]:,.{digits}f}"

    for ld in map(str, args.loads):
        best = min(args.schedulers, key=lambda s: summ[s][ld]["p99"][0])
        for s in args.schedulers:
            r = summ[s][ld]
            name = f"[bold]{s}[/bold]" if s == best else s
            t.add_row(f"{float(ld):.0%}", name, f(r["mean"]), f(r["p50"]), f(r["p99"]), f(r["slo_5x"], 100),
                      f(r["slo_10x"], 100), f(r["throughput"], 1, 3))  # fmt: skip
        t.add_section()
    return t


def plot(args: Args, summ: dict, path: Path) -> Path:
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), sharex=True)
    loads = np.array(args.loads)
    for s in args.schedulers:
        for ax, k in zip(axes, ("p50", "p99"), strict=True):
            mean = [summ[s][str(ld)][k][0] for ld in args.loads]
            err = [summ[s][str(ld)][k][1] for ld in args.loads]
            ax.errorbar(100 * loads, mean, yerr=err, marker="o", capsize=3, label=s)
    for ax, k in zip(axes, ("p50", "p99"), strict=True):
        ax.set(xlabel="load (% of round-robin's capacity)", ylabel=f"{k} latency (s)", yscale="log")
    axes[1].legend(fontsize=8)
    fig.suptitle(f"{Path(args.config).stem}: latency vs load, {len(args.seeds)} seeds", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> None:
    args = parse_dataclass_args(Args, __doc__, argv)
    console = Console(width=200)
    cfg = _cfg(args, args.seeds[0], None)  # a bad config stops here
    out = Path(args.out)
    runs, caps = measure(args, console)
    summ = summary(runs)
    out.mkdir(parents=True, exist_ok=True)
    t = table(args, summ, caps)
    console.print(t)
    with (out / "table.txt").open("w", encoding="utf-8") as fh:
        Console(file=fh, width=200, color_system=None).print(t)
    doc = {"args": asdict(args), "capacity": caps, "runs": runs, "summary": summ}
    (out / "results.json").write_text(json.dumps(doc, indent=1))
    png = plot(args, summ, out / "latency_vs_load.png")
    meta = {"args": asdict(args), "config": config_to_dict(cfg)}
    tracker = Tracker(TrackingCfg(mode=args.wandb), "online_load", meta, out)
    try:
        tracker.log_table("online_load", ["load", "scheduler", *METRICS],
                          [[float(ld), s, *(summ[s][ld][k][0] for k in METRICS)] for s in args.schedulers
                           for ld in map(str, args.loads)])  # fmt: skip
        tracker.log_image("latency_vs_load", png)
    finally:
        tracker.finish()
    console.print(f"results in {out}")


if __name__ == "__main__":
    main()
