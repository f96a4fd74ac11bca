"""Plan + work stealing: a static plan that a worker corrects at run time when it runs out of work.

When a worker goes idle, it looks at the other workers' queues (what they have not started, behind the head) and
takes the tail of the one expected to finish last: the last block of one expert's requests, or the part of it that
best balances the two (predicted costs: the thief pays the expert's load unless it holds it). It steals only when
that makes the pair expected to finish sooner. Registered as ``<scheduler>+steal`` for the planners below.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from mosaic.agents.data_parallel import DataParallelScheduler
from mosaic.agents.greedy_lpt import GreedyLPTScheduler
from mosaic.agents.ilp_scheduler import MosaicIlpScheduler
from mosaic.agents.interface import Scheduler
from mosaic.agents.policy import IDLE, START, Action, Event, Policy, Steal, View, plan_dispatches
from mosaic.agents.registry import SCHEDULERS
from mosaic.agents.round_robin import RoundRobinScheduler
from mosaic.core.types import Cluster, Plan, Workload
from mosaic.predictors.interface import CostModel


class WorkStealing(Policy):
    """Dispatches ``plan`` at the start; an idle worker steals the best-balancing tail block from the worker
    expected to finish last (see the module docstring)."""

    name = "plan+steal"
    events = frozenset({IDLE})

    def __init__(self, plan: Plan) -> None:
        self.plan = plan

    def decide(self, view: View, event: Event) -> Sequence[Action]:
        if event.kind == START:
            return plan_dispatches(self.plan)
        if event.kind != IDLE or event.worker is None:
            return []
        thief = event.worker
        gpu = next(w.gpu_type for w in view.cluster.workers if w.id == thief)
        victims = [(self._remaining(view, v, gpu), v) for v in view.cluster.ids if v != thief]
        for remaining, victim in sorted(victims, reverse=True):
            block = self._tail_block(view, victim)
            if not block:
                continue
            take = self._balanced_take(view, thief, block, remaining, gpu)
            if take:
                return [Steal(victim, thief, take)]
        return []

    @staticmethod
    def _tail_block(view: View, worker: int) -> tuple[int, ...]:
        """The requests of the last expert in ``worker``'s queue behind the head (the contiguous tail)."""
        queued = view.queued(worker)[1:]
        if not queued:
            return ()
        reqs = view.workload.requests
        expert, i = reqs[queued[-1]].expert, len(queued)
        while i > 0 and reqs[queued[i - 1]].expert == expert:
            i -= 1
        return queued[i:]

    @staticmethod
    def _remaining(view: View, worker: int, gpu: str) -> float:
        """Predicted seconds of ``worker``'s queue: each expert block's group seconds plus a load per switch (the
        rest of a load under way for the head)."""
        reqs, costs = view.workload.requests, view.costs
        total, held, block = 0.0, view.resident(worker), []
        swap = view.loading(worker)
        if swap is not None:
            held, total = swap[0], max(swap[1] - view.clock, 0.0)
        for rid in view.queued(worker):
            r = reqs[rid]
            if block and r.expert != block[0].expert:
                total += costs.group_seconds(block, gpu)
                block = []
            if r.expert != held:
                total += costs.unload_seconds(held, gpu) if held is not None else 0.0
                total += costs.load_seconds(r.expert, gpu)
                held = r.expert
            block.append(r)
        return total + (costs.group_seconds(block, gpu) if block else 0.0)

    @staticmethod
    def _balanced_take(view: View, thief: int, block: tuple[int, ...], remaining: float, gpu: str) -> tuple[int, ...]:
        """The tail of ``block`` whose move minimises the later of the two expected finishes (nothing when no move
        beats leaving it)."""
        reqs, costs = view.workload.requests, view.costs
        rs = [reqs[r] for r in block]
        held = view.resident(thief)
        switch = 0.0 if held == rs[0].expert else costs.load_seconds(rs[0].expert, gpu)
        switch += costs.unload_seconds(held, gpu) if held not in (None, rs[0].expert) else 0.0
        whole = costs.group_seconds(rs, gpu)

        def finish(k: int) -> float:  # the later of thief and victim when the last k requests move
            return max(
                switch + costs.group_seconds(rs[-k:], gpu), remaining - whole + costs.group_seconds(rs[:-k], gpu)
            )

        ks = np.unique(np.geomspace(1, len(rs), num=min(len(rs), 24)).astype(int))
        best = min((finish(int(k)), int(k)) for k in ks)
        return block[-best[1] :] if best[0] < remaining - 1e-9 else ()


class StealingScheduler(Scheduler):
    """A planner's plan (``wraps``, built with the options given), run with :class:`WorkStealing`."""

    wraps: type[Scheduler] = GreedyLPTScheduler

    def __init__(self, **options: object) -> None:
        self.inner = self.wraps(**options)  # type: ignore[arg-type]
        self.name = f"{self.inner.name}+steal"

    def plan(
        self,
        workload: Workload,
        costs: CostModel,
        cluster: Cluster,
        rng: np.random.Generator,
        resident: Mapping[int, str | None] | None = None,
    ) -> Plan:
        return self.inner.plan(workload, costs, cluster, rng, resident)

    def runtime_policy(self, plan: Plan) -> WorkStealing:
        return WorkStealing(plan)


def _register(base: type[Scheduler]) -> type[StealingScheduler]:
    name = f"{base.name}+steal"
    doc = f"{base.name}'s plan, corrected at run time by work stealing (idle workers take queued tails)"
    cls = type(f"{base.__name__}Stealing", (StealingScheduler,), {"wraps": base, "name": name, "__doc__": doc})
    return SCHEDULERS.register(name, help=doc)(cls)


for _base in (RoundRobinScheduler, DataParallelScheduler, GreedyLPTScheduler, MosaicIlpScheduler):
    _register(_base)

__all__ = ["StealingScheduler", "WorkStealing"]
