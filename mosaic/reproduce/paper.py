"""``mosaic reproduce paper``: the paper's three workloads x {round-robin, data-parallel, mosaic-ilp} x {always,
T=1, T=2/3} over N seeds, measured on one backend, summarised beside the paper's published figures.

The expert stage of a (workload, seed, scheduler) does not depend on the aggregation policy (the stages meet at a
barrier), so each cell re-runs the whole job with its policy and the expert figures agree across policies; a run's
figures are exactly those ``mosaic compare`` prints for the same config, seed and ``--aggregation``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from mosaic.aggregation.interface import AggregationPolicy
from mosaic.aggregation.thresholds import make_aggregation_policy
from mosaic.core.config import RunConfig, load_config
from mosaic.core.errors import ConfigError
from mosaic.pipeline import Experiment, plan_scheduler, prepare, run_scheduler
from mosaic.report.metrics import mean_ci, speedup

WORKLOADS = ("mmlu_pro", "medmcqa", "gpqa")
SCHEDULERS = ("round-robin", "data-parallel", "mosaic-ilp")
POLICIES = {"always": None, "T=1": 1.0, "T=2/3": 0.67}  # name -> threshold (None: always aggregate)
BASELINE, MOSAIC = "round-robin", "mosaic-ilp"
CONFIG_DIR = Path(__file__).resolve().parents[2] / "experiments" / "configs"


@dataclass(frozen=True, slots=True)
class Cell:
    """One run's figures (seconds, shares in 0..1, accuracy in 0..1)."""

    workload: str
    seed: int
    scheduler: str
    policy: str
    expert_s: float
    aggregation_s: float
    end_to_end_s: float
    skip_rate: float
    accuracy: float | None
    accuracy_always: float | None
    model_bound_s: float  # the plan's lower bound from the *predicted* costs (see docs: plan quality)
    true_bound_s: float | None  # lower bound of the expert stage from the true lengths, when the bounds module has it


@dataclass(frozen=True, slots=True)
class Setup:
    """What to run: seeds, backend and config overrides (``quick``: one seed)."""

    seeds: tuple[int, ...]
    backend: str = "sim"
    overrides: tuple[str, ...] = ()
    workloads: tuple[str, ...] = WORKLOADS


def paper_config(workload: str, seed: int, setup: Setup) -> RunConfig:
    """The packaged paper config of ``workload`` with the seed, backend and overrides applied (tracking off: the
    study logs one W&B run of its own)."""
    path = CONFIG_DIR / f"{workload}.yaml"
    if not path.is_file():
        raise ConfigError(f"reproduce paper: config {path} not found (run from a clone of the repository)")
    extra = [f"seed={seed}", f"runtime.backend={setup.backend}", "tracking.mode=disabled"]
    return load_config(path, [*setup.overrides, *extra])


def policy_of(name: str) -> AggregationPolicy:
    threshold = POLICIES[name]
    if threshold is None:
        return make_aggregation_policy("always")
    return make_aggregation_policy("threshold", threshold=threshold)


BoundFn = Callable[[Experiment], float | None]


def run_cell(exp: Experiment, scheduler: str, policy: str, true_bound: float | None) -> tuple[Cell, object]:
    """One scheduler under one aggregation policy; returns the cell and the run (its records feed the Gantt)."""
    run = run_scheduler(exp, plan_scheduler(exp, scheduler, policy_of(policy)))
    m = run.metrics
    cell = Cell(exp.cfg.workload.preset, exp.cfg.seed, scheduler, policy, m.expert_makespan, m.aggregation_time,
                m.end_to_end, m.skip_rate, m.accuracy, m.accuracy_always, m.lower_bound, true_bound)  # fmt: skip
    return cell, run


def grid(setup: Setup) -> list[tuple[str, int, str, str]]:
    """Every (workload, seed, scheduler, policy) the study runs, in order."""
    return [(w, s, sch, p) for w in setup.workloads for s in setup.seeds for sch in SCHEDULERS for p in POLICIES]


def measure(setup: Setup, bound: BoundFn, step: Callable[[str], None]) -> tuple[list[Cell], dict[str, Sequence]]:
    """Run the grid; ``step`` is told each cell as it starts. Returns the cells and, per workload, the first seed's
    always-aggregate runs of every scheduler (for its Gantt chart)."""
    cells: list[Cell] = []
    gantt: dict[str, list] = {}
    for w in setup.workloads:
        for seed in setup.seeds:
            exp = prepare(paper_config(w, seed, setup))
            true_bound = bound(exp)
            for sch in SCHEDULERS:
                for pol in POLICIES:
                    step(f"{w} seed {seed}: {sch}, {pol}")
                    cell, run = run_cell(exp, sch, pol, true_bound)
                    cells.append(cell)
                    if seed == setup.seeds[0] and pol == "always":
                        gantt.setdefault(w, []).append(run)
    return cells, gantt


def _pick(cells: Sequence[Cell], workload: str, scheduler: str, policy: str) -> list[Cell]:
    return sorted((c for c in cells if (c.workload, c.scheduler, c.policy) == (workload, scheduler, policy)),
                  key=lambda c: c.seed)  # fmt: skip


def ratios(cells: Sequence[Cell], workload: str, scheduler: str, policy: str, field: str,
           base_policy: str = "always") -> tuple[float, float]:  # fmt: skip
    """Mean and 95% half-width over seeds of round-robin's ``field`` (under ``base_policy``) / this run's."""
    base = _pick(cells, workload, BASELINE, base_policy)
    mine = _pick(cells, workload, scheduler, policy)
    return mean_ci([speedup(getattr(b, field), getattr(m, field)) for b, m in zip(base, mine, strict=True)])


def stat(cells: Sequence[Cell], workload: str, scheduler: str, policy: str, fn: Callable[[Cell], float | None]):
    """Mean and 95% half-width over seeds of ``fn(cell)`` (cells where it is None left out)."""
    values = [v for c in _pick(cells, workload, scheduler, policy) if (v := fn(c)) is not None]
    return mean_ci(values)


def accuracy_delta_pp(c: Cell) -> float | None:
    if c.accuracy is None or c.accuracy_always is None:
        return None
    return 100 * (c.accuracy - c.accuracy_always)


def true_gap(c: Cell) -> float | None:
    """How far the simulated expert stage is above the true-length lower bound, in %."""
    if c.true_bound_s is None or c.true_bound_s <= 0:
        return None
    return 100 * (c.expert_s / c.true_bound_s - 1)


def cells_as_dicts(cells: Sequence[Cell]) -> list[dict]:
    return [asdict(c) for c in cells]
