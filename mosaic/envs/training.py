"""Training of SB3 agents on the MOSAIC envs: env construction, algorithm defaults, callbacks (evaluation, W&B).

:func:`train` is what ``mosaic train reschedule|threshold`` runs: it builds the training env (training instance
stream, or the training split of a skip table) and a held-out evaluation env, trains ``ppo``, ``maskable-ppo``
(sb3-contrib, invalid actions masked) or ``dqn`` with an evaluation callback (best model kept) and a tracking
callback (every SB3 log line to W&B, offline by default), and saves ``model.zip`` + ``model.json``.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mosaic.core.config import RunConfig, TrackingCfg
from mosaic.core.errors import ConfigError
from mosaic.envs import AGG_ONLINE_ID, AGG_THRESHOLD_ID, RESCHEDULE_ID

TASKS = ("reschedule", "threshold", "online")
ALGOS = ("ppo", "maskable-ppo", "dqn")
SOURCES = ("config", "routerbench")

# Algorithm defaults per task: rescheduling is an episodic makespan objective (gamma 1); skipping is a contextual
# bandit (gamma 0: each decision's reward is its own).
# PPO's n_steps is per env copy (TrainOptions.n_envs copies: 4 for reschedule, 8 for threshold).
_PPO = {"n_steps": 64, "batch_size": 64, "n_epochs": 10, "learning_rate": 3e-4, "gae_lambda": 0.95}
# Skip decisions: the entropy bonus keeps both actions sampled (with 0.0, PPO collapsed to "always skip" at lam 4.6
# on RouterBench and never saw the aggregate action's better return on 2:1 votes again).
_BANDIT_PPO = {**_PPO, "n_steps": 128, "batch_size": 256, "n_epochs": 5, "gamma": 0.0, "ent_coef": 0.05}
DEFAULTS: Mapping[tuple[str, str], Mapping[str, Any]] = {
    ("reschedule", "ppo"): {**_PPO, "gamma": 1.0, "ent_coef": 0.01},
    ("reschedule", "maskable-ppo"): {**_PPO, "gamma": 1.0, "ent_coef": 0.01},
    ("reschedule", "dqn"): {"learning_starts": 500, "buffer_size": 50_000, "target_update_interval": 500,
                            "exploration_fraction": 0.3, "gamma": 0.99, "train_freq": 4},
    ("threshold", "ppo"): _BANDIT_PPO,
    ("threshold", "maskable-ppo"): _BANDIT_PPO,
    ("threshold", "dqn"): {"learning_starts": 500, "buffer_size": 50_000, "target_update_interval": 500,
                           "exploration_fraction": 0.2, "gamma": 0.0, "train_freq": 4},
    # online skips: a skip shortens the queue for hundreds of decisions after it (gamma near 1)
    ("online", "ppo"): {"n_steps": 4096, "batch_size": 256, "n_epochs": 5, "learning_rate": 3e-4, "gamma": 0.999,
                        "gae_lambda": 0.98, "ent_coef": 0.01},
    ("online", "dqn"): {"learning_starts": 2_000, "buffer_size": 100_000, "target_update_interval": 2_000,
                        "exploration_fraction": 0.2, "gamma": 0.999, "train_freq": 4},
}  # fmt: skip
ONLINE_TRAIN_SEED, ONLINE_EVAL_SEED = 100, 200  # online: training runs at seeds seed + 100 + i, held-out + 200 + i


@dataclass(frozen=True, slots=True)
class TrainOptions:
    """One training run (``mosaic train``)."""

    task: str  # "reschedule" | "threshold" | "online"
    algo: str = "maskable-ppo"  # "ppo" | "maskable-ppo" | "dqn"
    timesteps: int = 20_000  # environment steps
    seed: int = 0  # model seed; also the seed of the training/evaluation instances
    out_dir: Path = Path("runs/train")  # model.zip, model.json, best_model.zip, progress.csv, eval/
    tracking: TrackingCfg = field(default_factory=TrackingCfg)  # W&B mode (offline by default), project, entity
    eval_freq: int = 2_000  # environment steps between evaluations
    n_eval: int = 8  # evaluation instances (reschedule) or episodes (threshold)
    env: Mapping[str, Any] = field(default_factory=dict)  # reschedule: n_instances, noise, start, ...; threshold: lam
    source: str = "config"  # threshold: "config" (the config's workload) or "routerbench" (real answers)
    test_share: float = 0.5  # threshold: held-out share of the skip table
    hyper: Mapping[str, Any] = field(default_factory=dict)  # algorithm keyword overrides
    n_envs: int | None = None  # env copies stepped together (None: 8 threshold, 4 reschedule; DQN: 1)
    torch_threads: int = 1  # torch intra-op threads (1 is fastest for these small MLPs on a shared machine)
    verbose: int = 0


@dataclass(frozen=True, slots=True)
class TrainResult:
    """Where the model landed and how training went."""

    model_path: Path
    best_path: Path | None
    seconds: float  # wall-clock training time
    best_mean_reward: float  # evaluation callback's best mean episode return
    meta: Mapping[str, Any]


def check_options(opts: TrainOptions) -> None:
    """Raise ConfigError naming the bad option."""
    if opts.task not in TASKS:
        raise ConfigError(f"train: task must be one of {TASKS}, got {opts.task!r}")
    if opts.algo not in ALGOS:
        raise ConfigError(f"train: --algo must be one of {ALGOS}, got {opts.algo!r}")
    if opts.source not in SOURCES:
        raise ConfigError(f"train: --source must be one of {SOURCES}, got {opts.source!r}")
    if (opts.task, opts.algo) not in DEFAULTS:
        raise ConfigError(f"train: --algo {opts.algo} does not apply to task {opts.task!r} (no invalid actions to "
                          "mask): use ppo or dqn")  # fmt: skip
    if opts.timesteps < 1 or opts.eval_freq < 1 or opts.n_eval < 1 or (opts.n_envs is not None and opts.n_envs < 1):
        raise ConfigError("train: --timesteps, --eval-freq, --n-eval and n_envs must be >= 1")


def n_envs(opts: TrainOptions) -> int:
    """Env copies of the training VecEnv (one policy call serves all of them)."""
    if opts.n_envs is not None:
        return opts.n_envs
    if opts.algo == "dqn" or opts.task == "online":  # an online episode is a whole run: one at a time
        return 1
    return 8 if opts.task == "threshold" else 4


# --- environments ------------------------------------------------------------------------------------------------


def reschedule_kwargs(cfg: RunConfig, opts: TrainOptions, heldout: bool) -> dict[str, Any]:
    """Keyword arguments of the training (or held-out evaluation) reschedule env: instances built once."""
    from mosaic.envs.instances import EVAL_STREAM, TRAIN_STREAM, config_instances

    env = dict(opts.env)
    n = opts.n_eval if heldout else int(env.pop("n_instances", 8))
    env.pop("n_instances", None)
    noise = env.pop("noise", None)
    stream = EVAL_STREAM if heldout else TRAIN_STREAM
    instances = config_instances(cfg, n, opts.seed, noise, stream)
    if env.get("start") == "plan":  # plan once, share the plans between env copies
        from mosaic.envs.problem import PlanSet
        from mosaic.envs.reschedule import default_plan_scheduler, plan_instance

        env["plan_scheduler"] = env.get("plan_scheduler") or default_plan_scheduler()
        env["plans"] = PlanSet(plan_instance(inst, env["plan_scheduler"]) for inst in instances)
    return {"instances": instances, "instance_order": "cycle" if heldout else "random", **env}


def threshold_tables(cfg: RunConfig, opts: TrainOptions) -> tuple[Any, Any]:
    """(training, held-out) skip tables of the chosen source."""
    from mosaic.envs.instances import EVAL_STREAM, TRAIN_STREAM, config_skip_table
    from mosaic.envs.skip_tables import routerbench_table

    if opts.source == "routerbench":
        return routerbench_table().split(opts.test_share, np.random.default_rng(opts.seed))
    return config_skip_table(cfg, opts.seed, TRAIN_STREAM), config_skip_table(cfg, opts.seed, EVAL_STREAM)


def online_kwargs(cfg: RunConfig, opts: TrainOptions, heldout: bool) -> dict[str, Any]:
    """Keyword arguments of the online env: the config's runs at the training (or held-out) seeds."""
    from mosaic.envs.agg_online import online_experiments

    env = dict(opts.env)
    n_train = int(env.pop("n_train", 2))
    n = opts.n_eval if heldout else n_train
    first = opts.seed + (ONLINE_EVAL_SEED if heldout else ONLINE_TRAIN_SEED)
    order = "cycle" if heldout else "random"
    return {"experiments": online_experiments(cfg, range(first, first + n)), "experiment_order": order, **env}


