"""From a config to finished runs: build the workload and costs once, run schedulers, collect metrics.

``prepare`` does the scheduler-independent work; ``run_scheduler`` runs one scheduler through the
Executor on the configured backend, writing its trace; ``compare`` runs several on the same inputs.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from mosaic.agents import SCHEDULERS, Scheduler, make_scheduler
from mosaic.agents.bounds import TrueBound, latency_array, true_costs, true_lower_bound
from mosaic.agents.policy import PlanReplay
from mosaic.aggregation.interface import AggregationPolicy
from mosaic.aggregation.registry import AGGREGATION_POLICIES
from mosaic.aggregation.thresholds import make_aggregation_policy
from mosaic.core.config import RunConfig
from mosaic.core.errors import ConfigError, PlanError, RegistryError
from mosaic.core.trace import EXPERT_STAGE, Record, RequestRecord, TraceWriter, finished_requests
from mosaic.core.types import Cluster, Plan, Query, Responses, Workload
from mosaic.predictors.factory import build_cost_model
from mosaic.predictors.interface import CostModel
from mosaic.report.metrics import (
    RunMetrics,
    aggregation_summary,
    answer_times,
    count_loads,
    latency_summary,
    query_latencies,
    slo_attainment,
    throughput,
    utilisation,
    worker_usage,
)
from mosaic.runtime.executor import Executor, RunResult, aggregation_workload
from mosaic.runtime.interface import Backend
from mosaic.runtime.registry import BACKENDS
from mosaic.runtime.slo import idle_latencies
from mosaic.workloads import build_workload, expert_means
from mosaic.workloads.registry import WORKLOADS

ProgressFn = Callable[[str], None]


@dataclass(frozen=True, slots=True)
class Experiment:
    """Everything a scheduler run needs, built once per config and seed."""

    cfg: RunConfig
    workload: Workload
    responses: Responses  # ground truth the simulator replays; schedulers never see it
    costs: CostModel  # bound to ``workload``
    cluster: Cluster
    seed_seq: np.random.SeedSequence  # children: [0] workload, [1] schedulers

    def scheduler_rng(self) -> np.random.Generator:
        """A fresh generator for one scheduler run: the same for every run of this experiment (``spawn`` on
        ``seed_seq`` itself is stateful, so the child is rebuilt from its spawn key instead)."""
        child = np.random.SeedSequence(self.seed_seq.entropy, spawn_key=(*self.seed_seq.spawn_key, 1))
        return np.random.default_rng(child)

    def __deepcopy__(self, memo: dict) -> Experiment:
        """The same experiment: it is never changed once built (``gymnasium.make`` deep-copies an env's arguments)."""
        return self


@dataclass(frozen=True, slots=True)
class SchedulerRun:
    """One scheduler's result: the executor's result, its trace records and metrics."""

    name: str
    result: RunResult
    records: tuple[Record, ...]
    metrics: RunMetrics
    trace_path: Path | None


def scheduler_from_config(cfg: RunConfig, name: str) -> Scheduler:
    """Scheduler ``name`` with its ``scheduler_options`` from the config; a bad option is a :class:`ConfigError`
    naming the config field."""
    options = cfg.scheduler_options.get(name, {})
    try:
        return make_scheduler(name, **options)
    except (ConfigError, RegistryError) as err:
        raise ConfigError(f"config field 'scheduler_options.{name}': {err.args[0]}") from None
    except (TypeError, ValueError) as err:  # a value of the wrong type, met inside the constructor
        raise ConfigError(f"config field 'scheduler_options.{name}': bad value in {options}: {err}") from None


def workload_rng(cfg: RunConfig) -> np.random.Generator:
    """The generator :func:`prepare` builds ``cfg``'s workload with: child 0 of ``SeedSequence(cfg.seed)``."""
    return np.random.default_rng(np.random.SeedSequence(cfg.seed, spawn_key=(0,)))


def check_names(cfg: RunConfig) -> None:
    """Every name the config selects from a registry is registered: one :class:`ConfigError` naming the field and
    the valid names otherwise (the registries, not copies of their names in the config, are the truth)."""
    if cfg.aggregation.mode not in ("adaptive", "learned"):
        try:
            AGGREGATION_POLICIES.get(cfg.aggregation.mode)
        except RegistryError as err:
            raise ConfigError(f"config field 'aggregation.mode': {err.args[0]} (or adaptive, learned)") from None
    for field, registry, name in (
        ("workload.preset", WORKLOADS, cfg.workload.preset),
        ("runtime.backend", BACKENDS, cfg.runtime.backend),
        ("scheduler", SCHEDULERS, cfg.scheduler),
        ("baseline", SCHEDULERS, cfg.baseline),
    ):
        try:
            registry.get(name)
        except RegistryError as err:
            raise ConfigError(f"config field '{field}': {err.args[0]}") from None


def prepare(cfg: RunConfig) -> Experiment:
    """Build workload, ground-truth responses, cost model and cluster from ``cfg`` (after checking its registry
    names and that every ``scheduler_options`` entry builds its scheduler)."""
    check_names(cfg)
    for name in cfg.scheduler_options:
        scheduler_from_config(cfg, name)
    seq = np.random.SeedSequence(cfg.seed)
    workload, responses = build_workload(cfg, workload_rng(cfg))
    costs = build_cost_model(cfg, workload, expert_means(cfg, workload), responses).bind(workload)
    cluster = Cluster.homogeneous(cfg.cluster.workers, cfg.cluster.gpu_type, cfg.cluster.memory_gb)
    return Experiment(cfg, workload, responses, costs, cluster, seq)


def aggregation_policy(exp: Experiment) -> AggregationPolicy:
    """``aggregation.mode``: ``always``, ``adaptive`` (fixed threshold T, two-decimal T = 0.67 meaning 2/3),
    ``learned`` (a trained AggThreshold or AggOnline agent, ``aggregation.model``, with the features it was trained
    on), or any registered aggregation policy built with ``aggregation.options`` (``load-aware``, ``calibrated``,
    ...)."""
    cfg = exp.cfg
    mode, options = cfg.aggregation.mode, dict(cfg.aggregation.options)
    if mode == "adaptive":
        return make_aggregation_policy("threshold", threshold=cfg.aggregation.threshold)
    if mode == "learned":
        from mosaic.agents.rl import rl_skip_policy  # torch and SB3: only for learned policies

        return rl_skip_policy(cfg.aggregation.model, skip_context(exp))
    if mode == "always" and not options:
        return make_aggregation_policy("always")
    try:
        return make_aggregation_policy(mode, **options)
    except (ConfigError, RegistryError) as err:
        raise ConfigError(f"config field 'aggregation': {err.args[0]}") from None
    except (TypeError, ValueError) as err:
        raise ConfigError(f"config field 'aggregation.options': bad options {options} for {mode!r}: {err}") from None


def skip_context(exp: Experiment) -> Callable[[Query], tuple[list[str], float]]:
    """What a learned skip policy needs beside the answers, as its training env computed it: the kinds of a query's
    experts and the seconds its aggregator call takes alone (predicted, on the first worker's GPU type)."""
    wl = exp.workload
    agg_wl = aggregation_workload(wl, exp.responses, [False] * len(wl.queries))
    costs, gpu = exp.costs.bind(agg_wl), exp.cluster.workers[0].gpu_type
    seconds = latency_array(costs, agg_wl.requests, gpu)
    by_query = {r.query_id: float(s) for r, s in zip(agg_wl.requests, seconds, strict=True)}
    kinds = {q.id: [wl.expert(e).kind for e in route] for q, route in zip(wl.queries, wl.routes, strict=True)}
    return lambda q: (kinds[q.id], by_query.get(q.id, 0.0))


@dataclass(frozen=True, slots=True)
class PlannedRun:
    """A scheduler with its expert-stage plan, made (and validated) before anything is written; ``rng`` is the
    scheduler's generator after that plan, which the aggregation stage's plan goes on drawing from."""

    name: str
    scheduler: Scheduler
    plan: Plan
    rng: np.random.Generator
    policy: AggregationPolicy  # the run's skip decisions


def plan_scheduler(exp: Experiment, name: str, policy: AggregationPolicy | None = None) -> PlannedRun:
    """Scheduler ``name`` (with its config options), its validated expert-stage plan and the aggregation policy
    (default: :func:`aggregation_policy`; pass one to share it among several runs)."""
    scheduler = scheduler_from_config(exp.cfg, name)
    policy = policy if policy is not None else aggregation_policy(exp)
    rng = exp.scheduler_rng()
    plan = scheduler.plan(exp.workload, exp.costs.bind(exp.workload), exp.cluster, rng)
    if scheduler.plans_ahead:
        plan.validate(exp.workload, exp.cluster)
    return PlannedRun(name, scheduler, plan, rng, policy)


def make_backend(exp: Experiment, resume: bool = False, planned: Sequence[PlannedRun] = ()) -> Backend:
    """The configured backend; a :class:`ConfigError` when it cannot do what is asked: finish an interrupted run
    (``resume``), or run the runtime policies of ``planned`` (a backend without the runtime loop replays plans)."""
    backend = BACKENDS.get(exp.cfg.runtime.backend)(exp.cfg, exp.responses, exp.costs)
    dynamic = [p.name for p in planned if not isinstance(p.scheduler.runtime_policy(p.plan), PlanReplay)]
    if resume and not backend.resumable:
        backend.close()
        raise ConfigError(f"resume needs a real backend (vllm or ray), got runtime.backend={backend.name!r}")
    if dynamic and not backend.runs_policies:
        backend.close()
        raise ConfigError(f"scheduler(s) {dynamic} act at run time, which backend {backend.name!r} cannot do yet "
                          "(it replays static plans): run them on the sim backend")  # fmt: skip
    if not exp.cfg.runtime.barrier and not backend.runs_policies:
        backend.close()
        raise ConfigError(f"runtime.barrier=false needs a backend that runs the runtime loop; {backend.name!r} runs "
                          "the two stages with a barrier only")  # fmt: skip
    return backend


def run_scheduler(
    exp: Experiment, name: str | PlannedRun, trace_path: Path | None = None, resume: bool = False
) -> SchedulerRun:
    """Run scheduler ``name`` (or an already planned one) on the experiment's backend; same experiment + name ->
    same trace. ``resume``: finish the interrupted run whose trace is ``trace_path`` (a backend that can resume;
    its finished requests are not run again, the trace ends with each request and decision once)."""
    cfg = exp.cfg
    planned = name if isinstance(name, PlannedRun) else plan_scheduler(exp, name)
    backend = make_backend(exp, resume)
    meta = {"scheduler": planned.name, "workload": exp.workload.name, "seed": cfg.seed, "backend": cfg.runtime.backend}
    try:
        with TraceWriter(trace_path, meta=meta, resume=resume) as trace:
            if resume:
                backend.resume_from(finished_requests(trace.prior))
            executor = Executor(backend, planned.policy, barrier=exp.cfg.runtime.barrier)
            result = executor.run(exp.workload, planned.scheduler, exp.costs, exp.cluster, planned.rng, trace,
                                  planned.plan)  # fmt: skip
            records, prior = tuple(trace.records), trace.prior
    finally:
        backend.close()
    # the always-aggregate accuracy is known only where the responses are what the backend replays (the simulator)
    always = always_accuracy(exp.workload, exp.responses) if cfg.runtime.backend == "sim" else None
    arrivals = None if resume else [q.arrival for q in exp.workload.queries]  # a resumed run spans two clocks
    idle = idle_latencies(records, exp.costs, exp.cluster) if arrivals is not None else None
    metrics = metrics_of(planned.name, result, (*prior, *records), exp.cluster, always, records, arrivals, idle)
    return SchedulerRun(planned.name, result, records, metrics, trace_path)


def always_accuracy(workload: Workload, responses: Responses) -> float | None:
    """Share of queries the aggregator answers correctly (ground truth), i.e. the accuracy of always aggregating."""
    agg = workload.aggregator.name
    known = [r.correct for q in workload.queries if (r := responses.table.get((q.id, agg))) and r.correct is not None]
    return sum(known) / len(known) if known else None


def metrics_of(
    name: str,
    result: RunResult,
    records: Sequence[Record],
    cluster: Cluster,
    accuracy_always: float | None = None,
    session: Sequence[Record] | None = None,
    arrivals: Sequence[float] | None = None,
    idle: Mapping[int, float] | None = None,
) -> RunMetrics:
    """Metrics of one finished run (``accuracy_always``: the always-aggregate accuracy, for the pp delta).
    ``records``: the whole trace; ``session``: those on ``result``'s clock (a resumed run's new records; default:
    all), which the worker usage is measured on; ``arrivals``: each query's arrival, for per-query latencies,
    throughput and utilisation; ``idle``: each query's latency on an idle cluster, for SLO attainment."""
    ex, agg = result.expert, result.aggregation
    done = answer_times(records) if arrivals is not None else {}
    aggregated, skip_rate, accuracy = aggregation_summary(records)
    plan = result.expert_plan
    return RunMetrics(
        scheduler=name,
        expert_makespan=ex.makespan,
        aggregation_time=agg.makespan,
        end_to_end=agg.end - ex.start,
        lower_bound=plan.lower_bound,
        predicted_makespan=plan.predicted_makespan,
        requests=sum(1 for r in records if isinstance(r, RequestRecord) and r.stage == EXPERT_STAGE),
        loads=count_loads(records, EXPERT_STAGE),
        aggregated=aggregated,
        skip_rate=skip_rate,
        accuracy=accuracy,
        workers=worker_usage(records if session is None else session, cluster.ids, EXPERT_STAGE, ex.start, ex.end),
        stats=dict(plan.stats),
        accuracy_always=accuracy_always,
        latency=latency_summary(query_latencies(records, arrivals)) if arrivals is not None else {},
        slo=slo_attainment(done, arrivals, idle) if arrivals is not None and idle else {},
        throughput=throughput(done, arrivals) if arrivals is not None else None,
        utilisation=utilisation(records, cluster.ids, ex.start, agg.end) if arrivals is not None else {},
    )


@dataclass(frozen=True, slots=True)
class PlanQuality:
    """How good any expert-stage plan of an experiment can be, from the true lengths the simulator replays."""

    bound: TrueBound  # the true-length lower bound and its parts (valid for every plan)
    oracle_s: float  # simulated expert stage of mosaic-ilp planned with the true lengths (nan: not run)
    oracle_stats: Mapping[str, float | int | str]  # the oracle plan's stats (its solve)


ORACLE = "mosaic-ilp"  # the scheduler the oracle plan is made with (its config options apply)


def plan_quality(exp: Experiment, oracle: bool = True) -> PlanQuality:
    """The true-length lower bound of ``exp``'s expert stage and, with ``oracle``, the simulated makespan of
    mosaic-ilp given the true lengths (same options and scheduler generator as a compared mosaic-ilp run)."""
    true = true_costs(exp.workload, exp.responses, exp.costs)
    bound = true_lower_bound(exp.workload, exp.responses, exp.costs, exp.cluster)
    if not oracle:
        return PlanQuality(bound, float("nan"), {})
    scheduler = scheduler_from_config(exp.cfg, ORACLE)
    rng = exp.scheduler_rng()
    try:
        plan = scheduler.plan(exp.workload, true, exp.cluster, rng)
    except PlanError:  # no oracle plan (e.g. the ILP's memory constraints): the bound alone
        return PlanQuality(bound, float("nan"), {})
    plan.validate(exp.workload, exp.cluster)
    backend = BACKENDS.get("sim")(exp.cfg, exp.responses, exp.costs)
    try:
        with TraceWriter(None) as trace:
            result = backend.run_stage(EXPERT_STAGE, plan, exp.workload, exp.cluster, trace)
    finally:
        backend.close()
    return PlanQuality(bound, result.makespan, dict(plan.stats))


def with_quality(run: SchedulerRun, quality: PlanQuality) -> SchedulerRun:
    """``run`` with the experiment's true bound (``true_lb_s`` and its parts ``true_lb_*``) and oracle makespan
    (``oracle_s``) added to its metrics' stats (the comparison table's true-gap columns read them)."""
    extra = {f"true_lb_{k}": v for k, v in quality.bound.as_dict().items()}
    extra |= {"true_lb_s": quality.bound.value, "oracle_s": quality.oracle_s}
    return replace(run, metrics=replace(run.metrics, stats={**run.metrics.stats, **extra}))


def compare(
    exp: Experiment,
    schedulers: Sequence[str | PlannedRun],
    out_dir: Path | None,
    progress: ProgressFn | None = None,
    quality: bool | None = None,
) -> list[SchedulerRun]:
    """Run each scheduler (a name, or planned by :func:`plan_scheduler`) on the same experiment; traces go to
    ``out_dir/<name>.trace.jsonl``. ``quality`` (default: on the sim backend, whose lengths are the truth): add
    :func:`plan_quality`'s true bound and oracle makespan to every run's stats."""
    runs = []
    for item in schedulers:
        name = item.name if isinstance(item, PlannedRun) else item
        if progress:
            progress(name)
        runs.append(run_scheduler(exp, item, out_dir / f"{name}.trace.jsonl" if out_dir else None))
    if quality if quality is not None else exp.cfg.runtime.backend == "sim":
        if progress:
            progress("the true-length bound and the oracle plan")
        found = plan_quality(exp)
        runs = [with_quality(r, found) for r in runs]
    return runs
