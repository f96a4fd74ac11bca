"""Simulator fidelity for run-time policies: a real run's policy run again on the simulator, with the lengths the
real engines produced, and the error of its makespan and mean query latency.

:mod:`mosaic.runtime.fidelity` replays a real run's *plans*; a policy that acts at run time decides on what the
engines do, so the simulator runs the policy itself (:class:`ReplayLengths`: every request's real output and prompt
tokens, the policy seeing the workload's estimates as the real run's policy did) and may decide differently where
its timing differs. The error then measures the timing model and what it changes in the policy's decisions.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from mosaic.agents.policy import Policy
from mosaic.core.trace import Record, RequestRecord, TraceWriter
from mosaic.core.types import Cluster, Response, Responses, Workload
from mosaic.predictors.interface import CostModel
from mosaic.report.metrics import query_latencies
from mosaic.runtime.executor import Executor, RunResult
from mosaic.runtime.interface import Gates, StageResult
from mosaic.runtime.sim import SimBackend
from mosaic.runtime.sim_worker import SimRequest


class ReplayLengths(SimBackend):
    """The simulator, its engines serving each request with the real run's output tokens, answer and prompt tokens
    (``records``); what the policies see (the workload, its predicted costs) is unchanged."""

    def __init__(self, records: Sequence[Record], costs: CostModel, max_batch: int | None = None) -> None:
        super().__init__(_responses(records), costs, max_batch)
        self.prompts = {(r.stage, r.request_id): r.prompt_tokens for r in records if isinstance(r, RequestRecord)}
        self._stage = ""

    def run_policy(self, stage: str, policy: Policy, workload: Workload, costs: CostModel, cluster: Cluster,
                   trace: TraceWriter, start: float = 0.0, resident: Mapping[int, str | None] | None = None,
                   gates: Gates | None = None) -> StageResult:  # fmt: skip
        self._stage = stage
        if gates is not None:
            gates = Gates(gates.prerequisites, self._released(gates), gates.stage)
        return super().run_policy(stage, policy, workload, costs, cluster, trace, start, resident, gates)

    def _released(self, gates: Gates) -> Any:
        def release(g: int, now: float, records: tuple[RequestRecord, ...]) -> int | None:
            prompt = gates.release(g, now, records)
            return None if prompt is None else self.prompts.get((gates.stage, g), prompt)

        return release

    def sim_requests(self, workload: Workload, request_ids: tuple[int, ...],
                     out: dict[tuple[int, str], Response] | None = None) -> list[SimRequest]:  # fmt: skip
        items = super().sim_requests(workload, request_ids, out)
        get, stage = self.prompts.get, self._stage
        return [it._replace(prompt_tokens=get((stage, it.request_id), it.prompt_tokens)) for it in items]


def _responses(records: Sequence[Record]) -> Responses:
    """(query id, expert) -> what the real engine answered (as :func:`mosaic.runtime.fidelity.responses_of`)."""
    return Responses({(r.query_id, r.expert): Response(r.output_tokens, r.answer, r.correct, r.text)
                      for r in records if isinstance(r, RequestRecord)})  # fmt: skip


def simulate_policy(records: Sequence[Record], workload: Workload, scheduler: Any, costs: CostModel,
                    cluster: Cluster, barrier: bool = True, policy: Any = None, max_batch: int | None = None,
                    rng: np.random.Generator | None = None) -> tuple[RunResult, list[Record]]:  # fmt: skip
    """``scheduler`` (a fresh one: its plan and run-time policy; ``rng``: the generator it plans with, as in the
    real run) on the simulator with ``records``' lengths; its result and records."""
    trace = TraceWriter(None)
    res = Executor(ReplayLengths(records, costs, max_batch), policy, barrier=barrier).run(
        workload, scheduler, costs, cluster, rng if rng is not None else np.random.default_rng(0), trace
    )
    return res, list(trace.records)


@dataclass(frozen=True, slots=True)
class PolicyError:
    """Real vs simulated makespan (end to end) and mean query latency of one policy's run."""

    scheduler: str
    real_makespan: float
    sim_makespan: float
    real_latency: float
    sim_latency: float

    @property
    def makespan_error(self) -> float:
        """(sim - real) / real of the makespan."""
        return (self.sim_makespan - self.real_makespan) / self.real_makespan if self.real_makespan > 0 else 0.0

    @property
    def latency_error(self) -> float:
        """(sim - real) / real of the mean query latency."""
        return (self.sim_latency - self.real_latency) / self.real_latency if self.real_latency > 0 else 0.0

    def line(self) -> str:
        return (f"{self.scheduler}: makespan real {self.real_makespan:.2f} s, sim {self.sim_makespan:.2f} s "
                f"({self.makespan_error:+.1%}); mean latency real {self.real_latency:.2f} s, sim "
                f"{self.sim_latency:.2f} s ({self.latency_error:+.1%})")  # fmt: skip


def policy_error(name: str, real: RunResult, real_records: Sequence[Record], sim: RunResult,
                 sim_records: Sequence[Record], arrivals: Sequence[float]) -> PolicyError:  # fmt: skip
    """The errors of ``sim`` against ``real`` (``arrivals``: each query's, for the latencies)."""
    lat_real = query_latencies(real_records, arrivals)
    lat_sim = query_latencies(sim_records, arrivals)
    return PolicyError(name, real.end_to_end, sim.end_to_end, float(np.mean(lat_real)) if len(lat_real) else 0.0,
                       float(np.mean(lat_sim)) if len(lat_sim) else 0.0)  # fmt: skip


__all__ = ["PolicyError", "ReplayLengths", "policy_error", "simulate_policy"]
