"""Adaptive aggregation on real multi-LLM answers (RouterBench: ARC-challenge, Winogrande, MBPP).

For every question, k experts answer (recorded responses of real LLMs). Confidence = share of the k experts in the
largest agreeing group: exact match of the extracted choice letter (ARC, Winogrande); for MBPP, embedding agreement
of the extracted code (clusters by cosine similarity; char n-gram embedder by default, MiniLM with
``--embedder minilm``) or, with ``--code-agreement exact``, exact match of normalised code.

Skip the aggregator when confidence >= T and answer with the majority representative's response (its correctness is
RouterBench's grading of that expert's response). "Always aggregate" answers with the aggregator: since no real
aggregator ran on these questions, the aggregator's answer is a strong model's own recorded answer from the same file
(``--aggregator``, default gpt-4-1106-preview), graded by the file.

Expert sets: ``fixed`` (the same k models for every question, ``--fixed``) and ``routed`` (the k models most accurate
on a random calibration half of the task, the aggregator excluded). Both are evaluated on the other half.

Run: ``python experiments/routerbench_aggregation.py --out runs/routerbench_aggregation``
"""

from __future__ import annotations

import csv
import dataclasses
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mosaic.agents.thresholds import FixedThreshold
from mosaic.core.config import TRACKING_MODES, TrackingCfg
from mosaic.core.errors import MosaicError
from mosaic.core.script_args import choice_field, parse_dataclass_args
from mosaic.report.tracking import log_run
from mosaic.runtime.agreement import AgreementResult, EmbeddingAgreement, agreement_from_answers, make_embedder
from mosaic.runtime.answers import AnswerKind, normalize_code
from mosaic.workloads.routerbench import TASKS, RouterBenchTask, default_data_dir, load_routerbench

PAPER_SKIP = {1.0: "45.7/47.5/37.4", 0.67: "84.6/90.2/87.4"}  # MMLU-Pro/MedMCQA/GPQA skip % (PAPER_NOTES.md)


@dataclass
class Args:
    """Command-line arguments (each field is a --flag; tuples take several values)."""

    out: str = "runs/routerbench_aggregation"  # folder for table.csv, results.json and the PNG plot
    data_dir: str = ""  # RouterBench CSV folder (default: $MOSAIC_SHARED_DATA/routerbench or ../shared/data/...)
    tasks: tuple[str, ...] = ("arc-challenge", "winogrande", "mbpp")  # RouterBench tasks to evaluate
    k: int = 3  # experts per question
    fixed: tuple[str, ...] = ("mistralai/mixtral-8x7b-chat", "zero-one-ai/Yi-34B-Chat", "meta/llama-2-70b-chat")
    aggregator: str = "gpt-4-1106-preview"  # model whose recorded answer stands in for the aggregator's
    thresholds: tuple[float, ...] = (1.0, 0.67)  # T values of the table
    grid: tuple[float, ...] = (0.0, 0.34, 0.5, 0.67, 0.75, 1.0)  # T values of the accuracy-vs-skip plot
    code_agreement: str = "embedding"  # MBPP agreement: "embedding" (cluster code by cosine) or "exact"
    embedder: str = "char"  # "char" (numpy n-grams, fast), "minilm" (optional extra, slow on CPU), "auto"
    similarity: float = -2.0  # cosine threshold of embedding agreement; < -1: the embedder's default
    seed: int = 0  # seed of the calibration/evaluation split
    limit: int = 0  # use only the first N questions per task (0: all)
    wandb: str = choice_field("offline", TRACKING_MODES)  # W&B mode of the run (the table and the plot)


def parse_args(argv: list[str] | None = None) -> Args:
    """Build :class:`Args` from the command line (one flag per field, ``--fixed a b c`` for tuples)."""
    return parse_dataclass_args(Args, __doc__, argv)


@dataclass
class SetResult:
    """Agreement of one expert set on the evaluation questions of one task."""

    task: str
    name: str  # "fixed" | "routed"
    experts: tuple[str, ...]
    conf: np.ndarray  # question -> confidence
    rep_correct: np.ndarray  # question -> is the majority representative's answer correct
    agg_correct: np.ndarray  # question -> is the aggregator's answer correct
    rows: list[dict] = field(default_factory=list)


