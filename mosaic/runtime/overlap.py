"""Both stages in one run of the loop, without a barrier: each query's aggregator request is held until its experts
have answered, then its skip decision is made and it is released (or cancelled) while other queries' experts still
run. Used by :class:`~mosaic.runtime.executor.Executor` with ``barrier=False``.

Request ids: the expert workload's keep theirs (a plan made on it applies unchanged); query ``q``'s aggregator
request is ``n_expert_requests + q``. Its prompt in the workload the policy sees is the prediction (question +
template + the experts' *predicted* output tokens); the released request carries the true one.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from mosaic.core.trace import AGGREGATION_STAGE, AggregationRecord, RequestRecord
from mosaic.core.types import Query, Request, Response, Workload
from mosaic.predictors.interface import CostModel
from mosaic.runtime.interface import Gates


def combined_workload(workload: Workload, costs: CostModel, template_tokens: int) -> Workload:
    """The expert requests, then one aggregator request per query (its prompt predicted; see the module doc)."""
    agg = workload.aggregator
    reqs, n = list(workload.requests), len(workload.requests)
    predicted: dict[int, float] = {}
    for r in reqs:
        predicted[r.query_id] = predicted.get(r.query_id, 0.0) + costs.predicted_tokens(r)
    for q in workload.queries:
        prompt = q.prompt_tokens + template_tokens + round(predicted.get(q.id, 0.0))
        reqs.append(Request(n + q.id, q.id, agg.name, prompt))
    experts = workload.experts if any(e.name == agg.name for e in workload.experts) else (*workload.experts, agg)
    routes = tuple((*route, agg.name) if agg.name not in route else route for route in workload.routes)
    return Workload(f"{workload.name}:overlapped", workload.queries, experts, routes, agg, tuple(reqs))


@dataclass
class Releases:
    """The gates of a combined workload and what they decided: ``decide(query, responses)`` -> the experts' vote
    (:class:`~mosaic.runtime.executor.Vote`: confidence, majority, majority_correct, skip)."""

    workload: Workload  # the expert workload
    decide: Callable[[Query, Sequence[Response]], Any]
    template_tokens: int
    write: Callable[[AggregationRecord], None]
    votes: dict[int, Any] = field(default_factory=dict)  # query -> its vote
    released_at: dict[int, float] = field(default_factory=dict)  # query -> when its experts had all answered

    def gates(self) -> Gates:
        n = len(self.workload.requests)
        by_query: dict[int, list[int]] = {q.id: [] for q in self.workload.queries}
        for r in self.workload.requests:
            by_query[r.query_id].append(r.id)
        return Gates({n + q: tuple(ids) for q, ids in by_query.items()}, self.release, AGGREGATION_STAGE)

    def release(self, request: int, now: float, records: tuple[RequestRecord, ...]) -> int | None:
        """Query ``request - n``'s experts answered: decide; write the skip; else the true aggregator prompt."""
        q = self.workload.queries[request - len(self.workload.requests)]
        self.released_at[q.id] = now
        vote = self.votes[q.id] = self.decide(q, [Response(r.output_tokens, r.answer, r.correct) for r in records])
        if vote.skip:
            self.write(AggregationRecord(q.id, vote.confidence, True, vote.majority, vote.majority_correct))
            return None
        return q.prompt_tokens + self.template_tokens + sum(r.output_tokens for r in records)


__all__ = ["Releases", "combined_workload"]
