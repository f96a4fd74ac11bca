"""Load-aware skip decisions under online load: accuracy vs p99 latency against every fixed threshold.

MedMCQA on the simulator without a stage barrier (each query's skip decided when its experts answer). Arrivals are
Poisson at a share of round-robin's capacity (as in ``experiments/online_load.py``: its throughput on the same
queries as one offline batch). At each load every policy serves the same arrivals with the same scheduler:

- fixed thresholds: always aggregate, T = 1, T = 2/3, T = 1/3 (skip every query with an answer);
- load-aware (:class:`~mosaic.aggregation.thresholds.LoadAwareThreshold`): T = 1 while the aggregator keeps up, 2/3
  when its queue holds >= ``backlog_s`` predicted seconds per worker or the query has waited ``slo_s`` seconds.

``--aggregator-fix P``: in the synthetic MedMCQA responses the aggregator is no better than the experts' majority
(skipping *raises* accuracy there, so T = 2/3 is both the most accurate and the fastest fixed rule and nothing can
dominate it). With P > 0 each wrong aggregator answer is made right with probability P (seeded; lengths and timing
unchanged), so aggregating pays as it does on RouterBench, where the aggregator beats T = 1 by 1.3-2.6 pp.

The load-aware settings are chosen on the ``--tune-seeds`` (their own questions and arrivals): per load, the
setting with the lowest p99 among those at least as accurate as T = 1 there; the chosen setting is then measured on
``--seeds``, never seen while choosing. Reported per policy and load: accuracy, skip rate, p50 / p99 latency (mean
and 95% interval over seeds), and, for the chosen load-aware setting, the paired per-seed differences to each fixed
T; table.txt, results.json and accuracy_vs_p99.png under ``--out``.

Run: ``python experiments/online_aggregation.py`` (about 2 s per simulated run of 4183 queries).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from mosaic.aggregation.interface import AggregationPolicy, AlwaysAggregate
from mosaic.aggregation.skip_front import front_accuracy
from mosaic.aggregation.thresholds import FixedThreshold, LoadAwareThreshold
from mosaic.core.config import load_config
from mosaic.core.script_args import parse_dataclass_args
from mosaic.core.types import Response, Responses
from mosaic.pipeline import Experiment, plan_scheduler, prepare, run_scheduler
from mosaic.report.gantt import plt  # matplotlib with the Agg backend
from mosaic.report.metrics import mean_ci

CONFIG = Path(__file__).resolve().parent / "configs" / "medmcqa.yaml"
FIXED = {"always": None, "T=1": 1.0, "T=2/3": 0.67, "T=1/3": 0.34}


@dataclass(frozen=True)
class Args:
    """Command-line arguments (each field is a --flag; tuples take several values)."""

    config: str = str(CONFIG)
    scheduler: str = "greedy-online"  # the scheduler every policy runs with
    loads: tuple[float, ...] = (0.8, 0.95)  # arrival rate as a share of round-robin's capacity
    seeds: tuple[int, ...] = (0, 1, 2)  # evaluation seeds (questions, responses and arrivals)
    tune_seeds: tuple[int, ...] = (100, 101)  # seeds on which the load-aware setting is chosen
    backlogs: tuple[float, ...] = (30.0, 100.0, 300.0, math.inf)  # backlog_s grid (s of aggregator work / worker)
    slos: tuple[float, ...] = (math.inf, 1000.0, 2000.0, 3000.0)  # slo_s grid (seconds waited since arrival)
    aggregator_fix: float = 0.0  # share of wrong aggregator answers made right (0: the preset's responses)
    set: tuple[str, ...] = ()  # config overrides KEY=VALUE
    out: str = "runs/online_aggregation"
    results: str = ""  # re-render table.txt and the plot from this results.json (no simulation)


def _cfg(args: Args, seed: int, rate: float | None):
    arrivals = [f"workload.arrival_rate={rate}", "workload.arrival_process=poisson"] if rate else []
    return load_config(args.config, [*args.set, f"seed={seed}", "runtime.barrier=false", "tracking.mode=disabled",
                                     *arrivals])  # fmt: skip


def policies(args: Args) -> dict[str, AggregationPolicy]:
    """Every fixed threshold and every load-aware setting of the grid, by name."""
    out: dict[str, AggregationPolicy] = {n: AlwaysAggregate() if t is None else FixedThreshold(t)
                                         for n, t in FIXED.items()}  # fmt: skip
    for b in args.backlogs:
        for slo in args.slos:
            if not (math.isinf(b) and math.isinf(slo)):  # that one is T = 1
                out[load_name(b, slo)] = LoadAwareThreshold(1.0, 0.67, b, slo)
    return out


def stronger_aggregator(exp: Experiment, fix: float, seed: int) -> Experiment:
    """``exp`` with each wrong aggregator answer made right with probability ``fix`` (lengths unchanged)."""
    if fix <= 0:
        return exp
    rng, agg = np.random.default_rng([seed, 20]), exp.workload.aggregator.name
    table = dict(exp.responses.table)
    for q in exp.workload.queries:
        r = table[(q.id, agg)]
        if r.correct is False and rng.random() < fix:
            table[(q.id, agg)] = Response(r.output_tokens, q.gold if q.gold is not None else r.answer, True, r.text)
    return replace(exp, responses=Responses(table))


def load_name(backlog: float, slo: float) -> str:
    return "load-aware" + ("" if math.isinf(backlog) else f" b={backlog:g}") + ("" if math.isinf(slo) else
                                                                                 f" slo={slo:g}")  # fmt: skip


def measure(args: Args, seed: int, load: float, pols: dict[str, AggregationPolicy]) -> dict[str, dict]:
    """policy -> {accuracy, skip, p50, p99, mean} on one seed's queries at one load."""
    exp0 = prepare(_cfg(args, seed, None))
    capacity = len(exp0.workload.queries) / run_scheduler(exp0, "round-robin").metrics.end_to_end
    exp = stronger_aggregator(prepare(_cfg(args, seed, load * capacity)), args.aggregator_fix, seed)
    out = {}
    for name, pol in pols.items():
        run = run_scheduler(exp, plan_scheduler(exp, args.scheduler, pol))
        m, r = run.metrics, run.result
        out[name] = {"accuracy": r.accuracy, "skip": r.skip_rate, "p50": m.latency["p50"], "p99": m.latency["p99"],
                     "mean": m.latency["mean"], "capacity": capacity}  # fmt: skip
    return out


