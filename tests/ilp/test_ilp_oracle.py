"""The MOSAIC ILP against the true optimum (issue 19): random small stages (<= 3 workers, <= 3 experts, <= 8 requests,
mixed long and short outputs, tight memory, both memory modes and step models; ``conftest.small_instance``), every
plan enumerated and scored with the simulator (``conftest.exhaustive_optimum``), the ILP given the true lengths.

Checked on each: the true-length lower bound is at most the optimum (it is valid for every plan), and an ILP plan
reported 'optimal' simulates within 1% of the optimum. Over all: the mean ratio of the ILP's simulated makespan to
the optimum and the largest one. The fast suite runs a seeded 60; the slow suite all 500 and prints the summary
(``python -m pytest tests/ilp/test_ilp_oracle.py -m slow -s``; figures in docs/plan_quality.md).
"""

from __future__ import annotations

import numpy as np
import pytest

from mosaic.agents.bounds import true_lower_bound
from mosaic.agents.ilp_scheduler import MosaicIlpScheduler


def ratios(small, seeds: range) -> list[tuple[str, float, str, float]]:
    """(label, ILP simulated / optimum, ILP status, true bound / optimum) of each seed's instance."""
    out = []
    for seed in seeds:
        inst = small.instance(seed)
        opt = small.optimum(inst)
        plan = MosaicIlpScheduler().plan(inst.workload, inst.costs, inst.cluster, np.random.default_rng(0))
        bound = true_lower_bound(inst.workload, inst.responses, inst.costs, inst.cluster).value
        out.append((inst.label, small.simulate(inst, plan) / opt, str(plan.stats["ilp_status"]), bound / opt))
    return out


def check(found: list[tuple[str, float, str, float]], mean_limit: float, max_limit: float) -> None:
    for label, ratio, status, bound in found:
        assert ratio >= 1 - 1e-9, (label, ratio)  # the enumeration really is the optimum
        assert bound <= 1 + 1e-9, (label, bound)  # the true bound holds for every plan
        if status == "optimal":
            assert ratio <= 1.01, (label, ratio)
    r = np.array([x[1] for x in found])
    worst = sorted(found, key=lambda x: -x[1])[:5]
    print(f"\n{len(r)} instances: mean ILP/optimum {r.mean():.4f}, max {r.max():.4f}, above 1.01: {(r > 1.01).sum()}, "
          f"reported optimal: {sum(x[2] == 'optimal' for x in found)}, mean bound/optimum "
          f"{np.mean([x[3] for x in found]):.4f}; worst: {worst}")  # fmt: skip
    assert r.mean() <= mean_limit and r.max() <= max_limit, worst


def test_ilp_near_the_exhaustive_optimum(small):
    """The first 60: mean 1.0000, max 1.0010 today; the limits are the issue's targets."""
    check(ratios(small, range(60)), 1.01, 1.05)


@pytest.mark.slow
def test_ilp_near_the_exhaustive_optimum_500(small):
    """All 500, against the issue's targets (measured: mean 1.0001, max 1.0458, 2 above 1.01: docs/plan_quality.md)."""
    check(ratios(small, range(500)), 1.01, 1.05)
