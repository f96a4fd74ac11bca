"""Load-aware skip decisions under online load: accuracy vs p99 latency against every fixed threshold.

MedMCQA on the simulator without a stage barrier (each query's skip decided when its experts answer). Arrivals are
Poisson at a share (``--loads``) of the rate the online system sustains, measured here (:func:`sustained_rate`):
the highest Poisson rate at which ``--scheduler`` serving the queries online with always-aggregate keeps up, i.e.
answers at least ``--keep-up`` (95%) as many queries as arrive over the second half of the arrival window (warm-up
left out), found by bisection on the log-rate on the tuning seeds. This is the full pipeline's throughput, experts
*and* aggregator, under the scheduler being measured; round-robin's offline batch throughput (the definition of
``experiments/online_load.py``) overstates it several-fold online, so "80%" there was overload and p99 measured
queue growth. At each load every policy serves the same arrivals with the same scheduler:

- fixed thresholds: always aggregate, T = 1, T = 2/3, T = 1/3 (skip every query with an answer);
- load-aware (:class:`~mosaic.aggregation.thresholds.LoadAwareThreshold`): T = 1, and 2/3 when the aggregator's
  queue holds >= ``backlog_s`` predicted seconds per worker;
- load ladder (:class:`~mosaic.aggregation.thresholds.BacklogLadder`): never skip while that backlog is below
  ``unanimous_s``, T = 1 from there, T = 2/3 from ``busy_s``.

Accuracy under several aggregators (``--aggregator-fixes``): in the synthetic MedMCQA responses the aggregator is
no better than the experts' majority (fix 0: skipping *raises* accuracy, so T = 2/3 is both the most accurate and
the fastest fixed rule and nothing can dominate it). With fix P > 0 each wrong aggregator answer is made right with
probability P (seeded; lengths and timing unchanged), so aggregating pays as on RouterBench. The fix changes no
timing and no skip decision (those see only the experts' answers), so one simulated run per policy gives the
accuracy under every fix.

Per fix and load, the ladder / load-aware setting is chosen on the ``--tune-seeds`` (:func:`choose`: the largest
worst-case margin over the fixed rules) and measured on ``--seeds``, never seen while choosing. Reported per policy
and load: accuracy, skip rate, p50 / p99 latency (mean and 95% interval over seeds), the chosen setting's paired
per-seed differences to each fixed T and whether it dominates each; table.txt, results.json and one
accuracy_vs_p99_fix<P>.png per fix under ``--out``.

Run: ``python experiments/online_aggregation.py`` (about 5-10 s per simulated run of 4183 queries).
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
from mosaic.aggregation.thresholds import BacklogLadder, FixedThreshold, LoadAwareThreshold
from mosaic.core.config import load_config
from mosaic.core.script_args import parse_dataclass_args
from mosaic.core.types import Response, Responses
from mosaic.pipeline import Experiment, SchedulerRun, plan_scheduler, prepare, run_scheduler
from mosaic.report.gantt import plt  # matplotlib with the Agg backend
from mosaic.report.metrics import answer_times, mean_ci

CONFIG = Path(__file__).resolve().parent / "configs" / "medmcqa.yaml"
FIXED = {"always": None, "T=1": 1.0, "T=2/3": 0.67, "T=1/3": 0.34}


@dataclass(frozen=True)
class Args:
    """Command-line arguments (each field is a --flag; tuples take several values)."""

    config: str = str(CONFIG)
    scheduler: str = "greedy-lpt+rolling"  # the scheduler every policy runs with (and whose capacity is measured)
    loads: tuple[float, ...] = (0.8, 0.95)  # arrival rate as a share of the sustained rate (sustained_rate)
    keep_up: float = 0.95  # sustained: answers / arrivals over the second half of the arrival window >= this
    bisect_steps: int = 7  # bisection steps on log2(rate) over [offline rate / 64, offline rate]
    seeds: tuple[int, ...] = (0, 1, 2)  # evaluation seeds (questions, responses and arrivals)
    tune_seeds: tuple[int, ...] = (100, 101)  # seeds on which the capacity is measured and the setting chosen
    backlogs: tuple[float, ...] = (30.0, 100.0, 300.0)  # load-aware backlog_s grid (s of aggregator work / worker)
    unanimous: tuple[float, ...] = (0.0, 10.0, 30.0, 100.0)  # ladder unanimous_s grid (T = 1 from this backlog)
    busy: tuple[float, ...] = (30.0, 100.0, 300.0, math.inf)  # ladder busy_s grid (T = 2/3 from this backlog)
    ladders: tuple[str, ...] = ()  # more ladder settings "U,B,T,SLO": unanimous_s, busy_s, busy threshold, slo_s
    capacity: float = 0.0  # sustained rate in queries/s (0: measure it by bisection, sustained_rate)
    capacity_only: bool = False  # measure the sustained rate, write capacity.json under --out, and stop
    aggregator_fixes: tuple[float, ...] = (0.0, 0.3)  # shares of wrong aggregator answers made right (0: preset)
    set: tuple[str, ...] = ()  # config overrides KEY=VALUE
    out: str = "runs/online_aggregation"
    results: str = ""  # re-render table.txt and the plots from this results.json (no simulation)


def _cfg(args: Args, seed: int, rate: float | None):
    arrivals = [f"workload.arrival_rate={rate}", "workload.arrival_process=poisson"] if rate else []
    return load_config(args.config, [*args.set, f"seed={seed}", "runtime.barrier=false", "tracking.mode=disabled",
                                     *arrivals])  # fmt: skip


def policies(args: Args) -> dict[str, AggregationPolicy]:
    """Every fixed threshold, load-aware and ladder setting of the grids, by name."""
    out: dict[str, AggregationPolicy] = {n: AlwaysAggregate() if t is None else FixedThreshold(t)
                                         for n, t in FIXED.items()}  # fmt: skip
    for b in args.backlogs:
        out[f"load-aware b={b:g}"] = LoadAwareThreshold(1.0, 0.67, b)
    for u in args.unanimous:
        for b in args.busy:
            if u < b and not (u == 0 and math.isinf(b)):  # (0, inf) is T = 1
                out[ladder_name(u, b)] = BacklogLadder(u, b)
    for spec in args.ladders:
        u, b, t, slo = (float(x) for x in spec.split(","))
        out[ladder_name(u, b, t, slo)] = BacklogLadder(u, b, t, slo)
    return out


def ladder_name(unanimous: float, busy: float, threshold: float = 0.67, slo: float = math.inf) -> str:
    """E.g. ``ladder u=10 b=100``, ``ladder u=inf T=0.34 slo=1500`` (infinite busy / slo and T = 0.67 left out)."""
    parts = [f"u={unanimous:g}", "" if math.isinf(busy) else f"b={busy:g}", "" if threshold == 0.67 else
             f"T={threshold:g}", "" if math.isinf(slo) else f"slo={slo:g}"]  # fmt: skip
    return " ".join(["ladder", *(p for p in parts if p)])


def adaptive(names) -> list[str]:
    """The load-dependent policies among ``names`` (every name that is not a fixed rule)."""
    return [n for n in names if n not in FIXED]


# ---- capacity ---------------------------------------------------------------------------------------------------


def keep_up(arrivals: np.ndarray, ends: np.ndarray) -> float:
    """Queries answered / queries arrived over the second half of the arrival window (arrival and answer time of
    each query; inf: never answered). About 1 while the queue is stable (as many leave as come), below it when the
    queue grows; answers of queries that came before the half count, so a stable system is not penalised for its
    latency."""
    half, last = arrivals.max() / 2, arrivals.max()
    came = int(((arrivals > half) & (arrivals <= last)).sum())
    return int(((ends > half) & (ends <= last)).sum()) / max(came, 1)


def _keep_up_of(exp: Experiment, run: SchedulerRun) -> float:
    done = answer_times(run.records)
    arrivals = np.array([q.arrival for q in exp.workload.queries])
    return keep_up(arrivals, np.array([done.get(q.id, math.inf) for q in exp.workload.queries]))


def sustained_rate(args: Args, console: Console) -> dict:
    """The highest Poisson rate (queries/s) at which ``args.scheduler`` with always-aggregate keeps up (mean
    :func:`keep_up` over the tuning seeds >= ``args.keep_up``): bisection on log2(rate) within [offline / 64,
    offline], offline = the scheduler's throughput on the tuning seeds' queries as one batch (an upper bound)."""
    offline = float(np.mean([_offline_rate(args, s) for s in args.tune_seeds]))
    lo, hi, steps = math.log2(offline / 64), math.log2(offline), []
    for _ in range(args.bisect_steps):
        mid = (lo + hi) / 2
        rate = 2**mid
        k = float(np.mean([_keep_up_of(*_always_run(args, s, rate)) for s in args.tune_seeds]))
        steps.append({"rate": rate, "keep_up": k})
        console.print(f"  rate {rate:.4f} q/s: keeps up {k:.3f}")
        lo, hi = (mid, hi) if k >= args.keep_up else (lo, mid)
    return {"rate": 2**lo, "offline": offline, "steps": steps}


def _offline_rate(args: Args, seed: int) -> float:
    exp = prepare(_cfg(args, seed, None))
    run = run_scheduler(exp, plan_scheduler(exp, args.scheduler, AlwaysAggregate()))
    return len(exp.workload.queries) / run.metrics.end_to_end


def _always_run(args: Args, seed: int, rate: float) -> tuple[Experiment, SchedulerRun]:
    exp = prepare(_cfg(args, seed, rate))
    return exp, run_scheduler(exp, plan_scheduler(exp, args.scheduler, AlwaysAggregate()))


# ---- accuracy under a stronger aggregator -----------------------------------------------------------------------


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


def accuracy_under(exp: Experiment, run: SchedulerRun, fix: float, seed: int) -> float:
    """The run's accuracy had the aggregator been ``stronger_aggregator(exp, fix, seed)``'s (same decisions: a
    skipped query keeps its majority answer, an aggregated one takes that aggregator's)."""
    table, agg = stronger_aggregator(exp, fix, seed).responses.table, exp.workload.aggregator.name
    known = [d.correct if d.skipped else table[(d.query_id, agg)].correct for d in run.result.decisions]
    known = [c for c in known if c is not None]
    return sum(known) / len(known) if known else math.nan


def fix_key(fix: float) -> str:
    return f"acc@{fix:g}"


def measure(args: Args, seed: int, rate: float, pols: dict[str, AggregationPolicy]) -> dict[str, dict]:
    """policy -> {acc@<fix> per fix, skip, p50, p99, mean} on one seed's queries arriving at ``rate``."""
    exp, out = prepare(_cfg(args, seed, rate)), {}
    for name, pol in pols.items():
        run = run_scheduler(exp, plan_scheduler(exp, args.scheduler, pol))
        m = run.metrics
        out[name] = {fix_key(f): accuracy_under(exp, run, f, seed) for f in args.aggregator_fixes}
        out[name] |= {"skip": run.result.skip_rate, "p50": m.latency["p50"], "p99": m.latency["p99"],
                      "mean": m.latency["mean"]}  # fmt: skip
    return out


def measure_seeds(args: Args, seeds: tuple[int, ...], rate: float, pols: dict) -> dict[str, list[dict]]:
    """policy -> one :func:`measure` row per seed, in ``seeds`` order."""
    runs: dict[str, list[dict]] = {n: [] for n in pols}
    for seed in seeds:
        for n, r in measure(args, seed, rate, pols).items():
            runs[n].append(r)
    return runs


# ---- choosing and comparing -------------------------------------------------------------------------------------


def _mean(runs: dict[str, list[dict]], name: str, key: str) -> float:
    return float(np.mean([r[key] for r in runs[name]]))


def margin(runs: dict[str, list[dict]], name: str, acc: str) -> float:
    """Worst-case margin of ``name`` over the fixed rules on the seed means: min(accuracy minus the most accurate
    fixed rule's, in pp; the fastest fixed rule's p99 minus its own, in % of that p99). >= 0: dominates them all."""
    best_acc = max(_mean(runs, f, acc) for f in FIXED)
    best_p99 = min(_mean(runs, f, "p99") for f in FIXED)
    return min(100 * (_mean(runs, name, acc) - best_acc), 100 * (best_p99 - _mean(runs, name, "p99")) / best_p99)


def choose(tuned: dict[str, list[dict]], acc: str) -> str:
    """The load-dependent setting with the largest :func:`margin` on the tuning seeds."""
    return max(adaptive(tuned), key=lambda n: margin(tuned, n, acc))


def front_gaps(runs: dict[str, list[dict]], name: str, acc: str) -> list[float]:
    """Per seed: ``name``'s accuracy minus the fixed-T front's (upper hull over p99) at ``name``'s p99."""
    out = []
    for i, r in enumerate(runs[name]):
        pts = np.array([(runs[f][i]["p99"], runs[f][i][acc]) for f in FIXED])
        out.append(r[acc] - front_accuracy(r["p99"], pts, more_is_better=False))
    return out


def paired(evals: dict[str, list[dict]], a: str, b: str, key: str) -> tuple[float, float]:
    """Mean and 95% half-width over seeds of ``a``'s ``key`` minus ``b``'s (paired: same seed, same arrivals)."""
    return mean_ci([x[key] - y[key] for x, y in zip(evals[a], evals[b], strict=True)])


def verdict(da: tuple[float, float], dp: tuple[float, float]) -> str:
    """Whether a policy dominates a fixed rule, from the paired (accuracy, p99) differences policy - rule:
    'yes (CI)' both intervals on the right side of 0 or at 0, 'on means' both means, 'within CI' no interval
    excludes domination, 'no' an interval excludes it."""
    if da[0] - da[1] >= -1e-12 and dp[0] + dp[1] <= 1e-9:
        return "yes (CI)"
    if da[0] >= -1e-12 and dp[0] <= 1e-9:
        return "on means"
    return "within CI" if da[0] + da[1] >= 0 and dp[0] - dp[1] <= 0 else "no"


def run_all(args: Args, console: Console) -> dict:
    pols = policies(args)
    cap = {"rate": args.capacity, "offline": math.nan, "steps": []} if args.capacity else sustained_rate(args, console)
    console.print(f"sustained rate ({args.scheduler}, always): {cap['rate']:.4f} q/s (offline {cap['offline']:.3f})")
    doc: dict = {"args": asdict(args), "capacity": cap, "loads": {}}
    for load in args.loads:
        rate = load * cap["rate"]
        tuned = measure_seeds(args, args.tune_seeds, rate, pols)
        chosen = {fix_key(f): choose(tuned, fix_key(f)) for f in args.aggregator_fixes}
        console.print(f"load {load:.0%} ({rate:.4f} q/s): chosen on seeds {list(args.tune_seeds)}: {chosen}")
        evals = measure_seeds(args, args.seeds, rate, pols)
        doc["loads"][str(load)] = {"rate": rate, "chosen": chosen, "tuned": tuned, "eval": evals}
    return doc


# ---- output -----------------------------------------------------------------------------------------------------


def _pm(x: tuple[float, float], scale: float = 1.0, fmt: str = ".2f") -> str:
    return f"{scale * x[0]:{fmt}} ± {scale * x[1]:{fmt.lstrip('+')}}"


def table(doc: dict, fix: float) -> Table:
    acc = fix_key(fix)
    t = Table("load", "policy", "accuracy %", "skip %", "p50 s", "p99 s", "Δacc vs chosen pp", "Δp99 vs chosen s",
              "vs front pp", title=f"MedMCQA online ({doc['args']['scheduler']}, no barrier), aggregator fix "
              f"{fix:g}: mean ± 95% CI over seeds; Δ = policy - chosen (paired by seed); vs front: accuracy above "
              "the fixed-T hull at its p99")  # fmt: skip
    for load, d in doc["loads"].items():
        ev, chosen = d["eval"], d["chosen"][acc]
        for name in [*FIXED, chosen, *(n for n in adaptive(ev) if n != chosen)]:
            gap = "" if name in FIXED else _pm(mean_ci(front_gaps(ev, name, acc)), 100, "+.2f")
            label = f"[bold]{name} (chosen)[/bold]" if name == chosen else name
            t.add_row(f"{float(load):.0%}", label, _pm(mean_ci([r[acc] for r in ev[name]]), 100),
                      f"{100 * _mean(ev, name, 'skip'):.1f}", _pm(mean_ci([r["p50"] for r in ev[name]]), 1, ",.0f"),
                      _pm(mean_ci([r["p99"] for r in ev[name]]), 1, ",.0f"),
                      _pm(paired(ev, name, chosen, acc), 100, "+.2f"), _pm(paired(ev, name, chosen, "p99"), 1, "+,.0f"),
                      gap)  # fmt: skip
        t.add_section()
    return t


def domination_table(doc: dict, fix: float) -> Table:
    """The chosen setting against each fixed rule: paired differences (chosen - rule) and the verdict."""
    acc = fix_key(fix)
    t = Table("load", "chosen", "vs", "Δacc pp", "Δp99 s", "dominates",
              title=f"aggregator fix {fix:g}: chosen - fixed rule, paired by seed, mean ± 95% CI")  # fmt: skip
    for load, d in doc["loads"].items():
        ev, chosen = d["eval"], d["chosen"][acc]
        for f in FIXED:
            da, dp = paired(ev, chosen, f, acc), paired(ev, chosen, f, "p99")
            t.add_row(f"{float(load):.0%}", chosen, f, _pm(da, 100, "+.2f"), _pm(dp, 1, "+,.0f"), verdict(da, dp))
        t.add_section()
    return t


def plot(doc: dict, fix: float, path: Path) -> Path:
    acc, loads = fix_key(fix), list(doc["loads"])
    fig, axes = plt.subplots(1, len(loads), figsize=(5.2 * len(loads), 4.0), squeeze=False)
    for ax, load in zip(axes[0], loads, strict=True):
        ev, chosen = doc["loads"][load]["eval"], doc["loads"][load]["chosen"][acc]

        def point(name: str, ev: dict = ev) -> tuple[float, float]:
            return _mean(ev, name, "p99"), 100 * _mean(ev, name, acc)

        ax.plot(*zip(*sorted(point(n) for n in FIXED), strict=True), "o-", c="tab:blue", label="fixed T")
        for n in FIXED:
            ax.annotate(n, point(n), fontsize=7, textcoords="offset points", xytext=(3, 3))
        for prefix, c in (("load-aware", "tab:green"), ("ladder", "tab:orange")):
            pts = [point(n) for n in ev if n.startswith(prefix)]
            if pts:
                ax.plot(*zip(*pts, strict=True), "x", c=c, ms=5, label=f"{prefix} settings")
        ax.plot(*point(chosen), "*", c="tab:red", ms=12, label=f"chosen on tuning seeds: {chosen}")
        ax.set(title=f"MedMCQA, {float(load):.0%} of sustained rate, fix {fix:g}", xlabel="p99 latency (s)",
               ylabel="accuracy (%)")  # fmt: skip
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write(doc: dict, out: Path, console: Console) -> None:
    out.mkdir(parents=True, exist_ok=True)
    tables = [t for f in doc["args"]["aggregator_fixes"] for t in (table(doc, f), domination_table(doc, f))]
    with (out / "table.txt").open("w", encoding="utf-8") as fh:
        file_console = Console(file=fh, width=220, color_system=None)
        file_console.print(
            f"sustained rate: {doc['capacity']['rate']:.4f} q/s; loads: "
            + ", ".join(f"{float(k):.0%} = {v['rate']:.4f} q/s" for k, v in doc["loads"].items())
        )
        for t in tables:
            console.print(t)
            file_console.print(t)
    (out / "results.json").write_text(json.dumps(doc, indent=1, default=str), encoding="utf-8")
    pngs = [plot(doc, f, out / f"accuracy_vs_p99_fix{f:g}.png").name for f in doc["args"]["aggregator_fixes"]]
    console.print(f"results in {out}: table.txt, results.json, {', '.join(pngs)}")


def main(argv: list[str] | None = None) -> dict:
    args = parse_dataclass_args(Args, __doc__, argv)
    console = Console(width=220)
    _cfg(args, args.seeds[0], None)  # a bad config stops here
    if args.capacity_only:
        cap = sustained_rate(args, console)
        console.print(
            f"sustained rate ({args.scheduler}, always): {cap['rate']:.4f} q/s (offline {cap['offline']:.3f})"
        )
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / "capacity.json").write_text(json.dumps({"args": asdict(args), **cap}, indent=1))
        return cap
    if args.results:  # the tuning runs are stored: the setting is chosen again, by today's rule
        doc = json.loads(Path(args.results).read_text(encoding="utf-8"))
        for d in doc["loads"].values():
            d["chosen"] = {fix_key(f): choose(d["tuned"], fix_key(f)) for f in doc["args"]["aggregator_fixes"]}
    else:
        doc = run_all(args, console)
    write(doc, Path(args.out), console)
    return doc


if __name__ == "__main__":
    main()
