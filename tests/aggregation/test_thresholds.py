"""Skip policies: fixed threshold, learned hook, the shared feature vector, the registry."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from mosaic.aggregation.interface import AlwaysAggregate, ThresholdPolicy
from mosaic.aggregation.registry import AGGREGATION_POLICIES
from mosaic.aggregation.thresholds import (
    FEATURE_NAMES,
    FixedThreshold,
    LearnedThresholdPolicy,
    features,
    make_aggregation_policy,
)
from mosaic.core.errors import ConfigError, RegistryError, WorkloadError
from mosaic.core.types import ExpertKind, Query

Q = Query(0, "What?", choices=("a", "b", "c", "d"), prompt_tokens=63)


@pytest.mark.parametrize(
    ("threshold", "conf", "skip"),
    [(1.0, 1.0, True), (1.0, 2 / 3, False), (0.67, 2 / 3, True), (2 / 3, 2 / 3, True), (0.67, 1 / 3, False),
     (0.0, 0.0, True), (0.5, 0.49, False)],
)  # fmt: skip
def test_fixed_threshold(threshold: float, conf: float, skip: bool) -> None:
    policy = FixedThreshold(threshold)
    assert isinstance(policy, ThresholdPolicy)
    assert policy.decide(Q, ["A"], conf) is skip


def test_fixed_threshold_validation() -> None:
    for bad in (-0.1, 1.5, float("nan")):
        with pytest.raises(ConfigError, match="threshold"):
            FixedThreshold(bad)
    with pytest.raises(ConfigError, match="tolerance"):
        FixedThreshold(0.5, tolerance=0.2)
    assert FixedThreshold(0.67, tolerance=0.0).decide(Q, ["A"], 2 / 3) is False  # strict comparison on request


@given(st.floats(0, 1), st.floats(0, 1))
def test_threshold_monotone(t: float, c: float) -> None:
    """A higher threshold never skips where a lower one does not."""
    lo, hi = sorted((t, min(t + 0.1, 1.0)))
    assert FixedThreshold(hi).decide(Q, [], c) <= FixedThreshold(lo).decide(Q, [], c)


def test_features() -> None:
    kinds = [ExpertKind.REASONING, "instruct", ExpertKind.INSTRUCT]
    f = features(Q, ["A", "A", None], 2 / 3, kinds, predicted_aggregator_cost=9.0)
    assert f.dtype == np.float32 and f.shape == (len(FEATURE_NAMES),)
    named = dict(zip(FEATURE_NAMES, f.tolist(), strict=True))
    assert named["confidence"] == pytest.approx(2 / 3) and named["k"] == 3
    assert named["margin"] == pytest.approx(2 / 3) and named["distinct_share"] == pytest.approx(1 / 3)
    assert named["no_answer_share"] == pytest.approx(1 / 3) and named["reasoning_share"] == pytest.approx(1 / 3)
    assert named["log_aggregator_cost"] == pytest.approx(np.log1p(9.0))
    assert named["log_prompt_tokens"] == pytest.approx(np.log(64)) and named["n_choices"] == 4
    assert features(Q, ["A", "B", "C"], 1 / 3)[FEATURE_NAMES.index("margin")] == 0.0


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"answers": []}, "at least one"), ({"confidence": 1.5}, "confidence"), ({"expert_kinds": ["instruct"]}, "kinds"),
     ({"predicted_aggregator_cost": -1.0}, "cost"), ({"predicted_aggregator_cost": float("inf")}, "cost")],
)  # fmt: skip
def test_features_bad_input(kwargs: dict, match: str) -> None:
    args = {"answers": ["A", "B"], "confidence": 0.5} | kwargs
    with pytest.raises(WorkloadError, match=match):
        features(Q, **args)


class _Predictor:
    def __init__(self, out: object) -> None:
        self.out, self.seen = out, []

    def predict(self, obs: np.ndarray) -> object:
        self.seen.append(obs)
        return self.out


@pytest.mark.parametrize(
    ("out", "skip"),
    [(True, True), (0, False), (1, True), (0.7, True), (0.2, False), (np.array([1]), True),
     ((np.int64(0), None), False)],
)  # fmt: skip
def test_learned_policy_outputs(out: object, skip: bool) -> None:
    model = _Predictor(out)
    assert LearnedThresholdPolicy(model).decide(Q, ["A", "A", "B"], 2 / 3) is skip
    assert model.seen[0].shape == (len(FEATURE_NAMES),)


def test_learned_policy_callable_and_context() -> None:
    policy = LearnedThresholdPolicy(
        lambda obs: obs[FEATURE_NAMES.index("log_aggregator_cost")] > 1.0,  # skip when the aggregator is expensive
        context=lambda q: ((ExpertKind.INSTRUCT,) * 3, 10.0 if q.id == 0 else 0.5),
    )
    assert policy.decide(Q, ["A", "A", "B"], 2 / 3) is True
    assert policy.decide(Query(1, "cheap"), ["A", "A", "B"], 2 / 3) is False


def test_learned_policy_bad_model() -> None:
    with pytest.raises(ConfigError, match="callable"):
        LearnedThresholdPolicy(object())
    with pytest.raises(WorkloadError, match="one finite skip value"):
        LearnedThresholdPolicy(lambda obs: [1, 0]).decide(Q, ["A"], 1.0)


def test_registry() -> None:
    assert {"always", "threshold", "learned"} <= set(AGGREGATION_POLICIES)
    assert isinstance(make_aggregation_policy("always"), AlwaysAggregate)
    t = make_aggregation_policy("threshold", threshold=0.67)
    assert isinstance(t, FixedThreshold) and t.decide(Q, [], 2 / 3)
    assert isinstance(make_aggregation_policy("learned", model=lambda obs: 1), LearnedThresholdPolicy)
    with pytest.raises(RegistryError, match="valid: always, calibrated, learned, load-aware, load-ladder, threshold"):
        make_aggregation_policy("vote")
