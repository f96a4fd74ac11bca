"""The ILP polish's group price (:mod:`mosaic.ilp.batches`) against the simulator: exact under reserved KV, at token
granularity (blocks left out) under paged KV."""

from __future__ import annotations

import numpy as np
import pytest

from mosaic.core.types import Cluster, Expert, ExpertKind, Query, Response, Responses, Workload
from mosaic.ilp import build_instance
from mosaic.ilp.batches import paged_steps
from mosaic.ilp.polish import group_cost
from mosaic.predictors.costmodel import ProfiledCostModel
from mosaic.predictors.interface import ModelCost
from mosaic.predictors.lengths import OracleLengthPredictor
from mosaic.predictors.profile import CostProfile
from mosaic.runtime.sim import SimBackend
from mosaic.runtime.sim_worker import WorkerSim, discard


def _group(seed: int, mode: str) -> tuple[float, float]:
    """(polish's price, the simulator's seconds) of one random group of one expert on one worker."""
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 12))
    e = Expert("e", "org/e", 7.0, ExpertKind.INSTRUCT, 20.0)
    wl = Workload.build("g", tuple(Query(i, "", prompt_tokens=int(rng.integers(10, 300))) for i in range(n)), (e,),
                        (("e",),) * n, e)  # fmt: skip
    tokens = np.where(rng.random(n) < 0.4, rng.integers(500, 3000, n), rng.integers(5, 200, n))
    responses = Responses({(i, "e"): Response(int(t)) for i, t in enumerate(tokens)})
    cap = int((tokens.max() + 300) * rng.uniform(0.8, 3.0))
    mc = ModelCost(5.0, 4000.0, 0.02, 3e-4, 2e-7, 20.0, max_batch=int(rng.choice([1, 2, 3, 8])), kv_capacity_tokens=cap,
                   kv_block_tokens=16, memory_mode=mode)  # fmt: skip
    costs = ProfiledCostModel(CostProfile({"G": {"e": mc}}), OracleLengthPredictor(responses), wl)
    inst = build_instance(wl, costs, Cluster.homogeneous(1, "G", 80.0))
    ids = np.arange(n)
    order = ids[np.lexsort((ids, -inst.request_seconds[ids, 0]))]  # the order the ILP's extraction runs them in
    backend = SimBackend(responses, costs)
    sim = WorkerSim(0, backend.cost_of("G"), resident="e", emit=discard)
    sim.enqueue(backend.sim_requests(wl, tuple(order.tolist())))
    return group_cost(inst, 0, ids, 0), sim.run_until_idle()


@pytest.mark.parametrize("seed", range(40))
def test_exact_group_price_matches_the_simulator_with_reserved_kv(seed):
    price, simulated = _group(seed, "reserve")
    assert price == pytest.approx(simulated, rel=1e-9)


@pytest.mark.parametrize("seed", range(40))
def test_paged_group_price_is_near_the_simulator(seed):
    """Paged KV: the count leaves the 16-token blocks out (a request holds its tokens, not whole blocks), so a
    preemption may come a step or a block earlier or later than in the simulator (seeds 0-199: mean 0.06%, max 2.4%)."""
    price, simulated = _group(seed, "paged")
    assert price == pytest.approx(simulated, rel=0.03)


def test_paged_steps_by_hand():
    """Two requests of prompt 10 and 10 outputs, cache of 30 tokens, batch 2: both run 5 steps (30 tokens held);
    the next step does not fit, the later one is preempted holding 15 tokens; the first ends at step 10; the second
    prefills its 15 tokens again and decodes its last 5: 15 steps, 15 tokens recomputed."""
    assert paged_steps(np.array([10.0, 10.0]), np.array([10, 10]), 2, 30.0) == (15, 15.0)
    assert paged_steps(np.array([10.0, 10.0]), np.array([5, 5]), 2, 30.0) == (5, 0.0)  # fits: one batch
    assert paged_steps(np.array([10.0, 10.0]), np.array([10, 10]), 1, 1000.0) == (20, 0.0)  # batch of one
