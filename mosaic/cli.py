"""The ``mosaic`` command: run, compare, list (and the subcommands other packages register)."""

from __future__ import annotations

import argparse
import importlib
import sys
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.text import Text

from mosaic.core.config import RunConfig, load_config
from mosaic.core.errors import ConfigError, MosaicError

# Modules that add their own subcommands through ``register_cli(subparsers)``.
EXTENSIONS = (
    "mosaic.predictors.commands",
    "mosaic.runtime.engine_commands",
    "mosaic.envs.commands",
    "mosaic.reproduce",
)

TABLE_WIDTH = 200  # the comparison table's natural width: never squeeze it into a narrow (or piped, 80-column) console
console = Console(width=max(Console().width, TABLE_WIDTH))


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="YAML run config (see experiments/configs/)")
    p.add_argument("--seed", type=int, help="override the config's seed")
    p.add_argument("--out", help="output directory (default: <out_dir>/<name>__<command>__seed<seed>__<time>)")
    p.add_argument("--backend", help="sim | vllm | ray (overrides runtime.backend)")
    p.add_argument("--aggregation", metavar="MODE",
                   help="overrides aggregation.mode: always | adaptive | learned | a registered policy")  # fmt: skip
    p.add_argument("--threshold", type=float, help="skip the aggregator when confidence >= this (adaptive)")
    p.add_argument("--aggregation-model", help="a trained threshold agent (learned; mosaic train threshold)")
    p.add_argument("--arrivals", metavar="SPEC",
                   help="offline | poisson:RATE | gamma:RATE:CV | trace:RATE:CSV (mean queries/s)")  # fmt: skip
    p.add_argument("--no-barrier", action="store_true",
                   help="aggregate each query as soon as its experts finish (runtime.barrier=false)")  # fmt: skip
    p.add_argument("--track", action="store_true", help="log to W&B online (default: offline run directory)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override any config field, e.g. --set cluster.workers=8 (repeatable)")  # fmt: skip


def _config(args: argparse.Namespace, extra: Sequence[str] = ()) -> RunConfig:
    overrides = list(args.overrides)
    for key, value in (
        ("seed", args.seed),
        ("runtime.backend", args.backend),
        ("aggregation.mode", args.aggregation),
        ("aggregation.threshold", args.threshold),
        ("aggregation.model", args.aggregation_model),
    ):
        if value is not None:
            overrides.append(f"{key}={value}")
    if args.threshold is not None and args.aggregation is None:
        overrides.append("aggregation.mode=adaptive")
    if args.aggregation_model is not None and args.aggregation is None:
        overrides.append("aggregation.mode=learned")
    if getattr(args, "arrivals", None):
        overrides.extend(arrival_overrides(args.arrivals))
    if getattr(args, "no_barrier", False):
        overrides.append("runtime.barrier=false")
    if args.track:
        overrides.append("tracking.mode=online")
    return load_config(args.config, [*overrides, *extra])


def arrival_overrides(spec: str) -> list[str]:
    """``--arrivals`` as config overrides: ``offline``, ``poisson:RATE``, ``gamma:RATE:CV``, ``trace:RATE:CSV``."""
    kind, *parts = spec.split(":", 2 if spec.startswith("trace:") else -1)
    shapes = {"offline": 0, "poisson": 1, "gamma": 2, "trace": 2}
    if kind not in shapes or len(parts) != shapes[kind]:
        raise ConfigError(f"--arrivals: expected offline, poisson:RATE, gamma:RATE:CV or trace:RATE:CSV; got {spec!r}")
    if kind == "offline":
        return ["workload.arrival_rate=null", "workload.arrival_process=poisson", "workload.arrival_trace=null"]
    out = [f"workload.arrival_rate={parts[0]}", f"workload.arrival_process={kind}"]
    if kind == "gamma":
        out.append(f"workload.arrival_cv={parts[1]}")
    if kind == "trace":
        out.append(f"workload.arrival_trace={parts[1]}")
    return out


