"""Does a per-request length predictor make the MOSAIC ILP's plans faster? Simulated makespan, mean vs LightGBM costs.

Setting: a paper workload (default: experiments/configs/mmlu_pro.yaml, synthetic responses whose lengths share a
per-query difficulty that is partly visible in the query). Its queries are split in two: LightGBM is trained on
the true lengths of one half (the "past traffic"), and the scheduler plans the other half, whose lengths it never
saw, once per cost predictor; the simulator replays the true lengths. ``--mode cross-seed`` instead trains on the
same config with seed+1 and runs the pipeline's own ``prepare`` with ``costs.predictor=lightgbm:PATH``.

With synthetic responses two ideal predictors bound what any per-query predictor could give: each request's
expected length given its query's whole difficulty (drawn by the response model; only the response's own noise
unknown) and given the difficulty's visible part (domain and prompt length, all a feature-based model can read).
``--selection-draws K`` adds two more: each scheduler's plan, among those it made with every predictor, with the
lowest mean simulated makespan over K length sets drawn from the true response model given the visible (resp.
whole) difficulty: the ideal stochastic choice among the plans at hand.

One table per workload seed; with several seeds (``--seeds 0 1 2 3 4``) a summary follows: each predictor's
makespan change against the configured means, per seed and as a mean with its 95% confidence interval (a seed's
change is mostly decided by which workers draw the few requests that reach the generation cap, so one seed says
little). Makespans of every seed go to ``OUT/CONFIG-MODE-summary.json``.

    python experiments/ilp_lengths.py [--config experiments/configs/mmlu_pro.yaml] [--seeds 0 1 2 3 4]
"""

from __future__ import annotations

import contextlib
import importlib
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Column, Table

from mosaic.agents import SCHEDULERS
from mosaic.core.config import TRACKING_MODES, RunConfig, TrackingCfg, load_config
from mosaic.core.errors import MosaicError
from mosaic.core.script_args import choice_field, parse_dataclass_args
from mosaic.core.trace import AGGREGATION_STAGE, EXPERT_STAGE, RequestRecord, TraceWriter
from mosaic.core.types import Plan, Request, Responses, Workload
from mosaic.pipeline import Experiment, prepare, run_scheduler, workload_rng
from mosaic.predictors.costmodel import ProfiledCostModel
from mosaic.predictors.factory import build_cost_model, build_profile
from mosaic.predictors.interface import LengthPredictor
from mosaic.predictors.length_data import rows_from_workload
from mosaic.predictors.lgbm import LightGBMLengthPredictor
from mosaic.report.metrics import mean_ci
from mosaic.report.tracking import log_run
from mosaic.runtime.registry import BACKENDS
from mosaic.workloads import expert_means
from mosaic.workloads.build import response_model, synthetic_difficulty
from mosaic.workloads.synthetic import draw_hidden, draw_lengths, expected_length

ROOT = Path(__file__).resolve().parents[1]
console = Console(width=None if sys.stdout.isatty() else 180)  # wide tables when piped to a file


@dataclass(frozen=True)
class Args:
    config: str = str(ROOT / "experiments" / "configs" / "mmlu_pro.yaml")  # paper workload config
    schedulers: str = "mosaic-ilp,greedy-lpt"  # comma-separated; mosaic-ilp is skipped when not registered
    seeds: tuple[int, ...] = (0,)  # workload seeds, one run each (cross-seed mode trains on seed + 1)
    mode: str = "heldout"  # heldout: train on half the queries, plan the other half | cross-seed
    train_frac: float = 0.5  # heldout: share of queries whose true lengths train the model
    out: str = "runs/ilp_lengths"  # where the model and the scatter PNG go
    set: tuple[str, ...] = ()  # config overrides KEY=VALUE (e.g. scheduler_options.mosaic-ilp.buckets=8)
    wandb: str = choice_field("offline", TRACKING_MODES)  # W&B mode of the run (tables and scatter PNGs)
    selection_draws: int = 0  # > 0: also each scheduler's best plan over this many true-model length draws


def parse_args() -> Args:
    return parse_dataclass_args(Args, __doc__)


