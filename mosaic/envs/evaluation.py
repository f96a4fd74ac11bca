"""``mosaic eval-agents``: schedulers and skip policies, baselines and trained agents, on the same instances.

Makespans: static plans (round-robin, greedy LPT, MOSAIC ILP) run by the simulator; run-time policies (a
heuristic or an RL agent, from a base plan or from nothing) run in ``mosaic/Reschedule-v0``, which drives the same
simulator. Skips: fixed thresholds and a learned policy on the same skip tables; aggregation time is the simulated
aggregation stage of the queries not skipped.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mosaic.aggregation.thresholds import DEFAULT_TOLERANCE
from mosaic.core.trace import EXPERT_STAGE, TraceWriter
from mosaic.core.types import Plan
from mosaic.envs.policies import Policy, heuristic, rollout
from mosaic.envs.problem import Instance
from mosaic.envs.reschedule import RescheduleEnv, default_plan_scheduler, plan_instance
from mosaic.envs.skip_tables import SkipTable, observations, stage_time
from mosaic.report.metrics import mean_ci
from mosaic.runtime.sim import SimBackend

FIXED_THRESHOLDS = (("always aggregate", 1.01), ("fixed T=1", 1.0), ("fixed T=2/3", 2 / 3), ("skip all", 0.0))
PolicyFactory = Callable[[RescheduleEnv], Policy]


# --- makespans ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MakespanRow:
    """One scheduler (or policy) over the evaluation instances."""

    name: str
    makespans: tuple[float, ...]  # seconds, one per instance (empty: not run, see note)
    lower_bounds: tuple[float, ...] = ()  # seconds, the instances' lower bounds
    note: str = ""

    def as_dict(self) -> dict[str, Any]:
        mean, half = mean_ci(self.makespans)
        return {"name": self.name, "mean_s": mean, "ci95_s": half, "makespans": list(self.makespans), "note": self.note}


def static_makespan(inst: Instance, plan: Plan) -> float:
    """Simulated expert-stage makespan of a static plan."""
    backend = SimBackend(inst.responses, inst.costs, inst.max_batch)
    with TraceWriter(None) as trace:
        return backend.run_stage(EXPERT_STAGE, plan, inst.workload, inst.cluster, trace, 0.0, inst.resident).makespan


def env_makespans(
    instances: Sequence[Instance],
    factory: PolicyFactory,
    start: str,
    plans: Sequence[Plan] | None = None,
    env_kwargs: Mapping[str, Any] | None = None,
) -> list[float]:
    """Makespan of ``factory(env)`` driving each instance from nothing (``start="empty"``) or from ``plans``."""
    env = RescheduleEnv(instances, start=start, plan_scheduler="greedy-lpt", **dict(env_kwargs or {}))
    policy = factory(env)
    out = []
    for i in range(len(instances)):
        options: dict[str, Any] = {"instance": i}
        if plans is not None:
            options["plan"] = plans[i]
        out.append(rollout(env, policy, options).makespan)
    return out


def base_plans(instances: Sequence[Instance], scheduler: str) -> list[Plan]:
    """``scheduler``'s plan of every instance (validated)."""
    return [plan_instance(inst, scheduler) for inst in instances]


def compare_schedulers(
    instances: Sequence[Instance], reschedule: Any = None, dispatch: Any = None, plan_scheduler: str | None = None
) -> list[MakespanRow]:
    """Round-robin, greedy LPT, the MOSAIC ILP, base plan + greedy stealing, base plan + RL rescheduling, greedy
    dispatch, RL alone. ``reschedule``/``dispatch``: :class:`~mosaic.agents.rl.LoadedAgent` or None. The base plan
    is ``plan_scheduler``'s (default: the MOSAIC ILP when registered, else greedy LPT)."""
    lbs = tuple(RescheduleEnv(instances).prepared(i).ref for i in range(len(instances)))
    ilp = default_plan_scheduler() == "mosaic-ilp"
    base = plan_scheduler or ("mosaic-ilp" if ilp else "greedy-lpt")
    static = ["round-robin", "greedy-lpt", *(["mosaic-ilp"] if ilp else []), base]
    by_scheduler = {s: base_plans(instances, s) for s in dict.fromkeys(static)}
    rows = [_static_row(s, instances, ps, lbs) for s, ps in by_scheduler.items()]
    if not ilp:
        rows.insert(2, MakespanRow("mosaic-ilp", (), lbs, "not registered (mosaic.agents.ilp_scheduler missing)"))
    plans = by_scheduler[base]
    greedy: PolicyFactory = lambda e: heuristic("greedy", e)  # noqa: E731
    rows.append(MakespanRow(f"{base} + greedy stealing", tuple(env_makespans(instances, greedy, "plan", plans)), lbs))
    rows.append(_agent_row(f"{base} + RL rescheduling", instances, reschedule, "plan", plans, lbs))
    rows.append(MakespanRow("greedy dispatch (no plan)", tuple(env_makespans(instances, greedy, "empty")), lbs))
    rows.append(_agent_row("RL alone (no plan)", instances, dispatch, "empty", None, lbs))
    return rows


