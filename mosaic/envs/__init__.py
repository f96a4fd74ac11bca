"""mosaic.envs: Gymnasium environments that wrap the simulator (``runtime.sim``); importing registers them.

- ``mosaic/Reschedule-v0`` (:class:`~mosaic.envs.reschedule.RescheduleEnv`): what each worker serves next.
- ``mosaic/AggThreshold-v0`` (:class:`~mosaic.envs.agg_threshold.AggThresholdEnv`): skip or run the aggregator.
- ``mosaic/AggOnline-v0`` (:class:`~mosaic.envs.agg_online.AggOnlineEnv`): the same decision at run time, under
  online load (one episode: one online run on the simulator).

Build one with ``gymnasium.make("mosaic/Reschedule-v0", ...)`` after ``import mosaic.envs``.
"""

from __future__ import annotations

RESCHEDULE_ID = "mosaic/Reschedule-v0"
AGG_THRESHOLD_ID = "mosaic/AggThreshold-v0"
RESCHEDULE_MAX_STEPS = 1000
AGG_THRESHOLD_MAX_STEPS = 256
AGG_ONLINE_ID = "mosaic/AggOnline-v0"


def _register() -> None:
    """Register the env ids (idempotent; a no-op without gymnasium, so ``mosaic.envs.commands`` imports)."""
    try:
        import gymnasium as gym
    except ModuleNotFoundError:  # the [rl] extra is not installed
        return
    registered = gym.registry
    if RESCHEDULE_ID not in registered:
        gym.register(id=RESCHEDULE_ID, entry_point="mosaic.envs.reschedule:RescheduleEnv",
                     max_episode_steps=RESCHEDULE_MAX_STEPS)  # fmt: skip
    if AGG_THRESHOLD_ID not in registered:
        gym.register(id=AGG_THRESHOLD_ID, entry_point="mosaic.envs.agg_threshold:AggThresholdEnv",
                     max_episode_steps=AGG_THRESHOLD_MAX_STEPS)  # fmt: skip
    if AGG_ONLINE_ID not in registered:  # an episode is a whole run: no step limit
        gym.register(id=AGG_ONLINE_ID, entry_point="mosaic.envs.agg_online:AggOnlineEnv")


_register()

__all__ = ["AGG_ONLINE_ID", "AGG_THRESHOLD_ID", "RESCHEDULE_ID"]
