"""The Executor: plan and run the expert stage, decide which queries skip the aggregator, run the aggregation stage.

Flow of :meth:`Executor.run`: bind costs to the workload -> ``scheduler.plan`` -> ``plan.validate`` -> expert stage on
the backend -> per query: confidence of its experts' answers -> policy decision -> aggregation workload (one
aggregator request per aggregated query, prompt = question + expert outputs + template) -> plan it with the
workers' resident models -> aggregation stage starting when the expert stage ends. End-to-end = aggregation end.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np

from mosaic.agents.pipelined import AggregateOnRelease
from mosaic.aggregation.interface import AggregationPolicy, AlwaysAggregate, confidence
from mosaic.core.errors import ConfigError
from mosaic.core.trace import AGGREGATION_STAGE, EXPERT_STAGE, AggregationRecord, TraceWriter
from mosaic.core.types import Cluster, Plan, Query, Response, Responses, Workload
from mosaic.predictors.interface import CostModel
from mosaic.runtime.interface import Backend, StageResult
from mosaic.runtime.overlap import Releases, combined_workload

if TYPE_CHECKING:
    from mosaic.agents.interface import Scheduler

AGGREGATOR_TEMPLATE_TOKENS = 100  # aggregator prompt overhead: MoA system prompt + response numbering (tokens)


@dataclass(frozen=True, slots=True)
class RunResult:
    """One run of both stages."""

    expert_plan: Plan
    aggregation_plan: Plan  # empty (no workers) when every query skipped the aggregator
    expert: StageResult
    aggregation: StageResult  # start == end == expert.end when empty
    decisions: tuple[AggregationRecord, ...]  # one per query, in query order
    accuracy: float | None  # share of correct final answers among queries whose correctness is known
    expert_accuracy_majority: float | None  # same, for the experts' majority answer of every query
    skip_rate: float  # share of queries that skipped the aggregator

    @property
    def end_to_end(self) -> float:
        return self.aggregation.end - self.expert.start


@dataclass(frozen=True, slots=True)
class Vote:
    """The experts' verdict on one query."""

    confidence: float
    majority: str | None
    majority_correct: bool | None  # the majority answer is correct (None: unknown)
    skip: bool


def is_correct(answer: str | None, query: Query, recorded: bool | None = None) -> bool | None:
    """``answer == query.gold`` when the gold answer is known, else the response's recorded correctness."""
    if query.gold is not None:
        return answer is not None and answer == query.gold
    return recorded


def _share(flags: Sequence[bool | None]) -> float | None:
    known = [f for f in flags if f is not None]
    return sum(known) / len(known) if known else None


