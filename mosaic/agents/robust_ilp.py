"""'mosaic-ilp-robust': the MOSAIC ILP planned on length distributions (sample-average approximation).

The ILP prices every request by one predicted length; the simulator (or a real engine) runs its true one. This
scheduler reads each prediction as a distribution and picks, among a few candidate plans, the one whose cost-model
makespan is lowest over sampled length scenarios:

1. **Scenarios**: ``scenarios`` evaluation sets and ``plan_scenarios`` planning sets of output lengths, drawn from
   the ``numpy.random.Generator`` passed to :meth:`plan` (never the global RNG). Each request's length is
   lognormal with mean the predicted length and log-std the predictor's spread
   (:meth:`LengthPredictor.predict_spread`: LightGBM's p50/p90 heads, or ``mean:TRACE``'s per-expert spread), or
   ``sigma`` where it gives none, clipped at ``max_tokens``; with ``lengths`` (a JSONL trace of past requests),
   each request's length is instead its prediction times a ratio resampled from its expert's past lengths over
   their mean (the empirical spread, caps included).
2. **Candidates**: the ILP on the given costs (the means), on expected costs (the predictor's spread, when it
   gives one and the costs are point costs), on each ``quantiles`` length (every request at that quantile of its
   distribution) and on each planning scenario; and greedy LPT's plan on the expected costs (``greedy``). Planning
   scenarios are off by default: the ILP on one drawn length set isolates *that* set's long requests, and on
   held-out MMLU-Pro (seed 0) such plans scored 797-964 s over the evaluation scenarios against 602 s for the
   means plan.
3. **Choice**: every candidate is priced on every evaluation scenario by the cost model's own makespan
   (:func:`order_worker_times`, the groups' ``group_seconds`` at the scenario's lengths); the lowest mean (or CVaR
   at ``cvar_alpha``: the mean of the worst ``1 - alpha`` share) wins, ties to the earlier candidate (the means').

The candidates share ``time_limit_s`` (each gets an equal part; polish at most half of it), so the whole search
takes about the budget of one 'mosaic-ilp' plan. The plan's ``predicted_makespan`` is under the given costs, as
every scheduler's; ``Plan.stats`` adds ``robust_choice`` (the winning candidate), ``robust_objective_s`` (its
score), ``robust_means_s`` (the means plan's score), ``robust_scores`` (every candidate's), ``robust_candidates``,
``robust_scenarios`` and ``robust_draws`` ('lognormal' | 'empirical' | 'none': no spread, the means plan only).
``mosaic-ilp-robust+steal`` runs the chosen plan with work stealing (:mod:`mosaic.agents.stealing`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from statistics import NormalDist

import numpy as np

from mosaic.agents.bounds import order_worker_times, plan_with_estimates
from mosaic.agents.greedy_lpt import greedy_lpt_order
from mosaic.agents.ilp_scheduler import MosaicIlpScheduler
from mosaic.agents.registry import SCHEDULERS
from mosaic.agents.stealing import StealingScheduler
from mosaic.core.errors import ConfigError
from mosaic.core.trace import RequestRecord, read_trace
from mosaic.core.types import Cluster, Plan, Request, Workload
from mosaic.predictors.costmodel import ProfiledCostModel
from mosaic.predictors.interface import CostModel, LengthPredictor

OBJECTIVES = ("mean", "cvar")
Order = dict[int, list[int]]


class _GivenLengths(LengthPredictor):
    """Output tokens given per request id (one length scenario)."""

    name = "scenario"

    def __init__(self, tokens: np.ndarray) -> None:
        self.tokens = tokens

    def predict(self, workload: Workload, requests: Sequence[Request]) -> np.ndarray:
        return self.tokens[[r.id for r in requests]]


@SCHEDULERS.register("mosaic-ilp-robust", help="MOSAIC ILP on length scenarios: the candidate plan of least mean "
                                               "(or CVaR) makespan over sampled lengths")  # fmt: skip
class RobustIlpScheduler(MosaicIlpScheduler):
    """MOSAIC ILP on length scenarios: the candidate plan of least mean (or CVaR) makespan over sampled lengths

    Args:
        scenarios: evaluation scenarios every candidate is priced on (>= 1).
        plan_scenarios: scenarios (drawn apart from the evaluation ones) that each get an ILP plan (>= 0).
        quantiles: each adds the ILP on every request's length at this quantile of its distribution (in (0, 1)).
        expected: add the ILP on expected costs (when the predictor gives a spread and the costs are point costs).
        greedy: add greedy LPT's plan on the expected costs (on the given ones without them).
        objective: 'mean' (sample average) or 'cvar' (mean of the worst ``1 - cvar_alpha`` share of scenarios).
        cvar_alpha: CVaR level, in [0, 1).
        sigma: log-std of the lengths where the predictor gives no spread (a number, or expert name -> number).
        max_tokens: generation cap of the drawn lengths (a number, or expert name -> number; None: no cap).
        lengths: a JSONL trace of past requests: draw lengths from their per-expert empirical ratios instead.
        **kwargs: as :class:`MosaicIlpScheduler`; ``time_limit_s`` is the budget of all candidates together.
    """

    name = "mosaic-ilp-robust"

    def __init__(
        self,
        *,
        scenarios: int = 16,
        plan_scenarios: int = 0,
        quantiles: Sequence[float] = (0.5, 0.9),
        expected: bool = True,
        greedy: bool = True,
        objective: str = "mean",
        cvar_alpha: float = 0.8,
        sigma: float | Mapping[str, float] | None = None,
        max_tokens: int | Mapping[str, int] | None = None,
        lengths: str | None = None,
        **kwargs: object,
    ) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        _check_int("scenarios", scenarios, 1)
        _check_int("plan_scenarios", plan_scenarios, 0)
        if objective not in OBJECTIVES:
            raise ConfigError(f"{self.name}: objective must be one of {list(OBJECTIVES)}, got {objective!r}")
        if not (isinstance(cvar_alpha, int | float) and 0.0 <= cvar_alpha < 1.0):
            raise ConfigError(f"{self.name}: cvar_alpha must be a number in [0, 1), got {cvar_alpha!r}")
        if isinstance(quantiles, str | bytes) or not all(isinstance(q, int | float) and 0 < q < 1 for q in quantiles):
            raise ConfigError(f"{self.name}: quantiles must be a list of numbers in (0, 1), got {quantiles!r}")
        self.scenarios, self.plan_scenarios, self.expected = scenarios, plan_scenarios, bool(expected)
        self.greedy = bool(greedy)
        self.quantiles = tuple(float(q) for q in quantiles)
        self.objective, self.cvar_alpha = objective, float(cvar_alpha)
        self.sigma = _per_expert("sigma", sigma, 0.0, float)
        self.max_tokens = _per_expert("max_tokens", max_tokens, 1, int)
        self.ratios = _trace_ratios(lengths) if lengths is not None else None  # expert -> past lengths / mean

    def plan(
        self,
        workload: Workload,
        costs: CostModel,
        cluster: Cluster,
        rng: np.random.Generator,
        resident: Mapping[int, str | None] | None = None,
    ) -> Plan:
        t0 = time.perf_counter()
        profile, tokens = getattr(costs, "profile", None), getattr(costs, "tokens", None)
        if profile is None or not isinstance(tokens, np.ndarray) or not workload.requests:  # nothing to draw from
            order = self._solve(workload, costs, cluster, rng, resident, 1)
            return self._chosen(workload, costs, cluster, resident, order, {"mean": math.nan}, t0)
        sampler = _Sampler(self, workload, costs, np.asarray(tokens, dtype=float))
        drawn = sampler.kind != "none"
        plan_sets = [sampler.draw(rng) for _ in range(self.plan_scenarios if drawn else 0)]
        eval_sets = [sampler.draw(rng) for _ in range(self.scenarios if drawn else 0)]
        cands = self._candidate_costs(workload, costs, profile, sampler, plan_sets)
        orders = {name: self._solve(workload, c, cluster, rng, resident, len(cands)) for name, c in cands.items()}
        if self.greedy and drawn:
            lpt = cands.get("expected", costs)
            orders["lpt"] = {w: list(ids) for w, ids in greedy_lpt_order(workload, lpt, cluster, resident)[0].items()}
        if not drawn:  # no spread: the means plan is the only candidate
            return self._chosen(workload, costs, cluster, resident, orders["mean"], {"mean": math.nan}, t0)
        scen_costs = [ProfiledCostModel(profile, _GivenLengths(t), workload) for t in eval_sets]  # type: ignore[arg-type]
        scores = {n: self._score(o, workload, scen_costs, cluster, resident) for n, o in orders.items()}
        best = min(scores, key=lambda n: (scores[n], list(scores).index(n)))
        return self._chosen(workload, costs, cluster, resident, orders[best], scores, t0, sampler.kind, best)

    def _candidate_costs(self, workload: Workload, costs: CostModel, profile: object, sampler: _Sampler,
                         plan_sets: list[np.ndarray]) -> dict[str, CostModel]:  # fmt: skip
        """Candidate name -> the costs its ILP plans on (the given costs first)."""
        out: dict[str, CostModel] = {"mean": costs}
        if sampler.kind == "none":
            return out
        predictor = getattr(costs, "predictor", None)
        if self.expected and sampler.spread_given and not getattr(costs, "expected", False) and predictor is not None:
            out["expected"] = ProfiledCostModel(profile, predictor, workload, expected=True)  # type: ignore[arg-type]
        for q in self.quantiles:
            out[f"q{q:g}"] = ProfiledCostModel(profile, _GivenLengths(sampler.quantile(q)), workload)  # type: ignore[arg-type]
        for i, t in enumerate(plan_sets):
            out[f"scenario{i}"] = ProfiledCostModel(profile, _GivenLengths(t), workload)  # type: ignore[arg-type]
        return out

    def _solve(self, workload: Workload, costs: CostModel, cluster: Cluster, rng: np.random.Generator,
               resident: Mapping[int, str | None] | None, parts: int) -> Order:  # fmt: skip
        """The ILP's order on ``costs`` with ``1 / parts`` of the time budget (polish at most half of it)."""
        limit = self.options.solve.time_limit_s
        share = None if limit is None else limit / parts
        polish = self.options.polish_s if share is None else min(self.options.polish_s, share / 2)
        inner = MosaicIlpScheduler()
        inner.options = replace(self.options, solve=replace(self.options.solve, time_limit_s=share), polish_s=polish)
        inner.warm_start = self.warm_start
        return inner.plan_order(workload, costs, cluster, rng, resident)

    def _score(self, order: Order, workload: Workload, scen_costs: list[CostModel], cluster: Cluster,
               resident: Mapping[int, str | None] | None) -> float:  # fmt: skip
        """The objective of ``order`` over the scenarios: the mean makespan, or its CVaR."""
        spans = np.sort([max(order_worker_times(order, workload, c, cluster, resident).values()) for c in scen_costs])
        if self.objective == "mean":
            return float(spans.mean())
        tail = max(1, math.ceil((1.0 - self.cvar_alpha) * len(spans)))
        return float(spans[-tail:].mean())

    def _chosen(self, workload: Workload, costs: CostModel, cluster: Cluster, resident: Mapping[int, str | None]
                | None, order: Order, scores: Mapping[str, float], t0: float, kind: str = "none",
                best: str = "mean") -> Plan:  # fmt: skip
        """The plan of ``order`` with its estimates under ``costs`` and the robust search's stats."""
        stats: dict[str, float | int | str] = {
            "robust_choice": best,
            "robust_objective_s": float(scores.get(best, math.nan)),
            "robust_means_s": float(scores.get("mean", math.nan)),
            "robust_scores": ",".join(f"{n}={v:.1f}" for n, v in scores.items()),
            "robust_candidates": len(scores),
            "robust_scenarios": self.scenarios if kind != "none" else 0,
            "robust_draws": kind,
            "robust_objective": self.objective,
            "robust_total_s": time.perf_counter() - t0,
        }
        return plan_with_estimates(self.name, workload, costs, cluster, order, resident, stats)


