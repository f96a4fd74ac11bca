"""Slow: the agents learn something real with modest budgets (run with ``pytest -m slow tests/envs``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mosaic.agents.rl import SB3SkipModel, load_agent
from mosaic.core.config import TrackingCfg
from mosaic.envs.evaluation import FIXED_THRESHOLDS, compare_thresholds, env_makespans, front_gap
from mosaic.envs.policies import heuristic, random_policy
from mosaic.envs.training import TrainOptions, threshold_tables, train

pytestmark = pytest.mark.slow


def test_ppo_threshold_policy_is_on_the_fixed_threshold_front(shared_data: Path, small_cfg, tmp_path: Path) -> None:
    """RouterBench held-out half: a PPO skip policy (lam = 45) lies within 0.5 pp of the fixed-T front's hull."""
    opts = TrainOptions("threshold", "ppo", 60_000, 0, tmp_path, TrackingCfg(mode="disabled"), eval_freq=60_000,
                        n_eval=2, env={"lam": 45.0}, source="routerbench")  # fmt: skip
    result = train(small_cfg, opts)
    assert result.seconds < 600
    _, heldout = threshold_tables(small_cfg, opts)
    rows = compare_thresholds([heldout], {"ppo": SB3SkipModel(load_agent(result.model_path))})
    front = [(r.time_s, r.accuracy) for r in rows if r.name in dict(FIXED_THRESHOLDS)]
    learned = rows[-1]
    _, hull = front_gap(learned.time_s, learned.accuracy, front)
    assert hull >= -0.005, f"{100 * hull:.2f} pp behind the front"
    assert 0.05 < learned.skip_rate < 0.95  # a real trade-off, not a corner of the front


def test_maskable_ppo_reschedules_better_than_doing_nothing(noisy_instances, small_cfg, tmp_path: Path) -> None:
    """From greedy-LPT plans with 30% length error, MaskablePPO (reward: makespan / plan makespan) beats the static
    plan on average on held-out instances and is not worse than random valid actions."""
    env = {"n_instances": 8, "noise": 0.3, "start": "plan", "plan_scheduler": "greedy-lpt", "reward_ref": "plan"}
    opts = TrainOptions("reschedule", "maskable-ppo", 30_000, 0, tmp_path, TrackingCfg(mode="disabled"),
                        eval_freq=30_000, n_eval=2, env=env)  # fmt: skip
    agent = load_agent(train(small_cfg, opts).model_path)
    from mosaic.envs.evaluation import base_plans

    plans = base_plans(noisy_instances, "greedy-lpt")
    static = env_makespans(noisy_instances, lambda e: heuristic("wait", e), "plan", plans)
    learned = env_makespans(noisy_instances, lambda _e: agent.act, "plan", plans)
    rand = env_makespans(noisy_instances, lambda _e: random_policy(np.random.default_rng(0)), "plan", plans)
    assert np.mean(learned) < np.mean(static)
    assert np.mean(learned) <= np.mean(rand) * 1.02