def scheduler_names(wanted: str) -> list[str]:
    """The registered names of ``wanted`` (importing the ILP scheduler module first); greedy-lpt if none is."""
    with contextlib.suppress(ModuleNotFoundError):
        importlib.import_module("mosaic.agents.ilp_scheduler")
    names = [n.strip() for n in wanted.split(",") if n.strip()]
    for n in names:
        if n not in SCHEDULERS:
            console.print(f"[yellow]{n} is not registered; skipped[/yellow]")
    return [n for n in names if n in SCHEDULERS] or ["greedy-lpt"]


def sub_experiment(exp: Experiment, keep: np.ndarray, predictor: str) -> Experiment:
    """The queries ``keep`` of ``exp`` as their own workload (renumbered), costed by ``predictor``."""
    wl, old = exp.workload, [int(i) for i in keep]
    queries = tuple(replace(wl.queries[o], id=i) for i, o in enumerate(old))
    overhead = {r.expert: r.prompt_tokens - wl.queries[r.query_id].prompt_tokens for r in wl.requests}
    sub = Workload.build(f"{wl.name}-heldout", queries, wl.experts, tuple(wl.routes[o] for o in old), wl.aggregator,
                         overhead)  # fmt: skip
    names = [e.name for e in (*wl.experts, wl.aggregator)]
    table = {(i, e): exp.responses.table[(o, e)] for i, o in enumerate(old) for e in names
             if (o, e) in exp.responses.table}  # fmt: skip
    responses = Responses(table)
    spec, expected = split_expected(predictor)
    costs_cfg = exp.cfg.costs.model_copy(update={"predictor": spec, "expected": expected})
    cfg = exp.cfg.model_copy(update={"costs": costs_cfg})
    costs = build_cost_model(cfg, sub, expert_means(cfg, sub), responses).bind(sub)
    return Experiment(cfg, sub, responses, costs, exp.cluster, exp.seed_seq)


def train_model(wl: Workload, responses: Responses, query_ids: set[int], path: Path) -> LightGBMLengthPredictor:
    """LightGBM trained on the true lengths of ``query_ids`` (saved at ``path``); the same requests are written
    as a trace beside it (:func:`trace_of`), from which ``mean:TRACE`` fits per-expert means and spreads."""
    reqs = [r for r in wl.requests if r.query_id in query_ids]
    agg = wl.aggregator.name
    trace_of(path).unlink(missing_ok=True)  # TraceWriter appends (for resumed runs); this trace is this model's
    with TraceWriter(trace_of(path)) as trace:
        for r in reqs:
            trace.write(RequestRecord(EXPERT_STAGE, r.id, r.query_id, r.expert, 0, 0.0, 0.0, r.prompt_tokens,
                                      responses.get(r.query_id, r.expert).output_tokens))  # fmt: skip
        for q in sorted(query_ids):  # the aggregator's lengths: its mean prices the aggregation stage
            trace.write(RequestRecord(AGGREGATION_STAGE, q, q, agg, 0, 0.0, 0.0, wl.queries[q].prompt_tokens,
                                      responses.get(q, agg).output_tokens))  # fmt: skip
    t0 = time.perf_counter()
    model = LightGBMLengthPredictor.fit(rows_from_workload(wl, reqs, responses))
    model.save(path)
    console.print(f"LightGBM trained on {len(reqs)} requests of {len(query_ids)} queries in "
                  f"{time.perf_counter() - t0:.1f} s -> {path}")  # fmt: skip
    return model


EXPECTED = "+expected"  # suffix: price requests by their expected cost under the predictor's spread


def trace_of(model: Path) -> Path:
    return model.with_suffix(".train.jsonl")


def split_expected(predictor: str) -> tuple[str, bool]:
    """``SPEC+expected`` -> (SPEC, True); ``SPEC`` -> (SPEC, False)."""
    return (predictor.removesuffix(EXPECTED), True) if predictor.endswith(EXPECTED) else (predictor, False)