class _Sampler:
    """Draws length scenarios of one workload from the scheduler's distribution (see the module docstring)."""

    def __init__(self, sched: RobustIlpScheduler, workload: Workload, costs: CostModel, tokens: np.ndarray) -> None:
        reqs = workload.requests
        self.tokens = tokens
        self.experts = [r.expert for r in reqs]
        predictor = getattr(costs, "predictor", None)
        raw = predictor.predict_spread(workload, reqs) if predictor is not None else None
        self.spread_given = raw is not None and bool(np.any(np.asarray(raw) > 0))
        fallback = np.array([sched.sigma.get(e, sched.sigma.get("*", 0.0)) for e in self.experts], dtype=float)
        given = np.asarray(raw, dtype=float) if raw is not None else np.zeros(len(reqs))
        self.sigma = np.where(given > 0, given, fallback)
        self.cap = np.array([sched.max_tokens.get(e, sched.max_tokens.get("*", math.inf)) for e in self.experts])
        self.ratios = sched.ratios
        has_ratio = self.ratios is not None and any(e in self.ratios for e in self.experts)
        self.kind = "empirical" if has_ratio else "lognormal" if self.sigma.max(initial=0.0) > 0 else "none"

    def draw(self, rng: np.random.Generator) -> np.ndarray:
        """One scenario: output tokens per request id."""
        z = rng.standard_normal(len(self.tokens))
        out = self.tokens * np.exp(self.sigma * z - self.sigma**2 / 2.0)
        if self.kind == "empirical":
            for e, ratios in (self.ratios or {}).items():
                rows = np.array([x == e for x in self.experts])
                if rows.any():
                    out[rows] = self.tokens[rows] * rng.choice(ratios, size=int(rows.sum()))
        return np.clip(out, 1.0, self.cap)

    def quantile(self, q: float) -> np.ndarray:
        """Every request's length at quantile ``q`` of its distribution."""
        out = self.tokens * np.exp(self.sigma * NormalDist().inv_cdf(q) - self.sigma**2 / 2.0)
        if self.kind == "empirical":
            for e, ratios in (self.ratios or {}).items():
                rows = np.array([x == e for x in self.experts])
                out[rows] = self.tokens[rows] * float(np.quantile(ratios, q))
        return np.clip(out, 1.0, self.cap)


