"""``mosaic/AggThreshold-v0``: per query, skip the aggregator (answer with the experts' majority) or run it."""

from __future__ import annotations

from typing import Any, ClassVar

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from mosaic.aggregation.reliability import Reliability
from mosaic.core.errors import ConfigError
from mosaic.envs.agg_features import check_features, feature_names, observation_bounds, observation_rows
from mosaic.envs.skip_tables import SkipTable

AGGREGATE, SKIP = 0, 1


class AggThresholdEnv(gym.Env[np.ndarray, int]):
    """
    ## Description

    A contextual bandit over queries whose k experts have answered: for each query of an episode the agent decides
    whether to skip the aggregator LLM (the final answer is the experts' majority) or run it. Facts come from a
    :class:`~mosaic.envs.skip_tables.SkipTable`: features of the agreement pattern, the aggregator seconds each call
    takes in the simulator (true lengths), and whether the majority and the aggregator are correct (recorded real
    answers, e.g. RouterBench, or the synthetic response model). The env holds no timing logic.

    ## Action Space

    ``Discrete(2)``: ``0`` run the aggregator, ``1`` skip it.

    ## Observation Space

    ``Box(0, high, (9,), float32)``: :func:`mosaic.aggregation.thresholds.features` of the query, in
    :data:`~mosaic.aggregation.thresholds.FEATURE_NAMES` order (confidence, k, margin, distinct-answer share, no-answer
    share, reasoning-expert share, log1p predicted aggregator seconds, log1p prompt tokens, number of choices),
    clipped into the box. With ``features="reliability"``: ``Box(low, high, (20 + k,), float32)``, those 9 followed by
    :func:`mosaic.aggregation.reliability.skip_features` (:func:`mosaic.envs.agg_features.feature_names`) under the
    given ``reliability`` (fitted on the training split: :func:`mosaic.envs.agg_features.fit_reliability`).

    ## Rewards

    Skip: ``saved_s / mean saved_s - lam * (aggregator correct - majority correct)``: aggregator time saved, in units
    of the table's mean aggregator call (so returns compare across workloads), minus ``lam`` times the accuracy lost
    on this query (negative loss when the majority is right and the aggregator wrong). Aggregate: ``0``.

    ## Starting State

    ``reset`` draws ``episode_len`` distinct rows of the table with ``self.np_random``.

    ## Episode End

    Termination: after ``episode_len`` decisions. Truncation: ``max_episode_steps`` (registration: 256).

    ## Arguments

    ``table`` (SkipTable; default: built from ``config``'s workload with :func:`mosaic.envs.instances`), ``config``,
    ``lam`` (accuracy weight, default 4), ``episode_len`` (default 32), ``features`` (``"agreement"``, default, or
    ``"reliability"``), ``reliability`` (required by, and only allowed with, ``"reliability"``), ``render_mode``
    (``ansi``).
    """

    metadata: ClassVar[dict[str, Any]] = {"render_modes": ["ansi"], "render_fps": 4}

    def __init__(
        self,
        table: SkipTable | None = None,
        *,
        config: Any = None,
        lam: float = 4.0,
        episode_len: int = 32,
        features: str = "agreement",
        reliability: Reliability | None = None,
        render_mode: str | None = None,
    ) -> None:
        if not (np.isfinite(lam) and lam >= 0):
            raise ConfigError(f"agg threshold env: lam must be a finite number >= 0, got {lam!r}")
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ConfigError(f"agg threshold env: render_mode must be None or 'ansi', got {render_mode!r}")
        check_features(features)
        if table is None:
            from mosaic.envs.instances import config_skip_table

            table = config_skip_table(config)
        if len(table) == 0:
            raise ConfigError("agg threshold env: the skip table has no queries")
        if episode_len < 1:
            raise ConfigError(f"agg threshold env: episode_len must be >= 1, got {episode_len}")
        self.table, self.lam, self.render_mode = table, float(lam), render_mode
        self.episode_len = min(int(episode_len), len(table))
        self.features, self.reliability = features, reliability
        self._obs_rows = observation_rows(table, features, reliability)  # row -> observation
        k = len(reliability.experts) if reliability is not None else 0
        self.feature_names = feature_names(features, k)
        low, high = observation_bounds(features, k)
        self.observation_space = spaces.Box(low, high, dtype=np.float32)
        self.action_space = spaces.Discrete(2)
        mean = float(table.saved_s.mean())
        self._saved = table.saved_s / mean if mean > 0 else np.ones(len(table))  # row -> time saved (mean units)
        self._loss = table.aggregator_correct.astype(float) - table.majority_correct.astype(float)  # row -> loss
        self._rows = np.zeros(0, dtype=np.int64)
        self._t = 0

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        self._rows = self.np_random.choice(len(self.table), size=self.episode_len, replace=False)
        self._t = 0
        return self._obs_rows[self._rows[0]].copy(), {"query": int(self.table.query_ids[self._rows[0]])}

    def step(self, action: int) -> tuple[np.ndarray, float, bool, bool, dict]:
        if self._rows.size == 0:
            raise ConfigError("agg threshold env: call reset() before step()")
        row = int(self._rows[min(self._t, self.episode_len - 1)])
        skip = int(action) == SKIP
        reward = self.reward(row, skip)
        correct = bool(self.table.majority_correct[row] if skip else self.table.aggregator_correct[row])
        self._t += 1
        done = self._t >= self.episode_len
        nxt = self._rows[self._t] if not done else row
        info = {"query": int(self.table.query_ids[row]), "skipped": skip, "correct": correct,
                "saved_s": float(self.table.saved_s[row]) if skip else 0.0}  # fmt: skip
        return self._obs_rows[nxt].copy(), reward, done, False, info

    def reward(self, row: int, skip: bool) -> float:
        """The reward of deciding ``skip`` on table row ``row`` (see the class docstring)."""
        return float(self._saved[row] - self.lam * self._loss[row]) if skip else 0.0

    def render(self) -> str | None:
        if self.render_mode != "ansi" or self._rows.size == 0:
            return None
        row = int(self._rows[min(self._t, self.episode_len - 1)])
        feats = ", ".join(f"{n}={v:.2f}" for n, v in zip(self.feature_names, self._obs_rows[row], strict=True))
        return f"decision {self._t}/{self.episode_len}: query {self.table.query_ids[row]}: {feats}"