def predictors(path: Path) -> list[str]:
    """The paper's per-expert means (configured), means and spreads fitted on the training trace with expected
    costs, LightGBM (mean head; with expected costs from its p50/p90 spread; p50 and p90 heads), true lengths."""
    lgbm = f"lightgbm:{path}"
    return ["mean", f"mean:{trace_of(path)}{EXPECTED}", lgbm, lgbm + EXPECTED, f"{lgbm}@p50", f"{lgbm}@p90", "oracle"]


CEILINGS = {"ceiling:difficulty": "difficulty known (ceiling)", "ceiling:visible": "visible difficulty (ceiling)",
            "selection:visible": "best plan, visible difficulty drawn (ceiling)",
            "selection:difficulty": "best plan, difficulty known, noise drawn (ceiling)"}  # fmt: skip


class KnownLengths(LengthPredictor):
    """Predicted output tokens given per request id (the ideal predictors of :func:`ceiling_runs`)."""

    name = "known"

    def __init__(self, tokens: np.ndarray) -> None:
        self.tokens = tokens

    def predict(self, workload: Workload, requests: Sequence[Request]) -> np.ndarray:
        return self.tokens[[r.id for r in requests]]


def ceiling_tokens(full: Experiment, keep: np.ndarray, sub: Workload) -> dict[str, np.ndarray]:
    """Spec -> expected output tokens of every request of ``sub`` (the queries ``keep`` of ``full``, renumbered)
    given its query's whole difficulty and given its visible part; empty for recorded responses."""
    cfg, wl = full.cfg, full.workload
    if cfg.responses.model == "recorded":
        return {}
    visible, hidden = synthetic_difficulty(cfg, wl, workload_rng(cfg))
    model = response_model(cfg, wl)
    means = expert_means(cfg, wl)
    mean = np.array([means[r.expert] for r in sub.requests])
    query = keep[[r.query_id for r in sub.requests]]
    return {"ceiling:difficulty": expected_length(mean, (visible + hidden)[query], 1.0, model.gamma),
            "ceiling:visible": expected_length(mean, visible[query], model.visible, model.gamma)}  # fmt: skip


def ceiling_runs(full: Experiment, keep: np.ndarray, base: Experiment, scheds: list[str]) -> dict:
    """Spec -> (experiment, {scheduler: run}) of each ideal predictor on ``base`` (the planned queries)."""
    out: dict = {}
    for spec, tokens in ceiling_tokens(full, keep, base.workload).items():
        costs = ProfiledCostModel(build_profile(base.cfg, base.workload), KnownLengths(tokens), base.workload)
        exp = replace(base, costs=costs)
        out[spec] = (exp, {s: run_scheduler(exp, s) for s in scheds})
    return out


def redrawn(base: Experiment, known: np.ndarray, hidden_too: bool, rng: np.random.Generator) -> Responses:
    """``base``'s responses with output lengths drawn afresh from its synthetic response model, given each
    (renumbered) query's difficulty ``known`` plus, when ``hidden_too``, a fresh hidden part; answers kept."""
    wl, model = base.workload, response_model(base.cfg, base.workload)
    z = known + (draw_hidden(len(known), model, rng) if hidden_too else 0.0)
    means = expert_means(base.cfg, wl)
    reqs = wl.requests
    tokens = draw_lengths(np.array([means[r.expert] for r in reqs]), z[[r.query_id for r in reqs]],
                          [wl.expert(r.expert).kind for r in reqs], model.gamma, rng)  # fmt: skip
    table = dict(base.responses.table)
    for r, t in zip(reqs, tokens.tolist(), strict=True):
        table[(r.query_id, r.expert)] = replace(table[(r.query_id, r.expert)], output_tokens=t)
    return Responses(table)


def simulated_makespan(exp: Experiment, plan: Plan, responses: Responses) -> float:
    """Expert-stage makespan of ``plan`` in the simulator replaying ``responses``."""
    backend = BACKENDS.get("sim")(exp.cfg, responses, exp.costs)
    try:
        return backend.run_stage(EXPERT_STAGE, plan, exp.workload, exp.cluster, TraceWriter(None)).end
    finally:
        backend.close()