def front_gaps(runs: dict[str, list[dict]], name: str) -> list[float]:
    """Per seed: ``name``'s accuracy minus the fixed-T front's (upper hull over p99) at ``name``'s p99."""
    out = []
    for i, r in enumerate(runs[name]):
        pts = np.array([(runs[f][i]["p99"], runs[f][i]["accuracy"]) for f in FIXED])
        out.append(r["accuracy"] - front_accuracy(r["p99"], pts, more_is_better=False))
    return out


def dominated(runs: dict[str, list[dict]], name: str) -> list[str]:
    """The fixed rules ``name`` dominates on the seed means: at least as accurate and no slower at p99."""

    def mean(n: str, key: str) -> float:
        return float(np.mean([r[key] for r in runs[n]]))

    return [f for f in FIXED if f != name and mean(name, "accuracy") >= mean(f, "accuracy")
            and mean(name, "p99") <= mean(f, "p99")]  # fmt: skip


def choose(tuned: dict[str, list[dict]]) -> str:
    """The load-aware setting lying farthest beyond the fixed-T front (mean over the tuning seeds)."""
    return max((n for n in tuned if n.startswith("load-aware")), key=lambda n: float(np.mean(front_gaps(tuned, n))))


def run_all(args: Args, console: Console) -> dict:
    pols = policies(args)
    doc: dict = {"args": asdict(args), "loads": {}}
    for load in args.loads:
        tuned: dict[str, list[dict]] = {n: [] for n in pols}
        for seed in args.tune_seeds:
            for n, r in measure(args, seed, load, pols).items():
                tuned[n].append(r)
        chosen = choose(tuned)
        console.print(f"load {load:.0%}: chosen on seeds {list(args.tune_seeds)}: {chosen}")
        evals: dict[str, list[dict]] = {n: [] for n in pols}
        for seed in args.seeds:
            for n, r in measure(args, seed, load, pols).items():
                evals[n].append(r)
        doc["loads"][str(load)] = {"chosen": chosen, "tuned": tuned, "eval": evals}
    return doc


def paired(evals: dict[str, list[dict]], a: str, b: str, key: str) -> tuple[float, float]:
    """Mean and 95% half-width over seeds of ``a``'s ``key`` minus ``b``'s (paired: same seed, same arrivals)."""
    return mean_ci([x[key] - y[key] for x, y in zip(evals[a], evals[b], strict=True)])


