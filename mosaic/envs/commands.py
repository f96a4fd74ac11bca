"""CLI: ``mosaic train reschedule|threshold|online`` and ``mosaic eval-agents CONFIG`` (registered by ``register_cli``).

Importable without gymnasium / stable-baselines3 (they are imported when a command runs).
"""

from __future__ import annotations

import argparse
import csv
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from mosaic.core.config import TRACKING_MODES, RunConfig, TrackingCfg, load_config
from mosaic.core.errors import ConfigError

console = Console()
ALGOS = ("ppo", "maskable-ppo", "dqn")  # as mosaic.envs.training.ALGOS (kept here: no heavy import for --help)


def register_cli(sub: argparse._SubParsersAction) -> None:
    """Add ``train`` and ``eval-agents`` to the ``mosaic`` command."""
    p = sub.add_parser("train", help="train an RL agent (reschedule | threshold | online) with stable-baselines3")
    p.add_argument("task", choices=["reschedule", "threshold", "online"],
                   help="online: skip decisions at run time under the config's arrivals (AggOnline-v0)")  # fmt: skip
    p.add_argument("--algo", choices=ALGOS, help="default: maskable-ppo (online: ppo)")
    p.add_argument("--timesteps", type=int, default=20_000, help="environment steps (default 20000)")
    p.add_argument("--seed", type=int, default=0, help="model and instance seed")
    p.add_argument("--config", help="YAML run config (default: a 40-query GPQA-like scenario, 4 workers; online: "
                   "MedMCQA at 0.44 queries/s, no stage barrier)")  # fmt: skip
    p.add_argument("--out", help="output directory (default: <out_dir>/<name>__train-<task>__seed<S>__<time>)")
    p.add_argument("--eval-freq", type=int, help="steps between held-out evaluations (default 2000; online 20000)")
    p.add_argument("--n-eval", type=int, help="held-out instances (reschedule) / episodes (threshold) / runs "
                   "(online); default 8, online 2")  # fmt: skip
    p.add_argument("--n-instances", type=int, default=8, help="reschedule: training instances")
    p.add_argument("--noise", type=float, help="reschedule: length-prediction error sigma (default: config predictor)")
    p.add_argument("--start", choices=["empty", "plan"], default="empty", help="reschedule: from nothing or a plan")
    p.add_argument("--plan-scheduler", help="reschedule --start plan: base plan (default mosaic-ilp, else greedy-lpt)")
    p.add_argument(
        "--reward-ref",
        choices=["auto", "lower_bound", "plan", "round-robin"],
        default="auto",
        help="reschedule: reward normaliser (auto: the start plan's makespan, else round-robin's)",
    )
    p.add_argument("--lam", type=float, default=4.0, help="threshold: weight of accuracy loss in the reward")
    p.add_argument("--source", choices=["config", "routerbench"], default="config", help="threshold: skip table")
    p.add_argument("--n-train", type=int, default=2, help="online: training runs (seeds seed+100, seed+101, ...)")
    p.add_argument("--latency-weight", type=float, default=0.003, help="online: reward per (latency / scale)")
    p.add_argument("--latency-scale", type=float, default=100.0, help="online: latency unit of the reward, seconds")
    p.add_argument("--latency-power", type=float, default=1.0, help="online: latency exponent (2 weighs the tail)")
    _shared(p)
    p.set_defaults(func=cmd_train)
    p = sub.add_parser("eval-agents", help="schedulers and skip policies, baselines and trained agents, one table")
    p.add_argument("config", help="YAML run config")
    p.add_argument("--seeds", type=int, default=5, help="evaluation instances (default 5)")
    p.add_argument("--noise", type=float, help="length-prediction error sigma (default: the config's predictor)")
    p.add_argument("--reschedule-model", help="agent that reschedules the base plan (trained with --start plan)")
    p.add_argument("--dispatch-model", help="agent that dispatches from nothing (default: --reschedule-model)")
    p.add_argument("--threshold-model", help="trained skip agent (mosaic train threshold)")
    p.add_argument("--plan-scheduler", help="base plan (default: mosaic-ilp when registered, else greedy-lpt)")
    p.add_argument("--out", help="output directory (default: <out_dir>/<name>__eval-agents__seed<S>__<time>)")
    _shared(p)
    p.set_defaults(func=cmd_eval_agents)


