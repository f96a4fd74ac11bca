"""An RL skip policy trained in the online env (``mosaic/AggOnline-v0``) against every fixed threshold.

MedMCQA on the simulator without a stage barrier, Poisson arrivals at ``--loads`` of the sustained rate
(``--capacity``, queries/s; ``experiments/online_aggregation.py`` measures it: 0.5514 for greedy-lpt+rolling with
the config defaults), each wrong aggregator answer made right with probability ``--aggregator-fix`` (0.3: aggregating
pays). Per load and latency weight, PPO is trained on the ``--tune-seeds``' runs (each episode one whole online run:
a skip decision per query when its experts finish, observing the 9 agreement features, the aggregator's backlog and
queue per worker and the query's wait; reward: correct answers gained over aggregating minus ``latency_weight`` x
latency / ``--latency-scale``, charged as each query waits), then deployed as a
:class:`~mosaic.aggregation.thresholds.LearnedLoadPolicy` and measured on ``--seeds``, which training never saw,
beside always, T = 1, T = 2/3 and T = 1/3: accuracy, skip rate, p50 / p99 latency (mean and 95% interval over
seeds), each policy's paired differences to each fixed rule and whether it dominates it; table.txt, results.json and
accuracy_vs_p99.png under ``--out``, and the models.

Run: ``python experiments/online_rl_aggregation.py`` (about 90 s of training per model here, 10 models).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from online_aggregation import FIXED, _pm, accuracy_under, fix_key, paired, stronger_aggregator, verdict
from online_aggregation import Args as OnlineArgs
from online_aggregation import _cfg as online_cfg
from rich.console import Console
from rich.table import Table

from mosaic.agents.rl import ONLINE_TASK, LoadedAgent, SB3SkipModel, limit_torch_threads, load_agent, save_meta
from mosaic.aggregation.interface import AggregationPolicy, AlwaysAggregate
from mosaic.aggregation.thresholds import ONLINE_FEATURE_NAMES, FixedThreshold, LearnedLoadPolicy
from mosaic.core.script_args import parse_dataclass_args
from mosaic.envs.agg_online import AggOnlineEnv
from mosaic.pipeline import Experiment, plan_scheduler, prepare, run_scheduler, skip_context
from mosaic.report.gantt import plt  # matplotlib with the Agg backend
from mosaic.report.metrics import mean_ci

PPO_OPTIONS = {"n_steps": 4096, "batch_size": 256, "n_epochs": 5, "learning_rate": 3e-4, "gamma": 0.999,
               "gae_lambda": 0.98, "ent_coef": 0.01}  # fmt: skip


@dataclass(frozen=True)
class Args:
    """Command-line arguments (each field is a --flag; tuples take several values)."""

    config: str = OnlineArgs.config
    scheduler: str = "greedy-lpt+rolling"
    capacity: float = 0.5514  # sustained rate, queries/s (experiments/online_aggregation.py --capacity-only)
    loads: tuple[float, ...] = (0.8, 0.95)
    aggregator_fix: float = 0.3
    tune_seeds: tuple[int, ...] = (100, 101)  # training runs
    seeds: tuple[int, ...] = (0, 1, 2)  # evaluation runs
    latency_weights: tuple[float, ...] = (0.0003, 0.001, 0.002, 0.004, 0.008)
    latency_scale: float = 100.0  # seconds
    latency_power: float = 1.0
    steps: int = 100_000  # PPO timesteps per model (one step: one query's decision)
    ent_coef: float = PPO_OPTIONS["ent_coef"]  # PPO's entropy bonus
    normalize_reward: bool = False  # train on rewards scaled by a running std of the return (SB3 VecNormalize)
    set: tuple[str, ...] = ()
    out: str = "runs/online_rl_aggregation"
    inspect: str = ""  # a trained model.zip: print what it skips on --seeds[0] at --loads[0], train nothing


def experiment(args: Args, seed: int, rate: float) -> Experiment:
    """One seed's online experiment at ``rate`` with the stronger aggregator."""
    online = OnlineArgs(config=args.config, set=args.set)
    return stronger_aggregator(prepare(online_cfg(online, seed, rate)), args.aggregator_fix, seed)


