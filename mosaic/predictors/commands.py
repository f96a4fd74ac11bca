"""``mosaic predictor train`` and ``mosaic predictor eval``: fit a length model on a dataset, score it on a
held-out split against the per-expert mean and the prompt-length linear baselines.

``train`` splits the data by query (``--test-frac``, ``--seed``), fits on the training part and records the
split in the model's sidecar, so ``eval`` on the same data scores the model only on queries it never saw.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import re
import time
import warnings
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console

from mosaic.core.errors import ConfigError, TornLineWarning, WorkloadError
from mosaic.predictors.factory import load_predictor_modules
from mosaic.predictors.length_data import FORMATS, LengthDataset, load_dataset, split_by_query
from mosaic.predictors.length_eval import Comparison, baselines, compare_fitted, metrics_table
from mosaic.predictors.linear import LINEAR_FORMAT, LinearLengthPredictor

console = Console()
KINDS = ("lightgbm", "linear", "expert-mean")
DATA_FORMATS = ("auto", "synthetic", *FORMATS)
_FORMAT_RE = re.compile(r'"format":\s*"([^"]+)"')


def dataset_digest(ds: LengthDataset) -> str:
    """Fingerprint of a dataset's rows (queries, experts, lengths): tells whether eval sees the training data."""
    h = hashlib.sha256()
    h.update(ds.query_id.tobytes())
    h.update("\x1f".join(ds.expert).encode())
    h.update(np.nan_to_num(ds.output_tokens, nan=-1.0).tobytes())
    return h.hexdigest()[:16]


def _split(ds: LengthDataset, test_frac: float, seed: int) -> tuple[LengthDataset, LengthDataset | None]:
    if not 0.0 <= test_frac < 1.0:
        raise ConfigError(f"--test-frac must be in [0, 1), got {test_frac}")
    if not ds.labelled:
        raise WorkloadError(f"length data {ds.name!r}: every row needs known output tokens")
    if test_frac == 0.0:
        return ds, None
    return split_by_query(ds, test_frac, np.random.default_rng(seed))


def _load(args: argparse.Namespace) -> LengthDataset:
    with console.status(f"reading {args.data}"), warnings.catch_warnings():
        if args.strict:
            warnings.simplefilter("error", TornLineWarning)
        ds = load_dataset(args.data, args.format, args.questions)
    console.print(f"[bold]{ds.name}[/bold]: {len(ds)} rows, {len(np.unique(ds.query_id))} queries, "
                  f"{len(set(ds.expert))} experts")  # fmt: skip
    return ds


