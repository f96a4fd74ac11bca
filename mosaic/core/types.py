"""Frozen dataclasses that cross module boundaries: experts, workers, queries, requests, workloads, plans."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType

from mosaic.core.errors import PlanError, WorkloadError


class ExpertKind(StrEnum):
    """Whether an expert writes short answers (instruct) or long chains of thought (reasoning)."""

    INSTRUCT = "instruct"
    REASONING = "reasoning"


@dataclass(frozen=True, slots=True)
class Expert:
    """One expert LLM."""

    name: str
    model_id: str
    params_b: float  # parameters, in billions
    kind: ExpertKind
    memory_gb: float  # weights in GPU memory (GB)


@dataclass(frozen=True, slots=True)
class Worker:
    """One GPU."""

    id: int
    gpu_type: str
    memory_gb: float


@dataclass(frozen=True, slots=True)
class Cluster:
    """The GPU workers a plan may use."""

    workers: tuple[Worker, ...]

    @classmethod
    def homogeneous(cls, n: int, gpu_type: str, memory_gb: float) -> Cluster:
        return cls(tuple(Worker(i, gpu_type, memory_gb) for i in range(n)))

    @property
    def ids(self) -> tuple[int, ...]:
        return tuple(w.id for w in self.workers)

    def __len__(self) -> int:
        return len(self.workers)


@dataclass(frozen=True, slots=True)
class Query:
    """One question. ``id`` equals its index in ``Workload.queries``."""

    id: int
    text: str
    domain: str = "general"
    choices: tuple[str, ...] = ()
    gold: str | None = None
    arrival: float = 0.0  # seconds after the run starts
    prompt_tokens: int = 0


@dataclass(frozen=True, slots=True)
class Request:
    """One (query, expert) pair. ``id`` equals its index in ``Workload.requests``."""

    id: int
    query_id: int
    expert: str
    prompt_tokens: int


def _freeze(m: Mapping) -> Mapping:
    return MappingProxyType(dict(m))


@dataclass(frozen=True, slots=True)
class Workload:
    """Queries, experts, routes and the aggregator; requests are derived from the routes.

    Build with :meth:`Workload.build`, which numbers queries and requests and validates routes.
    """

    name: str
    queries: tuple[Query, ...]
    experts: tuple[Expert, ...]
    routes: tuple[tuple[str, ...], ...]  # query index -> names of the experts it goes to (may be empty)
    aggregator: Expert
    requests: tuple[Request, ...] = ()

    @classmethod
    def build(
        cls,
        name: str,
        queries: tuple[Query, ...],
        experts: tuple[Expert, ...],
        routes: tuple[tuple[str, ...], ...],
        aggregator: Expert,
        prompt_overhead: Mapping[str, int] | None = None,
    ) -> Workload:
        """Validate routes and derive one request per (query, routed expert).

        ``prompt_overhead`` adds per-expert system-prompt tokens to each request's prompt.
        """
        names = {e.name for e in experts}
        if len(names) != len(experts):
            raise WorkloadError(f"workload {name!r}: duplicate expert names")
        if len(routes) != len(queries):
            raise WorkloadError(f"workload {name!r}: {len(routes)} routes for {len(queries)} queries")
        overhead = prompt_overhead or {}
        requests: list[Request] = []
        for i, (q, route) in enumerate(zip(queries, routes, strict=True)):
            if q.id != i:
                raise WorkloadError(f"workload {name!r}: query at index {i} has id {q.id}")
            if len(set(route)) != len(route):
                raise WorkloadError(f"workload {name!r}: query {i} route {route} repeats an expert")
            for e in route:
                if e not in names:
                    raise WorkloadError(f"workload {name!r}: query {i} routed to unknown expert {e!r}")
                requests.append(Request(len(requests), i, e, q.prompt_tokens + overhead.get(e, 0)))
        return cls(name, tuple(queries), tuple(experts), tuple(tuple(r) for r in routes), aggregator, tuple(requests))

    def expert(self, name: str) -> Expert:
        """The expert (or aggregator) called ``name``."""
        for e in (*self.experts, self.aggregator):
            if e.name == name:
                return e
        raise WorkloadError(f"workload {self.name!r} has no expert {name!r}")

    def demand(self) -> dict[str, int]:
        """Expert name -> number of requests routed to it."""
        counts = {e.name: 0 for e in self.experts}
        for r in self.requests:
            counts[r.expert] += 1
        return counts


@dataclass(frozen=True, slots=True)
class Plan:
    """What each worker loads and runs, in order, for one stage.

    ``order`` is the source of truth: each worker runs its request ids in that order, loading an
    expert whenever the next request needs a model that is not resident. ``placement`` lists the
    experts each worker serves, in serving order (it must equal the run-length sequence of experts
    in ``order``; the backend skips the load when the first one is already resident).
    """

    scheduler: str
    placement: Mapping[int, tuple[str, ...]]  # worker id -> expert names in serving order
    order: Mapping[int, tuple[int, ...]]  # worker id -> request ids in execution order
    predicted_makespan: float  # seconds, from the cost model
    lower_bound: float  # seconds, valid for any plan of this stage
    stats: Mapping[str, float | int | str] = field(default_factory=dict)  # scheduler-specific figures

    def __post_init__(self) -> None:
        object.__setattr__(self, "placement", _freeze({w: tuple(e) for w, e in self.placement.items()}))
        object.__setattr__(self, "order", _freeze({w: tuple(r) for w, r in self.order.items()}))
        object.__setattr__(self, "stats", _freeze(self.stats))

    @property
    def assignment(self) -> dict[int, int]:
        """Request id -> worker id."""
        return {r: w for w, reqs in self.order.items() for r in reqs}

    def replicas(self) -> dict[str, tuple[int, ...]]:
        """Expert name -> workers it is placed on."""
        out: dict[str, list[int]] = {}
        for w, experts in sorted(self.placement.items()):
            for e in dict.fromkeys(experts):
                out.setdefault(e, []).append(w)
        return {e: tuple(ws) for e, ws in out.items()}

    def require_workers(self, cluster: Cluster) -> None:
        """Raise :class:`PlanError` if the plan names a worker that ``cluster`` does not have."""
        unknown = sorted((set(self.order) | set(self.placement)) - set(cluster.ids))
        if unknown:
            raise PlanError(f"plan {self.scheduler!r} uses unknown workers {unknown} that are not in the cluster")

    def validate(self, workload: Workload, cluster: Cluster) -> None:
        """Raise :class:`PlanError` unless every request runs exactly once on a known worker and
        ``placement`` matches the expert sequence implied by ``order``."""
        self.require_workers(cluster)
        seen: set[int] = set()
        n = len(workload.requests)
        for w, reqs in self.order.items():
            for r in reqs:
                if r in seen:
                    raise PlanError(f"plan {self.scheduler!r}: request {r} is assigned twice")
                seen.add(r)
            try:
                expected = serving_sequence(workload, reqs)
            except PlanError as err:
                raise PlanError(f"plan {self.scheduler!r}: worker {w}: {err}") from None
            if tuple(self.placement.get(w, ())) != expected:
                raise PlanError(
                    f"plan {self.scheduler!r}: worker {w} placement {self.placement.get(w, ())} "
                    f"does not match the experts its order serves {expected}"
                )
        if len(seen) != n:
            missing = sorted(set(range(n)) - seen)[:5]
            raise PlanError(f"plan {self.scheduler!r}: {n - len(seen)} requests unassigned, e.g. {missing}")


def requests_by_expert(workload: Workload) -> dict[str, list[int]]:
    """Expert name -> its request ids in id (query) order, for experts with at least one request.

    Experts come in the order of ``workload.experts``; an expert only the requests name (e.g. the
    aggregator when it is not listed) follows, in order of first appearance.
    """
    groups: dict[str, list[int]] = {}
    for r in workload.requests:
        groups.setdefault(r.expert, []).append(r.id)
    ordered = {e.name: groups[e.name] for e in workload.experts if e.name in groups}
    ordered.update((e, ids) for e, ids in groups.items() if e not in ordered)
    return ordered


def serving_sequence(workload: Workload, request_ids: tuple[int, ...]) -> tuple[str, ...]:
    """Experts a worker serves, in order, when it runs ``request_ids`` (consecutive repeats merged)."""
    seq: list[str] = []
    n = len(workload.requests)
    for r in request_ids:
        if not 0 <= r < n:
            raise PlanError(f"request {r} does not exist in workload {workload.name!r} ({n} requests)")
        e = workload.requests[r].expert
        if not seq or seq[-1] != e:
            seq.append(e)
    return tuple(seq)


def plan_from_order(
    scheduler: str,
    workload: Workload,
    order: Mapping[int, list[int] | tuple[int, ...]],
    predicted_makespan: float,
    lower_bound: float,
    stats: Mapping[str, float | int | str] | None = None,
) -> Plan:
    """Build a :class:`Plan` whose placement is derived from ``order``."""
    placement = {w: serving_sequence(workload, tuple(reqs)) for w, reqs in order.items()}
    frozen_order = {w: tuple(r) for w, r in order.items()}
    return Plan(scheduler, placement, frozen_order, predicted_makespan, lower_bound, stats or {})


@dataclass(frozen=True, slots=True)
class Response:
    """What one expert (or the aggregator) answers to one query."""

    output_tokens: int
    answer: str | None = None  # extracted answer (choice letter, number, ...)
    correct: bool | None = None
    text: str | None = None  # full response text, when known


@dataclass(frozen=True, slots=True)
class Responses:
    """Ground truth a backend replays: (query id, expert name) -> response. Schedulers never see it."""

    table: Mapping[tuple[int, str], Response]  # (query id, expert or aggregator name) -> response

    def __post_init__(self) -> None:
        object.__setattr__(self, "table", _freeze(self.table))

    def get(self, query_id: int, expert: str) -> Response:
        try:
            return self.table[(query_id, expert)]
        except KeyError:
            raise WorkloadError(f"no recorded response of expert {expert!r} to query {query_id}") from None

    def __len__(self) -> int:
        return len(self.table)