def make_env(env_id: str, kwargs: Mapping[str, Any], info_keywords: tuple[str, ...] = ()) -> Any:
    """``gymnasium.make(env_id, **kwargs)`` wrapped in SB3's Monitor (episode returns for the callbacks)."""
    import gymnasium as gym
    from stable_baselines3.common.monitor import Monitor

    return Monitor(gym.make(env_id, **kwargs), info_keywords=info_keywords)


def make_vec_env(env_id: str, kwargs: Mapping[str, Any], n: int, info_keywords: tuple[str, ...] = ()) -> Any:
    """``n`` copies of :func:`make_env` in a DummyVecEnv (instances, plans and skip tables are shared)."""
    from stable_baselines3.common.vec_env import DummyVecEnv

    return DummyVecEnv([lambda: make_env(env_id, kwargs, info_keywords) for _ in range(n)])


def build_envs(cfg: RunConfig, opts: TrainOptions) -> tuple[Any, Any, dict[str, Any]]:
    """(training env, evaluation env, env metadata saved with the model)."""
    if opts.task == "reschedule":
        train_kw, eval_kw = reschedule_kwargs(cfg, opts, False), reschedule_kwargs(cfg, opts, True)
        keys = ("makespan", "lower_bound")
        env = make_vec_env(RESCHEDULE_ID, train_kw, n_envs(opts), keys)
        meta = {k: v for k, v in opts.env.items() if k not in ("instances", "plans")}
        base = env.envs[0].unwrapped
        meta |= {"n_slots": base.n_slots, "buckets": list(base.buckets), "quantum_frac": base.quantum_frac,
                 "start": base.start, "plan_scheduler": base.plan_scheduler, "n_workers": base.n_workers}  # fmt: skip
        return env, make_env(RESCHEDULE_ID, eval_kw, keys), meta
    if opts.task == "online":
        train_kw, eval_kw = online_kwargs(cfg, opts, False), online_kwargs(cfg, opts, True)
        meta = {**opts.env, "train_seeds": [e.cfg.seed for e in train_kw["experiments"]],
                "heldout_seeds": [e.cfg.seed for e in eval_kw["experiments"]]}  # fmt: skip
        return make_vec_env(AGG_ONLINE_ID, train_kw, n_envs(opts)), make_env(AGG_ONLINE_ID, eval_kw), meta
    train_table, eval_table = threshold_tables(cfg, opts)
    env_kw = dict(opts.env)
    meta = {**env_kw, "source": opts.source, "test_share": opts.test_share, "split_seed": opts.seed,
            "train_rows": len(train_table), "heldout_rows": len(eval_table)}  # fmt: skip
    return (
        make_vec_env(AGG_THRESHOLD_ID, {"table": train_table, **env_kw}, n_envs(opts)),
        make_env(AGG_THRESHOLD_ID, {"table": eval_table, **env_kw}),
        meta,
    )


