"""Where run-time work stealing helps: each planner's plan run as is vs corrected by stealing (``<planner>+steal``),
on the runtime loop of the simulator, over several workload seeds, when lengths are mispredicted.

Costs are predicted by ``--predictor`` (default ``noisy-oracle:0.6``: true lengths times a log-normal error of
sigma 0.6, drawn per request from the seed; ``mean`` is the paper's per-expert means); the simulator replays the
true lengths. For each planner the table gives the expert-stage and end-to-end makespans (mean and 95% interval
over the seeds) and the paired ratio of ``+steal`` to the plan alone (< 1: stealing is faster).

Run: ``python experiments/stealing.py --seeds 0 1 2 3 4`` (MedMCQA, 4 x A100; results.json, table.txt,
stealing.png and an offline W&B run under ``--out``).
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


@dataclass(frozen=True)
class Args:
    """Command-line arguments (each field is a --flag; tuples take several values)."""

    config: str = str(CONFIG)  # scenario (the paper's MedMCQA workload: 4183 questions, 4 workers)
    seeds: tuple[int, ...] = (0, 1, 2, 3, 4)  # workload (and prediction-error) seeds
    predictor: str = "noisy-oracle:0.6"  # costs.predictor the planners see
    planners: tuple[str, ...] = ("round-robin", "data-parallel", "greedy-lpt", "mosaic-ilp")
    set: tuple[str, ...] = ()  # config overrides KEY=VALUE (e.g. workload.num_queries=500)
    out: str = "runs/stealing"  # folder for results.json, table.txt, stealing.png and the W&B run
    wandb: str = choice_field("offline", TRACKING_MODES)  # W&B mode of the run


def measure(args: Args, console: Console) -> dict[str, dict[str, list[float]]]:
    """Scheduler name -> {"expert": [...], "end_to_end": [...]}, one value per seed (same seeds for all)."""
    names = [n for p in args.planners for n in (p, f"{p}+steal")]
    out: dict[str, dict[str, list[float]]] = {n: {"expert": [], "end_to_end": []} for n in names}
    with Progress(console=console) as bar:
        task = bar.add_task("simulating", total=len(args.seeds) * len(names))
        for seed in args.seeds:
            cfg = load_config(args.config, [*args.set, f"seed={seed}", f"costs.predictor={args.predictor}",
                                            "tracking.mode=disabled"])  # fmt: skip
            exp = prepare(cfg)
            for name in names:
                m = run_scheduler(exp, name).metrics
                out[name]["expert"].append(m.expert_makespan)
                out[name]["end_to_end"].append(m.end_to_end)
                bar.advance(task)
    return out


def summarise(args: Args, runs: dict[str, dict[str, list[float]]]) -> list[dict]:
    """One row per planner: makespans with and without stealing, and the paired ratios."""
    rows = []
    for p in args.planners:
        row: dict = {"planner": p}
        for stage in ("expert", "end_to_end"):
            base, steal = np.array(runs[p][stage]), np.array(runs[f"{p}+steal"][stage])
            faster = int((steal < base * 0.999).sum())
            row[stage] = {"plan": mean_ci(base.tolist()), "steal": mean_ci(steal.tolist()),
                          "ratio": mean_ci((steal / base).tolist()), "faster": faster}  # fmt: skip
        rows.append(row)
    return rows


def table(args: Args, rows: list[dict]) -> Table:
    t = Table("planner", "expert s: plan", "+steal", "ratio", "faster", "end-to-end s: plan", "+steal", "ratio",
              title=f"work stealing on {Path(args.config).stem}, predictor {args.predictor}, {len(args.seeds)} seeds "
              "(mean ± 95% CI; ratio = +steal / plan, paired)")  # fmt: skip

    def f(ci: tuple[float, float], digits: int = 1) -> str:
        return f"{ci[0]:,.{digits}f} ± {ci[1]:,.{digits}f}"

    for r in rows:
        e, a = r["expert"], r["end_to_end"]
        t.add_row(r["planner"], f(e["plan"]), f(e["steal"]), f(e["ratio"], 3), f"{e['faster']}/{len(args.seeds)}",
                  f(a["plan"]), f(a["steal"]), f(a["ratio"], 3))  # fmt: skip
    return t


def plot(args: Args, rows: list[dict], path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(7, 3.5))
    x = np.arange(len(rows))
    for i, (key, label) in enumerate((("plan", "plan as is"), ("steal", "+ work stealing"))):
        ax.bar(x + (i - 0.5) * 0.38, [r["expert"][key][0] for r in rows], 0.38,
               yerr=[r["expert"][key][1] for r in rows], label=label, capsize=3)  # fmt: skip
    ax.set_xticks(x, [r["planner"] for r in rows])
    ax.set_ylabel("expert-stage makespan (s)")
    ax.set_title(f"{Path(args.config).stem}, predictor {args.predictor}, {len(args.seeds)} seeds", fontsize=10)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> None:
    args = parse_dataclass_args(Args, __doc__, argv)
    console = Console(width=200)
    cfg = load_config(args.config, [*args.set, f"costs.predictor={args.predictor}"])  # a bad one stops here
    out = Path(args.out)
    runs = measure(args, console)
    rows = summarise(args, runs)
    out.mkdir(parents=True, exist_ok=True)
    t = table(args, rows)
    console.print(t)
    with (out / "table.txt").open("w", encoding="utf-8") as fh:
        Console(file=fh, width=200, color_system=None).print(t)
    (out / "results.json").write_text(json.dumps({"args": asdict(args), "runs": runs, "rows": rows}, indent=1))
    png = plot(args, rows, out / "stealing.png")
    tracker = Tracker(TrackingCfg(mode=args.wandb), "stealing", {"args": asdict(args), "config": config_to_dict(cfg)},
                      out)  # fmt: skip
    try:
        tracker.log_table("stealing", ["planner", "expert_plan_s", "expert_steal_s", "expert_ratio"],
                          [[r["planner"], r["expert"]["plan"][0], r["expert"]["steal"][0], r["expert"]["ratio"][0]]
                           for r in rows])  # fmt: skip
        tracker.log_image("stealing", png)
    finally:
        tracker.finish()
    console.print(f"results in {out}")


if __name__ == "__main__":
    main()
