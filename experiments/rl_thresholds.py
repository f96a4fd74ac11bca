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

With ``--features reliability`` the env observes the 9 agreement features and the reliability features
(:func:`mosaic.aggregation.reliability.skip_features`, per-expert accuracies fitted on the training half only), and
the held-out table reports accuracy and skip rate with 95% bootstrap intervals for the fixed thresholds, the
supervised :class:`~mosaic.aggregation.reliability.SkipModel` rules (fitted on the training half, cut chosen there
out-of-fold) and each PPO policy, with each policy's accuracy gap to T = 1 and to the fixed-T front at its own skip
rate (:func:`mosaic.aggregation.skip_front.compare`); a LinUCB contextual bandit (:mod:`mosaic.envs.bandit`, same
env, same steps) per ``lam`` besides PPO; written to ``reliability.csv`` and ``results.json``.

Run: ``python experiments/rl_thresholds.py --out runs/rl_thresholds`` (default budget: under 10 minutes on 2 cores)
"""

from __future__ import annotations

import csv
import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from mosaic.agents.rl import SB3SkipModel, load_agent
from mosaic.aggregation.skip_front import compare, cut_for_accuracy, cut_for_rate, fixed_skips, rule_scores
from mosaic.core.config import TrackingCfg, load_config
from mosaic.core.errors import ConfigError
from mosaic.core.script_args import parse_dataclass_args
from mosaic.envs.agg_features import FEATURE_SETS, fit_reliability, observation_rows, table_questions
from mosaic.envs.agg_threshold import AggThresholdEnv
from mosaic.envs.bandit import LinUCBOptions, train_linucb
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
    features: str = "agreement"  # env observation: agreement (the 9 features) | reliability (9 + skip_features)
    boot: int = 1000  # reliability: bootstrap resamples of the held-out questions (95% intervals)
    folds: int = 5  # reliability: folds of the supervised rules' out-of-fold cuts on the training half


def parse_args(argv: list[str] | None = None) -> Args:
    return parse_dataclass_args(Args, __doc__, argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.features not in FEATURE_SETS:
        raise ConfigError(f"rl_thresholds: --features must be one of {FEATURE_SETS}, got {args.features!r}")
    console = Console()
    out = Path(args.out)
    cfg = load_config(None, ["name=rl_thresholds", *args.set])
    opts = TrainOptions("threshold", args.algo, args.timesteps, args.seed, out, TrackingCfg(mode=args.wandb),
                        eval_freq=max(args.timesteps // 4, 1), n_eval=10,
                        env={"lam": 0.0, "episode_len": args.episode_len}, source="routerbench",
                        test_share=args.test_share)  # fmt: skip
    train_table, heldout = threshold_tables(cfg, opts)
    console.print(f"RouterBench: {len(train_table)} training, {len(heldout)} held-out questions")
    if args.features == "reliability":
        return reliability_main(args, cfg, opts, (train_table, heldout), console)
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


# --- --features reliability ------------------------------------------------------------------------------------


def reliability_main(args: Args, cfg, opts: TrainOptions, tables: tuple, console: Console) -> dict:
    """PPO on the reliability observation (and, as the ablation, on the 9 agreement features) vs the fixed-T front
    and the supervised SkipModel, on the held-out half."""
    train_table, heldout = tables
    rel = fit_reliability(train_table)  # the training half only
    cal, ev = table_questions(train_table), table_questions(heldout)
    fixed = fixed_skips(ev.vote_share, (1.0, 0.67))  # never, always, T=1, T=2/3
    policies = dict(zip(("always aggregate", "skip all", "T=1", "T=2/3"), fixed, strict=True))
    policies |= supervised_skips(cal, ev, args)
    t0 = time.perf_counter()
    learned, runs = train_policies(args, cfg, opts, rel, tables, console)
    for name, (train_skip, skip) in learned.items():
        policies[name] = skip
        if name.startswith("PPO reliability"):  # the supervised rule at this agent's skip rate on the training half
            rate = float(train_skip.mean())
            oof, scores = rule_scores("expected loss", cal, ev, args.folds, np.random.default_rng(args.seed))
            policies[f"SkipModel expected loss @{name} train skip"] = scores <= cut_for_rate(oof, rate)
    rng = np.random.default_rng(args.seed)
    rows = [policy_row(name, skip, ev, fixed, rng, args.boot) for name, skip in policies.items()]
    table = reliability_table(rows, f"held-out RouterBench questions ({len(heldout)}), reliability features")
    console.print(table)
    out = Path(args.out)
    write_csv(out / "reliability.csv", rows)
    results = {"args": dataclasses.asdict(args), "reliability": dataclasses.asdict(rel), "runs": runs,
               "train_seconds_total": time.perf_counter() - t0, "rows": rows}  # fmt: skip
    (out / "results.json").write_text(json.dumps(results, indent=2), encoding="utf-8")
    with (out / "table.txt").open("w", encoding="utf-8") as fh:
        Console(file=fh, width=200, color_system=None).print(table)
    return results


def train_policies(args: Args, cfg, opts: TrainOptions, rel, tables: tuple, console: Console) -> tuple[dict, list]:
    """Per ``lam``: the final PPO model on each feature set and a LinUCB bandit on the reliability features, each
    as its skips on (training half, held-out half)."""
    learned, runs, t0 = {}, [], time.perf_counter()
    for lam in args.lams:
        if time.perf_counter() - t0 > args.budget_s:
            console.print(f"[yellow]budget of {args.budget_s:.0f} s spent: lam={lam:g} not trained[/yellow]")
            continue
        for feats in ("agreement", "reliability"):
            r = rel if feats == "reliability" else None
            env = {**opts.env, "lam": lam, "features": feats, **({"reliability": r} if r else {})}
            result = train(cfg, dataclasses.replace(opts, out_dir=Path(args.out) / f"lam{lam:g}_{feats}", env=env))
            agent = load_agent(result.model_path, "threshold")  # the final model: held-out data never selects it
            learned[f"PPO {feats} lam={lam:g}"] = tuple(agent.act_batch(observation_rows(t, feats, r)).astype(int) == 1
                                                        for t in tables)  # fmt: skip
            runs.append({"lam": lam, "agent": f"ppo-{feats}", "train_seconds": result.seconds})
            console.print(f"lam={lam:g} PPO {feats}: {args.timesteps} steps in {result.seconds:.1f} s")
        t1 = time.perf_counter()
        env = AggThresholdEnv(tables[0], lam=lam, episode_len=args.episode_len, features="reliability",
                              reliability=rel)  # fmt: skip
        bandit = train_linucb(env, LinUCBOptions(timesteps=args.timesteps, seed=args.seed))
        learned[f"LinUCB reliability lam={lam:g}"] = tuple(
            bandit.skip_batch(observation_rows(t, "reliability", rel)) for t in tables
        )
        runs.append({"lam": lam, "agent": "linucb-reliability", "train_seconds": time.perf_counter() - t1})
    return learned, runs


def supervised_skips(cal, ev, args: Args) -> dict[str, np.ndarray]:
    """Skip vectors of the SkipModel rules on ``ev``: fitted on ``cal``, cut out-of-fold on ``cal`` to match T = 1's
    skip rate ("@T=1 skip") or accuracy ("@T=1 acc") there."""
    t1 = fixed_skips(cal.vote_share, (1.0,))[2]
    t1_acc = float(np.where(t1, cal.majority_correct, cal.aggregator_correct).mean())
    out = {}
    for rule in ("P(majority)", "expected loss"):
        oof, scores = rule_scores(rule, cal, ev, args.folds, np.random.default_rng(args.seed))
        by_rate = cut_for_rate(oof, float(t1.mean()))
        by_acc = cut_for_accuracy(oof, cal.majority_correct, cal.aggregator_correct, t1_acc)
        out[f"SkipModel {rule} @T=1 skip"] = scores <= by_rate
        out[f"SkipModel {rule} @T=1 acc"] = scores <= by_acc
    return out


def policy_row(name: str, skip: np.ndarray, ev, fixed: list[np.ndarray], rng: np.random.Generator,
               n_boot: int) -> dict:  # fmt: skip
    """Skip rate and accuracy (95% bootstrap intervals), gain over T = 1 and gap to the fixed-T front (pp)."""
    maj, agg = ev.majority_correct, ev.aggregator_correct
    correct = np.where(skip, maj, agg).astype(float)
    idx = rng.integers(0, len(skip), (n_boot, len(skip)))
    s_lo, s_hi = np.percentile(skip[idx].mean(axis=1), [2.5, 97.5])
    a_lo, a_hi = np.percentile(correct[idx].mean(axis=1), [2.5, 97.5])
    c = compare(skip, fixed[2], fixed, maj, agg, rng, n_boot)
    pct = [100 * v for v in (skip.mean(), s_lo, s_hi, correct.mean(), a_lo, a_hi, *c.gain, *c.front_gap)]
    keys = ("skip", "skip_lo", "skip_hi", "acc", "acc_lo", "acc_hi", "vs_t1", "vs_t1_lo", "vs_t1_hi",
            "vs_front", "vs_front_lo", "vs_front_hi")  # fmt: skip
    return {"policy": name, **{f"{k}_pct": float(v) for k, v in zip(keys, pct, strict=True)}}


def reliability_table(rows: list[dict], title: str) -> Table:
    """Skip %, accuracy %, vs T = 1 and vs the front (pp), each with its 95% interval."""
    table = Table("policy", "skip %", "accuracy %", "vs T=1 pp", "vs front pp", title=title)

    def cell(r: dict, key: str, sign: str = "") -> str:
        return f"{r[key + '_pct']:{sign}.2f} [{r[key + '_lo_pct']:{sign}.2f}, {r[key + '_hi_pct']:{sign}.2f}]"

    for r in rows:
        table.add_row(r["policy"], cell(r, "skip"), cell(r, "acc"), cell(r, "vs_t1", "+"), cell(r, "vs_front", "+"))
    return table


def write_csv(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


if __name__ == "__main__":
    main()
