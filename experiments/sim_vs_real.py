"""Simulator fidelity on real engines: profile the models, run the same plans on vLLM and on the simulator.

    python experiments/sim_vs_real.py                       # cpu_tiny, round-robin + greedy-lpt
    python experiments/sim_vs_real.py --reprofile           # measure the cost profile first (mosaic profile)
    MOSAIC_VLLM_PYTHON=/path/to/venv/bin/python python experiments/sim_vs_real.py   # engines in another venv
    python experiments/sim_vs_real.py --memory-modes paged reserve   # the same real runs replayed under both KV modes
    python experiments/sim_vs_real.py --set costs.memory_mode=reserve   # config overrides (the models before issue 22)

For every scheduler: run the plan on the ``vllm`` backend (real engines, one process per worker), then replay the
same plans with the real output lengths in the simulator with the profile, and print each worker's makespan error.
``--memory-modes``: replay the same real runs once per simulated KV mode (default: the config's ``costs.memory_mode``).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from rich.console import Console

import mosaic.runtime.vllm_backend  # noqa: F401  (registers 'vllm')
from mosaic.core.config import TRACKING_MODES, load_config
from mosaic.core.script_args import choice_field, parse_dataclass_args
from mosaic.pipeline import aggregation_policy, prepare, run_scheduler, scheduler_from_config
from mosaic.predictors.costmodel import ProfiledCostModel
from mosaic.predictors.lengths import MeanLengthPredictor
from mosaic.predictors.profile import CostProfile
from mosaic.report.gantt import plot_gantt
from mosaic.report.tracking import log_run
from mosaic.runtime.fidelity import fidelity_of_runs, fidelity_table, max_worker_error
from mosaic.runtime.machine import profile_machine_note
from mosaic.runtime.models import TINY_SET, make_tiny_set
from mosaic.runtime.profiler import profile_workload, split_unload
from mosaic.workloads import build_workload, expert_means


@dataclass
class Args:
    config: str = "experiments/configs/cpu_tiny.yaml"  # run config (experts' model_id = model folders)
    schedulers: str = "round-robin,greedy-lpt"  # comma-separated
    profile: str | None = None  # cost profile file (default: the config's costs.profile)
    reprofile: bool = False  # measure the profile even when the file exists
    alone: bool = False  # profile one engine alone (default: 1, 2, ... engines at once up to one per worker)
    models_dir: str = "models"  # where missing tiny models are built
    out: str = "runs/sim_vs_real"  # traces, the error table (JSON) and the real-vs-simulated Gantt PNG
    wandb: str = choice_field("offline", TRACKING_MODES)  # W&B mode of the run (error table and Gantt)
    set: tuple[str, ...] = ()  # config overrides KEY=VALUE (e.g. costs.memory_mode=reserve)
    memory_modes: tuple[str, ...] = ()  # simulated KV modes to replay under (default: the config's)


def parse() -> Args:
    return parse_dataclass_args(Args, __doc__)


def ensure_tiny_models(models_dir: str, paths: list[str]) -> None:
    missing = [Path(p).name for p in paths if not Path(p).is_dir() and Path(p).name in TINY_SET]
    if missing:
        make_tiny_set(models_dir, tuple(missing))


def main() -> None:
    args = parse()
    console = Console(width=140)
    base = load_config(args.config, list(args.set))
    profile_path = args.profile or base.costs.profile
    cfg = load_config(args.config, [*args.set, f"costs.profile={profile_path}", "runtime.backend=vllm"])
    workload, _ = build_workload(cfg, np.random.default_rng(cfg.seed))  # models and names only
    ensure_tiny_models(args.models_dir, [e.model_id for e in (*workload.experts, workload.aggregator)])
    if args.reprofile or not Path(profile_path).is_file():
        profile_workload(
            cfg,
            profile_path,
            workload,
            (1,) if args.alone else None,
            report=console.print,
            source="experiments/sim_vs_real.py (mosaic profile)",
        )
    exp = prepare(cfg)
    note = profile_machine_note(CostProfile.from_file(profile_path), cfg.cluster.gpu_type)
    if note:
        console.print(f"[yellow]note: {note}[/yellow]")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    runs = []
    for name in [s.strip() for s in args.schedulers.split(",") if s.strip()]:
        t = time.perf_counter()
        run = run_scheduler(exp, name, out / f"{name}.trace.jsonl")
        console.print(f"{name}: real run took {time.perf_counter() - t:.0f} s wall, expert makespan "
                      f"{run.metrics.expert_makespan:.2f} s, end-to-end {run.metrics.end_to_end:.2f} s")  # fmt: skip
        runs.append(run)
    rows: list[dict] = []
    simulated: dict[str, list] = {}
    for mode in args.memory_modes or (cfg.costs.memory_mode,):
        mode_cfg = load_config(args.config, [*args.set, f"costs.profile={profile_path}", "runtime.backend=vllm",
                                             f"costs.memory_mode={mode}"])  # fmt: skip
        rows += replay(prepare(mode_cfg) if mode != cfg.costs.memory_mode else exp, runs, profile_path, console,
                       simulated if not simulated else {})  # fmt: skip
    (out / "fidelity.json").write_text(json.dumps(rows, indent=2), encoding="utf-8")
    panels = {f"{r.name} {kind}": recs for r in runs for kind, recs in (("real", r.records), ("simulated",
              simulated[r.name]))}  # fmt: skip
    png = plot_gantt(panels, list(exp.cluster.ids), out / "gantt.png", f"{cfg.name}: real engines vs simulator")
    directory = log_run(cfg.tracking.model_copy(update={"mode": args.wandb}), f"{cfg.name}__sim-vs-real",
                        {"config": args.config, "profile": profile_path, "schedulers": args.schedulers}, out,
                        {"fidelity": (list(rows[0]), [list(r.values()) for r in rows])}, {"gantt": png})  # fmt: skip
    console.print(f"errors -> {out / 'fidelity.json'}, Gantt -> {png}" + (f", W&B -> {directory}" if directory else ""))


def replay(exp, runs: list, profile_path: str, console: Console, simulated: dict[str, list]) -> list[dict]:
    """The real ``runs`` replayed on the simulator of ``exp`` (its profile and KV mode): the error table printed,
    its rows returned (with the KV mode); the simulated records of each run kept in ``simulated``."""
    cfg = exp.cfg
    # cross-check: a simulation without teardown plus each replaced engine's teardown added by hand (unload_extra);
    # it should match "sim", which models teardown itself (ModelCost.unload_s)
    pure, unload = split_unload(CostProfile.from_file(profile_path), cfg.cluster.gpu_type)
    pure = pure.with_max_batch(cfg.runtime.max_batch, cap=True).with_memory_mode(cfg.costs.memory_mode)
    pure_costs = ProfiledCostModel(pure, MeanLengthPredictor(expert_means(cfg, exp.workload)), exp.workload)
    errors = fidelity_of_runs(exp, runs, aggregation_policy(exp), lambda n: scheduler_from_config(cfg, n), unload,
                              pure_costs, simulated)  # fmt: skip
    mode = cfg.costs.memory_mode
    console.print(fidelity_table(errors, f"{cfg.name}: simulator ({mode} KV) vs real engines ({profile_path})"))
    for stage in ("expert", "aggregation"):
        console.print(f"{mode} KV: largest per-worker {stage}-stage error: {max_worker_error(errors, stage):.1%} "
                      f"(with unload costs: {max_worker_error(errors, stage, unload=True):.1%})")  # fmt: skip
    return [{"memory_mode": mode, "scheduler": e.scheduler, "stage": e.stage, "worker": e.worker, "real_s": e.real_s,
             "sim_s": e.sim_s, "error": e.error, "sim_unload_s": e.sim_unload_s, "unload_error": e.unload_error}
            for e in errors]  # fmt: skip


if __name__ == "__main__":
    main()
