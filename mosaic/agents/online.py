"""Greedy online dispatch: no plan ahead; requests wait in a pool and idle workers pull them (``greedy-online``).

Whenever a worker has nothing to do (at the start, when it runs dry, when requests arrive) it takes work from the
requests that have arrived and that no worker holds: of its resident expert when that expert has any waiting, else
of the expert with the most waiting predicted seconds; shortest predicted first, up to an even share of all waiting
work (predicted group seconds, which count batching and the KV cache; at least one request), so that other idle
workers can take the rest of a heavy expert. Requests arriving while every worker is busy wait, which lets a worker
serve an expert's requests in one batch instead of loading a model per arrival.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from mosaic.agents.bounds import lower_bound
from mosaic.agents.interface import Scheduler
from mosaic.agents.policy import ARRIVAL, IDLE, Action, Dispatch, Event, Policy, View
from mosaic.agents.registry import SCHEDULERS
from mosaic.core.types import Cluster, Plan, Workload
from mosaic.predictors.interface import CostModel


class GreedyOnline(Policy):
    """Idle workers pull the waiting requests (see the module docstring)."""

    name = "greedy-online"
    events = frozenset({ARRIVAL, IDLE})

    def decide(self, view: View, event: Event) -> Sequence[Action]:
        waiting = list(view.waiting())
        if not waiting:
            return []
        idle = [w for w in view.cluster.workers
                if not view.queued(w.id) and not view.running(w.id) and view.loading(w.id) is None]  # fmt: skip
        reqs, costs, out = view.workload.requests, view.costs, []
        gpu = view.cluster.workers[0].gpu_type
        for w in idle:
            if not waiting:
                break
            by_expert: dict[str, list] = {}
            for r in waiting:
                by_expert.setdefault(reqs[r].expert, []).append(reqs[r])
            work = {e: costs.group_seconds(rs, gpu) for e, rs in by_expert.items()}
            held = view.resident(w.id)
            expert = held if held in by_expert else max(work, key=work.__getitem__)
            take = self._take(costs, gpu, by_expert[expert], sum(work.values()) / len(view.cluster.workers))
            out.append(Dispatch(w.id, take))
            taken = set(take)
            waiting = [r for r in waiting if r not in taken]
        return out

    @staticmethod
    def _take(costs: CostModel, gpu: str, requests: list, share: float) -> tuple[int, ...]:
        """The longest prefix of ``requests`` (shortest predicted first) whose group seconds stay within ``share``
        (at least one request), found by bisection."""
        rs = sorted(requests, key=lambda r: costs.request_seconds(r, gpu))
        lo, hi = 1, len(rs)  # the answer lies in [lo, hi]
        while lo < hi:
            mid = (lo + hi + 1) // 2
            lo, hi = (mid, hi) if costs.group_seconds(rs[:mid], gpu) <= share else (lo, mid - 1)
        return tuple(r.id for r in rs[:lo])


@SCHEDULERS.register("greedy-online", help="no plan ahead: idle workers pull waiting requests, an expert at a time")
class GreedyOnlineScheduler(Scheduler):
    """Plans nothing ahead (its plan holds only the stage's lower bound); :class:`GreedyOnline` dispatches at run
    time, so it runs on backends with the runtime loop (the simulator)."""

    name = "greedy-online"
    plans_ahead = False

    def plan(
        self,
        workload: Workload,
        costs: CostModel,
        cluster: Cluster,
        rng: np.random.Generator,
        resident: Mapping[int, str | None] | None = None,
    ) -> Plan:
        return Plan(self.name, {}, {}, math.nan, lower_bound(workload, costs, cluster, resident))

    def runtime_policy(self, plan: Plan) -> GreedyOnline:
        return GreedyOnline()


__all__ = ["GreedyOnline", "GreedyOnlineScheduler"]
