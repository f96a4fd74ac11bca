"""Simulator fidelity: replay a real run's plans and output lengths in the simulator; makespan error per worker.

The simulator gets exactly what the real engines did: the same expert and aggregation plans (a scheduler that
hands back the real run's plans), every request's real prompt and output tokens and its answer (read from the
real trace). What remains is the timing model (the cost profile): the error measures it.

The simulator charges a load that replaces a resident expert that expert's ``unload_s`` (engine teardown) first,
as the real worker's load events include it. The optional "sim+unload" figures are an analytic cross-check of that:
a simulation whose profile has no teardown (:func:`~mosaic.runtime.profiler.split_unload`) plus the teardown of
each engine a load replaces (:func:`unload_extra`); with a profile that has ``unload_s`` they match "sim" except
where a worker's wait for arrivals absorbs part of a teardown.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from mosaic.agents.interface import Scheduler
from mosaic.aggregation.interface import AggregationPolicy
from mosaic.core.trace import AGGREGATION_STAGE, EXPERT_STAGE, Record, RequestRecord, TraceWriter
from mosaic.core.types import Cluster, Plan, Response, Responses, Workload
from mosaic.predictors.interface import CostModel
from mosaic.runtime.executor import Executor, RunResult
from mosaic.runtime.interface import StageResult
from mosaic.runtime.sim import SimBackend


class ReplayPlans(Scheduler):
    """Hands back given plans in order (expert stage, then aggregation): a real run's plans for the simulator."""

    name = "replay"

    def __init__(self, plans: Sequence[Plan]) -> None:
        self._plans = list(plans)

    def plan(self, workload: Workload, costs: CostModel, cluster: Cluster, rng: np.random.Generator,
             resident: Mapping[int, str | None] | None = None) -> Plan:  # fmt: skip
        return self._plans.pop(0)


def responses_of(records: Sequence[Record]) -> Responses:
    """(query id, expert) -> what the real engine answered, from a trace's request records."""
    table = {}
    for r in records:
        if isinstance(r, RequestRecord):
            table[(r.query_id, r.expert)] = Response(r.output_tokens, r.answer, r.correct, r.text)
    return Responses(table)


class ReplaySim(SimBackend):
    """The simulator, with each request's prompt length set to what the real engine tokenized (the workload's
    ``prompt_tokens`` are estimates; a tokenizer may count several times more)."""

    def __init__(self, records: Sequence[Record], costs: CostModel, max_batch: int | None = None) -> None:
        super().__init__(responses_of(records), costs, max_batch)
        self.prompts = {(r.stage, r.request_id): r.prompt_tokens for r in records if isinstance(r, RequestRecord)}

    def run_stage(self, stage: str, plan: Plan, workload: Workload, *args: Any, **kwargs: Any) -> StageResult:
        reqs = tuple(replace(r, prompt_tokens=self.prompts.get((stage, r.id), r.prompt_tokens))
                     for r in workload.requests)  # fmt: skip
        return super().run_stage(stage, plan, replace(workload, requests=reqs), *args, **kwargs)


def simulate_run(real: RunResult, records: Sequence[Record], workload: Workload, costs: CostModel,
                 cluster: Cluster, policy: Any = None, max_batch: int | None = None,
                 trace: TraceWriter | None = None) -> RunResult:  # fmt: skip
    """The simulator's run of ``real``'s plans with ``real``'s prompt and output lengths (its records go to
    ``trace`` when given)."""
    plans = [real.expert_plan] + ([real.aggregation_plan] if real.aggregation_plan.order else [])
    backend = ReplaySim(records, costs, max_batch)
    return Executor(backend, policy).run(workload, ReplayPlans(plans), costs, cluster, np.random.default_rng(0),
                                         trace if trace is not None else TraceWriter(None))  # fmt: skip


@dataclass(frozen=True, slots=True)
class WorkerError:
    """Real vs simulated busy span of one worker in one stage (seconds from the stage start)."""

    scheduler: str
    stage: str
    worker: int | None  # None: the whole stage (its makespan)
    real_s: float
    sim_s: float
    sim_unload_s: float | None = None  # no-teardown simulation + analytic teardown (:func:`unload_extra`), if asked

    @property
    def error(self) -> float:
        """Relative error of the simulation, (sim - real) / real."""
        return (self.sim_s - self.real_s) / self.real_s if self.real_s > 0 else 0.0

    @property
    def unload_error(self) -> float | None:
        if self.sim_unload_s is None:
            return None
        return (self.sim_unload_s - self.real_s) / self.real_s if self.real_s > 0 else 0.0