def selection_runs(full: Experiment, keep: np.ndarray, runs: dict, scheds: list[str], draws: int) -> dict:
    """Spec -> (experiment, {scheduler: run}): each scheduler's run, among its runs in ``runs`` (oracle excluded),
    whose plan has the lowest mean simulated makespan over ``draws`` length sets from the true response model,
    given the queries' visible difficulty (hidden part drawn too) or their whole difficulty; {} without."""
    cfg, base = full.cfg, runs["mean"][0]
    if draws < 1 or cfg.responses.model == "recorded":
        return {}
    visible, hidden = synthetic_difficulty(cfg, full.workload, workload_rng(cfg))
    rng = np.random.default_rng([cfg.seed, 2])
    out: dict = {}
    for spec, known, hidden_too in (("selection:visible", visible[keep], True),
                                    ("selection:difficulty", (visible + hidden)[keep], False)):  # fmt: skip
        sets = [redrawn(base, known, hidden_too, rng) for _ in range(draws)]
        chosen = {}
        for s in scheds:
            cands = {p: by[s] for p, (_, by) in runs.items() if p != "oracle"}
            score = {p: np.mean([simulated_makespan(base, r.result.expert_plan, x) for x in sets])
                     for p, r in cands.items()}  # fmt: skip
            best = min(score, key=score.__getitem__)
            console.print(f"{label_of(spec)}, {s}: the plan made with {label_of(best)} "
                          f"(mean {score[best]:.1f} s over {draws} draws)")  # fmt: skip
            chosen[s] = cands[best]
        out[spec] = (base, chosen)
    return out


def with_ceilings(runs: dict, ceilings: dict) -> dict:
    """``runs`` with ``ceilings`` inserted before the oracle (the table's last row)."""
    oracle = runs.pop("oracle")
    return {**runs, **ceilings, "oracle": oracle}


def label_of(predictor: str) -> str:
    if predictor in CEILINGS:
        return CEILINGS[predictor]
    spec, expected = split_expected(predictor)
    name = spec.split(":")[0] + (" (trace)" if spec.startswith("mean:") else "")
    return name + ("@" + spec.rsplit("@", 1)[1] if "@" in spec else "") + (" expected" if expected else "")


def heldout_runs(cfg: RunConfig, args: Args, scheds: list[str], path: Path) -> dict:
    """Predictor -> (experiment, {scheduler: run}) on the held-out queries."""
    full = prepare(cfg)
    rng = np.random.default_rng(cfg.seed + 1000)
    perm = rng.permutation(len(full.workload.queries))
    n_train = round(args.train_frac * len(perm))
    train_model(full.workload, full.responses, set(perm[:n_train].tolist()), path)
    keep = np.sort(perm[n_train:])
    out: dict = {}
    for p in predictors(path):
        exp = sub_experiment(full, keep, p)
        out[p] = (exp, {s: run_scheduler(exp, s) for s in scheds})
    return ideal_runs(full, keep, out, scheds, args.selection_draws)


def ideal_runs(full: Experiment, keep: np.ndarray, out: dict, scheds: list[str], draws: int) -> dict:
    """``out`` with the ideal predictors' runs and the ideal plan selections inserted before the oracle."""
    ceilings = ceiling_runs(full, keep, out["mean"][0], scheds)
    return with_ceilings(out, {**ceilings, **selection_runs(full, keep, {**out, **ceilings}, scheds, draws)})


def cross_seed_runs(args: Args, seed: int, scheds: list[str], path: Path) -> dict:
    """Predictor -> (experiment, {scheduler: run}) through ``prepare`` with ``costs.predictor`` overridden."""
    train = prepare(load_config(args.config, [*args.set, f"seed={seed + 1}"]))
    train_model(train.workload, train.responses, set(range(len(train.workload.queries))), path)
    out: dict = {}
    for p in predictors(path):
        spec, expected = split_expected(p)
        exp = prepare(load_config(args.config, [*args.set, f"seed={seed}", f"costs.predictor={spec}",
                                                f"costs.expected={str(expected).lower()}"]))  # fmt: skip
        out[p] = (exp, {s: run_scheduler(exp, s) for s in scheds})
    base = out["mean"][0]
    return ideal_runs(base, np.arange(len(base.workload.queries)), out, scheds, args.selection_draws)


