"""Both envs are registered and pass gymnasium's and stable-baselines3's env checkers without warnings."""

from __future__ import annotations

import warnings

import gymnasium as gym
import pytest
from gymnasium.utils.env_checker import check_env as gym_check_env
from stable_baselines3.common.env_checker import check_env as sb3_check_env

from mosaic.envs import AGG_THRESHOLD_ID, RESCHEDULE_ID
from mosaic.envs.agg_threshold import AggThresholdEnv
from mosaic.envs.reschedule import RescheduleEnv


def _envs(small_instances) -> dict[str, gym.Env]:
    from mosaic.envs.skip_tables import skip_table

    return {
        "reschedule-empty": gym.make(RESCHEDULE_ID, instances=small_instances),
        "reschedule-plan": gym.make(
            RESCHEDULE_ID, instances=small_instances, start="plan", plan_scheduler="round-robin"
        ),
        "threshold": gym.make(AGG_THRESHOLD_ID, table=skip_table(small_instances[0]), episode_len=8),
    }


@pytest.mark.parametrize("name", ["reschedule-empty", "reschedule-plan", "threshold"])
def test_env_passes_both_checkers_without_warnings(name: str, small_instances) -> None:
    env = _envs(small_instances)[name]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any checker warning fails the test
        gym_check_env(env.unwrapped, skip_render_check=False)
        sb3_check_env(env.unwrapped, warn=True, skip_render_check=False)


def test_registered_with_time_limits() -> None:
    assert gym.spec(RESCHEDULE_ID).max_episode_steps == 1000
    assert gym.spec(AGG_THRESHOLD_ID).max_episode_steps == 256
    assert gym.spec(RESCHEDULE_ID).entry_point == "mosaic.envs.reschedule:RescheduleEnv"


def test_make_without_arguments_builds_default_scenarios() -> None:
    resched = gym.make(RESCHEDULE_ID, n_instances=1).unwrapped
    thresh = gym.make(AGG_THRESHOLD_ID).unwrapped
    assert isinstance(resched, RescheduleEnv) and resched.n_workers == 4
    assert isinstance(thresh, AggThresholdEnv) and len(thresh.table) == 40
    assert resched.observation_space.shape == (4 * (8 + 6) + 8 * (3 + 3) + 3,)
