"""costs.step_model and costs.memory_mode: the defaults are the calibrated models (max, paged), the old ones (sum,
reserve) stay selectable and give the profile of before issue 22, the options reach every entry, bad values are one
error naming the field and the value."""

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


def test_defaults_are_the_max_model_and_paged_kv(tiny_workload: Workload) -> None:
    profile = build_profile(config(), tiny_workload)
    experts = (*tiny_workload.experts, tiny_workload.aggregator)
    assert profile == roofline_profile(experts, [GPU], 64, step_model="max").with_memory_mode("paged")
    assert all(mc.has_compute_line and mc.memory_mode == "paged" for mc in profile.table[GPU].values())


def test_old_modes_give_the_profile_of_before(tiny_workload: Workload) -> None:
    profile = build_profile(config(step_model="sum", memory_mode="reserve"), tiny_workload)
    experts = (*tiny_workload.experts, tiny_workload.aggregator)
    assert profile.table == roofline_profile(experts, [GPU], 64).table  # the sum model's entries, reserved KV
    assert {mc.memory_mode for mc in profile.table[GPU].values()} == {"reserve"}
    assert not any(mc.has_compute_line for mc in profile.table[GPU].values())


def test_max_and_paged_reach_every_entry(tiny_workload: Workload, tmp_path: Path) -> None:
    profile = build_profile(config(step_model="max", memory_mode="paged"), tiny_workload)
    assert profile.meta["step_model"] == "max" and profile.meta["memory_mode"] == "paged"
    assert all(mc.has_compute_line and mc.memory_mode == "paged" for mc in profile.table[GPU].values())
    names = ("inst", "reas", "inst2")
    path = CostProfile({GPU: dict.fromkeys(names, ModelCost(30.0, 1e4, 0.01, 1e-4, 1e-7, 17.0))}).to_file(
        tmp_path / "p.yaml")  # fmt: skip
    from_file = build_profile(config(profile=str(path)), tiny_workload)  # a file's steps as they are, paged
    assert {mc.memory_mode for mc in from_file.table[GPU].values()} == {"paged"}
    assert not any(mc.has_compute_line for mc in from_file.table[GPU].values())
    reserved = build_profile(config(profile=str(path), step_model="sum", memory_mode="reserve"), tiny_workload)
    assert reserved.table == CostProfile.from_file(path).with_max_batch(64, cap=True).table
    with pytest.raises(ConfigError, match=r"costs.step_model=max applies to the roofline profile; profile file"):
        build_profile(config(profile=str(path), step_model="max"), tiny_workload)


@pytest.mark.parametrize(("field", "value"), [("step_model", "min"), ("memory_mode", "swap")])
def test_bad_values_name_the_field_and_the_value(field: str, value: str) -> None:
    with pytest.raises(ConfigError, match=rf"config field 'costs.{field}': Input should be .* \(got '{value}'\)"):
        config(**{field: value})


def test_config_choices_are_the_library_ones() -> None:
    steps, none = get_args(CostsCfg.model_fields["step_model"].annotation)  # Literal[...] | None (= max)
    assert get_args(steps) == STEP_MODELS and none is type(None)
    assert get_args(CostsCfg.model_fields["memory_mode"].annotation) == MEMORY_MODES
