"""Instance sets and plan sets: checked items, shared (not copied) through gymnasium.make's deep copy."""

from __future__ import annotations

import copy

import gymnasium as gym
import pytest

from mosaic.core.errors import ConfigError
from mosaic.envs.problem import InstanceSet, PlanSet


@pytest.mark.parametrize(("cls", "item"), [(InstanceSet, "Instance"), (PlanSet, "Plan")])
def test_sets_name_the_wrong_items(cls, item: str) -> None:
    with pytest.raises(ConfigError, match=f"{cls.__name__} holds {item} objects only, got \\['int', 'str'\\]"):
        cls([1, "x"])


def test_sets_travel_through_make_uncopied(small_instances) -> None:
    assert copy.copy(small_instances) is small_instances and copy.deepcopy(small_instances) is small_instances
    env = gym.make("mosaic/Reschedule-v0", instances=small_instances)
    assert env.unwrapped.instances == tuple(small_instances)
    assert all(a is b for a, b in zip(env.unwrapped.instances, small_instances, strict=True))
    env.close()