def table(doc: dict) -> Table:
    t = Table("load", "policy", "accuracy %", "skip %", "p50 s", "p99 s", "Δacc vs chosen pp", "Δp99 vs chosen s",
              "vs front pp", "dominates",
              title="MedMCQA online (simulator, no barrier): fixed T vs load-aware; mean ± 95% CI over seeds;\n"
              "Δ = policy - chosen load-aware (paired by seed); vs front: accuracy above the fixed-T hull "
              "at its p99")  # fmt: skip
    for load, d in doc["loads"].items():
        ev, chosen = d["eval"], d["chosen"]
        for name in [*FIXED, chosen, *(n for n in ev if n.startswith("load-aware") and n != chosen)]:
            acc, skip = mean_ci([r["accuracy"] for r in ev[name]]), mean_ci([r["skip"] for r in ev[name]])
            p50, p99 = mean_ci([r["p50"] for r in ev[name]]), mean_ci([r["p99"] for r in ev[name]])
            da, dp = paired(ev, name, chosen, "accuracy"), paired(ev, name, chosen, "p99")
            label = f"[bold]{name} (chosen)[/bold]" if name == chosen else name
            gap = mean_ci(front_gaps(ev, name)) if name not in FIXED else None
            gap_s = "" if gap is None else f"{100 * gap[0]:+.2f} ± {100 * gap[1]:.2f}"
            t.add_row(f"{float(load):.0%}", label, f"{100 * acc[0]:.2f} ± {100 * acc[1]:.2f}",
                      f"{100 * skip[0]:.1f}", f"{p50[0]:,.0f} ± {p50[1]:,.0f}", f"{p99[0]:,.0f} ± {p99[1]:,.0f}",
                      f"{100 * da[0]:+.2f} ± {100 * da[1]:.2f}", f"{dp[0]:+,.0f} ± {dp[1]:,.0f}", gap_s,
                      "" if name in FIXED else ", ".join(dominated(ev, name)))  # fmt: skip
        t.add_section()
    return t


def plot(doc: dict, path: Path) -> Path:
    loads = list(doc["loads"])
    fig, axes = plt.subplots(1, len(loads), figsize=(5.2 * len(loads), 4.0), squeeze=False)
    for ax, load in zip(axes[0], loads, strict=True):
        ev, chosen = doc["loads"][load]["eval"], doc["loads"][load]["chosen"]

        def point(name: str, ev: dict = ev) -> tuple[float, float]:
            return float(np.mean([r["p99"] for r in ev[name]])), 100 * float(np.mean([r["accuracy"] for r in ev[name]]))

        fixed = sorted(point(n) for n in FIXED)
        ax.plot(*zip(*fixed, strict=True), "o-", c="tab:blue", label="fixed T (always, 1, 2/3, 1/3)")
        for n in FIXED:
            ax.annotate(n, point(n), fontsize=7, textcoords="offset points", xytext=(3, 3))
        grid = [point(n) for n in ev if n.startswith("load-aware")]
        ax.plot(*zip(*grid, strict=True), "x", c="tab:orange", ms=5, label="load-aware settings")
        ax.plot(*point(chosen), "*", c="tab:red", ms=12, label=f"chosen on tuning seeds: {chosen}")
        ax.set(title=f"MedMCQA, {float(load):.0%} load", xlabel="p99 latency (s)", ylabel="accuracy (%)")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> dict:
    args = parse_dataclass_args(Args, __doc__, argv)
    console = Console(width=200)
    _cfg(args, args.seeds[0], None)  # a bad config stops here
    if args.results:  # the tuning runs are stored: the setting is chosen again, by today's rule
        doc = json.loads(Path(args.results).read_text(encoding="utf-8"))
        for d in doc["loads"].values():
            d["chosen"] = choose(d["tuned"])
    else:
        doc = run_all(args, console)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t = table(doc)
    console.print(t)
    with (out / "table.txt").open("w", encoding="utf-8") as fh:
        Console(file=fh, width=200, color_system=None).print(t)
    (out / "results.json").write_text(json.dumps(doc, indent=1, default=str), encoding="utf-8")
    console.print(f"results in {out}: table.txt, results.json, {plot(doc, out / 'accuracy_vs_p99.png').name}")
    return doc


if __name__ == "__main__":
    main()
