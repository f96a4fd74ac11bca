"""Solve a built MOSAIC problem: solver choice, limits, warm start, LP-relaxation bound, status in one place.

HiGHS (through ``highspy``) is the default; CBC (``PULP_CBC_CMD``) is the alternative. Every PuLP/solver status is
mapped here to one of ``optimal``, ``feasible`` (a limit stopped the search with an incumbent), ``infeasible``,
``not-solved`` (a limit stopped it without one) or ``error``; callers never look at PuLP's codes.

Bounds are reported on the makespan ``C``: the solver's dual bound on the objective (``C`` + tie-break) minus the
largest tie-break term any plan can have, so they stay valid lower bounds on the model's optimal makespan.
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
import time
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, replace

import highspy
import pulp

from mosaic.core.errors import ConfigError
from mosaic.ilp.model import Variables

SOLVERS = ("highs", "cbc")


@dataclass(frozen=True, slots=True)
class SolveOptions:
    """Solver and limits."""

    solver: str = "highs"  # 'highs' (default) | 'cbc'
    time_limit_s: float | None = 10.0  # wall-clock limit of the LP relaxation + MIP search (None: none)
    gap_rel: float = 1e-3  # stop when (incumbent - bound) / incumbent <= gap_rel
    threads: int | None = None  # solver threads (None: solver default)
    msg: bool = False  # print the solver's log
    lp_bound: bool = True  # also solve the LP relaxation and report its bound

    def __post_init__(self) -> None:
        if self.solver not in SOLVERS:
            raise ConfigError(f"ilp: unknown solver {self.solver!r}; valid: {', '.join(SOLVERS)}")
        if self.time_limit_s is not None and not self.time_limit_s > 0:
            raise ConfigError(f"ilp: time_limit_s must be > 0 or None, got {self.time_limit_s!r}")
        if not 0 <= self.gap_rel < 1:
            raise ConfigError(f"ilp: gap_rel must be in [0, 1), got {self.gap_rel!r}")


@dataclass(frozen=True, slots=True)
class SolveResult:
    """What the solver reports, in the model's units (seconds of makespan)."""

    status: str  # optimal | feasible | infeasible | not-solved | error
    solver: str
    makespan: float  # incumbent's C (nan without one)
    bound: float  # lower bound on the optimal C from the solver (nan when unknown)
    lp_bound: float  # optimal C of the LP relaxation, same correction (nan when not solved)
    seconds: float  # MIP wall time
    lp_seconds: float  # LP relaxation wall time
    nodes: int  # branch-and-bound nodes (-1: unknown)
    proof: str = "mip"  # what bounds the gap: 'mip' (the solver's search) or 'lp-bound' (start already within gap)

    @property
    def has_solution(self) -> bool:
        return self.status in ("optimal", "feasible")

    @property
    def gap(self) -> float:
        """(incumbent - best bound) / incumbent; nan when either is unknown."""
        best = max(self.bound, self.lp_bound) if not math.isnan(self.lp_bound) else self.bound
        if not self.has_solution or math.isnan(best) or self.makespan <= 0:
            return math.nan if not self.has_solution else 0.0
        return max(0.0, (self.makespan - best) / self.makespan)


@contextlib.contextmanager
def _silenced_stdout() -> Iterator[None]:
    """Send file descriptor 1 to /dev/null for the block (output written by C code, not through sys.stdout)."""
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 1)
            yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)


class _WarmHiGHS(pulp.HiGHS):
    """PuLP's HiGHS API plus a MIP start (``Highs.setSolution``) and the solver's own figures after the run."""

    def __init__(self, start: Mapping[str, float] | None = None, **kwargs: object) -> None:
        super().__init__(**kwargs)
        self.start = start
        self.figures: dict[str, float] = {}

    def createAndConfigureSolver(self, lp: pulp.LpProblem) -> None:
        if self.msg:
            super().createAndConfigureSolver(lp)
            return
        with _silenced_stdout():  # highspy.Highs() prints its banner from C before output_flag can be unset
            super().createAndConfigureSolver(lp)

    def callSolver(self, lp: pulp.LpProblem) -> None:
        model = lp.solverModel
        if self.start is not None:
            sol = highspy.HighsSolution()
            sol.col_value = [float(self.start.get(v.name, 0.0)) for v in lp.variables()]
            sol.value_valid = True
            model.setSolution(sol)
        model.run()
        info = model.getInfo()
        self.figures = {
            "status": float(int(model.getModelStatus())),
            "dual_bound": float(info.mip_dual_bound) if self.mip else float(info.objective_function_value),
            "has_primal": float(info.primal_solution_status == 2),
            "nodes": float(info.mip_node_count),
        }


_HIGHS_STATUS = {
    highspy.HighsModelStatus.kOptimal: "optimal",
    highspy.HighsModelStatus.kInfeasible: "infeasible",
    highspy.HighsModelStatus.kUnboundedOrInfeasible: "infeasible",
}
_LIMITS = {
    highspy.HighsModelStatus.kTimeLimit,
    highspy.HighsModelStatus.kIterationLimit,
    highspy.HighsModelStatus.kInterrupt,
    highspy.HighsModelStatus.kSolutionLimit,
    highspy.HighsModelStatus.kObjectiveBound,
    highspy.HighsModelStatus.kObjectiveTarget,
}


def _highs_status(figures: Mapping[str, float]) -> str:
    status = highspy.HighsModelStatus(int(figures["status"]))
    if status in _HIGHS_STATUS:
        return _HIGHS_STATUS[status]
    if status in _LIMITS:
        return "feasible" if figures["has_primal"] else "not-solved"
    return "error"