def _shared(p: argparse.ArgumentParser) -> None:
    p.add_argument("--wandb", choices=TRACKING_MODES, help="W&B mode (default: the config's)")
    p.add_argument("--track", action="store_true", help="W&B online (same as --wandb online)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field (repeatable)")  # fmt: skip


def _config(args: argparse.Namespace) -> RunConfig:
    from mosaic.envs.instances import resolve_config

    if getattr(args, "config", None):
        return load_config(args.config, args.overrides)
    if args.overrides:
        from mosaic.envs.instances import DEFAULT_ENV_OVERRIDES

        return load_config(None, [*DEFAULT_ENV_OVERRIDES, *args.overrides])
    return resolve_config(None)


def _online_config(args: argparse.Namespace) -> RunConfig:
    from mosaic.envs.agg_online import DEFAULT_ONLINE

    if getattr(args, "config", None):
        return load_config(args.config, args.overrides)
    return load_config(None, [*DEFAULT_ONLINE, *args.overrides])


def _tracking(cfg: RunConfig, args: argparse.Namespace) -> TrackingCfg:
    mode = "online" if args.track else (args.wandb or cfg.tracking.mode)
    return cfg.tracking.model_copy(update={"mode": mode})


def _out_dir(cfg: RunConfig, command: str, seed: int, out: str | None) -> Path:
    if out:
        return Path(out)
    return Path(cfg.out_dir) / f"{cfg.name}__{command}__seed{seed}__{time.strftime('%Y%m%d-%H%M%S')}"


# --- mosaic train ------------------------------------------------------------------------------------------------


