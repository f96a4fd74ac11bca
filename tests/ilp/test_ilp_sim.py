"""MOSAIC ILP plans on the paper workloads, run through the discrete-event simulator.

With known output lengths (the oracle predictor) the plan's predicted makespan matches the simulated one within 5%
on all three workloads (measured: MedMCQA +1.4%, MMLU-Pro +2.7%, GPQA +0.0%). ``group_seconds`` prices a group as
every request's own seconds plus the shared decode steps, at least those of its slowest request: a long straggler
shares its steps with the rest of the group, which pays its own seconds meanwhile. (Before, it floored a group at
its slowest request alone at batch 1, and MMLU-Pro ran +5.7%, GPQA +30-45% over prediction.) With the paper's
per-expert mean lengths the cost model underestimates every scheduler alike (heavy-tailed true lengths), so there
we check the ranking: the ILP beats round-robin in simulation and greedy LPT in prediction.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

import numpy as np
import pytest

from mosaic.agents import make_scheduler
from mosaic.agents.ilp_scheduler import MosaicIlpScheduler
from mosaic.core.config import load_config
from mosaic.core.trace import EXPERT_STAGE, TraceWriter
from mosaic.pipeline import Experiment, prepare
from mosaic.runtime.registry import BACKENDS

CONFIGS = Path(__file__).resolve().parents[2] / "experiments" / "configs"


@cache
def experiment(name: str, predictor: str, memory_mode: str | None = None) -> Experiment:
    mode = [f"costs.memory_mode={memory_mode}"] if memory_mode else []
    return prepare(load_config(CONFIGS / f"{name}.yaml", [f"costs.predictor={predictor}", *mode]))


def simulate(exp: Experiment, scheduler: str) -> tuple[float, float]:
    """(predicted, simulated) expert-stage makespan of ``scheduler``'s plan."""
    sched = MosaicIlpScheduler() if scheduler == "mosaic-ilp" else make_scheduler(scheduler)
    plan = sched.plan(exp.workload, exp.costs, exp.cluster, np.random.default_rng(0))
    backend = BACKENDS.get("sim")(exp.cfg, exp.responses, exp.costs)
    with TraceWriter(None) as trace:
        stage = backend.run_stage(EXPERT_STAGE, plan, exp.workload, exp.cluster, trace)
    return plan.predicted_makespan, stage.makespan


@pytest.mark.parametrize("name", ["medmcqa", "mmlu_pro", "gpqa"])
def test_predicted_makespan_matches_simulation_with_known_lengths(name):
    predicted, simulated = simulate(experiment(name, "oracle"), "mosaic-ilp")
    assert abs(simulated / predicted - 1.0) <= 0.05, (predicted, simulated)


@pytest.mark.parametrize("name", ["medmcqa", "mmlu_pro", "gpqa"])
def test_ilp_beats_the_baselines_on_paper_workloads(name):
    exp = experiment(name, "mean")
    ilp_pred, ilp_sim = simulate(exp, "mosaic-ilp")
    rr_pred, rr_sim = simulate(exp, "round-robin")
    greedy_pred, _ = simulate(exp, "greedy-lpt")
    assert ilp_pred <= greedy_pred + 1e-6 and ilp_pred < rr_pred
    assert ilp_sim < rr_sim


@pytest.mark.parametrize("name", ["medmcqa", "mmlu_pro", "gpqa"])
@pytest.mark.parametrize(("mode", "limit"), [("reserve", 0.03), ("paged", 0.12)])
def test_ilp_plan_near_the_lower_bound(name, mode, limit):
    """Predicted makespan against the cost model's lower bound on every paper workload (model-only: both from the
    per-expert means). Reserved KV: within 3% (the placement relaxation binds; the work bound alone left GPQA at
    24%). Paged KV: the floor counts the KV a request holds as it generates (p + j), not its reservation, because
    the simulator admits on held blocks; the estimate keeps the reservation (preemptions make a lockstep batch
    behave so: test above), so the gap is the floor's (measured issue 19: MedMCQA 4.3%, MMLU-Pro 11.0%)."""
    exp = experiment(name, "mean", mode)
    plan = MosaicIlpScheduler().plan(exp.workload, exp.costs, exp.cluster, np.random.default_rng(0))
    assert plan.lower_bound <= plan.predicted_makespan + 1e-6
    assert plan.predicted_makespan <= (1 + limit) * plan.lower_bound, plan.stats
