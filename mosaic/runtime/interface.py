"""The Backend interface: something that runs one stage of a Plan and records it in the Trace."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from mosaic.agents.policy import PlanReplay, Policy
from mosaic.core.errors import ConfigError, PlanError
from mosaic.core.trace import RequestRecord, TraceWriter
from mosaic.core.types import Cluster, Plan, Responses, Workload
from mosaic.predictors.interface import CostModel


@dataclass(frozen=True, slots=True)
class StageResult:
    """Timing of one stage as a backend ran it."""

    stage: str  # "expert" | "aggregation"
    start: float  # seconds, run clock
    end: float  # seconds, when the last worker finished
    worker_end: Mapping[int, float]  # worker id -> when it finished its last request
    resident: Mapping[int, str | None]  # worker id -> expert loaded when the stage ended
    responses: Responses  # what each (query, expert) of the stage answered
    busy: Mapping[int, float] = field(default_factory=dict)  # worker id -> seconds serving requests
    loading: Mapping[int, float] = field(default_factory=dict)  # worker id -> seconds loading models

    @property
    def makespan(self) -> float:
        return self.end - self.start


@dataclass(frozen=True, slots=True)
class Gates:
    """Requests held until others finish. ``prerequisites``: held request -> the requests that must finish first;
    ``release(request, now, records)``: called when they have (``records``: theirs, in ``prerequisites`` order),
    returns the request's prompt tokens now (its arrival is ``now``) or None to cancel it; ``stage``: the stage its
    records carry."""

    prerequisites: Mapping[int, tuple[int, ...]]
    release: Callable[[int, float, tuple[RequestRecord, ...]], int | None]
    stage: str

    def index(self, n: int) -> tuple[dict[int, int], dict[int, list[int]]]:
        """(gated request -> prerequisites left, request -> the gated requests waiting for it) over ``n`` requests;
        a :class:`PlanError` for ids that do not exist or gates on gated requests."""
        held: dict[int, int] = {}
        dependents: dict[int, list[int]] = {}
        for g, pre in self.prerequisites.items():
            if not 0 <= g < n or any(not 0 <= p < n or p == g or p in self.prerequisites for p in pre):
                raise PlanError(f"gates: request {g} with prerequisites {pre} (ids must exist, not be gated)")
            held[g] = len(pre)
            for p in pre:
                dependents.setdefault(p, []).append(g)
        return held, dependents


class Backend(ABC):
    """Runs a stage of a plan on workers (simulated or real engines) and writes every record."""

    name: str = "base"
    resumable: bool = False  # True when :meth:`resume_from` can finish an interrupted run
    runs_policies: bool = False  # True when :meth:`run_policy` runs policies that act at events (not only plans)

    @abstractmethod
    def run_stage(
        self,
        stage: str,
        plan: Plan,
        workload: Workload,
        cluster: Cluster,
        trace: TraceWriter,
        start: float = 0.0,
        resident: Mapping[int, str | None] | None = None,
    ) -> StageResult:
        """Run every request of ``plan`` (all workers start at ``start``, with ``resident`` loaded),
        append a LoadRecord per load and a RequestRecord per request to ``trace``."""

    def run_policy(
        self,
        stage: str,
        policy: Policy,
        workload: Workload,
        costs: CostModel,
        cluster: Cluster,
        trace: TraceWriter,
        start: float = 0.0,
        resident: Mapping[int, str | None] | None = None,
        gates: Gates | None = None,
    ) -> StageResult:
        """Run the stage under ``policy``, which acts at the runtime loop's events (``costs``: the predicted costs it
        sees; ``gates``: requests held until others finish). By default a backend replays static plans only."""
        if isinstance(policy, PlanReplay) and gates is None:
            return self.run_stage(stage, policy.plan, workload, cluster, trace, start, resident)
        raise ConfigError(f"backend {self.name!r} runs static plans only; policy {policy.name!r} acts at run time "
                          f"(run it on the sim backend)")  # fmt: skip

    def resume_from(self, done: Mapping[tuple[str, int], RequestRecord]) -> None:
        """Finish an interrupted run: the requests of ``done`` ((stage, request id) -> the record an earlier run
        wrote) are not run again; their responses are restored from the records."""
        raise ConfigError(f"backend {self.name!r} cannot resume an interrupted run")

    def close(self) -> None:
        """Release engines and processes (nothing to release by default)."""
        return None
