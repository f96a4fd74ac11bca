"""Trained RL agents as MOSAIC policies (stable-baselines3 models trained by ``mosaic train``).

- :class:`RLRescheduleScheduler` (``'rl-reschedule'`` in SCHEDULERS): a trained ``mosaic/Reschedule-v0`` agent
  acting live: at every decision point of the runtime loop it builds the env's observation from the loop's view
  (the engines' true state) and applies the model's action, as in the env (one shared
  :class:`~mosaic.agents.reschedule.Rescheduler`). With ``start="plan"`` it starts from a base scheduler's plan
  (MOSAIC ILP when registered) and reschedules it when true lengths differ from the predicted ones.
- :func:`rl_threshold_policy`: a trained ``mosaic/AggThreshold-v0`` agent as a
  :class:`~mosaic.aggregation.thresholds.LearnedThresholdPolicy` (not registered in AGGREGATION_POLICIES here: the
  aggregation tests pin that registry's names; registering it as ``'rl-threshold'`` is one line for its owner).

Importable without torch, gymnasium or stable-baselines3: they are imported when a model is loaded.
A model ``DIR/model.zip`` comes with ``DIR/model.json`` (task, algorithm, env arguments; see :func:`save_meta`).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from mosaic.agents.bounds import lower_bound
from mosaic.agents.interface import Scheduler
from mosaic.agents.registry import SCHEDULERS, make_scheduler
from mosaic.agents.reschedule import DEFAULT_BUCKETS, ReschedulePolicy, default_plan_scheduler, obs_sizes
from mosaic.aggregation.thresholds import (
    FEATURE_HIGH,
    FEATURE_NAMES,
    ONLINE_FEATURE_HIGH,
    ONLINE_FEATURE_NAMES,
    Context,
    LearnedLoadPolicy,
    LearnedThresholdPolicy,
)
from mosaic.core.errors import ConfigError
from mosaic.core.types import Cluster, Plan, Workload
from mosaic.predictors.interface import CostModel

ALGO_CLASSES: Mapping[str, tuple[str, str]] = {
    "ppo": ("stable_baselines3", "PPO"),
    "maskable-ppo": ("sb3_contrib", "MaskablePPO"),
    "dqn": ("stable_baselines3", "DQN"),
}
RESCHEDULE_MODEL_ENV = "MOSAIC_RL_RESCHEDULE_MODEL"  # default model path of 'rl-reschedule'
THRESHOLD_MODEL_ENV = "MOSAIC_RL_THRESHOLD_MODEL"  # default model path of 'rl-threshold'
ONLINE_TASK = "online"  # the task of a skip agent trained in mosaic/AggOnline-v0 (its model.json)
ENV_KEYS = ("n_slots", "buckets", "quantum_frac")  # RescheduleEnv arguments a model depends on


def meta_path(model_path: str | Path) -> Path:
    """``DIR/model.zip`` -> ``DIR/model.json``."""
    p = Path(model_path)
    return p.with_suffix(".json") if p.suffix == ".zip" else p.with_name(p.name + ".json")


def save_meta(model_path: str | Path, meta: Mapping[str, Any]) -> Path:
    """Write the model's metadata (``task``, ``algo``, ``env`` arguments, training figures) beside it."""
    out = meta_path(model_path)
    out.write_text(json.dumps(dict(meta), indent=2, default=str), encoding="utf-8")
    return out


@dataclass(frozen=True, slots=True, eq=False)
class LoadedAgent:
    """A trained SB3 model and its metadata; :meth:`act` is a reschedule/threshold env policy."""

    model: Any  # stable_baselines3 BaseAlgorithm
    algo: str  # key of ALGO_CLASSES
    meta: Mapping[str, Any] = field(default_factory=dict)

    @property
    def env_kwargs(self) -> dict[str, Any]:
        """The env arguments the model was trained with (observation layout)."""
        return dict(self.meta.get("env", {}))

    def act(self, obs: np.ndarray, mask: np.ndarray | None = None) -> int:
        """Deterministic action; maskable models get the valid-action mask (others rely on the env's fallback)."""
        if self.algo == "maskable-ppo" and mask is not None:
            action, _ = self.model.predict(obs, deterministic=True, action_masks=mask)
        else:
            action, _ = self.model.predict(obs, deterministic=True)
        return int(np.asarray(action).ravel()[0])

    def act_batch(self, obs: np.ndarray) -> np.ndarray:
        """Deterministic actions of a batch of observations (no masks)."""
        action, _ = self.model.predict(np.asarray(obs, dtype=np.float32), deterministic=True)
        return np.asarray(action).ravel()


