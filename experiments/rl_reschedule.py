"""MOSAIC ILP alone vs ILP + RL rescheduling when output lengths are mispredicted (30% and 60% error).

The ILP plans each instance from *predicted* lengths: true lengths times ``exp(noise x z)``, ``z ~ N(0, 1)`` per
request (a log-normal error; noise 0.3 is about 30%). The simulator replays the true lengths. ILP alone runs its
plan as is; "ILP + greedy stealing" and "ILP + RL" start from the same plan and, whenever a worker's queue runs dry
while others still have queued work, may move work (``mosaic/Reschedule-v0``, ``start="plan"``). For each noise
level a MaskablePPO agent is trained on training instances (seed stream 1; the evaluation callback uses stream 2)
and the *final* model is compared on test instances (stream 3) that neither training nor model selection saw.

Run: ``python experiments/rl_reschedule.py --out runs/rl_reschedule``
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from mosaic.agents.rl import load_agent
from mosaic.core.config import TrackingCfg, load_config
from mosaic.core.script_args import parse_dataclass_args
from mosaic.envs.commands import makespan_table
from mosaic.envs.evaluation import compare_schedulers
from mosaic.envs.instances import TEST_STREAM, config_instances
from mosaic.envs.training import TrainOptions, train
from mosaic.report.metrics import mean_ci

CONFIG = Path(__file__).resolve().parent / "configs" / "gpqa.yaml"


@dataclass
class Args:
    """Command-line arguments (each field is a --flag; tuples take several values)."""

    out: str = "runs/rl_reschedule"  # folder for results.json, table.txt and the models
    config: str = str(CONFIG)  # scenario (the paper's GPQA workload: 198 questions, 6 experts, 4 workers)
    num_queries: int = 100  # questions per instance (0: the config's)
    noises: tuple[float, ...] = (0.3, 0.6)  # length-prediction error sigmas
    timesteps: int = 50_000  # MaskablePPO steps per noise level
    train_instances: int = 12  # training instances per noise level
    test_instances: int = 10  # test instances per noise level
    plan_scheduler: str = "mosaic-ilp"  # the base plan
    algo: str = "maskable-ppo"  # ppo | maskable-ppo | dqn
    reward_ref: str = "plan"  # reward normaliser: plan (ILP plan's simulated makespan) | lower_bound | round-robin
    seed: int = 0
    wandb: str = "offline"  # W&B mode of each training run: offline | online | disabled
    set: tuple[str, ...] = ()  # config overrides KEY=VALUE (e.g. costs.step_model=sum costs.memory_mode=reserve)


def parse_args(argv: list[str] | None = None) -> Args:
    return parse_dataclass_args(Args, __doc__, argv)


def paired(rows: dict, name: str, base: str) -> dict:
    """Per-instance makespan ratio ``name / base``: mean, 95% CI, wins (< 0.999), losses (> 1.001)."""
    a, b = np.array(rows[name].makespans), np.array(rows[base].makespans)
    ratio = a / b
    mean, half = mean_ci(ratio.tolist())
    return {"vs": base, "ratio_mean": mean, "ratio_ci95": half, "wins": int((ratio < 0.999).sum()),
            "losses": int((ratio > 1.001).sum()), "n": len(ratio)}  # fmt: skip


def run_noise(args: Args, noise: float, console: Console) -> dict:
    """Train on one noise level, evaluate on the test instances; returns the rows and paired comparisons."""
    overrides = [*args.set, "tracking.mode=disabled",
                 *([f"workload.num_queries={args.num_queries}"] if args.num_queries else [])]  # fmt: skip
    cfg = load_config(args.config, overrides)
    env = {
        "n_instances": args.train_instances,
        "noise": noise,
        "start": "plan",
        "plan_scheduler": args.plan_scheduler,
        "reward_ref": args.reward_ref,
    }
    out = Path(args.out) / f"noise{noise:g}"
    tracking, eval_freq = TrackingCfg(mode=args.wandb), max(args.timesteps // 5, 1)
    opts = TrainOptions("reschedule", args.algo, args.timesteps, args.seed, out, tracking, eval_freq, 4, env)
    result = train(cfg, opts)
    console.print(f"noise {noise:g}: {args.timesteps} steps in {result.seconds:.0f} s")
    agent = load_agent(result.model_path, "reschedule")  # final model, never selected on test instances
    test = config_instances(cfg, args.test_instances, args.seed, noise, TEST_STREAM)
    rows = compare_schedulers(test, agent, None, args.plan_scheduler)
    console.print(makespan_table(rows, f"noise {noise:g}: {len(test)} test instances of {cfg.name}"))
    by_name = {r.name: r for r in rows}
    base = args.plan_scheduler
    comps = [paired(by_name, f"{base} + RL rescheduling", base), paired(by_name, f"{base} + greedy stealing", base),
             paired(by_name, f"{base} + RL rescheduling", f"{base} + greedy stealing")]  # fmt: skip
    return {"noise": noise, "train_seconds": result.seconds, "rows": [r.as_dict() for r in rows], "paired": comps,
            "lower_bounds": list(rows[0].lower_bounds)}  # fmt: skip


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    console = Console()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    results = [run_noise(args, noise, console) for noise in args.noises]
    table = Table("noise", "comparison", "makespan ratio (mean)", "95% CI", "wins / losses / n",
                  title="paired per-instance makespan ratios (< 1: the first is faster)")  # fmt: skip
    for res in results:
        base = args.plan_scheduler
        for c, name in zip(res["paired"], ("ILP + RL vs ILP", "ILP + stealing vs ILP", "ILP + RL vs ILP + stealing"),
                           strict=True):  # fmt: skip
            table.add_row(f"{res['noise']:g}", name.replace("ILP", base), f"{c['ratio_mean']:.4f}",
                          f"± {c['ratio_ci95']:.4f}", f"{c['wins']} / {c['losses']} / {c['n']}")  # fmt: skip
    console.print(table)
    summary = {"args": dataclasses.asdict(args), "seconds": time.perf_counter() - t0, "results": results}
    (out / "results.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
    with (out / "table.txt").open("w", encoding="utf-8") as fh:
        Console(file=fh, width=160, color_system=None).print(table)
    console.print(f"results in {out} ({summary['seconds']:.0f} s)")
    return summary


if __name__ == "__main__":
    main()