class Executor:
    """Runs a scheduler's plans for both stages on ``backend``; ``policy`` decides skips (default: never).
    ``barrier``: the paper's two stages, the aggregation planned when every expert has finished (False: each
    query's aggregation decided and dispatched when its own experts finish, :mod:`mosaic.runtime.overlap`)."""

    def __init__(
        self,
        backend: Backend,
        policy: AggregationPolicy | None = None,
        template_tokens: int = AGGREGATOR_TEMPLATE_TOKENS,
        barrier: bool = True,
    ) -> None:
        if template_tokens < 0:
            raise ConfigError(f"executor: template_tokens must be >= 0, got {template_tokens}")
        self.backend = backend
        self.policy = policy if policy is not None else AlwaysAggregate()
        self.template_tokens = template_tokens
        self.barrier = barrier

    def run(
        self,
        workload: Workload,
        scheduler: Scheduler,
        costs: CostModel,
        cluster: Cluster,
        rng: np.random.Generator,
        trace: TraceWriter,
        plan: Plan | None = None,
    ) -> RunResult:
        """Both stages of ``workload``; every request, load and decision is written to ``trace``. ``plan``: the
        expert stage's plan when the caller made it already (with ``scheduler`` and the same ``rng``)."""
        self.policy.watch(None)  # no load known unless the no-barrier loop tells it
        if plan is None:
            plan = scheduler.plan(workload, costs.bind(workload), cluster, rng)
        if scheduler.plans_ahead:
            plan.validate(workload, cluster)
        if not self.barrier:
            return self._run_overlapped(workload, scheduler, plan, costs, cluster, trace)
        stage1 = self.backend.run_policy(EXPERT_STAGE, scheduler.runtime_policy(plan), workload, costs.bind(workload),
                                         cluster, trace)  # fmt: skip
        votes = self.votes(workload, stage1.responses)
        for q, v in zip(workload.queries, votes, strict=True):
            if v.skip:
                trace.write(AggregationRecord(q.id, v.confidence, True, v.majority, v.majority_correct))
        agg = aggregation_workload(workload, stage1.responses, [v.skip for v in votes], self.template_tokens)
        if agg.requests:
            plan2 = scheduler.plan(agg, costs.bind(agg), cluster, rng, resident=stage1.resident)
            if scheduler.plans_ahead:
                plan2.validate(agg, cluster)
            stage2 = self.backend.run_policy(AGGREGATION_STAGE, scheduler.runtime_policy(plan2), agg, costs.bind(agg),
                                             cluster, trace, stage1.end, stage1.resident)  # fmt: skip
        else:
            plan2, stage2 = empty_plan(scheduler.name), empty_stage(AGGREGATION_STAGE, cluster, stage1)
        decisions = self._decisions(workload, votes, stage2.responses, trace)
        return self._result(plan, plan2, stage1, stage2, decisions, votes)

    def votes(self, workload: Workload, responses: Responses) -> list[Vote]:
        """Confidence, majority answer and skip decision of every query, in query order."""
        return [self.vote(q, [responses.get(q.id, e) for e in route])
                for q, route in zip(workload.queries, workload.routes, strict=True)]  # fmt: skip

    def vote(self, query: Query, responses: Sequence[Response]) -> Vote:
        """Confidence, majority answer and skip decision of ``query`` from its experts' ``responses``."""
        answers = [r.answer for r in responses]
        conf, majority = confidence(answers)
        recorded = next((r.correct for r in responses if majority is not None and r.answer == majority), None)
        skip = bool(self.policy.decide(query, answers, conf))
        return Vote(conf, majority, is_correct(majority, query, recorded) if responses else None, skip)

    def _run_overlapped(
        self, workload: Workload, scheduler: Scheduler, plan: Plan, costs: CostModel, cluster: Cluster,
        trace: TraceWriter,
    ) -> RunResult:  # fmt: skip
        """Both stages in one run of the loop: each query's aggregation decided and run when its experts finish."""
        if not self.backend.runs_policies:
            raise ConfigError(f"backend {self.backend.name!r} runs the two stages with a barrier only "
                              f"(runtime.barrier: true)")  # fmt: skip
        wl = combined_workload(workload, costs.bind(workload), self.template_tokens)
        rel = Releases(workload, self.vote, self.template_tokens, trace.write)
        policy = AggregateOnRelease(scheduler.runtime_policy(plan), len(workload.requests))
        self.policy.watch(policy.load)  # the skip decision sees the aggregator's queue
        stage = self.backend.run_policy(EXPERT_STAGE, policy, wl, costs.bind(wl), cluster, trace, gates=rel.gates())
        votes = [rel.votes[q.id] for q in workload.queries]
        decisions = self._decisions(workload, votes, stage.responses, trace)
        expert_end = max(rel.released_at.values(), default=stage.start)
        expert, agg = replace(stage, end=expert_end), replace(stage, stage=AGGREGATION_STAGE, start=expert_end)
        return self._result(plan, empty_plan(scheduler.name), expert, agg, decisions, votes)

    def _decisions(self, workload: Workload, votes: Sequence[Vote], agg: Responses, trace: TraceWriter
                   ) -> list[AggregationRecord]:  # fmt: skip
        """Every query's decision in query order; the aggregated ones' (the aggregator's answer) are written."""
        decisions = []
        for q, v in zip(workload.queries, votes, strict=True):
            if v.skip:
                decisions.append(AggregationRecord(q.id, v.confidence, True, v.majority, v.majority_correct))
                continue
            r = agg.get(q.id, workload.aggregator.name)
            rec = AggregationRecord(q.id, v.confidence, False, r.answer, is_correct(r.answer, q, r.correct))
            trace.write(rec)
            decisions.append(rec)
        return decisions

    @staticmethod
    def _result(plan: Plan, plan2: Plan, stage1: StageResult, stage2: StageResult,
                decisions: Sequence[AggregationRecord], votes: Sequence[Vote]) -> RunResult:  # fmt: skip
        skip_rate = sum(v.skip for v in votes) / len(votes) if votes else 0.0
        return RunResult(plan, plan2, stage1, stage2, tuple(decisions), _share([d.correct for d in decisions]),
                         _share([v.majority_correct for v in votes]), skip_rate)  # fmt: skip


def aggregation_workload(
    workload: Workload, responses: Responses, skip: Sequence[bool], template_tokens: int = AGGREGATOR_TEMPLATE_TOKENS
) -> Workload:
    """The aggregation stage: every query, prompt = its prompt + its experts' output tokens + ``template_tokens``;
    one request to the aggregator per query that does not skip (skipped queries get an empty route)."""
    agg = workload.aggregator
    queries = tuple(
        replace(q, prompt_tokens=q.prompt_tokens + template_tokens + _expert_tokens(responses, q.id, route))
        for q, route in zip(workload.queries, workload.routes, strict=True)
    )
    routes = tuple(() if s else (agg.name,) for s in skip)
    return Workload.build(f"{workload.name}:aggregation", queries, (agg,), routes, agg)


def _expert_tokens(responses: Responses, query_id: int, route: Sequence[str]) -> int:
    return sum(responses.get(query_id, e).output_tokens for e in route)


def empty_plan(scheduler: str) -> Plan:
    """A plan with nothing to run (every query skipped the aggregator)."""
    return Plan(scheduler, {}, {}, 0.0, 0.0)


def empty_stage(stage: str, cluster: Cluster, previous: StageResult) -> StageResult:
    """A stage that runs nothing: starts and ends when ``previous`` ended, residents unchanged."""
    t = previous.end
    ids = cluster.ids
    resident: Mapping[int, str | None] = dict(previous.resident)
    return StageResult(stage, t, t, dict.fromkeys(ids, t), resident, Responses({}), dict.fromkeys(ids, 0.0),
                       dict.fromkeys(ids, 0.0))  # fmt: skip


__all__ = ["AGGREGATOR_TEMPLATE_TOKENS", "Executor", "RunResult", "Vote", "aggregation_workload", "is_correct"]