def _cbc_status(prob: pulp.LpProblem) -> str:
    if prob.status == pulp.LpStatusInfeasible:
        return "infeasible"
    if prob.sol_status == pulp.LpSolutionOptimal:
        return "optimal"
    if prob.sol_status == pulp.LpSolutionIntegerFeasible:
        return "feasible"
    return "not-solved" if prob.status == pulp.LpStatusNotSolved else "error"


LP_SHARE = 0.3  # most of the MIP's time limit the separate LP relaxation may take


def _solver(opt: SolveOptions, mip: bool, start: Mapping[str, float] | None) -> pulp.LpSolver:
    limit = opt.time_limit_s
    if opt.solver == "highs":
        return _WarmHiGHS(start=start if mip else None, mip=mip, msg=opt.msg, timeLimit=limit,
                          gapRel=opt.gap_rel if mip else None, threads=opt.threads)  # fmt: skip
    with warnings.catch_warnings():  # PuLP 3.3 flags the bundled CBC for removal in 4.0 (pyproject pins < 4)
        warnings.simplefilter("ignore", DeprecationWarning)
        return pulp.PULP_CBC_CMD(mip=mip, msg=opt.msg, timeLimit=limit, gapRel=opt.gap_rel if mip else None,
                                 warmStart=start is not None and mip, threads=opt.threads)  # fmt: skip


def _set_start(prob: pulp.LpProblem, start: Mapping[str, float]) -> None:
    for v in prob.variables():
        v.setInitialValue(float(start.get(v.name, 0.0)), check=False)


def solve_lp_relaxation(prob: pulp.LpProblem, opt: SolveOptions, tie_slack: float) -> tuple[float, float, bool]:
    """(bound on C from the LP relaxation, seconds, infeasible); the bound is nan unless the LP is optimal."""
    solver = _solver(opt, mip=False, start=None)
    t0 = time.perf_counter()
    prob.solve(solver)
    seconds = time.perf_counter() - t0
    if prob.status != pulp.LpStatusOptimal:
        return math.nan, seconds, prob.status == pulp.LpStatusInfeasible
    return float(pulp.value(prob.objective)) - tie_slack, seconds, False


def mip_dual_bound(prob: pulp.LpProblem, time_limit_s: float, gap_rel: float = 1e-4) -> float:
    """HiGHS's dual bound on the optimal objective of ``prob`` (a minimisation) after at most ``time_limit_s``:
    a valid lower bound whether or not the search finished; ``nan`` when the solver has none."""
    solver = _WarmHiGHS(mip=True, msg=False, timeLimit=time_limit_s, gapRel=gap_rel)
    prob.solve(solver)
    bound = solver.figures.get("dual_bound", math.nan)
    return bound if math.isfinite(bound) else math.nan


def _within_gap(start_makespan: float, bound: float, gap_rel: float) -> bool:
    return not math.isnan(bound) and start_makespan - bound <= gap_rel * max(start_makespan, 1e-12)


def solve(
    prob: pulp.LpProblem,
    variables: Variables,
    options: SolveOptions | None = None,
    start: Mapping[str, float] | None = None,
    tie_slack: float = 0.0,
    start_makespan: float = math.nan,
) -> SolveResult:
    """Solve ``prob``: the LP relaxation first (when asked), then the MIP from ``start`` (variable name -> value,
    a plan of makespan ``start_makespan``). When the LP bound already proves the start within ``gap_rel``, the
    MIP is skipped (status optimal, proof 'lp-bound'). An infeasible LP ends the solve (status infeasible).

    ``tie_slack``: the largest value the objective's tie-break term can take; subtracted from dual bounds.
    Variable values are left on ``variables`` for extraction.
    """
    opt = options or SolveOptions()
    lp_bound, lp_seconds, infeasible = (math.nan, 0.0, False)
    if opt.lp_bound:  # at most LP_SHARE of the budget: HiGHS solves the root LP again in the MIP search
        lp_opt = opt if opt.time_limit_s is None else replace(opt, time_limit_s=LP_SHARE * opt.time_limit_s)
        lp_bound, lp_seconds, infeasible = solve_lp_relaxation(prob, lp_opt, tie_slack)
    if infeasible:
        return SolveResult("infeasible", opt.solver, math.nan, math.nan, math.nan, 0.0, lp_seconds, 0, "lp")
    if start is not None and _within_gap(start_makespan, lp_bound, opt.gap_rel):
        for v in prob.variables():
            v.varValue = float(start.get(v.name, 0.0))
        return SolveResult("optimal", opt.solver, start_makespan, lp_bound, lp_bound, 0.0, lp_seconds, 0, "lp-bound")
    if opt.time_limit_s is not None:
        opt = replace(opt, time_limit_s=max(opt.time_limit_s - lp_seconds, 0.05))
    if start is not None and opt.solver == "cbc":
        _set_start(prob, start)
    solver = _solver(opt, mip=True, start=start)
    t0 = time.perf_counter()
    prob.solve(solver)
    seconds = time.perf_counter() - t0
    if isinstance(solver, _WarmHiGHS):
        status = _highs_status(solver.figures)
        bound = solver.figures["dual_bound"] - tie_slack
        nodes = int(solver.figures["nodes"])
    else:
        status = _cbc_status(prob)
        full = float(pulp.value(prob.objective) or 0.0)
        bound = full * (1.0 - opt.gap_rel) - tie_slack if status == "optimal" else math.nan
        nodes = -1
    makespan = float(variables.makespan.value()) if status in ("optimal", "feasible") else math.nan
    if not math.isfinite(bound):
        bound = math.nan
    return SolveResult(status, opt.solver, makespan, bound, lp_bound, seconds, lp_seconds, nodes)
