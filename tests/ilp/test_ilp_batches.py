"""The ILP polish's exact group price under reserved KV (:mod:`mosaic.ilp.batches`) against the simulator."""

from __future__ import annotations

import numpy as np
import pytest

from mosaic.core.types import Cluster, Expert, ExpertKind, Query, Response, Responses, Workload
from mosaic.ilp import build_instance
from mosaic.ilp.polish import group_cost
from mosaic.predictors.costmodel import ProfiledCostModel
from mosaic.predictors.interface import ModelCost
from mosaic.predictors.lengths import OracleLengthPredictor
from mosaic.predictors.profile import CostProfile
from mosaic.runtime.sim import SimBackend
from mosaic.runtime.sim_worker import WorkerSim, discard


@pytest.mark.parametrize("seed", range(40))
def test_exact_group_price_matches_the_simulator_with_reserved_kv(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 12))
    e = Expert("e", "org/e", 7.0, ExpertKind.INSTRUCT, 20.0)
    wl = Workload.build("g", tuple(Query(i, "", prompt_tokens=int(rng.integers(10, 300))) for i in range(n)), (e,),
                        (("e",),) * n, e)  # fmt: skip
    tokens = np.where(rng.random(n) < 0.4, rng.integers(500, 3000, n), rng.integers(5, 200, n))
    responses = Responses({(i, "e"): Response(int(t)) for i, t in enumerate(tokens)})
    cap = int((tokens.max() + 300) * rng.uniform(0.8, 3.0))
    mc = ModelCost(5.0, 4000.0, 0.02, 3e-4, 2e-7, 20.0, max_batch=int(rng.choice([1, 2, 3, 8])), kv_capacity_tokens=cap)
    costs = ProfiledCostModel(CostProfile({"G": {"e": mc}}), OracleLengthPredictor(responses), wl)
    inst = build_instance(wl, costs, Cluster.homogeneous(1, "G", 80.0))
    ids = np.arange(n)
    order = ids[np.lexsort((ids, -inst.request_seconds[ids, 0]))]  # the order the ILP's extraction runs them in
    backend = SimBackend(responses, costs)
    sim = WorkerSim(0, backend.cost_of("G"), resident="e", emit=discard)
    sim.enqueue(backend.sim_requests(wl, tuple(order.tolist())))
    assert group_cost(inst, 0, ids, 0) == pytest.approx(sim.run_until_idle(), rel=1e-9)