def limit_torch_threads(n: int = 1) -> None:
    """Small MLP policies run fastest on one thread: on a shared machine torch's default intra-op threads
    oversubscribe the cores (measured here: PPO on 512 steps took 23 s with 2 threads, 0.4 s with 1)."""
    import torch

    if torch.get_num_threads() != n:
        torch.set_num_threads(n)


def load_agent(path: str | Path, task: str | None = None) -> LoadedAgent:
    """Load a model saved by ``mosaic train`` (its ``.json`` metadata names the algorithm and task)."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"RL model file {p} does not exist (train one with `mosaic train`)")
    mp = meta_path(p)
    meta = json.loads(mp.read_text(encoding="utf-8")) if mp.is_file() else {}
    algo = str(meta.get("algo", "ppo"))
    if algo not in ALGO_CLASSES:
        raise ConfigError(f"RL model {p}: unknown algo {algo!r} in {mp.name}; valid: {sorted(ALGO_CLASSES)}")
    if task is not None and meta.get("task", task) != task:
        raise ConfigError(f"RL model {p} was trained for task {meta.get('task')!r}, not {task!r}")
    import importlib

    limit_torch_threads()
    module, cls = ALGO_CLASSES[algo]
    model = getattr(importlib.import_module(module), cls).load(str(p), device="cpu")
    return LoadedAgent(model, algo, meta)


def _model_path(path: str | Path | None, env_var: str, what: str) -> Path:
    chosen = path or os.environ.get(env_var)
    if not chosen:
        raise ConfigError(f"{what} needs a trained model: pass model_path or set ${env_var} (see `mosaic train`)")
    return Path(chosen)


@SCHEDULERS.register(
    "rl-reschedule", help="trained reschedule agent acting live at every decision point ($MOSAIC_RL_RESCHEDULE_MODEL)"
)
class RLRescheduleScheduler(Scheduler):
    """A trained ``mosaic/Reschedule-v0`` agent, acting at run time on the engines' true state.

    ``model_path`` (default ``$MOSAIC_RL_RESCHEDULE_MODEL``); ``start`` (``empty``: the agent dispatches everything,
    ``plan``: it reschedules ``plan_scheduler``'s plan; default: as trained); ``max_batch``: the runtime's batch
    cap, for the batch-fill feature (None: the profile's; the env uses its instances' cap). :meth:`plan` is the
    start plan (or nothing ahead); :meth:`runtime_policy` is the agent at every decision point of the runtime loop
    (:class:`~mosaic.agents.reschedule.ReschedulePolicy`: the env's observations, masks and actions).
    """

    name = "rl-reschedule"

    def __init__(self, model_path: str | Path | None = None, start: str | None = None,
                 plan_scheduler: str | None = None, max_batch: int | None = None) -> None:  # fmt: skip
        self.model_path = _model_path(model_path, RESCHEDULE_MODEL_ENV, "scheduler 'rl-reschedule'")
        if start not in (None, "empty", "plan"):
            raise ConfigError(f"scheduler 'rl-reschedule': start must be 'empty' or 'plan', got {start!r}")
        self.start, self.plan_scheduler, self.max_batch = start, plan_scheduler, max_batch
        self._agent: LoadedAgent | None = None

    def agent(self) -> LoadedAgent:
        if self._agent is None:
            self._agent = load_agent(self.model_path, task="reschedule")
        return self._agent

    def _env_meta(self) -> dict[str, Any]:
        """The env arguments the model was trained with (read from its metadata, without loading the model)."""
        if self._agent is not None:
            return self._agent.env_kwargs
        mp = meta_path(self.model_path)
        return dict(json.loads(mp.read_text(encoding="utf-8")).get("env", {})) if mp.is_file() else {}

    def start_mode(self) -> str:
        """``plan`` or ``empty``: as given, else as the model was trained."""
        return self.start or str(self._env_meta().get("start", "empty"))

    @property
    def plans_ahead(self) -> bool:  # type: ignore[override]
        return self.start_mode() == "plan"

    def base_scheduler(self) -> str:
        """The start plan's scheduler: as given, else as trained, else :func:`default_plan_scheduler`."""
        return self.plan_scheduler or self._env_meta().get("plan_scheduler") or default_plan_scheduler()

    def plan(
        self,
        workload: Workload,
        costs: CostModel,
        cluster: Cluster,
        rng: np.random.Generator,
        resident: Mapping[int, str | None] | None = None,
    ) -> Plan:
        self._check_cluster(cluster)
        if self.start_mode() == "empty":
            bound = lower_bound(workload, costs, cluster, resident)
            return Plan(self.name, {}, {}, math.nan, bound, {"rl_start": "empty"})
        base_name = self.base_scheduler()
        base = make_scheduler(base_name).plan(workload, costs, cluster, rng, resident)
        return replace(base, scheduler=self.name, stats={**base.stats, "rl_start": "plan", "rl_base": base_name})

    def runtime_policy(self, plan: Plan) -> ReschedulePolicy:
        kw = {k: v for k, v in self._env_meta().items() if k in ENV_KEYS}
        start = plan if self.start_mode() == "plan" else None
        return ReschedulePolicy(self._choose, start, max_batch=self.max_batch, name=self.name, **kw)

    def _choose(self, obs: np.ndarray, mask: np.ndarray) -> int:
        return self.agent().act(obs, mask)

    def _check_cluster(self, cluster: Cluster) -> None:
        """The model's observations fit this cluster (they depend on the number of workers)."""
        meta = self._env_meta()
        n_buckets = len(meta.get("buckets", DEFAULT_BUCKETS)) + 1
        got = (sum(obs_sizes(len(cluster), int(meta.get("n_slots", 8)), n_buckets)),)
        expected = tuple(self.agent().model.observation_space.shape)
        if expected != got:
            raise ConfigError(
                f"RL model {self.model_path} expects observations {expected} (trained for another cluster size); "
                f"this cluster of {len(cluster)} workers gives {got}"
            )


class SB3SkipModel:
    """``predict(features) -> 1 (skip) | 0``: a trained skip agent on its env's observation, clipped into the
    env's box: :func:`~mosaic.aggregation.thresholds.features` (AggThreshold-v0), or with ``online`` those followed
    by :func:`~mosaic.aggregation.thresholds.load_features` (AggOnline-v0)."""

    def __init__(self, agent: LoadedAgent, online: bool = False) -> None:
        self.agent = agent
        names, high = (ONLINE_FEATURE_NAMES, ONLINE_FEATURE_HIGH) if online else (FEATURE_NAMES, FEATURE_HIGH)
        self.high = np.array([high[n] for n in names], dtype=np.float32)

    def predict(self, features: np.ndarray) -> int:
        obs = np.clip(np.asarray(features, dtype=np.float32), 0.0, self.high)
        return int(self.agent.act_batch(obs[None, :])[0])

    def skip_batch(self, observations: np.ndarray) -> np.ndarray:
        """Skip decisions (bool) of a batch of env observations."""
        return self.agent.act_batch(np.clip(observations, 0.0, self.high)).astype(int) == 1


def rl_threshold_policy(model_path: str | Path | None = None, context: Context | None = None) -> LearnedThresholdPolicy:
    """A trained AggThreshold agent (default ``$MOSAIC_RL_THRESHOLD_MODEL``) as a learned skip policy;
    ``context(query) -> (expert kinds, predicted aggregator seconds)`` completes its features."""
    path = _model_path(model_path, THRESHOLD_MODEL_ENV, "aggregation policy 'rl-threshold'")
    return LearnedThresholdPolicy(SB3SkipModel(load_agent(path, task="threshold")), context)


def rl_skip_policy(model_path: str | Path | None = None, context: Context | None = None) -> LearnedThresholdPolicy:
    """A trained skip agent as the run's skip policy, by the task its metadata names: ``online``
    (``mosaic/AggOnline-v0``: a :class:`~mosaic.aggregation.thresholds.LearnedLoadPolicy`, which sees the load when
    the query's experts finish) or ``threshold`` (:func:`rl_threshold_policy`)."""
    path = _model_path(model_path, THRESHOLD_MODEL_ENV, "a learned aggregation policy")
    agent = load_agent(path)
    task = agent.meta.get("task", "threshold")
    if task == ONLINE_TASK:
        return LearnedLoadPolicy(SB3SkipModel(agent, online=True), context)
    if task != "threshold":
        raise ConfigError(f"RL model {path} was trained for task {task!r}, not a skip decision (threshold, online)")
    return LearnedThresholdPolicy(SB3SkipModel(agent), context)
