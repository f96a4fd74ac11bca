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

Learned rules (:mod:`mosaic.aggregation.reliability`, :mod:`mosaic.aggregation.skip_front`): per-expert accuracies and
P(majority correct) / P(aggregator correct) models fitted on the calibration questions only; each rule skips the
questions it scores safest, with a cut chosen on the calibration questions (out-of-fold) to match T=1's skip rate
there ("@T=1 skip") or its accuracy ("@T=1 acc"). Evaluated on the evaluation questions with 95% bootstrap intervals
(learned.csv); ECE of vote share, of the weighted posterior and of the calibrated P(majority correct) per task
(calibration.csv, reliability.png). ``--eval-dir DIR``: calibrate on every question of the ``--data-dir`` files and
evaluate on the same-named files in DIR (instead of the seeded halves of one file).

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

from mosaic.aggregation.agreement import AgreementResult, EmbeddingAgreement, agreement_from_answers, make_embedder
from mosaic.aggregation.answers import AnswerKind, normalize_code
from mosaic.aggregation.reliability import SKIP_FEATURE_NAMES, ece, reliability_bins
from mosaic.aggregation.skip_front import (
    RULES,
    Comparison,
    Questions,
    compare,
    cut_for_accuracy,
    cut_for_rate,
    fixed_skips,
    rule_scores,
)
from mosaic.aggregation.thresholds import DEFAULT_TOLERANCE, FixedThreshold
from mosaic.core.config import TRACKING_MODES, TrackingCfg
from mosaic.core.errors import MosaicError
from mosaic.core.script_args import choice_field, parse_dataclass_args
from mosaic.report.tracking import log_run
from mosaic.workloads.routerbench import TASKS, RouterBenchTask, default_data_dir, load_routerbench

PLOT_RULE = "expected loss"  # the learned rule swept on the accuracy-vs-skip plot
PAPER_SKIP = {1.0: "45.7/47.5/37.4", 0.67: "84.6/90.2/87.4"}  # MMLU-Pro/MedMCQA/GPQA skip % (PAPER_NOTES.md)


@dataclass
class Args:
    """Command-line arguments (each field is a --flag; tuples take several values)."""

    out: str = "runs/routerbench_aggregation"  # folder for table.csv, results.json and the PNG plot
    data_dir: str = ""  # RouterBench CSV folder (default: $MOSAIC_SHARED_DATA/routerbench or ../shared/data/...)
    eval_dir: str = ""  # evaluate on the same-named CSVs here (calibrate on all of --data-dir); "": seeded halves
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
    folds: int = 5  # calibration folds for the learned rules' out-of-fold cuts
    boot: int = 2000  # bootstrap resamples of the evaluation questions (95% intervals)
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
    questions: Questions | None = None  # the same questions, for the learned rules
    rows: list[dict] = field(default_factory=list)
    learned: list[dict] = field(default_factory=list)  # learned-rule rows (learned.csv)
    sweeps: dict[str, list[tuple[float, float]]] = field(default_factory=dict)  # rule -> (skip %, acc %) points
    calibration: dict[str, np.ndarray] = field(default_factory=dict)  # confidence name -> per question


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
    conf = np.array([r.confidence for r in results])
    queries = tuple(task.queries[int(q)] for q in qids)
    votes = tuple(tuple(None if g < 0 else str(g) for g in r.labels) for r in results)  # agreement groups
    lengths = tuple(tuple(len(t) for t in task.texts(int(q), experts)) for q in qids)
    n_options = max((len(q.choices) for q in queries), default=0) if task.kind is AnswerKind.CHOICE else 0
    qs = Questions(experts, n_options, queries, votes, lengths, task.correct[np.ix_(qids, cols)], rep, agg, conf)
    return SetResult(task.name, name, experts, conf, rep, agg, qs)


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
                "experts": short_names(res.experts),
                "n": len(res.conf),
                "T": t,
                "skip_pct": 100 * skip.mean(),
                "acc_always_pct": 100 * res.agg_correct.mean(),
                "acc_adaptive_pct": 100 * adaptive.mean(),
                "delta_pp": 100 * (adaptive.mean() - res.agg_correct.mean()),
            }
        )
    return rows


def short_names(experts: tuple[str, ...]) -> str:
    return "+".join(e.split("/")[-1].removesuffix("-chat") for e in experts)


def load_split(name: str, args: Args) -> tuple[RouterBenchTask, np.ndarray, RouterBenchTask, np.ndarray]:
    """(calibration task, its question ids, evaluation task, its ids): the seeded halves of the ``--data-dir``
    file, or (``--eval-dir``) all of it for calibration and all of the same-named file in DIR for evaluation."""
    task = load_routerbench(name, args.data_dir or None, args.limit or None)
    for m in (*args.fixed, args.aggregator):
        task.model_index(m)  # raises with the valid names when unknown
    if not args.eval_dir:
        calib, evals = split_halves(len(task.queries), np.random.default_rng(args.seed))
        return task, calib, task, evals
    ev = load_routerbench(name, args.eval_dir, args.limit or None)
    return task, np.arange(len(task.queries)), ev, np.arange(len(ev.queries))


