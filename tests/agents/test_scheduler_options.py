"""Scheduler options from the config (``scheduler_options``): applied to the scheduler, bad ones named clearly."""

from __future__ import annotations

from pathlib import Path

import pytest

from mosaic.agents import make_scheduler
from mosaic.agents.ilp_scheduler import MosaicIlpFixedScheduler, MosaicIlpScheduler
from mosaic.agents.registry import scheduler_options
from mosaic.core.config import load_config
from mosaic.core.errors import ConfigError
from mosaic.pipeline import prepare, run_scheduler, scheduler_from_config

GPQA = Path(__file__).resolve().parents[2] / "experiments" / "configs" / "gpqa.yaml"


def test_options_follow_forwarded_kwargs_to_the_base_class():
    assert {"solver", "time_limit_s", "buckets"} <= scheduler_options(MosaicIlpScheduler)
    assert {"placement", "solver", "buckets"} <= scheduler_options(MosaicIlpFixedScheduler)
    with pytest.raises(ConfigError, match=r"scheduler 'greedy-lpt' has no option 'solver'"):
        make_scheduler("greedy-lpt", solver="cbc")


def test_config_options_reach_the_scheduler():
    cfg = load_config(GPQA, ["scheduler_options.mosaic-ilp.solver=cbc", "scheduler_options.mosaic-ilp.buckets=2",
                             "workload.num_queries=30"])  # fmt: skip
    sched = scheduler_from_config(cfg, "mosaic-ilp")
    assert isinstance(sched, MosaicIlpScheduler)
    run = run_scheduler(prepare(cfg), "mosaic-ilp")
    assert run.result.expert_plan.stats["ilp_solver"] == "cbc"


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (
            "scheduler_options.mosaic-ilp.solvr=cbc",
            r"no option 'solvr'; valid: .*solver",
        ),
        ("scheduler_options.mosaic-ilp.solver=glpk", r"'scheduler_options.mosaic-ilp': ilp: unknown solver 'glpk'"),
        ("scheduler_options.no-such.x=1", r"'scheduler_options.no-such': .*no-such"),
    ],
)
def test_bad_options_fail_before_anything_runs(override, message):
    with pytest.raises(ConfigError, match=message):
        prepare(load_config(GPQA, [override]))


def test_a_value_of_the_wrong_type_is_a_config_error():
    with pytest.raises(ConfigError, match=r"'scheduler_options.mosaic-ilp': bad value"):
        prepare(load_config(GPQA, ["scheduler_options.mosaic-ilp.time_limit_s=soon"]))