def train(args: Args, rate: float, weight: float, path: Path, console: Console) -> LoadedAgent:
    """PPO on the tuning seeds' runs at ``rate``; saved to ``path`` with its metadata."""
    from stable_baselines3 import PPO
    from stable_baselines3.common.vec_env import DummyVecEnv, VecNormalize

    limit_torch_threads()
    exps = [experiment(args, s, rate) for s in args.tune_seeds]
    env = DummyVecEnv([lambda: AggOnlineEnv(exps, args.scheduler, 1.0, weight, args.latency_scale,
                                            args.latency_power)])  # fmt: skip
    if args.normalize_reward:
        env = VecNormalize(env, norm_obs=False, norm_reward=True, gamma=PPO_OPTIONS["gamma"])
    options = {**PPO_OPTIONS, "ent_coef": args.ent_coef}
    model = PPO("MlpPolicy", env, seed=0, device="cpu", verbose=0, **options)
    t0 = time.perf_counter()
    model.learn(total_timesteps=args.steps)
    env.close()
    model.save(str(path))
    meta = {"task": ONLINE_TASK, "algo": "ppo", "rate": rate, "latency_weight": weight,
            "latency_scale_s": args.latency_scale, "latency_power": args.latency_power, "steps": args.steps,
            "tune_seeds": list(args.tune_seeds), "ppo": options, "normalize_reward": args.normalize_reward,
            "train_s": time.perf_counter() - t0}  # fmt: skip
    save_meta(path, meta)
    console.print(f"  trained lat_w={weight:g} in {meta['train_s']:.0f} s -> {path}")
    return LoadedAgent(model, "ppo", meta)


def policies(exp: Experiment, agents: dict[str, LoadedAgent]) -> dict[str, AggregationPolicy]:
    """The fixed rules and each trained agent as a load-aware policy on ``exp``."""
    out: dict[str, AggregationPolicy] = {n: AlwaysAggregate() if t is None else FixedThreshold(t)
                                         for n, t in FIXED.items()}  # fmt: skip
    context = skip_context(exp)
    for name, agent in agents.items():
        out[name] = LearnedLoadPolicy(SB3SkipModel(agent, online=True), context)
    return out


def measure(args: Args, seed: int, rate: float, agents: dict[str, LoadedAgent]) -> dict[str, dict]:
    """policy -> accuracy, skip rate, p50 / p99 / mean latency on one evaluation seed."""
    exp, out = prepare(online_cfg(OnlineArgs(config=args.config, set=args.set), seed, rate)), {}
    acc = fix_key(args.aggregator_fix)
    for name, pol in policies(exp, agents).items():
        run = run_scheduler(exp, plan_scheduler(exp, args.scheduler, pol))
        m = run.metrics
        out[name] = {acc: accuracy_under(exp, run, args.aggregator_fix, seed), "skip": run.result.skip_rate,
                     "p50": m.latency["p50"], "p99": m.latency["p99"], "mean": m.latency["mean"]}  # fmt: skip
    return out


def inspect(args: Args, console: Console) -> None:
    """Where the ``--inspect`` model skips (the observation it gets at each decision, deployed): its skip rate per
    vote share, and the mean of each varying feature over the unanimous votes it skips and those it aggregates."""
    exp = experiment(args, args.seeds[0], args.loads[0] * args.capacity)
    model, rows = SB3SkipModel(load_agent(args.inspect), online=True), []

    def recording(features: np.ndarray) -> int:
        rows.append((*features, model.predict(features)))
        return rows[-1][-1]

    run_scheduler(exp, plan_scheduler(exp, args.scheduler, LearnedLoadPolicy(recording, skip_context(exp))))
    x = np.array(rows)
    share, skip = np.round(x[:, 0], 3), x[:, -1] == 1
    for c in np.unique(share):
        console.print(f"vote share {c:.3f}: {int((share == c).sum())} queries, {skip[share == c].mean():.1%} skipped")
    unanimous = share == 1.0
    for j, name in enumerate(ONLINE_FEATURE_NAMES):
        if x[unanimous, j].std() > 0:
            console.print(f"unanimous, {name}: skipped {x[unanimous & skip, j].mean():.3f}, aggregated "
                          f"{x[unanimous & ~skip, j].mean():.3f}")  # fmt: skip


