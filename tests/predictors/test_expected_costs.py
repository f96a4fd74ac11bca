"""Expected costs (``ProfiledCostModel(expected=True)``): requests priced over a lognormal predictive distribution."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest

from mosaic.core.config import load_config
from mosaic.core.errors import ConfigError, WorkloadError
from mosaic.core.trace import RequestRecord
from mosaic.core.types import Expert, ExpertKind, Query, Request, Workload
from mosaic.pipeline import prepare
from mosaic.predictors import LengthPredictor, ModelCost, ProfiledCostModel
from mosaic.predictors.lengths import MeanLengthPredictor
from mosaic.predictors.profile import CostProfile

GPU = "A100-80GB"
MC = ModelCost(10.0, 1000.0, 0.02, 0.001, 1e-6, 16.0, max_batch=8, kv_capacity_tokens=20_000)
PROFILE = CostProfile({GPU: {"a": MC}})


class Spread(LengthPredictor):
    """Test double: given tokens and spreads per request id."""

    name = "spread"

    def __init__(self, tokens: Sequence[float], spread: Sequence[float] | None) -> None:
        self.tokens, self.spread = np.asarray(tokens, dtype=float), spread

    def predict(self, workload: Workload, requests: Sequence[Request]) -> np.ndarray:
        return self.tokens[[r.id for r in requests]]

    def predict_spread(self, workload: Workload, requests: Sequence[Request]) -> np.ndarray | None:
        return None if self.spread is None else np.asarray(self.spread, dtype=float)[[r.id for r in requests]]


def workload(n: int, prompt: int = 300) -> Workload:
    ex = (Expert("a", "org/a", 8.0, ExpertKind.REASONING, 16.0),)
    queries = tuple(Query(i, f"q{i}", prompt_tokens=prompt) for i in range(n))
    return Workload.build("wl", queries, ex, (("a",),) * n, ex[0])


def test_expected_terms_match_the_point_costs_averaged_over_sampled_lengths():
    """One request of mean 1500 tokens and log-std 0.8, against 40k requests whose point lengths are drawn from
    that lognormal: the batch-independent seconds, the decode steps' effective batch and the KV share agree."""
    mean, sigma, n = 1500.0, 0.8, 40_000
    one = ProfiledCostModel(PROFILE, Spread([mean], [sigma]), workload(1), expected=True)
    draws = np.random.default_rng(0).lognormal(np.log(mean) - sigma**2 / 2, sigma, size=n)
    many = ProfiledCostModel(PROFILE, Spread(draws, None), workload(n))
    a1, d1, _, share1 = one.floor_terms(one.workload.requests, GPU)
    a, d, _, share = many.floor_terms(many.workload.requests, GPU)
    assert a1[0] == pytest.approx(a.mean(), rel=0.03)
    assert d1[0] * share1[0] == pytest.approx((d * share).mean(), rel=0.03)
    amortised = one.seconds_array(one.workload.requests, GPU)[0] - a1[0]
    assert amortised == pytest.approx((many.seconds_array(many.workload.requests, GPU) - a).mean(), rel=0.03)
    point = ProfiledCostModel(PROFILE, Spread([mean], [sigma]), workload(1))  # expected=False: spread ignored
    assert point.floor_terms(point.workload.requests, GPU)[0][0] < 0.8 * a1[0]  # the KV term is convex


def test_no_spread_gives_the_point_costs():
    wl = workload(3)
    point = ProfiledCostModel(PROFILE, Spread([100.0, 900.0, 3000.0], None), wl)
    for spread in (None, [0.0, 0.0, 0.0]):
        same = ProfiledCostModel(PROFILE, Spread([100.0, 900.0, 3000.0], spread), wl, expected=True)
        assert np.array_equal(same.seconds_array(wl.requests, GPU), point.seconds_array(wl.requests, GPU))
        assert same.group_seconds(wl.requests, GPU) == point.group_seconds(wl.requests, GPU)
    assert point.bind(workload(2)).expected is False
    assert ProfiledCostModel(PROFILE, Spread([1.0] * 3, [0.5] * 3), expected=True).bind(wl).expected is True


def test_bad_spreads_are_refused():
    with pytest.raises(WorkloadError, match="spreads"):
        ProfiledCostModel(PROFILE, Spread([100.0, 200.0], [0.5, -1.0]), workload(2), expected=True)
    with pytest.raises(ConfigError, match="spreads"):
        MeanLengthPredictor({"a": 100.0}, {"b": 0.3})


def test_mean_predictor_fits_spreads_of_log_lengths():
    recs = [RequestRecord("expert", i, i, "a", 0, 0.0, 1.0, 10, o) for i, o in enumerate((100, 400, 1600))]
    fitted = MeanLengthPredictor.fit(recs)
    assert fitted.means["a"] == pytest.approx(700.0)
    assert fitted.spreads["a"] == pytest.approx(np.std(np.log([100, 400, 1600])))
    wl = workload(2)
    assert np.allclose(fitted.predict_spread(wl, wl.requests), fitted.spreads["a"])
    assert MeanLengthPredictor({"a": 1.0}).predict_spread(wl, wl.requests) is None


def test_config_switch_reaches_the_cost_model(tmp_path):
    cfg = load_config(None, ["workload.preset=gpqa", "workload.num_queries=20", "workload.questions=synthetic",
                             "costs.expected=true", "tracking.mode=disabled"])  # fmt: skip
    costs = prepare(cfg).costs
    assert costs.expected is True
    assert costs.bind(costs.workload).expected is True
