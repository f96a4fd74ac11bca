"""The MOSAIC ILP schedulers: 'mosaic-ilp' (replication, placement and assignment) and 'mosaic-ilp-fixed'.

Both solve the model of :mod:`mosaic.ilp` warm-started from greedy LPT and fill ``Plan.predicted_makespan`` and
``Plan.lower_bound`` like every scheduler (:func:`plan_with_estimates`); the solve is described in ``Plan.stats``:
``ilp_status`` ('optimal' only within 1% of the plan lower bound, 'model-optimal' when only the model's gap is
closed; see :func:`_gaps`), ``ilp_model_status`` (the solver's, on its model), ``ilp_solver``, ``ilp_solve_s`` /
``ilp_lp_s`` / ``ilp_total_s`` (seconds), ``ilp_makespan_s`` (the model's figure), ``ilp_bound_s`` (solver's dual
bound), ``ilp_lp_bound_s`` (LP relaxation), ``ilp_gap`` (solver gap, model-only: ``ilp_gap_scope``),
``ilp_gap_to_lb`` (predicted makespan over the plan lower bound, minus 1), ``ilp_variables``,
``ilp_integer_variables``, ``ilp_constraints``, ``ilp_buckets``, ``ilp_r_max`` and ``ilp_replicas`` (per expert).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import replace

import numpy as np

from mosaic.agents.bounds import plan_with_estimates, prediction_is_exact
from mosaic.agents.greedy_lpt import greedy_lpt_order
from mosaic.agents.interface import Scheduler
from mosaic.agents.registry import SCHEDULERS
from mosaic.core.errors import ConfigError
from mosaic.core.types import Cluster, Plan, Workload, serving_sequence
from mosaic.ilp import IlpOptions, InstanceOptions, SolveOptions, schedule
from mosaic.predictors.interface import CostModel

GREEDY_MAX_REQUESTS = 50_000  # warm_start='auto': greedy LPT start only up to this many requests


@SCHEDULERS.register("mosaic-ilp", help="MOSAIC ILP: joint replication, placement and assignment (HiGHS)")
class MosaicIlpScheduler(Scheduler):
    """The MOSAIC ILP with dynamic replication and placement.

    Args:
        solver: 'highs' (default) or 'cbc'.
        time_limit_s: wall-clock budget of the ILP (instance, starts, LP relaxation, MIP search); the best plan
            found by then is used. Polishing (``polish_s``, at most half the budget) is within it; the greedy LPT
            start is not counted.
        gap_rel: relative optimality gap at which the solver stops (or is not started, when the LP bound already
            proves the start within it).
        threads: solver threads (None: the solver's default).
        buckets: most predicted-length buckets per expert (model size: experts x buckets x workers).
        straggler_share: a request whose latency alone is at least this share of the mean worker's work is a
            straggler: it gets its own bucket (at most one per worker and expert) and its latency is modelled.
        replication_ratio: R_max(e) = floor(work_e / (ratio x load_e)), clamped to [1, workers].
        r_max: per-expert R_max overrides (expert name -> int >= 1).
        coresident_memory: experts placed on one worker must fit its memory together.
        symmetry: order interchangeable workers by busy time (breaks the solver's symmetry).
        aggregator_last: run the aggregator's requests last where placed, so it stays resident.
        warm_start: seed the solver with greedy LPT's plan (also tightens the model's linking bounds); 'auto':
            only for stages of at most ``GREEDY_MAX_REQUESTS`` requests (greedy LPT is request by request, and on
            large stages the wrap-around start is better and much cheaper).
        wraparound: also try McNaughton's wrap-around rule with loads as a start; the better start is used.
        integer_per_worker: counts of buckets with fewer requests than this x workers are integer variables;
            larger buckets get continuous counts, rounded at extraction.
        polish_s: seconds of local search on the cost model's own group costs after extraction.
        lp_bound: also solve the LP relaxation and report its bound.
        msg: print the solver's log.
    """

    name = "mosaic-ilp"

    def __init__(
        self,
        *,
        solver: str = "highs",
        time_limit_s: float | None = 10.0,
        gap_rel: float = 5e-3,
        threads: int | None = None,
        buckets: int = 4,
        straggler_share: float = 0.2,
        replication_ratio: float = 1.0,
        r_max: Mapping[str, int] | None = None,
        coresident_memory: bool = False,
        symmetry: bool = True,
        aggregator_last: bool = True,
        warm_start: bool | str = "auto",
        wraparound: bool = True,
        integer_per_worker: float = 20.0,
        polish_s: float = 1.5,
        lp_bound: bool = True,
        msg: bool = False,
    ) -> None:
        if warm_start not in (True, False, "auto"):
            raise ConfigError(f"{self.name}: warm_start must be True, False or 'auto', got {warm_start!r}")
        self.options = IlpOptions(
            InstanceOptions(
                buckets=buckets,
                straggler_share=straggler_share,
                replication_ratio=replication_ratio,
                r_max=dict(r_max) if r_max else None,
                coresident_memory=coresident_memory,
            ),
            SolveOptions(
                solver=solver, time_limit_s=time_limit_s, gap_rel=gap_rel, threads=threads, msg=msg, lp_bound=lp_bound
            ),
            symmetry=symmetry,
            aggregator_last=aggregator_last,
            integer_per_worker=integer_per_worker,
            wraparound=wraparound,
            polish_s=polish_s,
        )
        self.warm_start = warm_start

    def _options(self, workload: Workload, warm: Mapping[int, Sequence[int]] | None) -> IlpOptions:
        return self.options

    def plan(
        self,
        workload: Workload,
        costs: CostModel,
        cluster: Cluster,
        rng: np.random.Generator,
        resident: Mapping[int, str | None] | None = None,
    ) -> Plan:
        greedy = self.warm_start is True or (
            self.warm_start == "auto" and len(workload.requests) <= GREEDY_MAX_REQUESTS
        )
        warm = greedy_lpt_order(workload, costs, cluster, resident)[0] if greedy or self._needs_warm() else None
        options = self._options(workload, warm)
        outcome = schedule(self.name, workload, costs, cluster, resident, options, warm if greedy else None)
        plan = plan_with_estimates(self.name, workload, costs, cluster, outcome.plan.order, resident, outcome.stats)
        exact = prediction_is_exact(plan.order, workload, costs, cluster)
        return replace(plan, stats={**plan.stats, **_gaps(plan, exact)})

    def plan_order(
        self,
        workload: Workload,
        costs: CostModel,
        cluster: Cluster,
        rng: np.random.Generator,
        resident: Mapping[int, str | None] | None = None,
    ) -> dict[int, list[int]]:
        """Worker id -> request ids of the ILP's plan, without the plan's estimates and bound (a re-plan at run
        time needs only the order)."""
        warm = greedy_lpt_order(workload, costs, cluster, resident)[0]
        outcome = schedule(self.name, workload, costs, cluster, resident, self._options(workload, warm), warm)
        return {w: list(ids) for w, ids in outcome.plan.order.items()}

    def _needs_warm(self) -> bool:
        return False


CERTIFIED_GAP = 0.01  # 'optimal' only when the predicted makespan is within this of the plan's lower bound


def _gaps(plan: Plan, exact: bool) -> dict[str, float | str]:
    """``ilp_gap_to_lb``: predicted makespan over the plan's lower bound (:mod:`mosaic.agents.bounds`, valid for every
    plan under the cost model), minus 1; ``ilp_gap_predicted``: its distance to the ILP's own best bound (solver or
    LP relaxation: a bound on the *model*, which prices groups by bucket means, so model-only); ``ilp_status``:
    'optimal' only when ``ilp_gap_to_lb <= CERTIFIED_GAP`` and the simulator runs the plan in exactly its predicted
    time (``exact``: :func:`prediction_is_exact`), so that with true lengths the simulated makespan is within 1% of
    a bound on every plan's; 'model-optimal' when only the model's gap is closed; the solver's own status stays in
    ``ilp_model_status``."""
    bounds = [b for b in (plan.stats.get("ilp_bound_s"), plan.stats.get("ilp_lp_bound_s"))
              if isinstance(b, float) and math.isfinite(b)]  # fmt: skip
    best = max(bounds, default=math.nan)
    span = plan.predicted_makespan
    to_lb = span / plan.lower_bound - 1.0 if plan.lower_bound > 0 else 0.0
    model = str(plan.stats.get("ilp_status", ""))
    status = "model-optimal" if model == "optimal" and (to_lb > CERTIFIED_GAP or not exact) else model
    return {
        "ilp_gap_to_lb": to_lb,
        "ilp_gap_predicted": max(0.0, (span - best) / span) if span > 0 and math.isfinite(best) else math.nan,
        "ilp_model_status": model,
        "ilp_status": status,
        "ilp_gap_scope": "model",
    }


@SCHEDULERS.register("mosaic-ilp-fixed", help="MOSAIC ILP with a given placement: only the assignment is optimised")
class MosaicIlpFixedScheduler(MosaicIlpScheduler):
    """The MOSAIC ILP with the placement given: each worker loads exactly the experts it is given (each serves at
    least one request where its demand allows) and the ILP optimises only how requests are split among them.

    Args:
        placement: worker id -> experts it serves (from a config or the previous batch); experts of the stage
            without a worker raise :class:`~mosaic.ilp.IlpError`. None: greedy LPT's placement of the stage
            (which keeps resident experts where they are).
        **kwargs: as :class:`MosaicIlpScheduler` (``r_max`` and ``replication_ratio`` do not apply).
    """

    name = "mosaic-ilp-fixed"

    def __init__(self, placement: Mapping[int, Sequence[str]] | None = None, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.placement = None if placement is None else _placement_map(placement)

    def _needs_warm(self) -> bool:
        return self.placement is None

    def _options(self, workload: Workload, warm: Mapping[int, Sequence[int]] | None) -> IlpOptions:
        given = self.placement
        if given is None:
            given = {w: serving_sequence(workload, tuple(ids)) for w, ids in (warm or {}).items()}
        else:
            known = {e.name for e in (*workload.experts, workload.aggregator)}
            unknown = sorted({e for es in given.values() for e in es} - known)
            if unknown:
                raise ConfigError(f"placement names unknown expert(s) {unknown}; the workload's: {sorted(known)}")
        return replace(self.options, instance=replace(self.options.instance, placement=given))


PLACEMENT_SHAPE = "a mapping of worker id -> list of expert names, e.g. {0: [QwenR1, gemma], 1: [LlamaR1]}"


def _placement_map(placement: object) -> dict[int, tuple[str, ...]]:
    """``placement`` as worker id -> expert names, or a :class:`ConfigError` showing the expected shape."""
    try:
        if not isinstance(placement, Mapping):
            raise TypeError
        out = {int(w): tuple(es) for w, es in placement.items()}
        if any(isinstance(es, str) for es in placement.values()) or not all(
            isinstance(e, str) for es in out.values() for e in es
        ):
            raise TypeError
    except (TypeError, ValueError):
        raise ConfigError(f"placement must be {PLACEMENT_SHAPE}; got {placement!r}") from None
    return out