def unload_extra(plan: Plan, resident: Mapping[int, str | None], unload: Mapping[str, float]) -> dict[int, float]:
    """Worker -> seconds of engine teardown a stage adds: each load that replaces a resident expert first frees it
    (``unload[expert]`` seconds). Added to a simulation without teardown (``unload_s`` 0): a worker's loads all come
    before its last request, so its busy span grows by this sum (less any wait for arrivals it overlaps)."""
    out = {}
    for w, experts in plan.placement.items():
        current, extra = resident.get(w), 0.0
        for e in experts:
            if e != current:
                extra += unload.get(current, 0.0) if current is not None else 0.0
                current = e
        out[w] = extra
    return out


def _spans(stage: StageResult, workers: Sequence[int]) -> dict[int, float]:
    return {w: stage.worker_end.get(w, stage.start) - stage.start for w in workers}


def _stage_rows(name: str, real: StageResult, sim: StageResult, pure: StageResult,
                extra: Mapping[int, float] | None) -> tuple[list[WorkerError], float | None]:  # fmt: skip
    """Rows of one stage (whole stage first, then each worker) and the stage makespan with unload costs."""
    workers = sorted(real.worker_end)
    real_s, sim_s = _spans(real, workers), _spans(sim, workers)
    unl = {w: s + extra.get(w, 0.0) for w, s in _spans(pure, workers).items()} if extra is not None else None
    stage_unl = max(unl.values(), default=0.0) if unl is not None else None
    rows = [WorkerError(name, real.stage, None, real.makespan, sim.makespan, stage_unl)]
    rows += [WorkerError(name, real.stage, w, real_s[w], sim_s[w], unl[w] if unl is not None else None)
             for w in workers if real_s[w] > 0 or sim_s[w] > 0]  # fmt: skip
    return rows, stage_unl


def compare(name: str, real: RunResult, sim: RunResult, unload: Mapping[str, float] | None = None,
            sim_pure: RunResult | None = None) -> list[WorkerError]:  # fmt: skip
    """Per-worker and per-stage errors of ``sim`` against ``real`` (both stages, then end to end). With ``unload``
    (expert -> teardown seconds) and ``sim_pure`` (the simulation whose profile has no teardown: ``load_s`` engine
    start only, ``unload_s`` 0), every row also gets ``sim_pure`` plus the teardown of each engine a load replaces
    (:func:`unload_extra`)."""
    pure = sim_pure or sim
    stages = [(real.expert, sim.expert, pure.expert, real.expert_plan, {})]
    if real.aggregation_plan.order:
        stages.append((real.aggregation, sim.aggregation, pure.aggregation, real.aggregation_plan,
                       real.expert.resident))  # fmt: skip
    out: list[WorkerError] = []
    total = 0.0
    for r, s, p, plan, resident in stages:
        extra = unload_extra(plan, resident, unload) if unload is not None else None
        rows, stage_unl = _stage_rows(name, r, s, p, extra)
        out += rows
        total += stage_unl or 0.0
    out.append(WorkerError(name, "end-to-end", None, real.end_to_end, sim.end_to_end,
                           total if unload is not None else None))  # fmt: skip
    return out


def fidelity_of_runs(exp: Any, runs: Sequence[Any], policy: AggregationPolicy, scheduler_of: Callable[[str], Scheduler],
                     unload: Mapping[str, float] | None = None, pure_costs: CostModel | None = None,
                     sim_records: dict[str, list[Record]] | None = None) -> list[WorkerError]:  # fmt: skip
    """Errors of every :class:`~mosaic.pipeline.SchedulerRun` of experiment ``exp`` (a real backend's runs), with
    the experiment's aggregation ``policy`` and ``scheduler_of(name)``, each run's scheduler as configured
    (:func:`mosaic.pipeline.aggregation_policy`, :func:`mosaic.pipeline.scheduler_from_config`). With ``unload`` and
    ``pure_costs`` (a profile without teardown, :func:`~mosaic.runtime.profiler.split_unload`), also the no-teardown
    simulation plus analytic teardown (:func:`compare`). ``sim_records``, when given, receives each run's simulated
    records (scheduler name -> records)."""
    out = []
    for run in runs:
        scheduler = scheduler_of(run.name)
        if _acts_at_run_time(exp, run, scheduler):
            out += policy_rows(exp, run, scheduler, policy, sim_records)
            continue
        args = (run.result, run.records, exp.workload)
        tail = (exp.cluster, policy, exp.cfg.runtime.max_batch)
        trace = TraceWriter(None)
        sim = simulate_run(*args, exp.costs, *tail, trace)
        if sim_records is not None:
            sim_records[run.name] = list(trace.records)
        pure = simulate_run(*args, pure_costs, *tail) if unload is not None and pure_costs is not None else None
        out += compare(run.name, run.result, sim, unload if pure is not None else None, pure)
    return out


