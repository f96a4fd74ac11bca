"""Reliability-weighted votes, the numpy logistic model, skip features, calibration (ECE) and the skip front."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mosaic.aggregation.reliability import (
    Logistic,
    Reliability,
    SkipModel,
    ece,
    reliability_bins,
    skip_feature_names,
    skip_features,
)
from mosaic.aggregation.skip_front import (
    Questions,
    compare,
    cut_for_accuracy,
    cut_for_rate,
    fixed_skips,
    front_accuracy,
    oof_scores,
    rule_scores,
)
from mosaic.core.errors import ConfigError, WorkloadError
from mosaic.core.types import Query

Q = Query(0, "Which one?", choices=("a", "b", "c", "d"))


def test_reliability_fit_and_weighted_vote() -> None:
    correct = np.array([[1, 1, 0]] * 8 + [[0, 1, 0]] * 2, dtype=bool)
    rel = Reliability.fit(("x", "y", "z"), correct, n_options=4)
    assert rel.accuracy == pytest.approx((9 / 12, 11 / 12, 1 / 12))
    assert rel.weights[1] > rel.weights[0] > 0 > rel.weights[2]  # below chance (1/4) votes against
    v = rel.vote(["A", "B", "A"])
    assert v.answer == "B" and v.backers == (False, True, False)  # one reliable expert outweighs two weak ones
    unanimous = rel.vote(["C", "C", "C"])
    assert unanimous.answer == "C" and 0 < unanimous.posterior < 1
    assert rel.vote(["C", "C", None]).posterior > rel.vote(["C", "D", None]).posterior
    assert rel.vote([None, None, None]).answer is None
    with pytest.raises(WorkloadError, match="answers for 3 experts"):
        rel.vote(["A"])
    with pytest.raises(ConfigError, match="accuracies"):
        Reliability(("x",), (1.0,))


def test_open_answers_posterior_uses_an_other_option() -> None:
    rel = Reliability(("x", "y"), (0.6, 0.6), n_options=0)
    v = rel.vote(["def f(): pass", "def f(): pass"])
    assert v.answer == "def f(): pass" and 0.5 < v.posterior < 1


def test_logistic_recovers_a_separable_signal() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 2))
    y = rng.random(400) < 1 / (1 + np.exp(-3 * x[:, 0]))
    model = Logistic.fit(x, y, l2=0.1)
    p = model.predict(x)
    assert abs(model.coef[0]) > 5 * abs(model.coef[1])
    assert ((p > 0.5) == y).mean() > 0.8 and model.predict(x[0]).shape == (1,)
    with pytest.raises(WorkloadError, match="takes 2 features"):
        model.predict(np.zeros((1, 3)))


def test_skip_features_and_model_roundtrip(tmp_path: Path) -> None:
    rel = Reliability(("x", "y", "z"), (0.8, 0.7, 0.6), n_options=4)
    f = skip_features(Q, ["A", "A", "B"], rel)
    named = dict(zip(skip_feature_names(3), f.tolist(), strict=True))
    assert named["vote_share"] == pytest.approx(2 / 3) and named["backs_2"] == 0 and named["backs_0"] == 1
    assert named["backers_mean_accuracy"] == pytest.approx(0.75) and named["dissenters_max_accuracy"] == 0.6
    assert named["n_choices"] == 4 and np.isfinite(f).all()
    with pytest.raises(WorkloadError, match="lengths"):
        skip_features(Q, ["A"], Reliability(("x",), (0.5,)), lengths=[1, 2])
    x = np.array([skip_features(Q, a, rel) for a in (["A", "A", "A"], ["A", "A", "B"], ["A", "B", "C"])] * 10)
    maj = np.array([True, True, False] * 10)
    model = SkipModel.fit(rel, x, maj, np.ones(30, bool))
    loss = model.expected_loss(x[:3])
    assert loss[0] < loss[2]  # unanimous is the safest to skip
    back = SkipModel.load(model.save(tmp_path / "m.json"))
    assert np.allclose(back.expected_loss(x), model.expected_loss(x))
    with pytest.raises(ConfigError, match="cannot read"):
        SkipModel.load(tmp_path / "missing.json")


def test_ece_and_bins() -> None:
    conf = np.array([0.9, 0.9, 0.9, 0.9, 0.3])
    correct = np.array([1, 1, 1, 0, 0])
    assert reliability_bins(conf, correct) == [(0.3, 0.0, 1), (0.9, 0.75, 4)]
    assert ece(conf, correct) == pytest.approx((4 * 0.15 + 0.3) / 5)
    assert ece(np.array([1.0, 1.0]), np.array([1, 1])) == 0.0


def test_cuts_and_front() -> None:
    scores = np.array([0.1, 0.4, 0.2, 0.3])
    assert cut_for_rate(scores, 0.5) == 0.2 and cut_for_rate(scores, 0.0) == -np.inf
    maj, agg = np.array([1, 0, 1, 1], bool), np.array([1, 1, 1, 0], bool)
    assert cut_for_accuracy(scores, maj, agg, 0.75) == 0.4  # every skip keeps 3 of 4 right
    assert cut_for_accuracy(scores, maj, agg, 1.0) == 0.3  # skipping the three safest gets all 4 right
    assert cut_for_accuracy(scores, ~maj & ~agg, agg, 1.0) == -np.inf  # nothing reaches it
    pts = np.array([[0.0, 0.9], [0.5, 0.7], [0.6, 0.85], [1.0, 0.5]])
    assert front_accuracy(0.3, pts) == pytest.approx(0.9 - 0.3 / 0.6 * 0.05)  # (0.5, 0.7) lies under the hull
    rising = np.array([[1.0, 0.7], [2.0, 0.8], [3.0, 0.75]])  # e.g. (p99, accuracy): the fastest is not the best
    assert front_accuracy(1.5, rising, more_is_better=False) == pytest.approx(0.75)
    assert front_accuracy(2.5, rising, more_is_better=False) == pytest.approx(0.8)  # the faster rule at 2.0
    assert front_accuracy(1.5, rising) == pytest.approx(0.8)  # larger x better: the rule at 2.0 counts


def _questions(n: int, rng: np.random.Generator) -> Questions:
    """Three experts; the first is reliable, so a 2:1 vote it backs is safer than one against it."""
    truth = rng.integers(0, 4, n)
    correct = rng.random((n, 3)) < np.array([0.95, 0.6, 0.6])
    ans = np.where(correct, truth[:, None], (truth[:, None] + rng.integers(1, 4, (n, 3))) % 4)
    votes = tuple(tuple("ABCD"[a] for a in row) for row in ans)
    share, maj = [], []
    for row, t in zip(ans, truth, strict=True):
        _vals, counts = np.unique(row, return_counts=True)
        top = row[np.argmax([list(row).count(a) for a in row])]
        share.append(counts.max() / 3)
        maj.append(top == t)
    agg = rng.random(n) < 0.9
    queries = tuple(Query(i, "q" * (5 + i % 7), choices=("a", "b", "c", "d")) for i in range(n))
    return Questions(("x", "y", "z"), 4, queries, votes, tuple((1, 1, 1) for _ in range(n)), correct,
                     np.array(maj), agg, np.array(share))  # fmt: skip


def test_rule_scores_and_compare_on_synthetic_votes() -> None:
    rng = np.random.default_rng(1)
    cal, ev = _questions(400, rng), _questions(400, rng)
    oof, scores = rule_scores("expected loss", cal, ev, 4, rng)
    assert oof.shape == (400,) and scores.shape == (400,)
    fixed = fixed_skips(ev.vote_share, (1.0, 0.67))
    ref = fixed[2]
    skip = scores <= cut_for_rate(oof, float((cal.vote_share >= 1).mean()))
    c = compare(skip, ref, fixed, ev.majority_correct, ev.aggregator_correct, rng, n_boot=200)
    assert c.gain[1] <= c.gain[0] <= c.gain[2] and c.skip_ratio[0] == pytest.approx(skip.mean() / ref.mean())
    assert c.front_gap[0] > -0.02  # knowing the reliable expert, the rule is not worse than mixing thresholds
    with pytest.raises(WorkloadError, match="folds"):
        oof_scores(3, lambda rows: lambda r: r * 0.0, 5, rng)
    with pytest.raises(WorkloadError, match="one entry"):
        compare(skip[:3], ref, fixed, ev.majority_correct, ev.aggregator_correct, rng)