def cmd_train(args: argparse.Namespace) -> int:
    from mosaic.envs.training import TrainOptions, train

    online = args.task == "online"
    cfg = _online_config(args) if online else _config(args)
    if args.task == "reschedule":
        ref = args.reward_ref if args.reward_ref != "auto" else ("plan" if args.start == "plan" else "round-robin")
        env = {"n_instances": args.n_instances, "noise": args.noise, "start": args.start, "reward_ref": ref}
        if args.plan_scheduler:
            env["plan_scheduler"] = args.plan_scheduler
    elif online:
        env = {"n_train": args.n_train, "latency_weight": args.latency_weight, "latency_scale_s": args.latency_scale,
               "latency_power": args.latency_power}  # fmt: skip
    else:
        env = {"lam": args.lam}
    out = _out_dir(cfg, f"train-{args.task}", args.seed, args.out)
    algo = args.algo or ("ppo" if online else "maskable-ppo")
    eval_freq = args.eval_freq or (20_000 if online else 2_000)
    n_eval = args.n_eval or (2 if online else 8)
    opts = TrainOptions(args.task, algo, args.timesteps, args.seed, out, _tracking(cfg, args), eval_freq, n_eval, env,
                        args.source)  # fmt: skip
    with console.status(f"training {algo} on {args.task} for {args.timesteps} steps"):
        result = train(cfg, opts)
    console.print(f"[bold]{args.task}[/bold] {algo}: {args.timesteps} steps in {result.seconds:.1f} s; best "
                  f"held-out mean return {result.best_mean_reward:.3f}; model {result.model_path}")  # fmt: skip
    summary = held_out_summary(cfg, opts, result.model_path)
    (out / "heldout.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
    return 0


def held_out_summary(cfg: RunConfig, opts: Any, model_path: Path) -> dict[str, Any]:
    """Evaluate the saved model on the held-out instances / rows against the baselines; print the table."""
    from mosaic.agents.rl import SB3SkipModel, load_agent

    agent = load_agent(model_path, opts.task)
    if opts.task == "online":
        return online_summary(cfg, opts, agent)
    if opts.task == "reschedule":
        from mosaic.envs.evaluation import compare_schedulers
        from mosaic.envs.instances import EVAL_STREAM, config_instances

        instances = config_instances(cfg, opts.n_eval, opts.seed, opts.env.get("noise"), EVAL_STREAM)
        plan_start = opts.env.get("start") == "plan"
        rows = compare_schedulers(instances, agent if plan_start else None, None if plan_start else agent,
                                  opts.env.get("plan_scheduler"))  # fmt: skip
        console.print(makespan_table(rows, f"held-out instances ({len(instances)})"))
        return {"makespans": [r.as_dict() for r in rows]}
    from mosaic.envs.evaluation import compare_thresholds
    from mosaic.envs.training import threshold_tables

    _, heldout = threshold_tables(cfg, opts)
    trows = compare_thresholds([heldout], {"learned (RL)": SB3SkipModel(agent)})
    console.print(threshold_table(trows, f"held-out queries ({len(heldout)})"))
    return {"thresholds": [r.as_dict() for r in trows]}


def online_summary(cfg: RunConfig, opts: Any, agent: Any) -> dict[str, Any]:
    """The trained agent deployed as the runs' skip policy on the held-out seeds, beside the fixed thresholds."""
    from mosaic.agents.rl import SB3SkipModel
    from mosaic.aggregation.thresholds import LearnedLoadPolicy
    from mosaic.envs.agg_online import FIXED_ONLINE, compare_online
    from mosaic.envs.training import online_kwargs
    from mosaic.pipeline import skip_context

    exps = online_kwargs(cfg, opts, True)["experiments"]
    model = SB3SkipModel(agent, online=True)
    rows = compare_online(exps, {**FIXED_ONLINE, "learned (RL)": lambda e: LearnedLoadPolicy(model, skip_context(e))})
    t = Table("policy", "accuracy %", "skip %", "p50 s", "p99 s",
              title=f"held-out online runs (seeds {[e.cfg.seed for e in exps]}), means")  # fmt: skip
    for r in rows:
        t.add_row(r["policy"], f"{100 * r['accuracy']:.2f}", f"{100 * r['skip_rate']:.1f}", f"{r['p50_s']:,.0f}",
                  f"{r['p99_s']:,.0f}")  # fmt: skip
    console.print(t)
    return {"online": rows}


# --- mosaic eval-agents ------------------------------------------------------------------------------------------


def cmd_eval_agents(args: argparse.Namespace) -> int:
    from mosaic.agents.rl import SB3SkipModel, load_agent
    from mosaic.envs.evaluation import compare_schedulers, compare_thresholds, pareto_png
    from mosaic.envs.instances import EVAL_STREAM, config_instances

    cfg = _config(args)
    if args.seeds < 1:
        raise ConfigError(f"eval-agents: --seeds must be >= 1, got {args.seeds}")
    out = _out_dir(cfg, "eval-agents", cfg.seed, args.out)
    out.mkdir(parents=True, exist_ok=True)
    resched = load_agent(args.reschedule_model, "reschedule") if args.reschedule_model else None
    dispatch = load_agent(args.dispatch_model, "reschedule") if args.dispatch_model else resched
    with console.status(f"building {args.seeds} instances of {cfg.name}"):
        instances = config_instances(cfg, args.seeds, cfg.seed, args.noise, EVAL_STREAM)
    with console.status("running schedulers and agents"):
        rows = compare_schedulers(instances, resched, dispatch, args.plan_scheduler)
    console.print(makespan_table(rows, f"{cfg.name}: expert-stage makespan over {args.seeds} instances"))
    threshold = load_agent(args.threshold_model, "threshold") if args.threshold_model else None
    tables, data, source = skip_tables_for(instances, threshold)
    learned = {"learned (RL)": SB3SkipModel(threshold)} if threshold is not None else {}
    with console.status("running skip policies"):
        trows = compare_thresholds(tables, learned)
    console.print(threshold_table(trows, f"aggregation skip policies ({source})"))
    png = pareto_png(trows, out / "pareto.png", f"{data or cfg.name}: aggregation time vs accuracy\n({source})")
    write_results(out, rows, trows)
    _track(cfg, args, out, rows, trows, png)
    console.print(f"results in {out}")
    return 0


def skip_tables_for(instances: Sequence[Any], threshold: Any) -> tuple[list[Any], str | None, str]:
    """The evaluation skip tables, the data set they come from (None: the config's own instances) and a description:
    RouterBench's held-out split when the threshold model was trained on it (same split), else the evaluation
    instances' own tables."""
    from mosaic.envs.skip_tables import routerbench_table, skip_table

    env_meta = dict(threshold.meta.get("env", {})) if threshold is not None else {}
    if env_meta.get("source") == "routerbench":
        import numpy as np

        rng = np.random.default_rng(int(env_meta.get("split_seed", 0)))
        _, heldout = routerbench_table().split(float(env_meta.get("test_share", 0.5)), rng)
        return [heldout], "RouterBench", f"RouterBench held-out, {len(heldout)} queries"
    return [skip_table(inst) for inst in instances], None, f"{len(instances)} instances"


def write_results(out: Path, rows: Sequence[Any], trows: Sequence[Any]) -> None:
    """``makespans.csv``, ``thresholds.csv`` and ``results.json`` in ``out``."""
    from mosaic.report.metrics import mean_ci

    with (out / "makespans.csv").open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["scheduler", "mean_s", "ci95_s", "n", "note"])
        for r in rows:
            mean, half = mean_ci(r.makespans)
            w.writerow([r.name, f"{mean:.3f}", f"{half:.3f}", len(r.makespans), r.note])
    with (out / "thresholds.csv").open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["policy", "skip_rate", "accuracy", "time_s", "note"])
        for t in trows:
            w.writerow([t.name, f"{t.skip_rate:.4f}", f"{t.accuracy:.4f}", f"{t.time_s:.3f}", t.note])
    results = {"makespans": [r.as_dict() for r in rows], "thresholds": [t.as_dict() for t in trows]}
    (out / "results.json").write_text(json.dumps(results, indent=2), encoding="utf-8")