def _static_row(name: str, instances: Sequence[Instance], plans: Sequence[Plan], lbs: tuple[float, ...]) -> MakespanRow:
    return MakespanRow(name, tuple(static_makespan(i, p) for i, p in zip(instances, plans, strict=True)), lbs)


def _agent_row(
    name: str,
    instances: Sequence[Instance],
    agent: Any,
    start: str,
    plans: Sequence[Plan] | None,
    lbs: tuple[float, ...],
) -> MakespanRow:
    if agent is None:
        return MakespanRow(name, (), lbs, "no model given")
    from mosaic.agents.rl import ENV_KEYS

    kwargs = {k: v for k, v in agent.env_kwargs.items() if k in ENV_KEYS}
    return MakespanRow(name, tuple(env_makespans(instances, lambda _e: agent.act, start, plans, kwargs)), lbs)


# --- skip policies -----------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ThresholdRow:
    """One skip policy, averaged over the evaluation tables."""

    name: str
    skip_rate: float  # share of queries that skip the aggregator
    accuracy: float  # share of queries answered correctly
    time_s: float  # simulated aggregation-stage makespan, seconds
    note: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "skip_rate": self.skip_rate,
            "accuracy": self.accuracy,
            "time_s": self.time_s,
            "note": self.note,
        }


def fixed_skips(table: SkipTable, threshold: float) -> np.ndarray:
    """What :class:`~mosaic.aggregation.thresholds.FixedThreshold` decides on every row (T > 1: never skip)."""
    return table.confidence >= threshold - DEFAULT_TOLERANCE


def threshold_row(name: str, tables: Sequence[SkipTable], skips: Sequence[np.ndarray], note: str = "") -> ThresholdRow:
    """Mean skip rate, accuracy and simulated aggregation time of ``skips`` (one bool array per table)."""
    rates = [float(np.mean(s)) for s in skips]
    accs = [t.accuracy(s) for t, s in zip(tables, skips, strict=True)]
    times = [stage_time(t, s) for t, s in zip(tables, skips, strict=True)]
    return ThresholdRow(name, float(np.mean(rates)), float(np.mean(accs)), float(np.mean(times)), note)


def compare_thresholds(tables: Sequence[SkipTable], learned: Mapping[str, Any] | None = None) -> list[ThresholdRow]:
    """Fixed thresholds (always, T=1, T=2/3, skip all) and each learned skip model (``name -> SB3SkipModel``)."""
    rows = [threshold_row(n, tables, [fixed_skips(t, th) for t in tables]) for n, th in FIXED_THRESHOLDS]
    for name, model in (learned or {}).items():
        rows.append(threshold_row(name, tables, [model.skip_batch(observations(t)) for t in tables]))
    return rows


def front_gap(time_s: float, accuracy: float, front: Sequence[tuple[float, float]]) -> tuple[float, float]:
    """Accuracy of a point minus the fixed-threshold front's at the same time, as (vs the best fixed T that is not
    slower, vs the front's upper hull, i.e. random mixtures of two thresholds). Positive: beyond the front."""
    best, pareto = -math.inf, []
    for t, a in sorted(front):  # Pareto points: faster ones first, each more accurate than every faster one
        if a > best:
            pareto.append((t, a))
            best = a
    stair = max((a for t, a in pareto if t <= time_s + 1e-9), default=-math.inf)
    hull: list[tuple[float, float]] = []
    for p in pareto:  # upper concave hull (monotone chain)
        while len(hull) >= 2 and _cross(hull[-2], hull[-1], p) >= 0:
            hull.pop()
        hull.append(p)
    if not hull:
        return math.inf, math.inf
    ts, accs = np.array([p[0] for p in hull]), np.array([p[1] for p in hull])
    interp = float(np.interp(time_s, ts, accs, left=-math.inf, right=accs[-1]))
    return accuracy - stair, accuracy - interp


def _cross(o: tuple[float, float], a: tuple[float, float], b: tuple[float, float]) -> float:
    return (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0])


def pareto_png(rows: Sequence[ThresholdRow], path: Path, title: str = "aggregation: time vs accuracy") -> Path:
    """Time (x) vs accuracy (y): the fixed-threshold front as a line, every other policy as a marker."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fixed = {n for n, _ in FIXED_THRESHOLDS}
    front = sorted((r.time_s, 100 * r.accuracy, r.name) for r in rows if r.name in fixed)
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    ax.plot([p[0] for p in front], [p[1] for p in front], "o-", color="0.4", label="fixed thresholds")
    for t, a, n in front:
        ax.annotate(n, (t, a), textcoords="offset points", xytext=(4, -10), fontsize=8)
    for r in (r for r in rows if r.name not in fixed):
        ax.plot(r.time_s, 100 * r.accuracy, "*", markersize=12, label=r.name)
    ax.set_xlabel("aggregation stage time (s, simulated)")
    ax.set_ylabel("accuracy (%)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
