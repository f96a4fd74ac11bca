"""A learned (PPO) aggregation-skip policy vs fixed confidence thresholds on RouterBench's real answers.

Three real LLMs answer every ARC-challenge and Winogrande question (recorded RouterBench responses); the
aggregator's answer is a fourth model's recorded one (gpt-4-1106-preview), timed by the simulator as an 8B model
(:func:`mosaic.envs.skip_tables.routerbench_table`). The questions are split at random into a training half and a
held-out half. For each accuracy weight ``lam`` one PPO policy is trained on ``mosaic/AggThreshold-v0`` over the
training half (reward = aggregator time saved in mean-call units - lam x accuracy lost); the *final* model (never
selected on held-out data) then decides on the held-out half. Fixed thresholds (always aggregate, T = 1, T = 2/3,
skip all) on the same half form the front; each learned point is reported as its accuracy gap to that front at the
same aggregation time: vs the best fixed T that is not slower ("staircase") and vs the front's upper hull (random
mixtures of two thresholds). Positive = beyond the front.

Run: ``python experiments/rl_thresholds.py --out runs/rl_thresholds`` (default budget: under 10 minutes on 2 cores)
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.table import Table

from mosaic.agents.rl import SB3SkipModel, load_agent
from mosaic.core.config import TrackingCfg, load_config
from mosaic.core.script_args import parse_dataclass_args
from mosaic.envs.commands import threshold_table
from mosaic.envs.evaluation import FIXED_THRESHOLDS, compare_thresholds, front_gap, pareto_png
from mosaic.envs.training import TrainOptions, threshold_tables, train

TOL_PP = 0.5  # |gap| <= 0.5 pp (about 5 of 963 held-out questions) counts as "on the front": sampling noise


@dataclass
class Args:
    """Command-line arguments (each field is a --flag; tuples take several values)."""

    out: str = "runs/rl_thresholds"  # folder for table.csv, results.json, pareto.png and the models
    lams: tuple[float, ...] = (1.0, 3.0, 4.6, 8.0, 30.0, 45.0, 80.0)  # accuracy weights, one policy each
    timesteps: int = 100_000  # PPO steps per policy
    algo: str = "ppo"  # ppo | maskable-ppo | dqn
    seed: int = 0  # model seed and the seed of the train/held-out split
    test_share: float = 0.5  # held-out share of the questions
    episode_len: int = 32  # decisions per episode
    wandb: str = "offline"  # W&B mode of each training run: offline | online | disabled
    budget_s: float = 600.0  # stop training further policies once this much wall time is spent
    set: tuple[str, ...] = ()  # config overrides KEY=VALUE (e.g. costs.step_model=sum costs.memory_mode=reserve)


def parse_args(argv: list[str] | None = None) -> Args:
    return parse_dataclass_args(Args, __doc__, argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    console = Console()
    out = Path(args.out)
    cfg = load_config(None, ["name=rl_thresholds", *args.set])
    opts = TrainOptions("threshold", args.algo, args.timesteps, args.seed, out, TrackingCfg(mode=args.wandb),
                        eval_freq=max(args.timesteps // 4, 1), n_eval=10,
                        env={"lam": 0.0, "episode_len": args.episode_len}, source="routerbench",
                        test_share=args.test_share)  # fmt: skip
    train_table, heldout = threshold_tables(cfg, opts)
    console.print(f"RouterBench: {len(train_table)} training, {len(heldout)} held-out questions")
    learned, runs, t0 = {}, [], time.perf_counter()
    for lam in args.lams:
        if time.perf_counter() - t0 > args.budget_s:
            console.print(f"[yellow]budget of {args.budget_s:.0f} s spent: lam={lam:g} not trained[/yellow]")
            continue
        run_opts = dataclasses.replace(opts, out_dir=out / f"lam{lam:g}", env={**opts.env, "lam": lam})
        result = train(cfg, run_opts)
        agent = load_agent(result.model_path, "threshold")  # the final model: held-out data never selects it
        learned[f"PPO lam={lam:g}"] = SB3SkipModel(agent)
        runs.append({"lam": lam, "train_seconds": result.seconds, "model": str(result.model_path)})
        console.print(f"lam={lam:g}: {args.timesteps} steps in {result.seconds:.1f} s")
    train_s = time.perf_counter() - t0
    rows = compare_thresholds([heldout], learned)
    front = [(r.time_s, r.accuracy) for r in rows if r.name in dict(FIXED_THRESHOLDS)]
    console.print(threshold_table(rows, f"held-out RouterBench questions ({len(heldout)})"))
    verdicts = verdict_table(rows, front)
    console.print(verdicts)
    png = pareto_png(rows, out / "pareto.png", "RouterBench held-out: aggregation time vs accuracy")
    results = {"args": dataclasses.asdict(args), "train_seconds_total": train_s, "runs": runs,
               "rows": [r.as_dict() | gaps(r, front) for r in rows], "pareto_png": str(png)}  # fmt: skip
    (out / "results.json").write_text(json.dumps(results, indent=2), encoding="utf-8")
    with (out / "table.txt").open("w", encoding="utf-8") as fh:
        file_console = Console(file=fh, width=160, color_system=None)
        file_console.print(threshold_table(rows, f"held-out RouterBench questions ({len(heldout)})"))
        file_console.print(verdicts)
        file_console.print(f"total training time {train_s:.0f} s")
    console.print(f"total training time {train_s:.0f} s; results in {out}")
    return results


def gaps(row, front: list[tuple[float, float]]) -> dict:
    """Accuracy gap (percentage points) to the fixed-T front at the row's aggregation time."""
    stair, hull = front_gap(row.time_s, row.accuracy, front)
    return {"gap_vs_staircase_pp": 100 * stair, "gap_vs_hull_pp": 100 * hull, "verdict": verdict(100 * hull)}


def verdict(hull_pp: float) -> str:
    """Where a point lies relative to the front's hull, with a tolerance for sampling noise."""
    if hull_pp > TOL_PP:
        return "beyond the front"
    return "on the front" if hull_pp >= -TOL_PP else "behind the front"


def verdict_table(rows, front: list[tuple[float, float]]) -> Table:
    """Per learned policy: where it lies relative to the fixed-threshold front."""
    table = Table("policy", "vs best fixed T not slower (pp)", "vs front hull (pp)", f"verdict (+-{TOL_PP} pp)",
                  title="learned policies vs the fixed-threshold Pareto front (held-out)")  # fmt: skip
    for r in rows:
        if r.name in dict(FIXED_THRESHOLDS):
            continue
        g = gaps(r, front)
        table.add_row(r.name, f"{g['gap_vs_staircase_pp']:+.2f}", f"{g['gap_vs_hull_pp']:+.2f}",
                      verdict(g["gap_vs_hull_pp"]))  # fmt: skip
    return table


if __name__ == "__main__":
    main()
