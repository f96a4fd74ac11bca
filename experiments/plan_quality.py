"""How far are the plans from the best possible schedule? The expert stage of the paper configs against the true bound.

For each config and seed: the true-length lower bound of the expert stage and its parts
(:func:`mosaic.agents.bounds.true_lower_bound`), the oracle plan (mosaic-ilp given the true lengths, simulated:
:func:`mosaic.pipeline.plan_quality`) and each scheduler's simulated expert stage with the config's own length
predictions (the per-expert means), with its gap to the bound and to the oracle. Then, over the seeds, each gap's
mean and 95% interval. Expert stage only (the simulator's sim backend, the config's memory mode and step model).

``--groups``: instead, per config (first seed) and expert, its whole group of requests run on one worker with the
expert resident (longest first, the simulator) against the group's floor (``min_group_seconds`` with the true
lengths, the term the work and replication bounds add up): how far the engine itself stays above the floor when
there is nothing to schedule, and its preemptions.

    python experiments/plan_quality.py [--configs gpqa medmcqa mmlu_pro] [--seeds 0 1 2 3 4] [--set KEY=VALUE ...]
    python experiments/plan_quality.py --groups
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.table import Table

from mosaic.agents.bounds import true_costs
from mosaic.core.config import load_config
from mosaic.core.script_args import parse_dataclass_args
from mosaic.core.trace import EXPERT_STAGE, TraceWriter
from mosaic.core.types import requests_by_expert
from mosaic.pipeline import plan_quality, plan_scheduler, prepare
from mosaic.report.metrics import mean_ci
from mosaic.runtime.registry import BACKENDS
from mosaic.runtime.sim import SimBackend
from mosaic.runtime.sim_worker import WorkerSim, discard

ROOT = Path(__file__).resolve().parents[1]
console = Console(width=None if sys.stdout.isatty() else 200)


@dataclass(frozen=True)
class Args:
    configs: tuple[str, ...] = ("gpqa", "medmcqa", "mmlu_pro")  # names under experiments/configs
    seeds: tuple[int, ...] = (0,)  # workload seeds
    schedulers: str = "mosaic-ilp,greedy-lpt,round-robin"  # simulated with the config's predictions
    set: tuple[str, ...] = ()  # config overrides KEY=VALUE
    out: str = "runs/plan_quality"  # results.json goes here
    groups: bool = False  # per expert: its whole group on one worker vs its floor (see the module docstring)


def expert_stage(exp, name: str) -> float:
    """Simulated expert-stage makespan of scheduler ``name``'s plan (the config's predictions)."""
    plan = plan_scheduler(exp, name).plan
    backend = BACKENDS.get("sim")(exp.cfg, exp.responses, exp.costs)
    with TraceWriter(None) as trace:
        return backend.run_stage(EXPERT_STAGE, plan, exp.workload, exp.cluster, trace).makespan


def one(config: str, seed: int, args: Args) -> dict:
    cfg = load_config(ROOT / "experiments" / "configs" / f"{config}.yaml", [f"seed={seed}", *args.set])
    exp = prepare(cfg)
    quality = plan_quality(exp)
    row = {"config": config, "seed": seed, **quality.bound.as_dict(), "oracle_s": quality.oracle_s,
           "oracle_status": quality.oracle_stats.get("ilp_status")}  # fmt: skip
    for name in args.schedulers.split(","):
        row[name] = expert_stage(exp, name)
    return row


def table(rows: list[dict], names: list[str]) -> Table:
    head = ("config", "seed", "work s", "chain s", "repl. s", "placement s", "true LB s", "oracle s", "oracle gap %")
    t = Table(*head, *(f"{n} s" for n in names), *(f"{n} gap %" for n in names), title="expert stage vs the true bound")
    for r in rows:
        lb = r["value_s"]
        t.add_row(r["config"], str(r["seed"]), *(f"{r[k]:,.1f}" for k in ("work_s", "chain_s", "replication_s",
                  "placement_s", "value_s", "oracle_s")), f"{100 * (r['oracle_s'] / lb - 1):.1f}",
                  *(f"{r[n]:,.1f}" for n in names), *(f"{100 * (r[n] / lb - 1):.1f}" for n in names))  # fmt: skip
    return t


def summary(rows: list[dict], names: list[str]) -> Table:
    t = Table(
        "config",
        "seeds",
        *(f"{n} gap %" for n in ["oracle", *names]),
        title="gap to the true bound, mean ± 95% CI half-width",
    )
    for config in dict.fromkeys(r["config"] for r in rows):
        mine = [r for r in rows if r["config"] == config]
        cells = []
        for n in ["oracle_s", *names]:
            m, half = mean_ci([100 * (r[n] / r["value_s"] - 1) for r in mine])
            cells.append(f"{m:.1f} ± {half:.1f}")
        t.add_row(config, str(len(mine)), *cells)
    return t


def group_rows(config: str, seed: int, args: Args) -> list[dict]:
    """Per expert of ``config``: its whole group on one worker (resident, longest first) vs its floor."""
    cfg = load_config(ROOT / "experiments" / "configs" / f"{config}.yaml", [f"seed={seed}", *args.set])
    exp = prepare(cfg)
    true, gpu = true_costs(exp.workload, exp.responses, exp.costs), exp.cluster.workers[0].gpu_type
    backend, reqs, rows = SimBackend(exp.responses, exp.costs), exp.workload.requests, []
    for expert, ids in requests_by_expert(exp.workload).items():
        length = {i: exp.responses.table[(reqs[i].query_id, expert)].output_tokens for i in ids}
        sim = WorkerSim(0, backend.cost_of(gpu), resident=expert, emit=discard)
        sim.enqueue(backend.sim_requests(exp.workload, tuple(sorted(ids, key=lambda i: -length[i]))))
        seconds = sim.run_until_idle()
        rows.append(
            {
                "config": config,
                "expert": expert,
                "requests": len(ids),
                "sim_s": seconds,
                "floor_s": true.min_group_seconds([reqs[i] for i in ids], gpu),
                "preemptions": sim.preemptions,
            }
        )
    return rows


def group_table(rows: list[dict]) -> Table:
    t = Table("config", "expert", "requests", "floor s", "one worker s", "over floor %", "preemptions",
              title="each expert's whole group on one worker vs its floor")  # fmt: skip
    for config in dict.fromkeys(r["config"] for r in rows):
        mine = [r for r in rows if r["config"] == config]
        for r in mine:
            t.add_row(config, r["expert"], str(r["requests"]), f"{r['floor_s']:,.1f}", f"{r['sim_s']:,.1f}",
                      f"{100 * (r['sim_s'] / r['floor_s'] - 1):.1f}", str(r["preemptions"]))  # fmt: skip
        floor, sim = sum(r["floor_s"] for r in mine), sum(r["sim_s"] for r in mine)
        t.add_row(config, "all", str(sum(r["requests"] for r in mine)), f"{floor:,.1f}", f"{sim:,.1f}",
                  f"{100 * (sim / floor - 1):.1f}", str(sum(r["preemptions"] for r in mine)))  # fmt: skip
    return t


def main() -> None:
    args = parse_dataclass_args(Args, __doc__)
    if args.groups:
        rows = [r for config in args.configs for r in group_rows(config, args.seeds[0], args)]
        console.print(group_table(rows))
        return
    names = args.schedulers.split(",")
    rows = []
    for config in args.configs:
        for seed in args.seeds:
            rows.append(one(config, seed, args))
            console.print(json.dumps({k: (round(v, 2) if isinstance(v, float) else v) for k, v in rows[-1].items()}))
    console.print(table(rows, names))
    if len(args.seeds) > 1:
        console.print(summary(rows, names))
    out = ROOT / args.out
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(rows, indent=2), encoding="utf-8")


if __name__ == "__main__":
    main()