def _fit_lightgbm(train: LengthDataset, args: argparse.Namespace):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from mosaic.predictors.lgbm import HEADS, LGBMParams, LightGBMLengthPredictor

    params = LGBMParams(num_boost_round=args.rounds, hash_dims=args.hash_dims, seed=args.seed, num_threads=args.threads)
    cols = (TextColumn("training {task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*cols, console=console, transient=False) as bar:
        tasks = {h: bar.add_task(h, total=params.num_boost_round) for h in HEADS}
        return LightGBMLengthPredictor.fit(train, params, lambda h, done, _: bar.update(tasks[h], completed=done))


def cmd_train(args: argparse.Namespace) -> int:
    ds = _load(args)
    train, test = _split(ds, args.test_frac, args.seed)
    t0 = time.perf_counter()
    if args.kind == "lightgbm":
        model = _fit_lightgbm(train, args)
    else:
        model = LinearLengthPredictor.fit(train, use_prompt=args.kind == "linear")
    seconds = time.perf_counter() - t0
    split = {"data": str(args.data), "digest": dataset_digest(ds), "test_frac": args.test_frac, "seed": args.seed,
             "train_rows": len(train), "test_rows": 0 if test is None else len(test)}  # fmt: skip
    if args.kind == "lightgbm":
        model.save(args.out, {"split": split, "train_seconds": round(seconds, 3)})
    else:
        model.save(args.out)
    console.print(f"trained {args.kind} on {len(train)} rows in {seconds:.1f} s -> {args.out}")
    if test is not None:
        console.print(metrics_table(compare_fitted([*baselines(train), model], test, train), "held-out split"))
    return 0


def model_format(path: Path) -> str:
    """The ``format`` of a saved length model (read from the file's first bytes)."""
    if not path.is_file():
        raise ConfigError(f"length model {path} does not exist (train one: mosaic predictor train)")
    with path.open("rb") as fh:
        head = fh.read(256).decode("utf-8", errors="replace")
    m = _FORMAT_RE.search(head)
    if not m:
        raise ConfigError(f"{path} is not a MOSAIC length model (no format field; train one: mosaic predictor train)")
    return m.group(1)


def load_model(path: str | Path) -> Any:
    """A LightGBM or linear length model written by ``mosaic predictor train``."""
    from mosaic.predictors.lgbm import LGBM_FORMAT, LightGBMLengthPredictor

    path = Path(path)
    fmt = model_format(path)
    if fmt == LGBM_FORMAT:
        return LightGBMLengthPredictor.load(path)
    if fmt == LINEAR_FORMAT:
        return LinearLengthPredictor.load(path)
    raise ConfigError(f"{path}: unknown length-model format {fmt!r} (known: {LGBM_FORMAT}, {LINEAR_FORMAT})")


def _eval_split(args: argparse.Namespace, model: Any, ds: LengthDataset) -> tuple[float, int]:
    """The split to score on: the one the model was trained with when this is its data, else the flags'."""
    split = dict(getattr(model, "meta", {}).get("split") or {})
    same = split.get("digest") == dataset_digest(ds)
    trained_frac = float(split.get("test_frac") or 0.0) if same else 0.0
    test_frac = args.test_frac if args.test_frac is not None else trained_frac or 0.2
    seed = args.seed if args.seed is not None else int(split.get("seed", 0)) if same else 0
    if same and (test_frac, seed) != (trained_frac, split.get("seed")):
        console.print("[yellow]warning:[/yellow] the model was trained on this data with another split; "
                      "its scores include rows it has seen")  # fmt: skip
    if test_frac == 0.0:
        raise ConfigError("eval needs a held-out split: --test-frac must be > 0")
    return test_frac, seed


def evaluate_model(args: argparse.Namespace) -> Comparison:
    """Load model and data, split, fit the baselines on the training part, score everything on the held-out part."""
    model = load_model(args.model)
    ds = _load(args)
    test_frac, seed = _eval_split(args, model, ds)
    train, test = _split(ds, test_frac, seed)
    return compare_fitted([*baselines(train), model], test, train)


def cmd_eval(args: argparse.Namespace) -> int:
    comp = evaluate_model(args)
    console.print(metrics_table(comp, f"{Path(args.model).name} vs baselines"))
    if args.json:
        out = {name: {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in asdict(m).items()}
               for name, m in comp.metrics.items()}  # fmt: skip
        Path(args.json).write_text(json.dumps({"data": str(args.data), "metrics": out}, indent=1), encoding="utf-8")
        console.print(f"metrics -> {args.json}")
    return 0


def _data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--data",
        required=True,
        help="JSONL trace, rows JSONL, RouterBench/Azure CSV, arena-hard, or synthetic[:PRESET[:SEED]]",
    )
    p.add_argument("--format", default="auto", choices=DATA_FORMATS, help="data format (default: detect)")
    p.add_argument("--questions", help="trace data: the run's question file (JSON/JSONL, index = query id)")
    p.add_argument("--strict", action="store_true",
                   help="a torn last line (a crash mid-write) is an error, not a warning")  # fmt: skip


def register_cli(sub: Any) -> None:
    """Add ``mosaic predictor train|eval`` to the ``mosaic`` command's subparsers (and register every length
    predictor, so ``mosaic list`` shows them; none of them imports LightGBM until a model is trained or loaded)."""
    load_predictor_modules()
    pred = sub.add_parser("predictor", help="train and evaluate output-length predictors")
    psub = pred.add_subparsers(dest="predictor_command", required=True)
    p = psub.add_parser("train", help="fit a length model on a dataset (held-out split scored at the end)")
    _data_args(p)
    p.add_argument("--out", required=True, help="model file to write (LightGBM: plus MODEL.meta.json)")
    p.add_argument("--kind", default="lightgbm", choices=KINDS, help="model kind (default: lightgbm)")
    p.add_argument("--seed", type=int, default=0, help="split and LightGBM seed")
    p.add_argument("--test-frac", type=float, default=0.2, help="share of queries held out (0: train on all)")
    p.add_argument("--rounds", type=int, default=300, help="LightGBM trees per head")
    p.add_argument("--hash-dims", type=int, default=256, help="hashed text n-gram columns (0: none)")
    p.add_argument("--threads", type=int, default=0, help="LightGBM threads (default 0: every usable core)")
    p.set_defaults(func=cmd_train)
    p = psub.add_parser("eval", help="score a model on a held-out split against the mean and linear baselines")
    _data_args(p)
    p.add_argument("--model", required=True, help="model file from `mosaic predictor train`")
    p.add_argument("--seed", type=int, help="split seed (default: the model's training split on the same data)")
    p.add_argument("--test-frac", type=float, help="share of queries held out (default: the model's, else 0.2)")
    p.add_argument("--json", help="also write the metrics to this JSON file")
    p.set_defaults(func=cmd_eval)