def run_task(name: str, args: Args) -> list[SetResult]:
    """Both expert sets of one task: fixed thresholds and learned rules, evaluated on the evaluation questions."""
    task, calib, ev_task, evals = load_split(name, args)
    sets = {"fixed": tuple(args.fixed[: args.k]), "routed": route_top_k(task, calib, args.k, args.aggregator)}
    queries = tuple(ev_task.queries[int(q)] for q in evals)
    out = []
    for set_name, experts in sets.items():
        res = evaluate_set(ev_task, set_name, experts, evals, args)
        res.rows = rows_for(res, args.thresholds, queries)
        res.rows += [r | {"grid": True} for r in rows_for(res, args.grid, queries)]
        cal = evaluate_set(task, set_name, experts, calib, args)
        learn(cal, res, args)
        out.append(res)
    return out


def learn(cal: SetResult, res: SetResult, args: Args) -> None:
    """The learned rules of one expert set: fitted and cut on ``cal``, evaluated on ``res`` (filled in place)."""
    assert cal.questions is not None and res.questions is not None
    if len(cal.questions) < 2:
        return
    boot, folds = np.random.default_rng([args.seed, 2]), min(args.folds, len(cal.questions))
    ref_cal, ref = cal.conf >= 1.0 - DEFAULT_TOLERANCE, res.conf >= 1.0 - DEFAULT_TOLERANCE  # T = 1
    acc_cal = float(np.where(ref_cal, cal.rep_correct, cal.agg_correct).mean())
    fixed = fixed_skips(res.conf, args.grid)
    for rule in RULES:
        fold_rng = np.random.default_rng([args.seed, 1])  # the same folds for every rule, whatever --boot is
        oof, scores = rule_scores(rule, cal.questions, res.questions, folds, fold_rng)
        cuts = {"@T=1 skip": cut_for_rate(oof, float(ref_cal.mean())),
                "@T=1 acc": cut_for_accuracy(oof, cal.rep_correct, cal.agg_correct, acc_cal)}  # fmt: skip
        for point, cut in cuts.items():
            c = compare(scores <= cut, ref, fixed, res.rep_correct, res.agg_correct, boot, args.boot)
            res.learned.append(learned_row(res, f"{rule} {point}", c))
        sweep = [cut_for_rate(oof, r) for r in np.linspace(0, 1, 21)]
        res.sweeps[rule] = [(100 * float((scores <= c).mean()),
                             100 * float(np.where(scores <= c, res.rep_correct, res.agg_correct).mean()))
                            for c in sweep]  # fmt: skip
    model = cal.questions.fit(np.arange(len(cal.questions)))
    x = res.questions.features(model.reliability, np.arange(len(res.questions)))
    res.calibration = {"vote share": res.conf, "weighted posterior": x[:, SKIP_FEATURE_NAMES.index("posterior")],
                       "calibrated P(majority)": model.p_majority(x)}  # fmt: skip


