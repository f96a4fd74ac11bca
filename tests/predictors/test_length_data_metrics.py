"""Length-prediction metrics on hand-computed examples, and the baselines' comparison table."""

from __future__ import annotations

import math

import numpy as np
import pytest

from mosaic.core.errors import WorkloadError
from mosaic.predictors.length_data import split_by_query, toy
from mosaic.predictors.length_eval import (
    _kendall_numpy,
    baselines,
    bucket_of,
    compare_fitted,
    cross_expert_ceiling,
    evaluate,
    kendall_tau,
    metrics_table,
)


def test_metrics_by_hand() -> None:
    true = np.array([10.0, 100.0, 1000.0, 0.0])
    pred = np.array([20.0, 600.0, 500.0, 2.0])
    p90 = np.array([30.0, 90.0, 2000.0, 5.0])
    m = evaluate(true, pred, p90, groups=["a", "a", "b", "b"])
    assert m.n == 4
    assert m.mae == pytest.approx((10 + 500 + 500 + 2) / 4)
    assert m.mape == pytest.approx((10 / 10 + 500 / 100 + 500 / 1000 + 2 / 1) / 4)  # true 0 counts as 1
    assert m.tau == pytest.approx((5 - 1) / 6)  # of 6 pairs only (100, 1000) vs (600, 500) is discordant
    assert m.p90_coverage == 0.75  # 100 > 90
    # buckets (edges 16, 32, ..., 8192): true 10->0, 100->3, 1000->6, 0->0; pred 20->1, 600->6, 500->5, 2->0
    assert bucket_of(true).tolist() == [0, 3, 6, 0] and bucket_of(pred).tolist() == [1, 6, 5, 0]
    assert m.bucket_acc == 0.25
    assert m.tau_within == pytest.approx(1.0)  # both groups of two rank in the right order
    assert math.isnan(evaluate(true, pred).p90_coverage)


def test_kendall_tau_matches_definition() -> None:
    x, y = np.array([10.0, 100.0, 1000.0, 0.0, 7.0]), np.array([20.0, 600.0, 500.0, 2.0, 30.0])
    pairs = [(i, j) for i in range(5) for j in range(i + 1, 5)]
    s = sum(np.sign(x[i] - x[j]) * np.sign(y[i] - y[j]) for i, j in pairs)
    assert kendall_tau(x, y) == pytest.approx(s / 10) == pytest.approx(_kendall_numpy(x, y))
    rng = np.random.default_rng(0)
    a, b = rng.integers(0, 5, 300).astype(float), rng.integers(0, 5, 300).astype(float)  # many ties: tau-b
    assert _kendall_numpy(a, b) == pytest.approx(kendall_tau(a, b))
    assert kendall_tau(a, np.ones(300)) == 0.0 and kendall_tau(a, -a) == pytest.approx(-1.0)
    with pytest.raises(WorkloadError, match="3 vs 2 values"):
        kendall_tau(np.ones(3), np.ones(2))


def test_evaluate_rejects_bad_input() -> None:
    with pytest.raises(WorkloadError, match="equal, non-empty"):
        evaluate(np.ones(2), np.ones(3))
    with pytest.raises(WorkloadError, match="nan"):
        evaluate(np.array([1.0, np.nan]), np.ones(2))


def test_baselines_table_and_ceiling() -> None:
    train, test = split_by_query(toy(300, np.random.default_rng(0)), 0.3, np.random.default_rng(1))
    comp = compare_fitted(baselines(train), test, train)
    assert list(comp.metrics) == ["expert-median", "expert-mean", "linear"]
    mean = comp.metrics["expert-mean"]
    assert mean.tau_within == 0.0  # a constant per expert cannot rank requests of one expert
    assert comp.metrics["linear"].tau_within > 0.0  # toy lengths grow with prompt length
    assert comp.predictions["expert-mean"].shape == (len(test),)
    ref, mean_mae, n = cross_expert_ceiling(train, test)
    assert n == len(test) and mean_mae == pytest.approx(mean.mae) and ref < 0.5 * mean_mae  # strong per-query signal
    table = metrics_table(comp, "toy")
    assert table.row_count == 3 and "held-out rows" in str(table.title)
