"""costs.step_model and costs.memory_mode: defaults keep today's profile, the options reach every entry, bad values
are one error naming the field and the value."""

from __future__ import annotations

from pathlib import Path
from typing import get_args

import pytest

from mosaic.core.config import CostsCfg, parse_config
from mosaic.core.errors import ConfigError
from mosaic.core.types import Workload
from mosaic.predictors.factory import build_profile
from mosaic.predictors.interface import MEMORY_MODES, STEP_MODELS, ModelCost
from mosaic.predictors.profile import CostProfile
from mosaic.predictors.roofline import roofline_profile

GPU = "A100-80GB"


def config(**costs: object):
    return parse_config({"costs": costs, "runtime": {"max_batch": 64}})


def test_defaults_keep_the_sum_model_and_reservations(tiny_workload: Workload) -> None:
    profile = build_profile(config(), tiny_workload)
    assert profile == roofline_profile((*tiny_workload.experts, tiny_workload.aggregator), [GPU], 64)
    assert {mc.memory_mode for mc in profile.table[GPU].values()} == {"reserve"}
    assert not any(mc.has_compute_line for mc in profile.table[GPU].values())


def test_max_and_paged_reach_every_entry(tiny_workload: Workload, tmp_path: Path) -> None:
    profile = build_profile(config(step_model="max", memory_mode="paged"), tiny_workload)
    assert profile.meta["step_model"] == "max" and profile.meta["memory_mode"] == "paged"
    assert all(mc.has_compute_line and mc.memory_mode == "paged" for mc in profile.table[GPU].values())
    names = ("inst", "reas", "inst2")
    path = CostProfile({GPU: dict.fromkeys(names, ModelCost(30.0, 1e4, 0.01, 1e-4, 1e-7, 17.0))}).to_file(
        tmp_path / "p.yaml")  # fmt: skip
    from_file = build_profile(config(profile=str(path), memory_mode="paged"), tiny_workload)
    assert {mc.memory_mode for mc in from_file.table[GPU].values()} == {"paged"}
    with pytest.raises(ConfigError, match=r"costs.step_model=max applies to the roofline profile; profile file"):
        build_profile(config(profile=str(path), step_model="max"), tiny_workload)


@pytest.mark.parametrize(("field", "value"), [("step_model", "min"), ("memory_mode", "swap")])
def test_bad_values_name_the_field_and_the_value(field: str, value: str) -> None:
    with pytest.raises(ConfigError, match=rf"config field 'costs.{field}': Input should be .* \(got '{value}'\)"):
        config(**{field: value})


def test_config_choices_are_the_library_ones() -> None:
    assert get_args(CostsCfg.model_fields["step_model"].annotation) == STEP_MODELS
    modes, none = get_args(CostsCfg.model_fields["memory_mode"].annotation)  # Literal[...] | None
    assert get_args(modes) == MEMORY_MODES and none is type(None)