def split_halves(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Random calibration and evaluation halves of ``n`` question indices."""
    perm = rng.permutation(n)
    return np.sort(perm[: n // 2]), np.sort(perm[n // 2 :])


def route_top_k(task: RouterBenchTask, calib: np.ndarray, k: int, exclude: str) -> tuple[str, ...]:
    """The k models most accurate on the calibration questions (``exclude`` left out; ties by name order)."""
    acc = task.correct[calib].mean(axis=0)
    order = sorted((m for m in task.models if m != exclude), key=lambda m: (-acc[task.model_index(m)], m))
    return tuple(order[:k])


def agreements(task: RouterBenchTask, qids: np.ndarray, experts: tuple[str, ...], args: Args) -> list[AgreementResult]:
    """Agreement of ``experts`` on each question of ``qids``."""
    if task.kind is not AnswerKind.CODE or args.code_agreement == "exact":
        return [agreement_from_answers(task.answers(int(q), experts)) for q in qids]
    embedder = make_embedder(args.embedder)
    agree = EmbeddingAgreement(embedder, None if args.similarity < -1 else args.similarity, normalize_code)
    texts = [agree.texts(task.texts(int(q), experts)) for q in qids]
    vectors = embedder.embed([t or " " for row in texts for t in row]).reshape(len(qids), len(experts), -1)
    return [agree.score_vectors(v, t) for v, t in zip(vectors, texts, strict=True)]


def evaluate_set(task: RouterBenchTask, name: str, experts: tuple[str, ...], qids: np.ndarray, args: Args) -> SetResult:
    """Confidence and the correctness of the majority answer and of the aggregator, per evaluation question."""
    results = agreements(task, qids, experts, args)
    cols = [task.model_index(m) for m in experts]
    rep = np.array([r.index is not None and task.correct[q, cols[r.index]] for q, r in zip(qids, results, strict=True)])
    agg = task.correct[qids, task.model_index(args.aggregator)]
    return SetResult(task.name, name, experts, np.array([r.confidence for r in results]), rep, agg)


def rows_for(res: SetResult, thresholds: tuple[float, ...], queries: tuple) -> list[dict]:
    """One row per T: skip rate, accuracy always-aggregate vs adaptive, delta in percentage points."""
    rows = []
    for t in thresholds:
        policy = FixedThreshold(t)
        skip = np.array([policy.decide(queries[i], (), c) for i, c in enumerate(res.conf)], dtype=bool)
        adaptive = np.where(skip, res.rep_correct, res.agg_correct)
        rows.append(
            {
                "task": res.task,
                "set": res.name,
                "experts": "+".join(e.split("/")[-1].removesuffix("-chat") for e in res.experts),
                "n": len(res.conf),
                "T": t,
                "skip_pct": 100 * skip.mean(),
                "acc_always_pct": 100 * res.agg_correct.mean(),
                "acc_adaptive_pct": 100 * adaptive.mean(),
                "delta_pp": 100 * (adaptive.mean() - res.agg_correct.mean()),
            }
        )
    return rows


def run_task(name: str, args: Args) -> list[SetResult]:
    """Both expert sets of one task, evaluated on the evaluation half."""
    task = load_routerbench(name, args.data_dir or None, args.limit or None)
    for m in (*args.fixed, args.aggregator):
        task.model_index(m)  # raises with the valid names when unknown
    calib, evals = split_halves(len(task.queries), np.random.default_rng(args.seed))
    sets = {"fixed": tuple(args.fixed[: args.k]), "routed": route_top_k(task, calib, args.k, args.aggregator)}
    queries = tuple(task.queries[int(q)] for q in evals)
    out = []
    for set_name, experts in sets.items():
        res = evaluate_set(task, set_name, experts, evals, args)
        res.rows = rows_for(res, args.thresholds, queries)
        res.rows += [r | {"grid": True} for r in rows_for(res, args.grid, queries)]
        out.append(res)
    return out


def print_table(rows: list[dict], args: Args) -> None:
    """The task x T table (rich)."""
    from rich.console import Console
    from rich.table import Table

    code = f"{args.code_agreement} ({args.embedder})" if args.code_agreement == "embedding" else "exact code"
    table = Table(
        title=f"Adaptive aggregation on RouterBench (k={args.k}, aggregator={args.aggregator}, mbpp: {code})",
        caption="paper skip %: MMLU-Pro/MedMCQA/GPQA (PAPER_NOTES.md; other tasks and models, for scale only)",
    )
    cols = ("task", "set", "experts", "n", "T", "skip %", "acc always %", "acc adaptive %", "delta pp", "paper skip %")
    for col in cols:
        table.add_column(col, justify="left" if col in ("task", "set", "experts") else "right")
    for r in rows:
        table.add_row(
            r["task"], r["set"], r["experts"], str(r["n"]), f"{r['T']:.2f}", f"{r['skip_pct']:.1f}",
            f"{r['acc_always_pct']:.1f}", f"{r['acc_adaptive_pct']:.1f}", f"{r['delta_pp']:+.1f}",
            PAPER_SKIP.get(round(r["T"], 2), ""),
        )  # fmt: skip
    Console(width=160).print(table)


def _point_labels(points: list[tuple[float, float, float | str]]) -> dict[tuple[float, float], str]:
    """One label per distinct (skip, accuracy) point: the T values that land on it ("T=0.34-0.67")."""
    groups: dict[tuple[float, float], list[float | str]] = {}
    for x, y, t in points:
        groups.setdefault((round(x, 6), round(y, 6)), []).append(t)
    labels = {}
    for xy, ts in groups.items():
        nums = sorted(t for t in ts if not isinstance(t, str))
        text = f"T={nums[0]:.2f}" if len(nums) == 1 else f"T={nums[0]:.2f}-{nums[-1]:.2f}" if nums else ""
        labels[xy] = ", ".join([*(t for t in ts if isinstance(t, str)), *([text] if text else [])])
    return labels


def plot(results: list[SetResult], path: Path) -> None:
    """Accuracy vs skip rate as T varies, one panel per task, one line per expert set."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = list(dict.fromkeys(r.task for r in results))
    fig, axes = plt.subplots(1, len(tasks), figsize=(4.6 * len(tasks), 3.8), squeeze=False)
    for ax, task in zip(axes[0], tasks, strict=True):
        for res in (r for r in results if r.task == task):
            grid = [r for r in res.rows if r.get("grid")]
            always = grid[0]["acc_always_pct"]
            grid.sort(key=lambda r: -r["T"])  # fewest skips first
            points = [(0.0, always, "always")] + [(r["skip_pct"], r["acc_adaptive_pct"], r["T"]) for r in grid]
            line = ax.plot([p[0] for p in points], [p[1] for p in points], "o-", label=res.name)
            for (x, y), label in _point_labels(points).items():
                ax.annotate(label, (x, y), fontsize=7, textcoords="offset points", xytext=(3, 3),
                            color=line[0].get_color())  # fmt: skip
        ax.axhline(always, ls="--", c="gray", lw=0.8, label="always aggregate")
        ax.set(title=task, xlabel="aggregator skipped (%)", ylabel="accuracy (%)")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_outputs(results: list[SetResult], out: Path, args: Args) -> list[dict]:
    """table.csv (task x T rows), results.json (all rows + settings) and accuracy_vs_skip.png."""
    out.mkdir(parents=True, exist_ok=True)
    table = [r for res in results for r in res.rows if not r.get("grid")]
    with (out / "table.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(table[0]))
        writer.writeheader()
        writer.writerows(table)
    meta = {"args": dataclasses.asdict(args), "rows": [r for res in results for r in res.rows]}
    (out / "results.json").write_text(json.dumps(meta, indent=1))
    plot(results, out / "accuracy_vs_skip.png")
    return table


def check_args(args: Args) -> None:
    """Raise :class:`MosaicError` naming the first invalid argument."""
    data = Path(args.data_dir) if args.data_dir else default_data_dir()
    if not data.is_dir():
        raise MosaicError(f"RouterBench data not found at {data}; set MOSAIC_SHARED_DATA or --data-dir")
    unknown = [t for t in args.tasks if t not in TASKS]
    if unknown:
        raise MosaicError(f"unknown tasks {unknown}; valid: {sorted(TASKS)}")
    if not 1 <= args.k <= len(args.fixed):
        raise MosaicError(f"--k must be in 1..{len(args.fixed)} (the number of --fixed experts), got {args.k}")
    if args.code_agreement not in ("embedding", "exact"):
        raise MosaicError(f"--code-agreement must be 'embedding' or 'exact', got {args.code_agreement!r}")
    make_embedder(args.embedder)  # raises on an unknown name


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    start = time.perf_counter()
    try:
        check_args(args)
        results = [res for name in args.tasks for res in run_task(name, args)]
    except MosaicError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    table = write_outputs(results, Path(args.out), args)
    print_table(table, args)
    print(f"wrote {args.out}/table.csv, results.json, accuracy_vs_skip.png in {time.perf_counter() - start:.1f} s")
    config = {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(args).items()}
    directory = log_run(TrackingCfg(mode=args.wandb), "routerbench-aggregation", config, args.out,
                        {"table": (list(table[0]), [list(r.values()) for r in table])},
                        {"accuracy_vs_skip": Path(args.out) / "accuracy_vs_skip.png"})  # fmt: skip
    if directory is not None:
        print(f"W&B ({args.wandb}) -> {directory}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