def learned_row(res: SetResult, policy: str, c: Comparison) -> dict:
    """One learned.csv row: skip and accuracy, and the 95% intervals of its gains."""
    row = {"task": res.task, "set": res.name, "experts": short_names(res.experts), "n": len(res.conf),
           "policy": policy, "skip_pct": 100 * c.skip, "acc_pct": 100 * c.accuracy, "t1_skip_pct": 100 * c.ref_skip,
           "t1_acc_pct": 100 * c.ref_accuracy}  # fmt: skip
    for key, (est, lo, hi), scale in (("gain_vs_t1_pp", c.gain, 100), ("skip_ratio", c.skip_ratio, 1),
                                      ("front_gap_pp", c.front_gap, 100)):  # fmt: skip
        row |= {key: scale * est, f"{key}_lo": scale * lo, f"{key}_hi": scale * hi}
    return row


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
            sweep = sorted(res.sweeps.get(PLOT_RULE, []))
            if sweep:
                ax.plot(*zip(*sweep, strict=True), "x--", lw=0.9, ms=4, color=line[0].get_color(),
                        label=f"{res.name}: learned ({PLOT_RULE})")  # fmt: skip
        ax.axhline(always, ls="--", c="gray", lw=0.8, label="always aggregate")
        ax.set(title=task, xlabel="aggregator skipped (%)", ylabel="accuracy (%)")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_reliability(results: list[SetResult], path: Path) -> None:
    """Reliability diagram per task (the fixed expert set): accuracy vs confidence of each confidence."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fixed = [r for r in results if r.name == "fixed" and r.calibration]
    fig, axes = plt.subplots(1, max(len(fixed), 1), figsize=(4.2 * max(len(fixed), 1), 3.8), squeeze=False)
    for ax, res in zip(axes[0], fixed, strict=False):
        for name, conf in res.calibration.items():
            pts = reliability_bins(conf, res.rep_correct)
            ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", ms=3,
                    label=f"{name} (ECE {ece(conf, res.rep_correct):.3f})")  # fmt: skip
        ax.plot([0, 1], [0, 1], ls="--", c="gray", lw=0.8)
        ax.set(title=f"{res.task} (held-out)", xlabel="confidence", ylabel="majority answer correct")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def calibration_rows(results: list[SetResult]) -> list[dict]:
    """ECE of each confidence of the majority answer, per task and expert set (evaluation questions)."""
    return [{"task": r.task, "set": r.name, "n": len(r.conf)} | {f"ece {k}": ece(v, r.rep_correct)
            for k, v in r.calibration.items()} for r in results]  # fmt: skip


def _csv(path: Path, rows: list[dict]) -> None:
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def write_outputs(results: list[SetResult], out: Path, args: Args) -> list[dict]:
    """table.csv (task x T rows), learned.csv, calibration.csv, results.json (all rows + settings),
    accuracy_vs_skip.png and reliability.png."""
    out.mkdir(parents=True, exist_ok=True)
    table = [r for res in results for r in res.rows if not r.get("grid")]
    _csv(out / "table.csv", table)
    _csv(out / "learned.csv", [r for res in results for r in res.learned])
    _csv(out / "calibration.csv", calibration_rows(results))
    meta = {"args": dataclasses.asdict(args), "rows": [r for res in results for r in res.rows],
            "learned": [r for res in results for r in res.learned], "calibration": calibration_rows(results),
            "sweeps": {f"{r.task}/{r.name}": r.sweeps for r in results}}  # fmt: skip
    (out / "results.json").write_text(json.dumps(meta, indent=1))
    plot(results, out / "accuracy_vs_skip.png")
    plot_reliability(results, out / "reliability.png")
    return table


def print_learned(results: list[SetResult]) -> None:
    """The learned rules' table and the calibration table (rich)."""
    from rich.console import Console
    from rich.table import Table

    def ci(row: dict, key: str, fmt: str) -> str:
        return f"{row[key]:{fmt}} [{row[key + '_lo']:{fmt}}, {row[key + '_hi']:{fmt}}]"

    t = Table("task", "set", "policy", "skip %", "acc %", "T=1 skip %", "T=1 acc %", "vs T=1 pp (95% CI)",
              "skip / T=1 (95% CI)", "vs front pp (95% CI)",
              title="Learned skip rules on the evaluation questions (fitted, cut on the calibration ones)")  # fmt: skip
    for res in results:
        for r in res.learned:
            t.add_row(r["task"], r["set"], r["policy"], f"{r['skip_pct']:.1f}", f"{r['acc_pct']:.1f}",
                      f"{r['t1_skip_pct']:.1f}", f"{r['t1_acc_pct']:.1f}", ci(r, "gain_vs_t1_pp", "+.2f"),
                      ci(r, "skip_ratio", ".2f"), ci(r, "front_gap_pp", "+.2f"))  # fmt: skip
        t.add_section()
    console = Console(width=200)
    console.print(t)
    rows = calibration_rows(results)
    c = Table(*rows[0], title="ECE of the majority answer's confidence (evaluation questions; lower is better)")
    for r in rows:
        c.add_row(*(f"{v:.4f}" if isinstance(v, float) else str(v) for v in r.values()))
    console.print(c)


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
    if args.eval_dir and not Path(args.eval_dir).is_dir():
        raise MosaicError(f"--eval-dir {args.eval_dir} is not a folder")
    if args.folds < 2 or args.boot < 1:
        raise MosaicError(f"--folds must be >= 2 and --boot >= 1, got {args.folds}, {args.boot}")


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
    print_learned(results)
    print(f"wrote {args.out}/table.csv, learned.csv, calibration.csv, results.json, accuracy_vs_skip.png, "
          f"reliability.png in {time.perf_counter() - start:.1f} s")  # fmt: skip
    config = {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(args).items()}
    directory = log_run(TrackingCfg(mode=args.wandb), "routerbench-aggregation", config, args.out,
                        {"table": (list(table[0]), [list(r.values()) for r in table])},
                        {"accuracy_vs_skip": Path(args.out) / "accuracy_vs_skip.png"})  # fmt: skip
    if directory is not None:
        print(f"W&B ({args.wandb}) -> {directory}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
