"""Learned skip rules against the fixed-threshold front, on questions the rules never saw.

A learned rule scores each question (lower = safer to skip, e.g. the expected accuracy a skip loses) and skips
those scoring at most a cut. The cut is chosen on the calibration split from out-of-fold scores (each calibration
question scored by a model fitted on the other folds), never on the evaluation questions: either to skip as often
as a fixed threshold does there (:func:`cut_for_rate`) or to skip as much as possible while keeping its accuracy
(:func:`cut_for_accuracy`). :func:`compare` bootstraps the evaluation questions for 95% intervals of the accuracy
gained over a fixed threshold, of the skip-rate ratio, and of the gap to the fixed-T front (random mixtures of two
thresholds) at the learned rule's own skip rate.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from mosaic.aggregation.reliability import SKIP_FEATURE_NAMES, Reliability, SkipModel, skip_features
from mosaic.aggregation.thresholds import DEFAULT_TOLERANCE
from mosaic.core.errors import WorkloadError
from mosaic.core.types import Query

Fit = Callable[[np.ndarray], Callable[[np.ndarray], np.ndarray]]  # train rows -> (rows -> scores)


def oof_scores(n: int, fit: Fit, folds: int, rng: np.random.Generator) -> np.ndarray:
    """Out-of-fold scores of ``n`` calibration rows: ``fit(train_rows)`` returns a scorer of row indices."""
    if not 2 <= folds <= n:
        raise WorkloadError(f"out-of-fold scores: need 2 <= folds <= rows, got {folds} folds for {n} rows")
    fold = rng.permutation(n) % folds
    out = np.zeros(n)
    for f in range(folds):
        test = np.flatnonzero(fold == f)
        out[test] = fit(np.flatnonzero(fold != f))(test)
    return out


def cut_for_rate(scores: np.ndarray, rate: float) -> float:
    """The cut that skips a share ``rate`` of ``scores`` (skip when score <= cut); -inf skips nothing."""
    k = round(rate * len(scores))
    return float(np.sort(scores)[k - 1]) if k > 0 else -np.inf


def cut_for_accuracy(scores: np.ndarray, majority: np.ndarray, aggregator: np.ndarray, accuracy: float) -> float:
    """The largest cut whose accuracy on these rows (skipped: majority; else aggregator) is >= ``accuracy``."""
    order = np.argsort(scores, kind="stable")
    gain = np.cumsum(majority[order].astype(float) - aggregator[order].astype(float))
    acc = (aggregator.sum() + gain) / len(scores)
    ok = np.flatnonzero(acc >= accuracy - 1e-12)
    return float(scores[order][ok[-1]]) if ok.size else -np.inf


@dataclass(frozen=True, slots=True)
class Comparison:
    """A learned rule vs a fixed threshold (``ref``) and vs the fixed-T front, on the evaluation questions."""

    skip: float  # the learned rule's skip rate
    accuracy: float
    ref_skip: float  # the fixed threshold's
    ref_accuracy: float
    gain: tuple[float, float, float]  # accuracy - ref accuracy: (estimate, 2.5%, 97.5%)
    skip_ratio: tuple[float, float, float]  # skip / ref skip (inf when ref skips nothing)
    front_gap: tuple[float, float, float]  # accuracy - front's accuracy at the same skip rate


def _turn(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> float:
    """z of (b - a) x (c - a): >= 0 when b lies on or below the segment a-c (for a.x <= b.x <= c.x)."""
    return float((b[0] - a[0]) * (c[1] - a[1]) - (b[1] - a[1]) * (c[0] - a[0]))


def front_accuracy(x: float, points: np.ndarray, more_is_better: bool = True) -> float:
    """Accuracy of the fixed-T front at ``x`` (``points``: (x, accuracy) rows): the best of the upper hull (random
    mixtures of two rules) at ``x`` or at any x that is better (larger when ``more_is_better``, e.g. a skip rate;
    smaller otherwise, e.g. a latency)."""
    pts = points[np.argsort(points[:, 0], kind="stable")]
    hull: list[np.ndarray] = []
    for p in pts:
        while len(hull) >= 2 and _turn(hull[-2], hull[-1], p) >= 0:
            hull.pop()
        hull.append(p)
    h = np.array(hull)
    at = float(np.interp(x, h[:, 0], h[:, 1]))
    better = h[h[:, 0] >= x, 1] if more_is_better else h[h[:, 0] <= x, 1]
    return max(at, float(better.max())) if better.size else at


def _stats(skip: np.ndarray, ref: np.ndarray, fixed: list[np.ndarray], maj: np.ndarray, agg: np.ndarray,
           idx: np.ndarray) -> tuple[float, float, float]:  # fmt: skip
    def acc(s: np.ndarray) -> float:
        return float(np.where(s[idx], maj[idx], agg[idx]).mean())

    s, r = float(skip[idx].mean()), float(ref[idx].mean())
    points = np.array([(float(f[idx].mean()), acc(f)) for f in fixed])
    return acc(skip) - acc(ref), s / r if r > 0 else np.inf, acc(skip) - front_accuracy(s, points)


def compare(skip: np.ndarray, ref: np.ndarray, fixed: list[np.ndarray], majority: np.ndarray,
            aggregator: np.ndarray, rng: np.random.Generator, n_boot: int = 2000) -> Comparison:  # fmt: skip
    """Learned ``skip`` vs fixed ``ref`` (boolean per question) and the front of the ``fixed`` skip vectors (include
    never-skip and skip-all for a closed front); 95% intervals from ``n_boot`` bootstrap resamples of questions."""
    n = len(skip)
    if n == 0 or any(len(a) != n for a in (ref, majority, aggregator, *fixed)):
        raise WorkloadError("skip comparison: every vector must have one entry per evaluation question")
    full = np.arange(n)
    est = _stats(skip, ref, fixed, majority, aggregator, full)
    boots = np.array([_stats(skip, ref, fixed, majority, aggregator, rng.integers(0, n, n)) for _ in range(n_boot)])
    lo, hi = np.nanpercentile(np.where(np.isinf(boots), np.nan, boots), [2.5, 97.5], axis=0)

    def acc(s: np.ndarray) -> float:
        return float(np.where(s, majority, aggregator).mean())

    return Comparison(float(skip.mean()), acc(skip), float(ref.mean()), acc(ref),
                      (est[0], float(lo[0]), float(hi[0])), (est[1], float(lo[1]), float(hi[1])),
                      (est[2], float(lo[2]), float(hi[2])))  # fmt: skip


# --- learned rules on one expert set ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, eq=False)
class Questions:
    """One expert set's answers to some questions, and what is known about them (arrays aligned by question)."""

    experts: tuple[str, ...]
    n_options: int  # answer options (0: open answers)
    queries: tuple[Query, ...]
    votes: tuple[tuple[str | None, ...], ...]  # question -> each expert's answer (or agreement group); None: none
    lengths: tuple[tuple[int, ...], ...]  # question -> each expert's response length (characters)
    expert_correct: np.ndarray  # (questions, k) bool
    majority_correct: np.ndarray  # the majority representative's answer is correct
    aggregator_correct: np.ndarray
    vote_share: np.ndarray  # the paper's confidence

    def __len__(self) -> int:
        return len(self.queries)

    def fit(self, rows: np.ndarray, l2: float = 1.0) -> SkipModel:
        """Reliability and the two logistic models, on ``rows`` only."""
        rel = Reliability.fit(self.experts, self.expert_correct[rows], self.n_options)
        return SkipModel.fit(rel, self.features(rel, rows), self.majority_correct[rows],
                             self.aggregator_correct[rows], l2)  # fmt: skip

    def features(self, rel: Reliability, rows: np.ndarray) -> np.ndarray:
        return np.array([skip_features(self.queries[i], self.votes[i], rel, self.lengths[i]) for i in rows])


