"""Trained RL agents as MOSAIC policies (stable-baselines3 models trained by ``mosaic train``).

- :class:`RLRescheduleScheduler` (``'rl-reschedule'`` in SCHEDULERS): plans by running a trained
  ``mosaic/Reschedule-v0`` agent on the simulator with *predicted* lengths (it never sees the truth) and returns the
  order the workers ran as a static :class:`~mosaic.core.types.Plan`. With ``start="plan"`` it starts from a base
  scheduler's plan (MOSAIC ILP when registered) and rebalances it. The run-time benefit of rescheduling (reacting to
  true lengths) is what ``mosaic eval-agents`` measures in the env; a static plan cannot carry it.
- :func:`rl_threshold_policy`: a trained ``mosaic/AggThreshold-v0`` agent as a
  :class:`~mosaic.agents.thresholds.LearnedThresholdPolicy` (not registered in AGGREGATION_POLICIES here: the
  aggregation tests pin that registry's names; registering it as ``'rl-threshold'`` is one line for its owner).

Importable without torch, gymnasium or stable-baselines3: they are imported when a model is loaded.
A model ``DIR/model.zip`` comes with ``DIR/model.json`` (task, algorithm, env arguments; see :func:`save_meta`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mosaic.agents.bounds import plan_with_estimates
from mosaic.agents.common import empty_order
from mosaic.agents.interface import Scheduler
from mosaic.agents.registry import SCHEDULERS
from mosaic.agents.thresholds import Context, LearnedThresholdPolicy
from mosaic.core.errors import ConfigError
from mosaic.core.types import Cluster, Plan, Response, Responses, Workload
from mosaic.predictors.interface import CostModel

ALGO_CLASSES: Mapping[str, tuple[str, str]] = {
    "ppo": ("stable_baselines3", "PPO"),
    "maskable-ppo": ("sb3_contrib", "MaskablePPO"),
    "dqn": ("stable_baselines3", "DQN"),
}
RESCHEDULE_MODEL_ENV = "MOSAIC_RL_RESCHEDULE_MODEL"  # default model path of 'rl-reschedule'
THRESHOLD_MODEL_ENV = "MOSAIC_RL_THRESHOLD_MODEL"  # default model path of 'rl-threshold'
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


def predicted_instance(workload: Workload, costs: CostModel, cluster: Cluster,
                       resident: Mapping[int, str | None] | None = None) -> Any:  # fmt: skip
    """An env instance whose 'true' lengths are the cost model's predictions (what a planner may know)."""
    from mosaic.envs.problem import Instance

    table = {(r.query_id, r.expert): Response(max(round(costs.predicted_tokens(r)), 0)) for r in workload.requests}
    return Instance(workload, Responses(table), costs, cluster, None, dict(resident or {}), workload.name)


@SCHEDULERS.register(
    "rl-reschedule", help="trained reschedule agent run on predicted lengths ($MOSAIC_RL_RESCHEDULE_MODEL)"
)
class RLRescheduleScheduler(Scheduler):
    """A trained ``mosaic/Reschedule-v0`` agent as a planner.

    ``model_path`` (default ``$MOSAIC_RL_RESCHEDULE_MODEL``); ``start`` (``empty``: the agent dispatches everything,
    ``plan``: it rebalances ``plan_scheduler``'s plan; default: as trained). The agent runs on the simulator with
    the cost model's predicted lengths; the plan is the order the workers ran. Deterministic: ``rng`` is unused.
    """

    name = "rl-reschedule"

    def __init__(self, model_path: str | Path | None = None, start: str | None = None,
                 plan_scheduler: str | None = None) -> None:  # fmt: skip
        self.model_path = _model_path(model_path, RESCHEDULE_MODEL_ENV, "scheduler 'rl-reschedule'")
        self.start, self.plan_scheduler = start, plan_scheduler
        self._agent: LoadedAgent | None = None

    def agent(self) -> LoadedAgent:
        if self._agent is None:
            self._agent = load_agent(self.model_path, task="reschedule")
        return self._agent

    def plan(
        self,
        workload: Workload,
        costs: CostModel,
        cluster: Cluster,
        rng: np.random.Generator,
        resident: Mapping[int, str | None] | None = None,
    ) -> Plan:
        if not workload.requests:
            return plan_with_estimates(self.name, workload, costs, cluster, empty_order(cluster), resident)
        from mosaic.envs.policies import rollout
        from mosaic.envs.reschedule import RescheduleEnv

        agent = self.agent()
        env_kwargs = {k: v for k, v in agent.env_kwargs.items() if k in ENV_KEYS}
        start = self.start or agent.meta.get("env", {}).get("start", "empty")
        base = self.plan_scheduler or agent.meta.get("env", {}).get("plan_scheduler")
        env = RescheduleEnv([predicted_instance(workload, costs, cluster, resident)], start=start,
                            plan_scheduler=base, **env_kwargs)  # fmt: skip
        expected = agent.model.observation_space.shape
        if env.observation_space.shape != expected:
            got = env.observation_space.shape
            raise ConfigError(
                f"RL model {self.model_path} expects observations {expected} (trained for another cluster size); "
                f"this cluster of {len(cluster)} workers gives {got}"
            )
        episode = rollout(env, agent.act)
        d = env.dispatcher
        stats = {"rl_decisions": episode.steps, "rl_start": start, "rl_steals": d.steals if d else 0}
        return plan_with_estimates(self.name, workload, costs, cluster, episode.order, resident, stats)


class SB3SkipModel:
    """``predict(features) -> 1 (skip) | 0``: a trained AggThreshold agent on :func:`~mosaic.agents.thresholds.features`
    clipped into the env's observation box."""

    def __init__(self, agent: LoadedAgent) -> None:
        from mosaic.agents.thresholds import FEATURE_NAMES
        from mosaic.envs.skip_tables import FEATURE_HIGH

        self.agent = agent
        self.high = np.array([FEATURE_HIGH[n] for n in FEATURE_NAMES], dtype=np.float32)

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