def report(runs: dict, scheds: list[str], title: str) -> None:
    table = Table("scheduler", Column("cost predictor", no_wrap=True), "simulated makespan (s)", "vs mean",
                  "end-to-end (s)", "predicted (s)", "lower bound (s)", title=title)  # fmt: skip
    for s in scheds:
        ref = runs["mean"][1][s].metrics.expert_makespan
        for p, (_, by_sched) in runs.items():
            m = by_sched[s].metrics
            label = label_of(p)
            table.add_row(s, label, f"{m.expert_makespan:.1f}", f"{m.expert_makespan / ref - 1:+.1%}",
                          f"{m.end_to_end:.1f}", f"{m.predicted_makespan:.1f}", f"{m.lower_bound:.1f}")  # fmt: skip
        table.add_section()
    console.print(table)


def scatter(runs: dict, path: Path) -> None:
    """Predicted vs true output tokens of every planned request, mean costs vs LightGBM (mean head)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [k for k in runs if k == "mean" or (k.startswith("lightgbm") and "@" not in k and EXPECTED not in k)]
    fig, axes = plt.subplots(1, len(keys), figsize=(5 * len(keys), 4.5), sharey=True)
    for ax, key in zip(np.atleast_1d(axes), keys, strict=True):
        exp = runs[key][0]
        true = np.array([exp.responses.get(r.query_id, r.expert).output_tokens for r in exp.workload.requests])
        pred = np.asarray(exp.costs.tokens)
        reasoning = np.array([exp.workload.expert(r.expert).kind == "reasoning" for r in exp.workload.requests])
        for mask, colour, label in ((~reasoning, "tab:blue", "instruct"), (reasoning, "tab:red", "reasoning")):
            ax.scatter(pred[mask], true[mask], s=3, alpha=0.3, c=colour, label=label)
        lim = (8, max(true.max(), pred.max()) * 1.2)
        ax.plot(lim, lim, "k--", lw=0.8)
        ax.set(xscale="log", yscale="log", xlim=lim, ylim=lim, xlabel="predicted output tokens",
               title=f"{key.split(':')[0]} (MAE {np.abs(pred - true).mean():.0f})")  # fmt: skip
        ax.legend(loc="upper left")
    np.atleast_1d(axes)[0].set_ylabel("true output tokens")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    console.print(f"scatter -> {path}")


def changes(per_seed: dict[int, dict], scheds: list[str]) -> dict[tuple[str, str], list[float]]:
    """(scheduler, predictor) -> makespan change against the configured means, one value per seed."""
    out: dict[tuple[str, str], list[float]] = {}
    for runs in per_seed.values():
        for s in scheds:
            ref = runs["mean"][1][s].metrics.expert_makespan
            for p, (_, by_sched) in runs.items():
                out.setdefault((s, label_of(p)), []).append(by_sched[s].metrics.expert_makespan / ref - 1)
    return out


def summary(per_seed: dict[int, dict], scheds: list[str], title: str) -> Table:
    """Mean change (95% CI) against the configured means over the seeds, the per-seed changes, seeds better."""
    seeds = ", ".join(str(k) for k in per_seed)
    table = Table("scheduler", Column("cost predictor", no_wrap=True), "mean vs mean (95% CI)",
                  f"per seed ({seeds})", "seeds faster", title=title)  # fmt: skip
    last = None
    for (s, label), values in changes(per_seed, scheds).items():
        if last is not None and s != last:
            table.add_section()
        last = s
        mean, half = mean_ci(values)
        table.add_row(s, label, f"{mean:+.1%} ± {half:.1%}", " ".join(f"{v:+.1%}" for v in values),
                      f"{sum(v < 0 for v in values)}/{len(values)}")  # fmt: skip
    return table


def summary_json(per_seed: dict[int, dict], path: Path) -> None:
    """Every seed's simulated, predicted and lower-bound makespans by scheduler and predictor."""
    data = {str(seed): {label_of(p): {s: {"makespan_s": r.metrics.expert_makespan,
                                          "predicted_s": r.metrics.predicted_makespan,
                                          "lower_bound_s": r.metrics.lower_bound} for s, r in by_sched.items()}
                        for p, (_, by_sched) in runs.items()} for seed, runs in per_seed.items()}  # fmt: skip
    path.write_text(json.dumps(data, indent=1))
    console.print(f"makespans -> {path}")


