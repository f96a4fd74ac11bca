"""Test doubles for the runtime tests: a table cost model, a simple scheduler, tiny workloads, and a brute-force
per-step reference simulator written independently of ``mosaic.runtime.sim_worker``.

Exposed through the session-scoped ``rt`` fixture so hypothesis tests can use them too.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from types import SimpleNamespace

import numpy as np
import pytest
from hypothesis import strategies as st

from mosaic.agents.interface import Scheduler
from mosaic.core.trace import LoadRecord, RequestRecord
from mosaic.core.types import Cluster, Expert, ExpertKind, Plan, Query, Request, Response, Responses, Workload
from mosaic.core.types import plan_from_order as _plan_from_order
from mosaic.predictors.interface import CostModel, ModelCost
from mosaic.runtime.sim_worker import ARRIVAL_EPS, SimRequest

GPU = "test-gpu"


def mcost(load_s=5.0, prefill_tps=1000.0, base=0.02, per_seq=0.001, per_kv=1e-6, max_batch=256, kv_cap=1_000_000,
          unload_s=0.0, cbase=0.0, cseq=0.0, ckv=0.0, block=16, memory="reserve"):  # fmt: skip
    """A ModelCost; ``cbase, cseq, ckv``: the second step line (a step is then the max of both); ``block``,
    ``memory``: KV block size and memory mode."""
    return ModelCost(load_s, prefill_tps, base, per_seq, per_kv, 16.0, max_batch, kv_cap, unload_s, cbase, cseq, ckv,
                     block, memory)  # fmt: skip


class TableCosts(CostModel):
    """ModelCost per expert from a table (same on every GPU type); predictions: a fixed token count per expert."""

    def __init__(self, table: Mapping[str, ModelCost], tokens: Mapping[str, float] | None = None) -> None:
        self.table = dict(table)
        self.tokens = dict(tokens or {})
        self.bound: list[str] = []  # names of the workloads bound so far (the executor binds once per stage)

    def bind(self, workload: Workload) -> TableCosts:
        self.bound.append(workload.name)
        return self

    def model_cost(self, expert: str, gpu_type: str) -> ModelCost:
        return self.table[expert]

    def predicted_tokens(self, request: Request) -> float:
        return self.tokens.get(request.expert, 100.0)

    def request_seconds(self, request: Request, gpu_type: str, batch: int | None = None) -> float:
        mc = self.table[request.expert]
        b = batch or mc.max_batch
        return request.prompt_tokens / mc.prefill_tps + self.predicted_tokens(request) * mc.step_time(b, 0) / b

    def request_latency(self, request: Request, gpu_type: str) -> float:
        return self.request_seconds(request, gpu_type, 1)


class ByExpertScheduler(Scheduler):
    """Expert i -> worker i mod n; each worker runs its experts in workload order, requests in id order.
    With ``resident``, a worker starts with the expert it has loaded when it serves it."""

    name = "by-expert"

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict | None]] = []

    def plan(self, workload, costs, cluster, rng, resident=None) -> Plan:
        self.calls.append((workload.name, dict(resident) if resident is not None else None))
        ids = cluster.ids
        order: dict[int, list[int]] = {w: [] for w in ids}
        names = [e.name for e in workload.experts]
        for i, name in enumerate(names):
            w = ids[i % len(ids)]
            order[w].extend(r.id for r in workload.requests if r.expert == name)
        if resident:
            for w in ids:
                first = resident.get(w)
                order[w].sort(key=lambda r: workload.requests[r].expert != first)
        return _plan_from_order(self.name, workload, order, 0.0, 0.0)


def make_workload(
    routes: Sequence[Sequence[str]],
    experts: Sequence[str] = ("a", "b", "c"),
    prompts: Sequence[int] | None = None,
    arrivals: Sequence[float] | None = None,
    gold: Sequence[str | None] | None = None,
    aggregator: str = "agg",
) -> Workload:
    ex = tuple(Expert(n, f"org/{n}", 7.0, ExpertKind.INSTRUCT, 16.0) for n in experts)
    agg = next((e for e in ex if e.name == aggregator), Expert(aggregator, "org/agg", 8.0, ExpertKind.INSTRUCT, 16.0))
    n = len(routes)
    queries = tuple(
        Query(
            i,
            f"q{i}",
            gold=gold[i] if gold else None,
            arrival=arrivals[i] if arrivals else 0.0,
            prompt_tokens=prompts[i] if prompts else 20 + i,
        )
        for i in range(n)
    )
    return Workload.build("rt", queries, ex, tuple(tuple(r) for r in routes), agg)


def make_responses(
    workload: Workload,
    tokens: Callable[[int, str], int],
    answer: Callable[[int, str], str | None] = lambda q, e: "A",
) -> Responses:
    """A response for every (query, expert) pair and for the aggregator."""
    names = [e.name for e in workload.experts] + [workload.aggregator.name]
    table = {}
    for q in workload.queries:
        for e in dict.fromkeys(names):
            table[(q.id, e)] = Response(tokens(q.id, e), answer(q.id, e))
    return Responses(table)


def brute_force(
    items: Sequence[SimRequest], cost_of: Callable[[str], ModelCost], start: float = 0.0, resident: str | None = None
) -> tuple[dict[int, tuple[float, float]], list[tuple[str, float, float]]]:
    """Reference worker, one decode step at a time: request id -> (start, end), and loads (expert, start, end).

    Memory mode ``reserve``: admission reserves prompt + output tokens. ``paged``: a request holding ``t`` tokens
    holds ``ceil(t / block)`` blocks; admission needs its prefill's blocks plus the next step's new blocks (one per
    request whose ``t`` is a multiple of the block size, itself included); after a step, while the next step's new
    blocks do not fit and more than one request runs, the most recently admitted one goes back to the queue's front
    with its generated tokens (prefilled again with them when readmitted)."""
    t, batch = start, []  # batch entries: [remaining tokens, request, first start, KV tokens, admission order]
    queue = [(r, 0, None) for r in items]  # (request, tokens generated before a preemption, first start)
    done: dict[int, tuple[float, float]] = {}
    loads: list[tuple[str, float, float]] = []
    order = 0

    def blocks(tokens: int, block: int) -> int:
        return -(-tokens // block)

    def held(block: int) -> int:
        return sum(blocks(e[3], block) for e in batch)

    def crossing(block: int) -> int:
        return sum(e[3] % block == 0 for e in batch)

    def finish(entries: list) -> None:
        for e in entries:
            batch.remove(e)
            done[e[1].request_id] = (e[2], t)

    while queue or batch:
        while queue:  # admissions at this step boundary, in order
            h, gen, first = queue[0]
            mc = cost_of(h.expert)
            if h.expert != resident or len(batch) >= mc.max_batch or h.arrival > t + ARRIVAL_EPS:
                break
            tokens = h.prompt_tokens + gen
            if mc.memory_mode == "paged":
                blk, cap = mc.kv_block_tokens, mc.kv_capacity_tokens // mc.kv_block_tokens
                if batch and held(blk) + blocks(tokens, blk) + crossing(blk) + (tokens % blk == 0) > cap:
                    break
            elif batch and sum(e[1].prompt_tokens + e[1].output_tokens for e in batch) + h.prompt_tokens + \
                    h.output_tokens > mc.kv_capacity_tokens:  # fmt: skip
                break
            queue.pop(0)
            batch.append([h.output_tokens - gen, h, t if first is None else first, tokens, order])
            order += 1
            t += tokens / mc.prefill_tps
        finished = [e for e in batch if e[0] == 0]
        finish(finished)  # zero-output requests leave right after prefill, freeing their slot
        if finished:
            continue
        if not batch:
            if queue and queue[0][0].expert != resident:
                mc = cost_of(queue[0][0].expert)
                swap = mc.load_s + (cost_of(resident).unload_s if resident is not None else 0.0)
                loads.append((queue[0][0].expert, t, t + swap))  # one record spans free + load
                t += swap
                resident = queue[0][0].expert
            elif queue:
                t = max(t, queue[0][0].arrival)
            continue
        mc = cost_of(resident)
        t += mc.step_time(len(batch), sum(e[3] for e in batch))
        for e in batch:
            e[0] -= 1
            e[3] += 1
        finish([e for e in batch if e[0] == 0])
        if mc.memory_mode == "paged":
            blk, cap = mc.kv_block_tokens, mc.kv_capacity_tokens // mc.kv_block_tokens
            while len(batch) > 1 and held(blk) + crossing(blk) > cap:
                victim = max(batch, key=lambda e: e[4])
                batch.remove(victim)
                queue.insert(0, (victim[1], victim[1].output_tokens - victim[0], victim[2]))
    return done, loads


def _compute_line(draw: st.DrawFn) -> dict[str, float]:
    """A second step line that crosses the first inside a run: cheaper at small batch or KV, dearer beyond."""
    return {"cbase": draw(st.floats(0.0, 0.03)), "cseq": draw(st.floats(0.0, 0.02)),
            "ckv": draw(st.sampled_from([0.0, 1e-5, 3e-4, 1e-3]))}  # fmt: skip


def _paged(draw: st.DrawFn) -> dict:
    """Paged KV with small blocks, so that the cache (5-400 tokens) runs out and preempts."""
    return {"memory": "paged", "block": draw(st.sampled_from([1, 2, 4, 16]))}


@st.composite
def worker_cases(draw: st.DrawFn, max_requests: int = 12, tight: bool = False) -> tuple:
    """(items, cost table, resident) for one worker: random limits, lengths, arrivals, experts. ``tight``: paged KV
    in a cache of 8-120 tokens and long outputs, so that requests are preempted and resumed."""
    names = ["a", "b", "c"][: draw(st.integers(1, 3))]
    table = {
        e: mcost(
            load_s=draw(st.floats(0.0, 3.0)),
            prefill_tps=draw(st.floats(50.0, 5000.0)),
            base=draw(st.floats(0.001, 0.05)),
            per_seq=draw(st.floats(0.0, 0.01)),
            per_kv=draw(st.sampled_from([0.0, 1e-5, 3e-4])),
            max_batch=draw(st.integers(2 if tight else 1, 6)),
            kv_cap=draw(st.integers(8, 120) if tight else st.integers(5, 400)),
            unload_s=draw(st.sampled_from([0.0, 0.0, 0.7, 1.3])),
            **(_compute_line(draw) if draw(st.booleans()) else {}),
            **(_paged(draw) if tight or draw(st.booleans()) else {}),
        )
        for e in names
    }
    n = draw(st.integers(1, max_requests))
    arrivals = draw(st.lists(st.sampled_from([0.0, 0.13, 1.5, 1.52, 1.62, 1.9, 2.71, 7.3]), min_size=n, max_size=n))
    if draw(st.booleans()):
        arrivals.sort()  # a stream: later requests arrive while earlier ones decode
    out = st.integers(0, 60 if tight else 25)
    items = [
        SimRequest(i, i, draw(st.sampled_from(names)), draw(st.integers(0, 40)), draw(out), arrivals[i])
        for i in range(n)
    ]
    resident = draw(st.sampled_from([None, *names]))
    return items, table, resident


def records_of(records, cls):
    return [r for r in records if isinstance(r, cls)]


@pytest.fixture(scope="session")
def rt() -> SimpleNamespace:
    """Factories of the runtime test doubles (session-scoped so @given tests may use them)."""
    return SimpleNamespace(
        GPU=GPU,
        mcost=mcost,
        costs=TableCosts,
        scheduler=ByExpertScheduler,
        workload=make_workload,
        responses=make_responses,
        brute_force=brute_force,
        worker_cases=worker_cases,
        requests=lambda recs: records_of(recs, RequestRecord),
        loads=lambda recs: records_of(recs, LoadRecord),
        rng=lambda: np.random.default_rng(0),
        cluster=lambda n=2: Cluster.homogeneous(n, GPU, 80.0),
    )
