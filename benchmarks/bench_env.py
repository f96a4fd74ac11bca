"""Environment steps per second with uniformly random valid actions, per MOSAIC env (goal: >= 5k steps/s each).

Each env is built once (instances and skip tables are set up outside the timing); the timed loop is reset + step
with a random valid action (``action_masks()``), as a training loop without a policy network would drive it.

    python benchmarks/bench_env.py [--steps 20000] [--repeat 3] [--config experiments/configs/gpqa.yaml]

With ``start="plan"`` an episode has only a few decisions, near the end of the plan (queues run dry there): most
of the workload runs before the first one, which is simulated once per instance (resets copy that state), so each
step carries a reset's copy and a share of the remaining simulation.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import numpy as np
from rich.console import Console
from rich.table import Table

from mosaic.envs.agg_threshold import AggThresholdEnv
from mosaic.envs.instances import resolve_config
from mosaic.envs.reschedule import RescheduleEnv

TARGET = 5_000.0


def steps_per_second(env, steps: int, seed: int = 0) -> tuple[float, float, int, float]:
    """(steps per CPU second, steps per wall second, episodes, episode requests per CPU second) of ``steps``
    random valid actions, resets included. CPU time (this process) is the headline: the machine is shared, so wall
    time also counts other jobs. Requests: those of the finished reschedule episodes (0 for the threshold env)."""
    uniform = np.random.default_rng(seed).random(steps).tolist()  # drawn up front: Generator calls cost ~us each
    masks: Callable[[], np.ndarray] | None = getattr(env, "action_masks", None)
    n_actions = env.action_space.n
    env.reset(seed=seed)
    episodes, requests = 0, 0
    c0, t0 = time.process_time(), time.perf_counter()
    for u in uniform:
        if masks is not None:
            valid = np.flatnonzero(masks())
            action = int(valid[int(u * len(valid))])
        else:
            action = int(u * n_actions)
        _, _, terminated, truncated, _ = env.step(action)
        if terminated or truncated:
            episodes += 1
            dispatcher = getattr(env, "dispatcher", None)
            requests += len(dispatcher.p.sim_requests) if dispatcher is not None else 0
            env.reset()
    cpu, wall = time.process_time() - c0, time.perf_counter() - t0
    return steps / max(cpu, 1e-9), steps / max(wall, 1e-9), episodes, requests / max(cpu, 1e-9)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=20_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--config", help="run config of the scenario (default: the envs' 40-query GPQA-like one)")
    args = ap.parse_args()
    cfg = resolve_config(args.config)
    envs = {
        "Reschedule-v0 (start=empty)": RescheduleEnv(config=cfg, n_instances=4),
        "Reschedule-v0 (start=plan, greedy-lpt)": RescheduleEnv(
            config=cfg, n_instances=4, start="plan", plan_scheduler="greedy-lpt", noise=0.3
        ),
        "AggThreshold-v0": AggThresholdEnv(config=cfg),
    }
    title = f"env throughput, {cfg.name} ({args.repeat} runs, best)"
    table = Table("env", "steps", "episodes", "steps/CPU-s", "steps/wall-s", "x goal (5k/s, CPU)",
                  "episode requests/CPU-s", title=title)  # fmt: skip
    for name, env in envs.items():
        steps_per_second(env, min(args.steps, 500))  # warm-up: per-instance arrays and plans are cached
        results = [steps_per_second(env, args.steps, seed) for seed in range(args.repeat)]
        cpu, wall, episodes, reqs = max(results)
        table.add_row(name, f"{args.steps:,}", str(episodes), f"{cpu:,.0f}", f"{wall:,.0f}", f"{cpu / TARGET:.2f}",
                      f"{reqs:,.0f}" if reqs else "-")  # fmt: skip
    Console(width=150).print(table)


if __name__ == "__main__":
    main()