def track(args: Args, cfg: RunConfig, per_seed: dict[int, dict], scheds: list[str], out: Path) -> None:
    """Every seed's makespans, the mean changes and the scatter PNGs to W&B (``--wandb``; offline by default)."""
    tracking = TrackingCfg(mode=args.wandb, project=cfg.tracking.project, entity=cfg.tracking.entity)
    config = {"config": args.config, "mode": args.mode, "seeds": list(per_seed), "set": list(args.set)}
    rows = [[seed, s, label_of(p), r.metrics.expert_makespan, r.metrics.predicted_makespan, r.metrics.lower_bound]
            for seed, runs in per_seed.items() for p, (_, by_sched) in runs.items()
            for s, r in by_sched.items()]  # fmt: skip
    summary_rows = [[s, label, *mean_ci(v)] for (s, label), v in changes(per_seed, scheds).items()]
    tables = {"makespans": (["seed", "scheduler", "predictor", "makespan_s", "predicted_s", "lower_bound_s"], rows),
              "change_vs_mean": (["scheduler", "predictor", "mean", "ci95"], summary_rows)}  # fmt: skip
    images = {f"scatter/seed{seed}": out / f"{cfg.name}-{args.mode}-s{seed}-scatter.png" for seed in per_seed}
    metrics = {f"change_vs_mean/{s}/{label}": mean for s, label, mean, _ in summary_rows}
    directory = log_run(tracking, f"{cfg.name}__ilp-lengths__{args.mode}", config, out, tables, images, metrics)
    if directory is not None:
        console.print(f"W&B ({args.wandb}) -> {directory}")


def run_seed(args: Args, seed: int, scheds: list[str], out: Path) -> dict:
    """One seed: train, plan with every predictor, print its table and write its scatter PNG."""
    cfg = load_config(args.config, [*args.set, f"seed={seed}"])
    model = out / f"{cfg.name}-{args.mode}-s{seed}.lgbm"
    if args.mode == "cross-seed":
        runs = cross_seed_runs(args, seed, scheds, model)
    else:
        runs = heldout_runs(cfg, args, scheds, model)
    wl = next(iter(runs.values()))[0].workload
    report(runs, scheds, f"{wl.name} ({len(wl.queries)} queries, {len(wl.requests)} requests, {args.mode}, "
                        f"seed {seed}): expert-stage makespan by cost predictor")  # fmt: skip
    scatter(runs, out / f"{cfg.name}-{args.mode}-s{seed}-scatter.png")
    return runs


def main() -> None:
    args = parse_args()
    if args.mode not in ("heldout", "cross-seed"):
        raise SystemExit(f"--mode must be heldout or cross-seed, got {args.mode!r}")
    if not args.seeds:
        raise SystemExit("--seeds needs at least one workload seed")
    if args.selection_draws < 0:
        raise SystemExit(f"--selection-draws must be >= 0, got {args.selection_draws}")
    try:
        run(args, load_config(args.config, args.set))
    except MosaicError as err:  # a bad config, override or data: one line, no traceback
        raise SystemExit(f"error: {err}") from None


def run(args: Args, cfg: RunConfig) -> None:
    """Every seed's runs and tables, then the summary, its JSON and the W&B run."""
    scheds = scheduler_names(args.schedulers)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    per_seed = {seed: run_seed(args, seed, scheds, out) for seed in dict.fromkeys(args.seeds)}
    if len(per_seed) > 1:
        console.print(summary(per_seed, scheds, f"{cfg.name} ({args.mode}): expert-stage makespan against the "
                                                f"configured means over {len(per_seed)} seeds"))  # fmt: skip
    summary_json(per_seed, out / f"{cfg.name}-{args.mode}-summary.json")
    track(args, cfg, per_seed, scheds, out)


if __name__ == "__main__":
    main()