def _track(cfg: RunConfig, args: argparse.Namespace, out: Path, rows: Sequence[Any], trows: Sequence[Any],
           png: Path) -> None:  # fmt: skip
    from mosaic.report.metrics import mean_ci
    from mosaic.report.tracking import Tracker

    tracker = Tracker(_tracking(cfg, args), f"{cfg.name}__eval-agents__seed{cfg.seed}", {"seeds": args.seeds}, out)
    try:
        tracker.log_table("makespans", ["scheduler", "mean_s", "ci95_s", "note"],
                          [[r.name, *mean_ci(r.makespans), r.note] for r in rows])  # fmt: skip
        tracker.log_table("thresholds", ["policy", "skip_rate", "accuracy", "time_s"],
                          [[t.name, t.skip_rate, t.accuracy, t.time_s] for t in trows])  # fmt: skip
        tracker.log_image("pareto", png)
    finally:
        tracker.finish()


# --- tables ------------------------------------------------------------------------------------------------------


def makespan_table(rows: Sequence[Any], title: str) -> Table:
    """Mean and 95% CI of the makespan, makespan over the lower bound of the *predicted* lengths (below 1 when the
    predictions overestimate), mean per-instance speedup over round-robin."""
    from mosaic.report.metrics import mean_ci

    base = next((r for r in rows if r.name == "round-robin" and r.makespans), None)
    table = Table("scheduler", "makespan (s)", "95% CI", "x LB (predicted)", "speedup vs RR", "note", title=title)
    for r in rows:
        if not r.makespans:
            table.add_row(r.name, "-", "-", "-", "-", r.note)
            continue
        mean, half = mean_ci(r.makespans)
        gap = sum(m / lb for m, lb in zip(r.makespans, r.lower_bounds, strict=False)) / len(r.makespans)
        speed = "-"
        if base is not None:
            ratios = [b / m for b, m in zip(base.makespans, r.makespans, strict=True)]
            speed = f"{sum(ratios) / len(ratios):.2f}x"
        table.add_row(r.name, f"{mean:.1f}", f"± {half:.1f}", f"{gap:.2f}", speed, r.note)
    return table


def threshold_table(rows: Sequence[Any], title: str) -> Table:
    """Skip rate, accuracy, simulated aggregation time of each skip policy."""
    table = Table("policy", "skip rate", "accuracy", "aggregation time (s)", "note", title=title)
    for r in rows:
        table.add_row(r.name, f"{100 * r.skip_rate:.1f}%", f"{100 * r.accuracy:.1f}%", f"{r.time_s:.2f}", r.note)
    return table


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m mosaic.envs.commands train ...``: the main CLI, which registers these commands."""
    from mosaic.cli import main as cli_main

    return cli_main(argv)


if __name__ == "__main__":
    raise SystemExit(main())
