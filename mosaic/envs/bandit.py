"""A LinUCB contextual bandit for ``mosaic/AggThreshold-v0``: a ridge model of the skip reward over the observation.

Aggregating always earns 0, so only the skip action's reward is modelled: ``r(skip | x) ~ [z(x), 1] @ theta`` with
``z`` the observation scaled into [0, 1] by the env's box. While training, the agent skips when the upper confidence
bound ``[z, 1] @ theta + alpha * sqrt([z, 1] A^-1 [z, 1])`` is positive (optimism explores skips it is unsure of),
and also with probability ``epsilon`` (a skip's reward is only seen when it skips: without this, a context whose
estimate turned negative early is never tried again), and updates on the rewards it observes; the trained policy
skips when the point estimate is positive.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mosaic.core.errors import ConfigError
from mosaic.envs.agg_threshold import AGGREGATE, SKIP, AggThresholdEnv


@dataclass(frozen=True, slots=True)
class LinUCBOptions:
    """Training of :func:`train_linucb`."""

    timesteps: int = 20_000  # env steps (decisions)
    alpha: float = 0.5  # width of the confidence bound (0: greedy)
    epsilon: float = 0.1  # share of decisions that skip regardless (exploration)
    l2: float = 1.0  # ridge penalty (prior precision of theta)
    seed: int = 0  # seed of the env's episode draws and of the epsilon draws


@dataclass(frozen=True, slots=True)
class LinearSkipBandit:
    """``skip`` when ``[(x - low) / (high - low), 1] @ theta > 0`` (the estimated skip reward is positive)."""

    low: tuple[float, ...]  # the observation box the features are scaled by
    high: tuple[float, ...]
    theta: tuple[float, ...]  # ridge coefficients, intercept last

    def rewards(self, obs: np.ndarray) -> np.ndarray:
        """Estimated skip reward of each row of ``obs``."""
        return _design(np.atleast_2d(obs), np.array(self.low), np.array(self.high)) @ np.array(self.theta)

    def skip_batch(self, obs: np.ndarray) -> np.ndarray:
        """Skip decisions (bool) of a batch of observations."""
        return self.rewards(obs) > 0


def _design(obs: np.ndarray, low: np.ndarray, high: np.ndarray) -> np.ndarray:
    span = np.where(high > low, high - low, 1.0)
    return np.column_stack([(np.asarray(obs, dtype=float) - low) / span, np.ones(len(obs))])


def train_linucb(env: AggThresholdEnv, opts: LinUCBOptions) -> LinearSkipBandit:
    """LinUCB on ``env`` for ``opts.timesteps`` decisions (``A^-1`` kept by Sherman-Morrison updates)."""
    if opts.timesteps < 1 or opts.alpha < 0 or opts.l2 <= 0 or not 0 <= opts.epsilon <= 1:
        raise ConfigError(f"linucb: need timesteps >= 1, alpha >= 0, l2 > 0, 0 <= epsilon <= 1, got {opts}")
    rng = np.random.default_rng(opts.seed)
    low, high = env.observation_space.low.astype(float), env.observation_space.high.astype(float)
    d = len(low) + 1
    a_inv, b = np.eye(d) / opts.l2, np.zeros(d)
    obs, _ = env.reset(seed=opts.seed)
    for _ in range(opts.timesteps):
        z = _design(obs[None, :], low, high)[0]
        az = a_inv @ z
        skip = z @ (a_inv @ b) + opts.alpha * np.sqrt(max(z @ az, 0.0)) > 0 or rng.random() < opts.epsilon
        obs_next, reward, done, truncated, _ = env.step(SKIP if skip else AGGREGATE)
        if skip:  # the skip reward is observed; aggregating's is always 0
            a_inv -= np.outer(az, az) / (1.0 + z @ az)
            b += reward * z
        obs = env.reset()[0] if done or truncated else obs_next
    return LinearSkipBandit(tuple(low.tolist()), tuple(high.tolist()), tuple((a_inv @ b).tolist()))


__all__ = ["LinUCBOptions", "LinearSkipBandit", "train_linucb"]
