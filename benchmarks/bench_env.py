"""Environment steps per second with uniformly random valid actions, per MOSAIC env (goal: >= 5k steps/s each).

Each env is built once (instances and skip tables are set up outside the timing); the timed loop is reset + step
with a random valid action (``action_masks()``), as a training loop without a policy network would drive it.

    python benchmarks/bench_env.py [--steps 20000] [--repeat 3] [--config experiments/configs/gpqa.yaml]
                                   [--baseline REV | --no-baseline]

``mosaic/Reschedule-v0`` runs on the runtime loop (:class:`~mosaic.runtime.loop.SimLoop`). The table also runs the
env as it was before, with its own private lockstep loop (``mosaic/envs/dispatch.py``), loaded from git at
``--baseline`` (default: the last commit that has that file) into private modules, in the same process and
alternating with the current env run for run, and prints the ratio (current / baseline). The two envs decide at
the same points except where the runtime loop's rules differ (a queue's head moves only while it waits for its
batch to drain), so their episodes are alike but not identical.

With ``start="plan"`` an episode has only a few decisions, near the end of the plan (queues run dry there): most
of the workload runs before the first one, which is simulated once per instance (resets copy that state), so each
step carries a reset's copy and a share of the remaining simulation.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from mosaic.core.config import load_config
from mosaic.envs.agg_threshold import AggThresholdEnv
from mosaic.envs.instances import DEFAULT_ENV_OVERRIDES
from mosaic.envs.reschedule import RescheduleEnv

TARGET = 5_000.0
ROOT = Path(__file__).resolve().parents[1]
OLD_LOOP = "mosaic/envs/dispatch.py"  # the private loop the env had before it ran on the runtime loop


def episode_requests(env: Any) -> int:
    """Requests of the env's current episode (0 for the threshold env)."""
    loop = getattr(env, "loop", None)
    if loop is not None:
        return len(loop.items)
    dispatcher = getattr(env, "dispatcher", None)  # the baseline env
    return len(dispatcher.p.sim_requests) if dispatcher is not None else 0


def steps_per_second(env: Any, steps: int, seed: int = 0) -> tuple[float, float, int, float]:
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
            requests += episode_requests(env)
            env.reset()
    cpu, wall = time.process_time() - c0, time.perf_counter() - t0
    return steps / max(cpu, 1e-9), steps / max(wall, 1e-9), episodes, requests / max(cpu, 1e-9)


def _git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=True).stdout


def baseline_env(rev: str | None) -> tuple[type | None, str]:
    """The reschedule env class of ``rev`` (default: the last commit with :data:`OLD_LOOP`), loaded from git into
    private modules, and the revision (or why there is none)."""
    try:
        if rev is None:
            last = _git("log", "-1", "--format=%H", "--", OLD_LOOP).strip()
            if not last:
                return None, f"no commit has {OLD_LOOP}"
            has = subprocess.run(["git", "cat-file", "-e", f"{last}:{OLD_LOOP}"], cwd=ROOT, capture_output=True)
            rev = last if has.returncode == 0 else f"{last}^"  # the commit that deleted it: its parent
        rev = _git("rev-parse", "--short", rev).strip()
        sources = {name: _git("show", f"{rev}:mosaic/envs/{name}.py") for name in ("dispatch", "reschedule")}
    except (OSError, subprocess.CalledProcessError) as err:
        return None, f"git: {err}"
    modules = {}
    for name in ("dispatch", "reschedule"):
        mod = types.ModuleType(f"_baseline_{name}")
        sys.modules[mod.__name__] = mod
        code = sources[name].replace("from mosaic.envs.dispatch import", "from _baseline_dispatch import")
        exec(compile(code, f"{rev}:mosaic/envs/{name}.py", "exec"), mod.__dict__)
        modules[name] = mod
    return modules["reschedule"].RescheduleEnv, rev


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=20_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--config", help="run config of the scenario (default: the envs' 40-query GPQA-like one)")
    ap.add_argument("--baseline", help="git revision of the env before the runtime loop (default: found by git)")
    ap.add_argument("--no-baseline", action="store_true", help="do not run the env as it was")
    ap.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE", help="config overrides")
    args = ap.parse_args()
    cfg = load_config(args.config, [*([] if args.config else DEFAULT_ENV_OVERRIDES), *args.set])
    old_cls, rev = (None, "not run") if args.no_baseline else baseline_env(args.baseline)
    modes: dict[str, dict[str, Any]] = {
        "Reschedule-v0 (start=empty)": {},
        "Reschedule-v0 (start=plan, greedy-lpt)": {"start": "plan", "plan_scheduler": "greedy-lpt", "noise": 0.3},
    }
    envs: dict[str, tuple[Any, Any]] = {
        name: (RescheduleEnv(config=cfg, n_instances=4, **kw),
               old_cls(config=cfg, n_instances=4, **kw) if old_cls is not None else None)
        for name, kw in modes.items()
    }  # fmt: skip
    envs["AggThreshold-v0"] = (AggThresholdEnv(config=cfg), None)
    title = f"env throughput, {cfg.name} ({args.repeat} runs, best; baseline: {rev})"
    table = Table("env", "steps", "episodes", "steps/CPU-s", "steps/wall-s", "x goal (5k/s, CPU)",
                  "baseline steps/CPU-s", "x baseline (CPU)", "episode requests/CPU-s", title=title)  # fmt: skip
    for name, (env, old) in envs.items():
        pair = [e for e in (env, old) if e is not None]
        for e in pair:
            steps_per_second(e, min(args.steps, 500))  # warm-up: per-instance arrays and plans are cached
        runs: list[list[tuple[float, float, int, float]]] = [[] for _ in pair]
        for seed in range(args.repeat):  # alternating: the machine's load weighs on both alike
            for k, e in enumerate(pair):
                runs[k].append(steps_per_second(e, args.steps, seed))
        cpu, wall, episodes, reqs = max(runs[0])
        base = max(runs[1])[0] if old is not None else None
        table.add_row(name, f"{args.steps:,}", str(episodes), f"{cpu:,.0f}", f"{wall:,.0f}", f"{cpu / TARGET:.2f}",
                      f"{base:,.0f}" if base else "-", f"{cpu / base:.2f}" if base else "-",
                      f"{reqs:,.0f}" if reqs else "-")  # fmt: skip
    Console(width=170).print(table)


if __name__ == "__main__":
    main()
