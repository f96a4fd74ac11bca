"""LightGBM length predictor: seconds to train on 100k (query, expert) rows (goal: < 60 s on this machine).

Rows come from :func:`mosaic.predictors.length_data.toy` (distinct texts of 8-120 words, three experts, so the
hashed n-gram features cost what they cost on real prompts). Times feature building and each head separately
(the rows are generated outside the timing), and the held-out MAE against the per-expert mean as a sanity check.

    python benchmarks/bench_predictor.py [--rows 100000] [--threads N (default: every usable core)]
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
from rich.console import Console
from rich.table import Table

from mosaic.predictors.length_data import split_by_query, toy
from mosaic.predictors.length_eval import baselines, compare_fitted
from mosaic.predictors.lgbm import LGBMParams, LightGBMLengthPredictor

TARGET_S = 60.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=100_000, help="training rows (queries x 2 experts)")
    ap.add_argument("--threads", type=int, default=0, help="LightGBM threads (0: every usable core)")
    ap.add_argument("--rounds", type=int, default=300, help="trees per head")
    args = ap.parse_args()
    console = Console()
    with console.status("generating rows"):
        ds = toy(args.rows // 2 * 5 // 4, np.random.default_rng(0), k=2)  # 100k train + 25k held out
        train, test = split_by_query(ds, 0.2, np.random.default_rng(1))
    marks: dict[str, float] = {}
    last = [time.perf_counter()]

    def progress(head: str, done: int, total: int) -> None:
        now = time.perf_counter()
        if not marks:  # the first tree: everything before it was feature building and binning
            marks["features + binning (+ 1st tree)"] = now - last[0]
            last[0] = now
        if done == total:
            marks[f"head {head} ({total} trees)"] = now - last[0]
            last[0] = now

    t0, c0 = time.perf_counter(), time.process_time()
    params = LGBMParams(num_boost_round=args.rounds, num_threads=args.threads)
    model = LightGBMLengthPredictor.fit(train, params, progress)
    total, cpu = time.perf_counter() - t0, time.process_time() - c0
    comp = compare_fitted([*baselines(train), model], test)
    table = Table("step", "seconds", title=f"LightGBM length predictor: training on {len(train):,} rows, "
                                           f"{params.threads()} threads")  # fmt: skip
    for step, s in marks.items():
        table.add_row(step, f"{s:.2f}")
    table.add_row("[bold]total (wall)[/bold]", f"[bold]{total:.2f}[/bold] ({'within' if total < TARGET_S else 'OVER'} "
                  f"the {TARGET_S:.0f} s goal)")  # fmt: skip
    table.add_row("total (CPU of this process)", f"{cpu:.2f} (load average {os.getloadavg()[0]:.1f})")
    console.print(table)
    mean, lgb = comp.metrics["expert-mean"].mae, comp.metrics["lightgbm-mean"].mae
    console.print(f"held-out MAE ({len(test):,} rows): per-expert mean {mean:.0f}, LightGBM {lgb:.0f} "
                  f"({lgb / mean - 1:+.1%})")  # fmt: skip


if __name__ == "__main__":
    main()
