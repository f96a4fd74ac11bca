"""An online simulation end to end: N synthetic queries (k=3, MedMCQA's experts, 4 x A100) arriving as a Poisson
process at a share of round-robin's capacity, served without a stage barrier by re-planning schedulers (every 30
simulated seconds and whenever a worker idles with work waiting). Prints each run's wall time, simulated queries per
wall second and the ratio to the first scheduler (greedy-online by default: the price of re-planning), measured in
one process. Target (issue 18): 100k queries with rolling re-planning in under 2 minutes here.

    python benchmarks/bench_online.py [--queries 100000] [--load 0.8] [--schedulers NAME ...]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from mosaic.core.config import load_config
from mosaic.pipeline import prepare, run_scheduler

CONFIG = Path(__file__).resolve().parents[1] / "experiments" / "configs" / "medmcqa.yaml"
SAMPLE = 2_000  # queries of the capacity measurement


def capacity(queries: int, overrides: list[str]) -> float:
    """Queries/s round-robin sustains on this workload: its throughput on a sample of it as one offline batch."""
    cfg = load_config(CONFIG, [*overrides, "workload.questions=synthetic",
                               f"workload.num_queries={min(queries, SAMPLE)}",
                               "runtime.barrier=false", "tracking.mode=disabled"])  # fmt: skip
    exp = prepare(cfg)
    return len(exp.workload.queries) / run_scheduler(exp, "round-robin").metrics.end_to_end


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--queries", type=int, default=100_000)
    ap.add_argument("--load", type=float, default=0.8, help="arrival rate as a share of round-robin's capacity")
    ap.add_argument("--schedulers", nargs="+", default=["greedy-online", "greedy-lpt+rolling", "mosaic-ilp+rolling"])
    ap.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE", help="config overrides")
    args = ap.parse_args()
    t0 = time.perf_counter()
    rate = args.load * capacity(args.queries, args.set)
    cfg = load_config(CONFIG, [*args.set, "workload.questions=synthetic", f"workload.num_queries={args.queries}",
                               f"workload.arrival_rate={rate}",
                               "runtime.barrier=false", "tracking.mode=disabled"])  # fmt: skip
    exp = prepare(cfg)
    build = time.perf_counter() - t0
    table = Table(
        "scheduler",
        "wall s",
        "queries / wall s",
        "ratio to first",
        "simulated s",
        "p99 latency s",
        title=f"{args.queries:,} queries online at {rate:.3f} queries/s (workload built in {build:.1f} s)",
    )
    first = None
    for name in args.schedulers:
        t = time.perf_counter()
        run = run_scheduler(exp, name)
        wall = time.perf_counter() - t
        first = first or wall
        m = run.metrics
        table.add_row(name, f"{wall:.1f}", f"{args.queries / wall:,.0f}", f"{wall / first:.2f}",
                      f"{m.end_to_end:,.0f}", f"{m.latency.get('p99', float('nan')):,.1f}")  # fmt: skip
    Console().print(table)


if __name__ == "__main__":
    main()