def _execute(args: argparse.Namespace, schedulers: list[str], command: str, resume: str | None = None) -> int:
    """Build, plan (every input checked before anything is written), run and report: ``mosaic run``, ``compare``
    and ``resume`` (``resume``: the interrupted run's trace, finished in its own folder)."""
    from mosaic.pipeline import (
        aggregation_policy,
        compare,
        make_backend,
        plan_scheduler,
        prepare,
        run_scheduler,
        scheduler_from_config,  # fmt: skip
    )
    from mosaic.report.outputs import run_dir, run_status, write_report

    cfg = _config(args)
    trace = Path(resume) if resume else None
    if trace is not None and not trace.is_file():
        raise ConfigError(f"resume: trace {trace} does not exist")
    with console.status(f"building workload {cfg.workload.preset} (seed {cfg.seed})"):
        exp = prepare(cfg)
    console.print(
        f"[bold]{exp.workload.name}[/bold]: {len(exp.workload.queries)} queries, {len(exp.workload.requests)} "
        f"requests, {len(exp.workload.experts)} experts, {len(exp.cluster)} x {cfg.cluster.gpu_type}, "
        f"backend {cfg.runtime.backend}, aggregation {cfg.aggregation.mode}"
        + (f" (T={cfg.aggregation.threshold:g})" if cfg.aggregation.mode == "adaptive" else "")
    )
    with console.status("") as status:
        policy, planned = aggregation_policy(exp), []
        for n in schedulers:
            status.update(f"planning {n}")
            planned.append(plan_scheduler(exp, n, policy))
    make_backend(exp, trace is not None, planned).close()  # one that can do what is asked, before anything is written
    out_dir = trace.parent if trace is not None else run_dir(cfg, command, time.strftime("%Y%m%d-%H%M%S"), args.out)
    with run_status(out_dir, command), console.status("") as status:
        if trace is not None:
            status.update(f"resuming {schedulers[0]} from {trace}")
            runs = [run_scheduler(exp, planned[0], trace, resume=True)]
        else:
            runs = compare(exp, planned, out_dir, lambda n: status.update(f"running scheduler {n}"))
        status.stop()
        title = f"{cfg.name}: {command}"
        write_report(cfg, runs, out_dir, console, title, [q.arrival for q in exp.workload.queries])
        if trace is not None:
            console.print("[dim]no simulator-vs-real table: a resumed run's times span two sessions[/dim]")
        elif cfg.runtime.backend in ("vllm", "ray"):
            from mosaic.runtime.fidelity import fidelity_of_runs, fidelity_table

            errors = fidelity_of_runs(exp, runs, aggregation_policy(exp), lambda n: scheduler_from_config(cfg, n))
            console.print(fidelity_table(errors, f"{title}: simulator vs real engines"))
            _machine_note(exp, console)
    return 0


def _machine_note(exp: Any, console: Console) -> None:
    """Warn when the simulator-vs-real table's profile was measured on another machine (or does not say)."""
    from mosaic.runtime.machine import profile_machine_note

    profile = getattr(exp.costs, "profile", None)
    note = profile_machine_note(profile, exp.cluster.workers[0].gpu_type) if profile is not None else None
    if note:
        console.print(Text(f"note: {note}", style="yellow"))


def cmd_run(args: argparse.Namespace) -> int:
    if args.resume:
        return cmd_resume(argparse.Namespace(**vars(args), trace=args.resume))
    cfg = _config(args)
    return _execute(args, [args.scheduler or cfg.scheduler], "run")


def cmd_resume(args: argparse.Namespace) -> int:
    """Finish an interrupted real-engine run through the same path as ``run`` (same config, seed, scheduler and
    options, so the same plan): finished requests are not run again, new records go to the same trace."""
    cfg = _config(args)
    return _execute(args, [args.scheduler or cfg.scheduler], "resume", resume=args.trace)


