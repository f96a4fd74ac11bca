"""WorkerSim against a straightforward event-driven reference, to the last digit (``==`` on every record).

The reference keeps the simulator's events and its closed-form span seconds (the float operations that set every
time, from :mod:`mosaic.runtime.sim_steps`), and recomputes everything else from scratch at each event: the running
batch is a plain list, KV tokens and blocks are summed over it, the steps that fit the free blocks are counted one
step at a time, and the preemption victim is the running request admitted last. The event loop's bookkeeping
(heaps, phase counts, lazy deletion) can then change freely, and any change of a decision or of a float shows up.
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Callable, Sequence

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mosaic.agents import make_scheduler
from mosaic.core.config import load_config
from mosaic.core.trace import EXPERT_STAGE, LoadRecord, Record, request_record
from mosaic.pipeline import prepare
from mosaic.predictors.interface import ModelCost
from mosaic.runtime.registry import BACKENDS
from mosaic.runtime.sim_steps import split_lines, split_seconds, split_steps_to_reach, steps_to_reach
from mosaic.runtime.sim_worker import ARRIVAL_EPS, SimRequest, WorkerSim

_CONFIGS = ("medmcqa", "mmlu_pro", "gpqa")


class _Ref:
    """The reference worker's state: ``run`` returns (records, preemptions)."""

    def __init__(self, cost_of: Callable[[str], ModelCost], stage: str, start: float, resident: str | None) -> None:
        self.cost_of, self.stage, self.t, self.resident = cost_of, stage, start, resident
        self.s = self.seq = self.preemptions = 0
        self.running: list[list] = []  # [finish step, admission seq, first start, request]
        self.queue: deque[SimRequest] = deque()
        self.generated: dict[int, tuple[int, float]] = {}  # preempted request -> (tokens generated, first start)
        self.records: list[Record] = []

    def tokens(self, e: list) -> int:
        return e[3].prompt_tokens + e[3].output_tokens - (e[0] - self.s)

    def held(self, blk: int) -> int:
        return sum(-(-self.tokens(e) // blk) for e in self.running)

    def new_blocks(self, blk: int, j: int = 0) -> int:
        """Blocks the running batch takes at step ``s + j``."""
        return sum((self.tokens(e) + j) % blk == 0 for e in self.running)

    def fitting_steps(self, blk: int, free: int, n: int) -> int:
        """Most steps ``m <= n`` whose new blocks fit ``free``, counted one step at a time."""
        phases = Counter(self.tokens(e) % blk for e in self.running)  # step j takes a block for each phase -j
        m = 0
        while m < n and phases[-m % blk] <= free:
            free -= phases[-m % blk]
            m += 1
        return m

    def fits(self, mc: ModelCost, head: SimRequest) -> bool:
        if not self.running:
            return True
        if mc.memory_mode == "reserve":
            used = sum(e[3].prompt_tokens + e[3].output_tokens for e in self.running)
            return used + head.prompt_tokens + head.output_tokens <= mc.kv_capacity_tokens
        blk = mc.kv_block_tokens
        tk = head.prompt_tokens + self.generated.get(head.request_id, (0, 0.0))[0]
        need = -(-tk // blk) + self.new_blocks(blk, 0) + (tk % blk == 0)
        return self.held(blk) + need <= mc.kv_capacity_tokens // blk

    def admit(self, mc: ModelCost, head: SimRequest) -> None:
        gen, first = self.generated.pop(head.request_id, (0, self.t))
        paged = mc.memory_mode == "paged"
        tk = head.prompt_tokens + gen if paged else head.prompt_tokens
        self.queue.popleft()
        self.running.append([self.s + head.output_tokens - gen, self.seq, first, head])
        self.seq += 1
        self.t = self.t + tk / float(mc.prefill_tps)

    def span(self, mc: ModelCost, wait: float) -> None:
        """One decode span: to the next completion, the last step whose blocks fit, or the head's arrival."""
        b, kv = len(self.running), sum(self.tokens(e) for e in self.running)
        n = min(e[0] for e in self.running) - self.s
        if mc.memory_mode == "paged" and b > 1:
            blk = mc.kv_block_tokens
            m = self.fitting_steps(blk, mc.kv_capacity_tokens // blk - self.held(blk), n)
            n = n if m == n else max(m, 1)
        c0 = mc.step_base_s + mc.step_per_seq_s * b + mc.step_per_kv_token_s * kv
        h = mc.step_per_kv_token_s * b
        if mc.has_compute_line:
            line2 = mc.step_compute_base_s + mc.step_compute_per_seq_s * b + mc.step_compute_per_kv_token_s * kv
            ca, ha, cb, hb, k = split_lines(c0, h, line2, mc.step_compute_per_kv_token_s * b)
            if wait < float("inf"):
                n = min(n, split_steps_to_reach(wait - ARRIVAL_EPS - self.t, ca, ha, cb, hb, k))
            self.t = self.t + split_seconds(n, ca, ha, cb, hb, k)
        else:
            if wait < float("inf"):
                n = min(n, steps_to_reach(wait - ARRIVAL_EPS - self.t, c0, h))
            self.t = self.t + n * c0 + h * (n * (n - 1) * 0.5)
        self.s += n

    def finish_and_preempt(self, mc: ModelCost) -> None:
        for e in sorted(e for e in self.running if e[0] <= self.s):
            self.running.remove(e)
            it, r = e[3], e[3].response
            extra = (r.answer, r.correct, r.text) if r is not None else ()
            self.records.append(request_record(self.stage, it.request_id, it.query_id, it.expert, 0, e[2], self.t,
                                               it.prompt_tokens, it.output_tokens, *extra))  # fmt: skip
        if mc.memory_mode != "paged":
            return
        blk, victims = mc.kv_block_tokens, []
        while len(self.running) > 1 and self.held(blk) + self.new_blocks(blk, 0) > mc.kv_capacity_tokens // blk:
            e = max(self.running, key=lambda x: x[1])
            self.running.remove(e)
            self.generated[e[3].request_id] = (e[3].output_tokens - (e[0] - self.s), e[2])
            victims.append(e[3])
        self.queue.extendleft(victims)
        self.preemptions += len(victims)

    def run(self, items: Sequence[SimRequest]) -> tuple[list[Record], int]:
        self.queue.extend(items)
        while self.queue or self.running:
            wait = float("inf")
            if self.queue:
                head = self.queue[0]
                mc = self.cost_of(head.expert)
                if head.expert != self.resident:
                    if not self.running:
                        unload = self.cost_of(self.resident).unload_s if self.resident is not None else 0.0
                        end = self.t + float(unload) + float(mc.load_s)
                        self.records.append(LoadRecord(self.stage, 0, head.expert, self.t, end))
                        self.t, self.resident = end, head.expert
                        continue
                elif len(self.running) < mc.max_batch and self.fits(mc, head):
                    if head.arrival <= self.t + ARRIVAL_EPS:
                        self.admit(mc, head)
                        continue
                    if not self.running:
                        self.t = head.arrival
                        continue
                    wait = head.arrival
            mc = self.cost_of(self.resident)
            self.span(mc, wait)
            self.finish_and_preempt(mc)
        return self.records, self.preemptions


def _worker_run(items, cost_of, start=0.0, resident=None) -> tuple[list[Record], int]:
    sim = WorkerSim(0, cost_of, EXPERT_STAGE, start, resident)
    sim.enqueue(items)
    sim.run_until_idle()
    return sim.records, sim.preemptions


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@pytest.mark.parametrize("tight", [False, True])
@given(data=st.data())
def test_worker_equals_the_reference_to_the_last_digit(rt, data, tight):
    items, table, resident = data.draw(rt.worker_cases(max_requests=16, tight=tight))
    got = _worker_run(items, table.__getitem__, 1.5, resident)
    assert got == _Ref(table.__getitem__, EXPERT_STAGE, 1.5, resident).run(items)


@pytest.fixture(scope="module", params=_CONFIGS)
def paper(request):
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "experiments" / "configs" / f"{request.param}.yaml"
    return prepare(load_config(path, ["workload.questions=synthetic"]))


def test_paper_configs_equal_the_reference_to_the_last_digit(paper):
    """Every worker of the round-robin expert stage of the three paper configs, under the default (paged) memory
    model (MedMCQA's first worker preempts 9,348 times)."""
    plan = make_scheduler("round-robin").plan(paper.workload, paper.costs, paper.cluster, np.random.default_rng(0))
    backend = BACKENDS.get("sim")(paper.cfg, paper.responses, paper.costs)
    for w in paper.cluster.workers:
        items = backend.sim_requests(paper.workload, plan.order.get(w.id, ()))
        cost_of = backend.cost_of(w.gpu_type)
        records, preemptions = _worker_run(items, cost_of)
        assert (records, preemptions) == _Ref(cost_of, EXPERT_STAGE, 0.0, None).run(items), w.id
        assert len([r for r in records if not isinstance(r, LoadRecord)]) == len(items)