def _acts_at_run_time(exp: Any, run: Any, scheduler: Scheduler) -> bool:
    """Whether ``run``'s policy decided at run time (not a plan replayed), or its stages ran without a barrier."""
    from mosaic.agents.policy import PlanReplay

    if not exp.cfg.runtime.barrier:
        return True
    return not isinstance(scheduler.runtime_policy(run.result.expert_plan), PlanReplay)


def policy_rows(exp: Any, run: Any, scheduler: Scheduler, policy: AggregationPolicy,
                sim_records: dict[str, list[Record]] | None = None) -> list[WorkerError]:  # fmt: skip
    """Rows of a run whose policy acts at run time: the policy run again on the simulator with the real lengths
    (:func:`~mosaic.runtime.policy_fidelity.simulate_policy`); each stage, end to end, and the mean query latency."""
    from mosaic.runtime.policy_fidelity import policy_error, simulate_policy

    cfg, real = exp.cfg, run.result
    sim, records = simulate_policy(run.records, exp.workload, scheduler, exp.costs, exp.cluster, cfg.runtime.barrier,
                                   policy, cfg.runtime.max_batch, exp.scheduler_rng())  # fmt: skip
    if sim_records is not None:
        sim_records[run.name] = records
    out = _stage_rows(run.name, real.expert, sim.expert, sim.expert, None)[0]
    if real.aggregation.makespan > 0 or sim.aggregation.makespan > 0:
        out += _stage_rows(run.name, real.aggregation, sim.aggregation, sim.aggregation, None)[0]
    err = policy_error(run.name, real, run.records, sim, records, [q.arrival for q in exp.workload.queries])
    return [*out, WorkerError(run.name, "end-to-end", None, real.end_to_end, sim.end_to_end),
            WorkerError(run.name, "mean latency", None, err.real_latency, err.sim_latency)]  # fmt: skip


def fidelity_table(errors: Sequence[WorkerError], title: str = "simulator vs real engines") -> Any:
    """A rich table: scheduler, stage, worker, real s, sim s, error (and the unload-cost columns when present)."""
    from rich.table import Table

    unload = any(e.sim_unload_s is not None for e in errors)
    cols = ["scheduler", "stage", "worker", "real s", "sim s", "error"]
    cols += ["sim+unload s", "error+unload"] if unload else []
    table = Table(title=title)
    for col in cols:
        table.add_column(col, justify="left" if col in ("scheduler", "stage") else "right")
    for e in errors:
        row = [e.scheduler, e.stage, "all" if e.worker is None else str(e.worker), f"{e.real_s:.2f}",
               f"{e.sim_s:.2f}", f"{e.error:+.1%}"]  # fmt: skip
        if unload:
            row += ["", ""] if e.sim_unload_s is None else [f"{e.sim_unload_s:.2f}", f"{e.unload_error:+.1%}"]
        table.add_row(*row)
    return table


def max_worker_error(errors: Sequence[WorkerError], stage: str = EXPERT_STAGE, unload: bool = False) -> float:
    """Largest absolute per-worker error in ``stage`` (``unload``: of the simulation with unload costs)."""
    errs = [abs(e.unload_error if unload else e.error) for e in errors if e.stage == stage and e.worker is not None
            and (not unload or e.unload_error is not None)]  # fmt: skip
    return max(errs, default=0.0)


__all__ = ["AGGREGATION_STAGE", "ReplayPlans", "WorkerError", "compare", "fidelity_of_runs", "fidelity_table",
           "max_worker_error", "responses_of", "simulate_run"]  # fmt: skip