def _check_int(field: str, value: object, least: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        raise ConfigError(f"{RobustIlpScheduler.name}: {field} must be an integer >= {least}, got {value!r}")


def _per_expert(field: str, value: object, least: float, kind: type) -> dict[str, float]:
    """``value`` as expert name -> number ('*': every expert), each >= ``least``; None: empty."""
    if value is None:
        return {}
    items = value.items() if isinstance(value, Mapping) else [("*", value)]
    out: dict[str, float] = {}
    for e, v in items:
        if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v) or v < least:
            raise ConfigError(f"{RobustIlpScheduler.name}: {field} must be a number >= {least} or a mapping of expert "
                              f"name -> number, got {value!r}")  # fmt: skip
        out[str(e)] = kind(v)
    return out


def _trace_ratios(path: str) -> dict[str, np.ndarray]:
    """Expert -> its past output lengths over their mean, from the request records of the trace at ``path``."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{RobustIlpScheduler.name}: lengths trace {p} does not exist")
    lengths: dict[str, list[float]] = {}
    for rec in read_trace(p):
        if isinstance(rec, RequestRecord):
            lengths.setdefault(rec.expert, []).append(max(float(rec.output_tokens), 1.0))
    if not lengths:
        raise ConfigError(f"{RobustIlpScheduler.name}: lengths trace {p} has no request records")
    return {e: np.asarray(v) / np.mean(v) for e, v in lengths.items()}


@SCHEDULERS.register("mosaic-ilp-robust+steal", help="mosaic-ilp-robust's plan, corrected at run time by work "
                                                     "stealing (idle workers take queued tails)")  # fmt: skip
class RobustIlpStealingScheduler(StealingScheduler):
    """mosaic-ilp-robust's plan, corrected at run time by work stealing (idle workers take queued tails)."""

    wraps = RobustIlpScheduler
    name = "mosaic-ilp-robust+steal"


__all__ = ["OBJECTIVES", "RobustIlpScheduler", "RobustIlpStealingScheduler"]
