"""What the simulator's step and memory models change in the paper scenarios (issue 22): each paper config run
under (sum, reserve), the models before issue 22, and (max, paged), the calibrated models of
``experiments/calibration.py`` and the defaults since; each scheduler's end-to-end and expert-stage makespan and its
speedup over round-robin.

Run: ``python experiments/fidelity_paper.py`` (results.json and table.txt under ``--out``).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from rich.console import Console
from rich.table import Table

from mosaic.core.config import load_config
from mosaic.core.script_args import parse_dataclass_args
from mosaic.pipeline import prepare, run_scheduler

CONFIGS = Path(__file__).resolve().parent / "configs"
MODES = (("sum", "reserve"), ("max", "paged"))


@dataclass(frozen=True)
class Args:
    """Command-line arguments (each field is a --flag; tuples take several values)."""

    configs: tuple[str, ...] = ("mmlu_pro", "medmcqa", "gpqa")  # names under experiments/configs
    schedulers: tuple[str, ...] = ("round-robin", "data-parallel", "greedy-lpt", "mosaic-ilp")  # the first: baseline
    set: tuple[str, ...] = ()  # config overrides KEY=VALUE (e.g. workload.num_queries=500)
    out: str = "runs/fidelity_paper"  # folder for results.json and table.txt


def measure(args: Args) -> list[dict]:
    """One row per (config, mode): every scheduler's end-to-end and expert-stage makespan."""
    rows = []
    for name in args.configs:
        for step_model, memory_mode in MODES:
            cfg = load_config(CONFIGS / f"{name}.yaml", [*args.set, f"costs.step_model={step_model}",
                              f"costs.memory_mode={memory_mode}", "tracking.mode=disabled"])  # fmt: skip
            exp = prepare(cfg)
            metrics = {s: run_scheduler(exp, s).metrics for s in args.schedulers}
            rows.append({"config": name, "mode": f"{step_model}/{memory_mode}",
                         "makespan_s": {s: m.end_to_end for s, m in metrics.items()},
                         "expert_makespan_s": {s: m.expert_makespan for s, m in metrics.items()}})  # fmt: skip
    return rows


def table(args: Args, rows: list[dict], key: str = "makespan_s", what: str = "end-to-end") -> Table:
    base = args.schedulers[0]
    t = Table("config", "mode", *(f"{s} s" for s in args.schedulers), *(f"{s} speedup" for s in args.schedulers[1:]),
              title=f"{what} makespan by step/memory model (speedup over {base})")  # fmt: skip
    for r in rows:
        spans = r[key]
        t.add_row(r["config"], r["mode"], *(f"{spans[s]:,.1f}" for s in args.schedulers),
                  *(f"{spans[base] / spans[s]:.2f}x" for s in args.schedulers[1:]))  # fmt: skip
    return t


def main(argv: list[str] | None = None) -> None:
    args = parse_dataclass_args(Args, __doc__, argv)
    console = Console(width=200)
    rows = measure(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tables = [table(args, rows), table(args, rows, "expert_makespan_s", "expert-stage")]
    with (out / "table.txt").open("w", encoding="utf-8") as fh:
        for t in tables:
            console.print(t)
            Console(file=fh, width=200, color_system=None).print(t)
    (out / "results.json").write_text(json.dumps({"args": asdict(args), "rows": rows}, indent=1))
    console.print(f"results in {out}")


if __name__ == "__main__":
    main()
