"""Simulated requests per second on the MedMCQA-sized paper workload (about 12.5k requests).

Runs the expert stage of a plan through the discrete-event simulator, trace kept in memory, best of
``--repeat``; then the same with the JSONL trace written to disk. Target: >= 100k requests/s (150k through the
runtime loop). Then the runtime loop's cost against the bare engines in the same process: the plan replayed by the
loop (``SimBackend.run_stage``), and replayed in lockstep with a policy that hears every idle event, each as a
ratio to running each worker's :class:`WorkerSim` on its plan order directly (target: replay <= 1.25x).

    python benchmarks/bench_sim.py [--scheduler round-robin] [--repeat 5] [--set KEY=VALUE ...]

Also prints the stage's preemptions (paged KV, the default memory mode: each one is an event, a re-admission and
a prefill again, so they set the simulation's speed).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from mosaic.agents import make_scheduler
from mosaic.agents.policy import IDLE, PlanReplay
from mosaic.core.config import load_config
from mosaic.core.trace import EXPERT_STAGE, TraceWriter
from mosaic.pipeline import prepare
from mosaic.runtime.registry import BACKENDS

CONFIG = Path(__file__).resolve().parents[1] / "experiments" / "configs" / "medmcqa.yaml"
TARGET = 100_000.0


def _time_stage(exp, plan, path: Path | None) -> float:
    backend = BACKENDS.get("sim")(exp.cfg, exp.responses, exp.costs)
    t0 = time.perf_counter()
    with TraceWriter(path) as trace:
        backend.run_stage(EXPERT_STAGE, plan, exp.workload, exp.cluster, trace)
    return time.perf_counter() - t0


def preemptions(exp, plan) -> int:
    """Requests the stage's simulated engines preempted (paged KV; 0 with reserved KV)."""
    backend = BACKENDS.get("sim")(exp.cfg, exp.responses, exp.costs)
    workers: list = []
    make = backend.make_worker
    backend.make_worker = lambda *a, **k: workers.append(make(*a, **k)) or workers[-1]
    backend.run_stage(EXPERT_STAGE, plan, exp.workload, exp.cluster, TraceWriter(None))
    return sum(w.preemptions for w in workers)


class ListeningReplay(PlanReplay):
    """The plan, replayed by a policy that asks to hear every idle worker (the loop then runs in lockstep)."""

    events = frozenset({IDLE})


def _time_direct(exp, plan) -> float:
    """Each worker's WorkerSim on its plan order, nothing else (the engines alone)."""
    backend = BACKENDS.get("sim")(exp.cfg, exp.responses, exp.costs)
    t0 = time.perf_counter()
    with TraceWriter(None) as trace:
        for w in exp.cluster.workers:
            sim = backend.make_worker(w, EXPERT_STAGE, 0.0, None, trace.write)
            sim.enqueue(backend.sim_requests(exp.workload, plan.order.get(w.id, ())))
            sim.run_until_idle()
    return time.perf_counter() - t0


def _time_policy(exp, policy) -> float:
    backend = BACKENDS.get("sim")(exp.cfg, exp.responses, exp.costs)
    t0 = time.perf_counter()
    with TraceWriter(None) as trace:
        backend.run_policy(EXPERT_STAGE, policy, exp.workload, exp.costs, exp.cluster, trace)
    return time.perf_counter() - t0


def loop_table(exp, plan, repeat: int, name: str) -> Table:
    """The loop's cost as ratios to the bare engines, best of ``repeat`` each."""
    n = len(exp.workload.requests)
    direct = min(_time_direct(exp, plan) for _ in range(repeat))
    replay = min(_time_policy(exp, PlanReplay(plan)) for _ in range(repeat))
    lockstep = min(_time_policy(exp, ListeningReplay(plan)) for _ in range(repeat))
    rows = (("engines alone (baseline)", direct), ("loop: plan replay", replay), ("loop: lockstep", lockstep))
    title = f"runtime loop cost, {exp.workload.name}, {name}"
    table = Table("mode", "seconds", "requests/s", "x baseline", title=title)
    for mode, t in rows:
        table.add_row(mode, f"{t:.4f}", f"{n / t:,.0f}", f"{t / direct:.2f}")
    return table


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scheduler", default="round-robin")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE", help="config overrides")
    args = ap.parse_args()
    exp = prepare(load_config(CONFIG, ["workload.questions=synthetic", *args.set]))
    plan = make_scheduler(args.scheduler).plan(exp.workload, exp.costs, exp.cluster, np.random.default_rng(0))
    n = len(exp.workload.requests)
    mem = min(_time_stage(exp, plan, None) for _ in range(args.repeat))
    with tempfile.TemporaryDirectory() as tmp:
        disk = min(_time_stage(exp, plan, Path(tmp) / f"t{i}.jsonl") for i in range(args.repeat))
    table = Table("mode", "requests", "seconds", "requests/s", "x target (100k/s)",
                  title=f"simulator throughput, {exp.workload.name}, {args.scheduler}")  # fmt: skip
    for mode, t in (("trace in memory", mem), ("trace to JSONL", disk)):
        table.add_row(mode, f"{n:,}", f"{t:.4f}", f"{n / t:,.0f}", f"{n / t / TARGET:.2f}")
    Console().print(table)
    Console().print(f"preemptions (paged KV): {preemptions(exp, plan):,} of {n:,} requests")
    Console().print(loop_table(exp, plan, args.repeat, args.scheduler))


if __name__ == "__main__":
    main()