def cmd_compare(args: argparse.Namespace) -> int:
    names = [s.strip() for s in args.schedulers.split(",") if s.strip()]
    if not names:
        raise MosaicError("--schedulers needs at least one name, e.g. round-robin,greedy-lpt")
    from mosaic.agents import SCHEDULERS

    for n in names:
        SCHEDULERS.get(n)  # fail before any work on an unknown name
    args.overrides = [*args.overrides, f"baseline={names[0]}"]
    return _execute(args, names, "compare")


def cmd_list(args: argparse.Namespace) -> int:
    from rich.table import Table

    import mosaic.pipeline  # noqa: F401  (imports every registry's implementations)
    from mosaic.agents import SCHEDULERS
    from mosaic.aggregation.registry import AGGREGATION_POLICIES
    from mosaic.predictors.registry import LENGTH_PREDICTORS
    from mosaic.runtime.registry import BACKENDS
    from mosaic.workloads.registry import WORKLOADS

    table = Table("kind", "name", "description")
    registries = (
        ("scheduler", SCHEDULERS), ("backend", BACKENDS), ("workload", WORKLOADS),
        ("length predictor", LENGTH_PREDICTORS), ("aggregation policy", AGGREGATION_POLICIES),
    )  # fmt: skip
    for kind, reg in registries:
        for name, help_ in reg.describe().items():
            table.add_row(kind, name, help_)
    console.print(table)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mosaic", description="Schedule Mixture-of-Agents LLM workloads.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("run", help="run one scheduler on a config")
    _common(p)
    p.add_argument("--scheduler", help="scheduler name (default: the config's)")
    p.add_argument("--resume", metavar="TRACE", help="finish an interrupted real-engine run from its trace")
    p.set_defaults(func=cmd_run)
    p = sub.add_parser("resume", help="finish an interrupted real-engine run from its trace (same config and seed)")
    _common(p)
    p.add_argument("--trace", required=True, help="the interrupted run's trace (records are appended to it)")
    p.add_argument("--scheduler", help="scheduler of the interrupted run (default: the config's)")
    p.set_defaults(func=cmd_resume)
    p = sub.add_parser("compare", help="run several schedulers on the same workload; one table")
    _common(p)
    p.add_argument("--schedulers", required=True, help="comma-separated names; speedups are against the first")
    p.set_defaults(func=cmd_compare)
    sub.add_parser("list", help="registered schedulers, backends, workloads, predictors").set_defaults(func=cmd_list)
    for mod in EXTENSIONS:
        try:
            module = importlib.import_module(mod)
        except ModuleNotFoundError as err:
            if err.name != mod:
                raise
            continue
        module.register_cli(sub)
    return parser


def _show_warning(message: Warning | str, category: type[Warning], *rest: Any, **kw: Any) -> None:
    """MOSAIC's own warnings (a torn trace line, say) as one plain line; others as Python shows them."""
    if issubclass(category, MosaicError):
        console.print(Text.assemble(("warning: ", "bold yellow"), str(message)))
    else:
        _python_showwarning(message, category, *rest, **kw)


_python_showwarning = warnings.showwarning


def parse(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line; what follows a ``--`` goes to ``script_args`` of a command that takes them
    (``mosaic reproduce STUDY -- FLAGS``)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    head, tail = (argv[: argv.index("--")], argv[argv.index("--") + 1 :]) if "--" in argv else (argv, [])
    parser = build_parser()
    args = parser.parse_args(head)
    if tail:
        if not hasattr(args, "script_args"):
            parser.error(f"mosaic {args.command} takes no arguments after --, got {' '.join(tail)}")
        args.script_args = tail
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(argv)
    with warnings.catch_warnings():
        warnings.showwarning = _show_warning
        try:
            return int(args.func(args) or 0)
        except MosaicError as err:
            console.print(Text.assemble(("error: ", "bold red"), str(err)))
            return 2


if __name__ == "__main__":
    sys.exit(main())