# --- algorithms and callbacks ------------------------------------------------------------------------------------


def build_model(opts: TrainOptions, env: Any) -> Any:
    """The SB3 algorithm of ``opts.algo`` on ``env`` with the task's defaults and ``opts.hyper`` overrides."""
    import importlib

    from mosaic.agents.rl import ALGO_CLASSES, limit_torch_threads

    limit_torch_threads(opts.torch_threads)
    module, cls = ALGO_CLASSES[opts.algo]
    algo_cls = getattr(importlib.import_module(module), cls)
    policy = "MlpPolicy"
    kwargs = {**DEFAULTS[(opts.task, opts.algo)], **opts.hyper}
    if opts.algo != "dqn":
        copies = env.num_envs
        kwargs["n_steps"] = max(8, min(int(kwargs["n_steps"]), opts.timesteps // copies))
        kwargs["batch_size"] = max(2, min(int(kwargs["batch_size"]), kwargs["n_steps"] * copies))
    return algo_cls(policy, env, seed=opts.seed, verbose=opts.verbose, device="cpu", **kwargs)


def _tracker_writer(tracker: Any) -> Any:
    from stable_baselines3.common.logger import KVWriter

    class TrackerWriter(KVWriter):
        """Forwards every SB3 log dump (rollout/, train/, eval/, time/) to the W&B run."""

        def write(self, key_values: dict[str, Any], key_excluded: dict[str, Any], step: int = 0) -> None:
            clean = {k: float(v) for k, v in key_values.items() if isinstance(v, int | float | np.floating)}
            if tracker.run is not None and clean:
                tracker.run.log(clean, step=int(step))

        def close(self) -> None:
            return None

    return TrackerWriter()


def tracking_callback(tracker: Any) -> Any:
    """An SB3 callback that logs to W&B (``tracker``: :class:`mosaic.report.tracking.Tracker`) and records the
    reschedule episodes' makespan / lower bound as ``mosaic/makespan_over_lb``."""
    from stable_baselines3.common.callbacks import BaseCallback

    class TrackingCallback(BaseCallback):
        def _on_training_start(self) -> None:
            self.model.logger.output_formats.append(_tracker_writer(tracker))

        def _on_step(self) -> bool:
            for info in self.locals.get("infos", ()):
                ep = info.get("episode")
                if ep and ep.get("lower_bound"):
                    self.logger.record_mean("mosaic/makespan_over_lb", ep["makespan"] / ep["lower_bound"])
            return True

    return TrackingCallback()


def eval_callback(opts: TrainOptions, eval_env: Any) -> Any:
    """EvalCallback (MaskableEvalCallback for maskable PPO): held-out env, best model saved in ``out_dir``."""
    if opts.algo == "maskable-ppo":
        from sb3_contrib.common.maskable.callbacks import MaskableEvalCallback as Callback
    else:
        from stable_baselines3.common.callbacks import EvalCallback as Callback
    freq = max(1, min(opts.eval_freq, opts.timesteps) // n_envs(opts))  # callbacks count vector steps
    return Callback(eval_env, n_eval_episodes=opts.n_eval, eval_freq=freq,
                    log_path=str(opts.out_dir / "eval"), best_model_save_path=str(opts.out_dir),
                    deterministic=True, verbose=opts.verbose)  # fmt: skip


# --- the run -----------------------------------------------------------------------------------------------------


def train(cfg: RunConfig, opts: TrainOptions) -> TrainResult:
    """Train, evaluate and save (see the module docstring); W&B per ``opts.tracking`` (offline by default)."""
    from stable_baselines3.common.logger import configure

    from mosaic.agents.rl import save_meta
    from mosaic.report.tracking import Tracker

    check_options(opts)
    env, eval_env, env_meta = build_envs(cfg, opts)  # a bad config or env option stops here, nothing written
    out = Path(opts.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model = build_model(opts, env)
    model.set_logger(configure(str(out), ["csv", "stdout"] if opts.verbose else ["csv"]))
    run_name = f"{cfg.name}__train-{opts.task}__{opts.algo}__seed{opts.seed}"
    config = {"task": opts.task, "algo": opts.algo, "timesteps": opts.timesteps, "seed": opts.seed, **env_meta}
    tracker = Tracker(opts.tracking, run_name, {"train": config, "hyper": dict(opts.hyper)}, out)
    evaluator = eval_callback(opts, eval_env)
    t0 = time.perf_counter()
    try:
        model.learn(total_timesteps=opts.timesteps, callback=[evaluator, tracking_callback(tracker)])
        seconds = time.perf_counter() - t0
        tracker.log_metrics({"train_seconds": seconds, "best_mean_reward": float(evaluator.best_mean_reward)})
    finally:
        tracker.finish()
        env.close()
        eval_env.close()
    model_path = out / "model.zip"
    model.save(str(model_path))
    meta = {"task": opts.task, "algo": opts.algo, "timesteps": opts.timesteps, "seed": opts.seed,
            "train_seconds": seconds, "best_mean_reward": float(evaluator.best_mean_reward), "env": env_meta,
            "hyper": {**DEFAULTS[(opts.task, opts.algo)], **opts.hyper}, "n_envs": n_envs(opts),
            "config": cfg.name}  # fmt: skip
    save_meta(model_path, meta)
    best = out / "best_model.zip"
    if best.is_file():
        save_meta(best, meta)
    return TrainResult(model_path, best if best.is_file() else None, seconds, float(evaluator.best_mean_reward), meta)
