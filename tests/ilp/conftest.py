"""Test helpers: random small stages for the exhaustive tests (issue 19): <= 3 workers, <= 3 experts, <= 8 requests,
mixed long and short outputs, tight memory (small batch caps, KV caches that hold one or two long requests), both
memory modes and both step models. Each comes with its true lengths, a profiled cost model that knows them (the
oracle) and the simulator that replays them; :func:`exhaustive_optimum` enumerates every plan and scores it with
the simulator.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from types import SimpleNamespace

import numpy as np
import pytest

from mosaic.core.trace import EXPERT_STAGE, TraceWriter
from mosaic.core.types import Cluster, Expert, ExpertKind, Plan, Query, Response, Responses, Workload
from mosaic.predictors.costmodel import ProfiledCostModel
from mosaic.predictors.interface import ModelCost
from mosaic.predictors.lengths import OracleLengthPredictor
from mosaic.predictors.profile import CostProfile
from mosaic.runtime.sim import SimBackend
from mosaic.runtime.sim_worker import WorkerSim, discard

GPU = "G"


@dataclass(frozen=True)
class Small:
    """One random stage: workload, true responses, cluster and the oracle cost model (bound to the workload)."""

    workload: Workload
    responses: Responses
    cluster: Cluster
    costs: ProfiledCostModel
    label: str


def _model_cost(rng: np.random.Generator, mode: str, two_lines: bool, cap: int, batch: int) -> ModelCost:
    base = float(rng.uniform(0.01, 0.03))
    compute = {"step_compute_base_s": 0.0, "step_compute_per_seq_s": base / 3, "step_compute_per_kv_token_s": 2e-7}
    return ModelCost(
        load_s=float(rng.uniform(2.0, 25.0)), prefill_tps=float(rng.uniform(2000.0, 8000.0)), step_base_s=base,
        step_per_seq_s=float(rng.uniform(1e-4, 1e-3)), step_per_kv_token_s=float(rng.uniform(0.0, 4e-7)),
        memory_gb=20.0, max_batch=batch, kv_capacity_tokens=cap, unload_s=float(rng.choice([0.0, rng.uniform(0, 4)])),
        kv_block_tokens=16, memory_mode=mode, **(compute if two_lines else {}),
    )  # fmt: skip


def small_instance(seed: int) -> Small:
    """The random stage of ``seed`` (deterministic)."""
    rng = np.random.default_rng(seed)
    n_w, n_e = int(rng.integers(1, 4)), int(rng.integers(1, 4))
    names = [f"e{k}" for k in range(n_e)]
    experts = tuple(Expert(n, f"org/{n}", 7.0, ExpertKind.INSTRUCT, 20.0) for n in names)
    routes: list[tuple[str, ...]] = []
    per_expert = dict.fromkeys(names, 0)
    target = int(rng.integers(2, 9))
    while sum(per_expert.values()) < target:
        k = int(rng.integers(1, n_e + 1))
        pick = [n for n in rng.permutation(names)[:k] if per_expert[n] < 4][: target - sum(per_expert.values())]
        if not pick:
            break
        routes.append(tuple(pick))
        for n in pick:
            per_expert[n] += 1
    queries = tuple(Query(i, "", prompt_tokens=int(rng.integers(30, 400))) for i in range(len(routes)))
    aggregator = Expert("agg", "org/agg", 7.0, ExpertKind.INSTRUCT, 20.0)  # not in the stage: no order forced
    wl = Workload.build(f"small-{seed}", queries, experts, tuple(routes), aggregator)
    long = rng.random(len(wl.requests)) < 0.35
    tokens = np.where(long, rng.integers(800, 3000, len(long)), rng.integers(20, 250, len(long)))
    responses = Responses({(r.query_id, r.expert): Response(int(t)) for r, t in zip(wl.requests, tokens, strict=True)})
    mode = str(rng.choice(["reserve", "paged"]))
    two_lines = bool(rng.random() < 0.5)
    biggest = max(r.prompt_tokens + int(t) for r, t in zip(wl.requests, tokens, strict=True))
    cap = int(biggest * rng.uniform(0.8, 2.5))  # tight: one or two long requests fill it (some exceed it alone)
    batch = int(rng.choice([2, 3, 4, 256]))
    table = {GPU: {e.name: _model_cost(rng, mode, two_lines, cap, batch) for e in (*experts, aggregator)}}
    costs = ProfiledCostModel(CostProfile(table), OracleLengthPredictor(responses), wl)
    label = f"seed {seed}: {n_w}w {n_e}e {len(wl.requests)}r {mode} {'max' if two_lines else 'sum'} b{batch}"
    return Small(wl, responses, Cluster.homogeneous(n_w, GPU, 80.0), costs, label)


def simulate(inst: Small, plan: Plan) -> float:
    """The simulated expert-stage makespan of ``plan`` (the sim backend, as ``mosaic compare`` runs it)."""
    backend = SimBackend(inst.responses, inst.costs)
    with TraceWriter(None) as trace:
        return backend.run_stage(EXPERT_STAGE, plan, inst.workload, inst.cluster, trace).makespan


def _worker_seconds(inst: Small, order: Sequence[int]) -> float:
    """Simulated seconds of one worker (nothing resident) running ``order``: when its last request ends."""
    backend = SimBackend(inst.responses, inst.costs)
    sim = WorkerSim(0, backend.cost_of(GPU), emit=discard)
    sim.enqueue(backend.sim_requests(inst.workload, tuple(order)))
    return sim.run_until_idle() if order else 0.0


def _orders(inst: Small, ids: Sequence[int]) -> list[tuple[int, ...]]:
    """Every order of ``ids`` that runs each expert's requests as one contiguous run: every order of the experts
    times every order of the requests within each run (a second run of an expert would add a load and a teardown)."""
    groups: dict[str, list[int]] = {}
    for r in ids:
        groups.setdefault(inst.workload.requests[r].expert, []).append(r)
    perms = {e: list(itertools.permutations(g)) for e, g in groups.items()}
    out = []
    for experts in itertools.permutations(groups):
        for runs in itertools.product(*(perms[e] for e in experts)):
            out.append(tuple(r for run in runs for r in run))
    return out


def exhaustive_optimum(inst: Small) -> float:
    """The least simulated makespan over every plan: every assignment of requests to the (identical) workers and
    every order on each (:func:`_orders`). Workers of a static plan run independently, so each subset's best time
    is found once and the assignment is a min-max partition into at most ``W`` subsets (dynamic programming)."""
    n = len(inst.workload.requests)

    @cache
    def best(mask: int) -> float:
        ids = [r for r in range(n) if mask >> r & 1]
        return min(_worker_seconds(inst, o) for o in _orders(inst, ids)) if ids else 0.0

    full = (1 << n) - 1
    layer = {mask: best(mask) for mask in range(full + 1)}
    for _ in range(len(inst.cluster) - 1):
        nxt = {}
        for mask in range(full + 1):
            top, sub, value = mask & -mask, mask, layer[mask]
            while sub:  # submasks holding the lowest request: each partition once
                if sub & top:
                    value = min(value, max(best(sub), layer[mask ^ sub]))
                sub = (sub - 1) & mask
            nxt[mask] = value
        layer = nxt
    return layer[full]


@pytest.fixture(scope="session")
def small() -> SimpleNamespace:
    """The helpers above, for the tests (conftest modules are not imported by name)."""
    return SimpleNamespace(instance=small_instance, optimum=exhaustive_optimum, simulate=simulate)