def run_all(args: Args, console: Console) -> dict:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    doc: dict = {"args": asdict(args), "loads": {}}
    for load in args.loads:
        rate = load * args.capacity
        console.print(f"load {load:.0%} ({rate:.4f} q/s): training on seeds {list(args.tune_seeds)}")
        agents = {f"RL lat_w={w:g}": train(args, rate, w, out / f"model_load{load:g}_w{w:g}.zip", console)
                  for w in args.latency_weights}  # fmt: skip
        evals: dict[str, list[dict]] = {}
        for seed in args.seeds:
            for name, row in measure(args, seed, rate, agents).items():
                evals.setdefault(name, []).append(row)
        doc["loads"][str(load)] = {"rate": rate, "eval": evals}
    return doc


def table(doc: dict) -> Table:
    acc = fix_key(doc["args"]["aggregator_fix"])
    t = Table("load", "policy", "accuracy %", "skip %", "p50 s", "p99 s",
              title=f"MedMCQA online, aggregator fix {doc['args']['aggregator_fix']:g}: mean ± 95% CI over "
              f"seeds {doc['args']['seeds']}")  # fmt: skip
    for load, d in doc["loads"].items():
        for name, rows in d["eval"].items():
            t.add_row(f"{float(load):.0%}", name, _pm(mean_ci([r[acc] for r in rows]), 100),
                      f"{100 * np.mean([r['skip'] for r in rows]):.1f}",
                      _pm(mean_ci([r["p50"] for r in rows]), 1, ",.0f"),
                      _pm(mean_ci([r["p99"] for r in rows]), 1, ",.0f"))  # fmt: skip
        t.add_section()
    return t


def domination_table(doc: dict) -> Table:
    """Each trained policy against each fixed rule: paired differences (policy - rule) and the verdict."""
    acc = fix_key(doc["args"]["aggregator_fix"])
    t = Table("load", "policy", "vs", "Δacc pp", "Δp99 s", "dominates",
              title="trained policy - fixed rule, paired by seed, mean ± 95% CI")  # fmt: skip
    for load, d in doc["loads"].items():
        ev = d["eval"]
        for name in (n for n in ev if n not in FIXED):
            for f in FIXED:
                da, dp = paired(ev, name, f, acc), paired(ev, name, f, "p99")
                t.add_row(f"{float(load):.0%}", name, f, _pm(da, 100, "+.2f"), _pm(dp, 1, "+,.0f"), verdict(da, dp))
        t.add_section()
    return t


def plot(doc: dict, path: Path) -> Path:
    acc, loads = fix_key(doc["args"]["aggregator_fix"]), list(doc["loads"])
    fig, axes = plt.subplots(1, len(loads), figsize=(5.2 * len(loads), 4.0), squeeze=False)
    for ax, load in zip(axes[0], loads, strict=True):
        ev = doc["loads"][load]["eval"]

        def point(name: str, ev: dict = ev) -> tuple[float, float]:
            return float(np.mean([r["p99"] for r in ev[name]])), 100 * float(np.mean([r[acc] for r in ev[name]]))

        ax.plot(*zip(*sorted(point(n) for n in FIXED), strict=True), "o-", c="tab:blue", label="fixed T")
        for n in ev:
            ax.annotate(n.removeprefix("RL "), point(n), fontsize=7, textcoords="offset points", xytext=(3, 3))
        pts = [point(n) for n in ev if n not in FIXED]
        ax.plot(*zip(*pts, strict=True), "*", c="tab:red", ms=10, label="PPO in AggOnline-v0")
        ax.set(title=f"MedMCQA, {float(load):.0%} of sustained rate", xlabel="p99 latency (s)",
               ylabel="accuracy (%)")  # fmt: skip
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write(doc: dict, out: Path, console: Console) -> None:
    out.mkdir(parents=True, exist_ok=True)
    with (out / "table.txt").open("w", encoding="utf-8") as fh:
        file_console = Console(file=fh, width=200, color_system=None)
        for t in (table(doc), domination_table(doc)):
            console.print(t)
            file_console.print(t)
    (out / "results.json").write_text(json.dumps(doc, indent=1, default=str), encoding="utf-8")
    console.print(f"results in {out}: table.txt, results.json, {plot(doc, out / 'accuracy_vs_p99.png').name}")


def main(argv: list[str] | None = None) -> dict:
    args = parse_dataclass_args(Args, __doc__, argv)
    console = Console(width=200)
    online_cfg(OnlineArgs(config=args.config, set=args.set), args.seeds[0], None)  # a bad config stops here
    if args.inspect:
        inspect(args, console)
        return {}
    doc = run_all(args, console)
    write(doc, Path(args.out), console)
    return doc


if __name__ == "__main__":
    main()
