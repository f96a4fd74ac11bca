"""Policies for ``mosaic/Reschedule-v0`` and a rollout helper: what baselines, tests, benchmarks and the RL
scheduler share. A policy maps (observation, action mask) to an action; heuristics read the env's rescheduler.

- ``wait``: never move work (with ``start="plan"``: exactly the static plan, as the simulator runs it).
- ``greedy``: keep serving the resident expert's pool, else the expert with the most pooled work, else steal from
  the most loaded worker, else wait (a work-stealing list scheduler).
- ``random``: a uniformly random valid action (``rng``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from mosaic.core.errors import ConfigError
from mosaic.envs.reschedule import RescheduleEnv

Policy = Callable[[np.ndarray, np.ndarray], int]  # (observation, valid-action mask) -> action
HEURISTICS = ("wait", "greedy", "random")


@dataclass(frozen=True, slots=True)
class Episode:
    """One finished episode of the reschedule env."""

    makespan: float  # seconds, simulator
    lower_bound: float  # seconds, the instance's normaliser
    ret: float  # sum of rewards (= -makespan / lower_bound when not truncated)
    steps: int  # decisions taken
    order: Mapping[int, list[int]]  # worker id -> request ids in the order they ran
    info: Mapping[str, Any]  # the last step's info
    truncated: bool


def rollout(env: RescheduleEnv, policy: Policy, options: Mapping[str, Any] | None = None, seed: int | None = None,
            max_steps: int = 100_000) -> Episode:  # fmt: skip
    """Run one episode of ``env`` (unwrapped) with ``policy``; the first ``step`` is always taken, so an instance
    that needs no decision still reports its makespan."""
    obs, info = env.reset(seed=seed, options=dict(options or {}))
    ret, steps, done, truncated = 0.0, 0, False, False
    while not done:
        obs, reward, terminated, truncated, info = env.step(policy(obs, env.action_masks()))
        ret += reward
        steps += 1
        done = terminated or truncated or steps >= max_steps
    return Episode(env.makespan(), env.lower_bound, ret, steps, env.schedule(), info,
                   bool(truncated or not terminated))  # fmt: skip


def wait_policy(env: RescheduleEnv) -> Policy:
    """Wait whenever waiting is valid (else the first valid action)."""
    wait = env.n_slots + 1

    def act(_obs: np.ndarray, mask: np.ndarray) -> int:
        return wait if mask[wait] else int(np.flatnonzero(mask)[0])

    return act


def greedy_policy(env: RescheduleEnv) -> Policy:
    """Resident expert's pool, else the largest pool, else steal, else wait (reads ``env.rescheduler``)."""

    def act(_obs: np.ndarray, mask: np.ndarray) -> int:
        r, loop = env.rescheduler, env.loop
        if r is None or loop is None or r.deciding is None:
            return int(np.flatnonzero(mask)[0])
        n = env.n_slots
        slot = r.t.slot.get(loop.resident(r.t.workers[r.deciding]))
        if slot is not None and mask[slot] and r.pcount[slot] > 0:
            return slot
        pooled = [sum(r.pwork[e]) if mask[e] and r.pcount[e] > 0 else -1.0 for e in range(n)]
        if max(pooled) >= 0:
            return pooled.index(max(pooled))
        if mask[r.steal_action]:
            return r.steal_action
        return r.wait_action if mask[r.wait_action] else int(np.flatnonzero(mask)[0])

    return act


def random_policy(rng: np.random.Generator) -> Policy:
    """A uniformly random valid action."""

    def act(_obs: np.ndarray, mask: np.ndarray) -> int:
        return int(rng.choice(np.flatnonzero(mask)))

    return act


def heuristic(name: str, env: RescheduleEnv, rng: np.random.Generator | None = None) -> Policy:
    """The heuristic policy ``name`` (one of :data:`HEURISTICS`) for ``env``."""
    if name == "wait":
        return wait_policy(env)
    if name == "greedy":
        return greedy_policy(env)
    if name == "random":
        return random_policy(rng if rng is not None else np.random.default_rng(0))
    raise ConfigError(f"unknown reschedule heuristic {name!r}; valid: {', '.join(HEURISTICS)}")
