"""Where run-time correction helps: each planner's plan run as is vs corrected at run time by work stealing
(``<planner>+steal``) and by rolling re-planning (``<planner>+rolling``, where registered), on the runtime loop of
the simulator, over several workload seeds, when lengths are mispredicted; ``--extra`` adds whole schedulers (e.g.
``rl-reschedule``, the live RL agent) as rows of their own.

Costs are predicted by ``--predictor`` (default ``noisy-oracle:0.6``: true lengths times a log-normal error of
sigma 0.6, drawn per request from the seed; ``mean`` is the paper's per-expert means); the simulator replays the
true lengths. For each planner the table gives the expert-stage makespan (mean and 95% interval over the seeds) of
the plan and of each correction, and the paired ratio of each correction to the plan alone (< 1: faster).

Run: ``python experiments/stealing.py --seeds 0 1 2 3 4 [--extra rl-reschedule]`` (MedMCQA, 4 x A100;
results.json, table.txt, stealing.png and an offline W&B run under ``--out``).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from mosaic.agents import SCHEDULERS
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
    corrections: tuple[str, ...] = ("steal", "rolling")  # run-time corrections: <planner>+<correction>
    extra: tuple[str, ...] = ()  # whole schedulers run beside (e.g. rl-reschedule)
    set: tuple[str, ...] = ()  # config overrides KEY=VALUE (e.g. workload.num_queries=500)
    out: str = "runs/stealing"  # folder for results.json, table.txt, stealing.png and the W&B run
    wandb: str = choice_field("offline", TRACKING_MODES)  # W&B mode of the run


def variants(args: Args) -> dict[str, list[str]]:
    """Planner -> its corrections that are registered (``<planner>+<correction>``)."""
    return {p: [c for c in args.corrections if f"{p}+{c}" in SCHEDULERS] for p in args.planners}


def measure(args: Args, console: Console) -> dict[str, dict[str, list[float]]]:
    """Scheduler name -> {"expert": [...], "end_to_end": [...]}, one value per seed (same seeds for all)."""
    names = [n for p, cs in variants(args).items() for n in (p, *(f"{p}+{c}" for c in cs))] + list(args.extra)
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
    """One row per planner (and per extra scheduler): makespans of the plan and of each correction, the paired
    ratios to the plan and on how many seeds each correction was faster."""
    rows = []
    for p, cs in [*variants(args).items(), *((x, []) for x in args.extra)]:
        row: dict = {"planner": p}
        for stage in ("expert", "end_to_end"):
            base = np.array(runs[p][stage])
            cell: dict = {"plan": mean_ci(base.tolist())}
            for c in cs:
                new = np.array(runs[f"{p}+{c}"][stage])
                cell[c] = {"value": mean_ci(new.tolist()), "ratio": mean_ci((new / base).tolist()),
                           "faster": int((new < base * 0.999).sum())}  # fmt: skip
            row[stage] = cell
        rows.append(row)
    return rows


def table(args: Args, rows: list[dict]) -> Table:
    cols = ["scheduler", "expert s: plan"]
    for c in args.corrections:
        cols += [f"+{c}", "ratio", "faster"]
    t = Table(*cols, title=f"run-time correction on {Path(args.config).stem}, predictor {args.predictor}, "
              f"{len(args.seeds)} seeds (mean ± 95% CI; ratio = corrected / plan, paired)")  # fmt: skip

    def f(ci: tuple[float, float], digits: int = 1) -> str:
        return f"{ci[0]:,.{digits}f} ± {ci[1]:,.{digits}f}"

    for r in rows:
        e, cells = r["expert"], [f(r["expert"]["plan"])]
        for c in args.corrections:
            cells += ([f(e[c]["value"]), f(e[c]["ratio"], 3), f"{e[c]['faster']}/{len(args.seeds)}"] if c in e
                      else ["-", "-", "-"])  # fmt: skip
        t.add_row(r["planner"], *cells)
    return t


def plot(args: Args, rows: list[dict], path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(8, 3.5))
    x = np.arange(len(rows))
    keys = [("plan", "plan as is"), *((c, f"+ {c}") for c in args.corrections)]
    width = 0.8 / len(keys)
    for i, (key, label) in enumerate(keys):
        vals = [(r["expert"]["plan"] if key == "plan" else r["expert"][key]["value"]) if key in r["expert"]
                else (np.nan, 0.0) for r in rows]  # fmt: skip
        ax.bar(x + (i - (len(keys) - 1) / 2) * width, [v[0] for v in vals], width, yerr=[v[1] for v in vals],
               label=label, capsize=3)  # fmt: skip
    ax.set_xticks(x, [r["planner"] for r in rows])
    ax.set_ylabel("expert-stage makespan (s)")
    ax.set_title(f"{Path(args.config).stem}, predictor {args.predictor}, {len(args.seeds)} seeds", fontsize=10)
    ax.legend(fontsize=8)
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
        cols = ["planner", "expert_plan_s", *(f"expert_{c}_{k}" for c in args.corrections for k in ("s", "ratio"))]
        data = [[r["planner"], r["expert"]["plan"][0],
                 *(v for c in args.corrections for v in ((r["expert"][c]["value"][0], r["expert"][c]["ratio"][0])
                                                          if c in r["expert"] else (None, None)))]
                for r in rows]  # fmt: skip
        tracker.log_table("stealing", cols, data)
        tracker.log_image("stealing", png)
    finally:
        tracker.finish()
    console.print(f"results in {out}")


if __name__ == "__main__":
    main()
