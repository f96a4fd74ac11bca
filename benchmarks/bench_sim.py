"""Simulated requests per second on the MedMCQA-sized paper workload (about 12.5k requests).

Runs the expert stage of a plan through the discrete-event simulator, trace kept in memory, best of
``--repeat``; then the same with the JSONL trace written to disk. Target: >= 100k requests/s.

    python benchmarks/bench_sim.py [--scheduler round-robin] [--repeat 5]
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scheduler", default="round-robin")
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    exp = prepare(load_config(CONFIG, ["workload.questions=synthetic"]))
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


if __name__ == "__main__":
    main()
