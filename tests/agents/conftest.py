"""Test doubles for the scheduler tests: a small analytic CostModel and tiny workload builders.

Exposed through session-scoped fixtures (``toy``) so hypothesis tests can use them too.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from types import SimpleNamespace

import numpy as np
import pytest
from hypothesis import strategies as st

from mosaic.core.types import Cluster, Expert, ExpertKind, Query, Request, Worker, Workload
from mosaic.predictors.interface import CostModel, ModelCost

SPEED = {"fast": 1.0, "slow": 2.5}  # GPU type -> slowdown factor


class ToyCosts(CostModel):
    """Analytic costs: prefill + predicted tokens x decode step share; the step amortises over the batch.

    ``request_seconds(b) = prompt / prefill_tps + tokens * step_time(b) / b`` falls with ``b``, so the
    cost at max batch is the cheapest possible. No ``min_request_seconds`` (tests the fallback).
    """

    def __init__(
        self,
        workload: Workload,
        load_s: Mapping[str, float] | None = None,
        tokens: Mapping[str, float] | None = None,
        max_batch: int = 4,
    ) -> None:
        self.workload = workload
        self.load_s = dict(load_s or {})
        self.tokens = dict(tokens or {})
        self.max_batch = max_batch

    def bind(self, workload: Workload) -> ToyCosts:
        return type(self)(workload, self.load_s, self.tokens, self.max_batch)

    def model_cost(self, expert: str, gpu_type: str) -> ModelCost:
        s = SPEED[gpu_type]
        return ModelCost(self.load_s.get(expert, 10.0) * s, 1000.0 / s, 0.02 * s, 0.002 * s, 0.0, 16.0,
                         max_batch=self.max_batch)  # fmt: skip

    def predicted_tokens(self, request: Request) -> float:
        return self.tokens.get(request.expert, 100.0) + 7.0 * (request.query_id % 5)

    def request_seconds(self, request: Request, gpu_type: str, batch: int | None = None) -> float:
        mc = self.model_cost(request.expert, gpu_type)
        b = batch or mc.max_batch
        return request.prompt_tokens / mc.prefill_tps + self.predicted_tokens(request) * mc.step_time(b, 0) / b

    def request_latency(self, request: Request, gpu_type: str) -> float:
        return self.request_seconds(request, gpu_type, 1)


class ToyCostsWithMin(ToyCosts):
    """ToyCosts plus ``min_request_seconds`` (as the profiled cost model will have), 10% below max batch."""

    def min_request_seconds(self, request: Request, gpu_type: str) -> float:
        return 0.9 * self.request_seconds(request, gpu_type)


class ToyCostsVectorised(ToyCostsWithMin):
    """ToyCostsWithMin plus the optional vectorised ``min_seconds_array`` and ``latency_array``."""

    def min_seconds_array(self, requests: Sequence[Request], gpu_type: str) -> np.ndarray:
        return np.array([self.min_request_seconds(r, gpu_type) for r in requests], dtype=float)

    def latency_array(self, requests: Sequence[Request], gpu_type: str) -> np.ndarray:
        return np.array([self.request_latency(r, gpu_type) for r in requests], dtype=float)


def make_workload(routes: Sequence[Sequence[str]], experts: Sequence[str] | None = None, name: str = "toy",
                  aggregator: str = "agg") -> Workload:  # fmt: skip
    """A workload with one query per route; ``experts`` defaults to e0..e5."""
    names = list(experts) if experts is not None else [f"e{i}" for i in range(6)]
    ex = tuple(Expert(n, f"org/{n}", 7.0, ExpertKind.INSTRUCT, 16.0) for n in names)
    agg = next((e for e in ex if e.name == aggregator), Expert(aggregator, "org/agg", 8.0, ExpertKind.INSTRUCT, 16.0))
    queries = tuple(Query(i, f"q{i}", prompt_tokens=40 + 3 * i) for i in range(len(routes)))
    return Workload.build(name, queries, ex, tuple(tuple(r) for r in routes), agg)


def aggregation_workload(n_queries: int, aggregator: str = "agg") -> Workload:
    """The aggregation stage as the executor builds it: the aggregator is the only expert."""
    return make_workload([(aggregator,)] * n_queries, [aggregator], "agg-stage", aggregator)


def make_cluster(gpu_types: Sequence[str]) -> Cluster:
    return Cluster(tuple(Worker(i, g, 80.0) for i, g in enumerate(gpu_types)))


@st.composite
def instances(draw: st.DrawFn, max_queries: int = 8, max_workers: int = 4, min_workers: int = 1) -> tuple:
    """(workload, costs, cluster, resident) with random routes, loads, lengths, GPU types and residents."""
    n_exp = draw(st.integers(1, 4))
    names = [f"e{i}" for i in range(n_exp)]
    routes = draw(st.lists(st.lists(st.sampled_from(names), unique=True, max_size=n_exp), max_size=max_queries))
    wl = make_workload(routes, names)
    load = {e: draw(st.floats(0.0, 30.0)) for e in names}
    tokens = {e: draw(st.floats(1.0, 3000.0)) for e in names}
    cls = draw(st.sampled_from([ToyCosts, ToyCostsWithMin, ToyCostsVectorised]))
    costs = cls(wl, load, tokens, max_batch=draw(st.integers(1, 6)))
    cluster = make_cluster(draw(st.lists(st.sampled_from(sorted(SPEED)), min_size=min_workers, max_size=max_workers)))
    resident = {w: draw(st.sampled_from([None, *names])) for w in cluster.ids if draw(st.booleans())}
    return wl, costs, cluster, resident


@pytest.fixture(scope="session")
def toy() -> SimpleNamespace:
    """Factories of the test doubles (session-scoped so @given tests may use them)."""
    return SimpleNamespace(
        costs=ToyCosts,
        costs_with_min=ToyCostsWithMin,
        costs_vectorised=ToyCostsVectorised,
        workload=make_workload,
        aggregation=aggregation_workload,
        cluster=make_cluster,
        instances=instances,
    )
