"""``mosaic reproduce STUDY``: one command per study, each writing a report folder (a Markdown page the docs site
shows, the same page as HTML, PNG charts, results.json) and one W&B run.

``paper`` is the paper's table (:mod:`mosaic.reproduce.study`); every script in ``experiments/`` is a study too
(:mod:`mosaic.reproduce.scripts`), its own flags passed after ``--``.
"""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path

from mosaic.core.config import TrackingCfg
from mosaic.core.errors import ConfigError

QUICK_SEEDS, FULL_SEEDS = 1, 5


def register_cli(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("reproduce", help="reproduce a study (paper, or a script in experiments/) as a report folder")
    p.add_argument("study", help="paper, or the name of a script in experiments/ (e.g. online_load)")
    p.add_argument("--quick", action="store_true", help=f"paper: {QUICK_SEEDS} seed instead of {FULL_SEEDS}")
    p.add_argument("--seeds", type=int, help="paper: number of seeds (seeds 0..N-1)")
    p.add_argument("--backend", default="sim", choices=["sim", "vllm", "ray"], help="paper: the backend to run on")
    p.add_argument("--out", help="report folder (default: runs/reproduce/<study>)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="paper: override a config field of every workload (repeatable)")  # fmt: skip
    p.add_argument("--track", action="store_true", help="log to W&B online (default: offline)")
    p.add_argument("--wandb-dir", default="runs", help="paper: where the W&B run goes (default: runs/)")
    p.set_defaults(func=cmd_reproduce, script_args=[])  # a script study's own flags: what follows ``--``


def command_of(args: argparse.Namespace) -> str:
    """The command line that regenerates this report (printed on its page)."""
    parts = ["mosaic", "reproduce", args.study]
    if args.quick:
        parts.append("--quick")
    if args.seeds:
        parts += ["--seeds", str(args.seeds)]
    if args.backend != "sim":
        parts += ["--backend", args.backend]
    parts += [x for o in args.overrides for x in ("--set", o)]
    if args.out:
        parts += ["--out", args.out]
    extra = list(args.script_args)
    return " ".join(shlex.quote(p) for p in ([*parts, "--", *extra] if extra else parts))


def cmd_reproduce(args: argparse.Namespace) -> int:
    from mosaic.report.outputs import run_status

    out = Path(args.out or f"runs/reproduce/{args.study}")
    command = command_of(args)
    extra = list(args.script_args)
    if args.study == "paper":
        from mosaic.reproduce.paper import Setup, paper_config
        from mosaic.reproduce.study import run_paper

        if extra:
            raise ConfigError(f"reproduce paper takes no script flags; got {extra}")
        n = args.seeds if args.seeds is not None else (QUICK_SEEDS if args.quick else FULL_SEEDS)
        if n < 1:
            raise ConfigError(f"--seeds must be at least 1, got {n}")
        setup = Setup(tuple(range(n)), args.backend, tuple(args.overrides))
        tracking = TrackingCfg(mode="online" if args.track else "offline")
        for w in setup.workloads:  # every config checked before anything is written
            paper_config(w, setup.seeds[0], setup)
        with run_status(out, command):
            run_paper(setup, out, command, tracking, Path(args.wandb_dir))
    else:
        from mosaic.reproduce.scripts import run_script, script_of

        script_of(args.study)  # an unknown study fails before anything is written
        if args.quick or args.seeds is not None or args.overrides or args.backend != "sim":
            raise ConfigError(f"reproduce {args.study}: --quick/--seeds/--set/--backend are for 'paper'; pass the "
                              "script's own flags after --")  # fmt: skip
        with run_status(out, command):
            run_script(args.study, out, extra, command)
    print(f"report: {out / 'index.md'} (and report.html)")
    return 0