RULES: dict[str, Callable[[SkipModel, np.ndarray], np.ndarray]] = {
    "weighted": lambda m, x: -x[:, SKIP_FEATURE_NAMES.index("posterior")],  # the one-coin posterior alone
    "P(majority)": lambda m, x: -m.p_majority(x),
    "expected loss": lambda m, x: m.expected_loss(x),
}


def rule_scores(rule: str, cal: Questions, ev: Questions, folds: int, rng: np.random.Generator,
                l2: float = 1.0) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """(out-of-fold scores of the calibration questions, scores of the evaluation questions) of ``rule``."""
    score = RULES[rule]

    def fit(train: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
        model = cal.fit(train, l2)
        return lambda rows: score(model, cal.features(model.reliability, rows))

    oof = oof_scores(len(cal), fit, folds, rng)
    model = cal.fit(np.arange(len(cal)), l2)
    return oof, score(model, ev.features(model.reliability, np.arange(len(ev))))


def fixed_skips(share: np.ndarray, thresholds: Sequence[float]) -> list[np.ndarray]:
    """Skip vectors of fixed thresholds on ``share`` (two-decimal T: 0.67 skips 2/3), never-skip and skip-all."""
    n = len(share)
    return [np.zeros(n, bool), np.ones(n, bool), *(share >= t - DEFAULT_TOLERANCE for t in thresholds)]


__all__ = [
    "RULES",
    "Comparison",
    "Questions",
    "compare",
    "cut_for_accuracy",
    "cut_for_rate",
    "fixed_skips",
    "front_accuracy",
    "oof_scores",
    "rule_scores",
]
