"""Agreement that knows the experts: reliability-weighted votes, calibrated confidence and skip features.

- :class:`Reliability`: per-expert accuracy on a calibration split (Laplace-smoothed), the one-coin Dawid-Skene
  vote it implies (each expert's log-odds weight ``log((m - 1) acc / (1 - acc))`` over ``m`` options) and that
  model's posterior that the majority answer is correct.
- :class:`Logistic`: L2-regularised logistic regression fitted by Newton steps (numpy only, standardised inputs).
- :func:`skip_features`: who backs the majority, their calibrated accuracies, the weighted posterior, answer length
  and format signals, the task's number of options; :data:`SKIP_FEATURE_NAMES` names them.
- :class:`SkipModel`: P(majority correct) and P(aggregator correct) over those features (the expected accuracy a
  skip loses is their difference), saved and loaded as JSON.
- :func:`ece` and :func:`reliability_bins`: calibration of a confidence against correctness.

Plain vote share (:func:`mosaic.aggregation.interface.confidence`) stays the paper's rule; nothing here replaces it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from mosaic.aggregation.interface import confidence
from mosaic.core.errors import ConfigError, WorkloadError
from mosaic.core.types import Query

OPEN_OPTIONS = 0  # n_options of open answers (code, numbers): unvoted answers form one "other" option


@dataclass(frozen=True, slots=True)
class WeightedVote:
    """The reliability-weighted verdict of k answers."""

    answer: str | None  # the answer with the largest total weight (ties: first seen); None when no answer
    posterior: float  # P(answer is correct) under the one-coin model (0.0 when no answer)
    margin: float  # posterior of the answer minus that of the runner-up
    backers: tuple[bool, ...]  # expert j gave ``answer``


@dataclass(frozen=True, slots=True)
class Reliability:
    """Per-expert accuracies from a calibration split, in the order the experts' answers come."""

    experts: tuple[str, ...]
    accuracy: tuple[float, ...]  # Laplace-smoothed share of calibration questions each expert got right
    n_options: int = OPEN_OPTIONS  # answer options of the task (0: open answers)

    def __post_init__(self) -> None:
        if len(self.experts) != len(self.accuracy) or not self.experts:
            raise ConfigError(f"reliability: {len(self.experts)} experts for {len(self.accuracy)} accuracies")
        if not all(0.0 < a < 1.0 for a in self.accuracy):
            raise ConfigError(f"reliability: accuracies must lie in (0, 1), got {self.accuracy}")

    @classmethod
    def fit(cls, experts: Sequence[str], correct: np.ndarray, n_options: int = OPEN_OPTIONS,
            prior: float = 1.0) -> Reliability:  # fmt: skip
        """From a (questions x experts) boolean matrix of calibration correctness; ``prior`` pseudo-counts."""
        c = np.asarray(correct, dtype=float)
        if c.ndim != 2 or c.shape[1] != len(experts) or c.shape[0] == 0:
            raise WorkloadError(f"reliability: correctness must be (questions, {len(experts)}), got {c.shape}")
        acc = (c.sum(axis=0) + prior) / (len(c) + 2 * prior)
        return cls(tuple(experts), tuple(float(a) for a in acc), int(n_options))

    @property
    def weights(self) -> np.ndarray:
        """Each expert's log-odds weight ``log((m - 1) acc / (1 - acc))`` (m: options, 2 for open answers)."""
        m = max(self.n_options, 2)
        return np.log((m - 1) * np.asarray(self.accuracy) / (1.0 - np.asarray(self.accuracy)))

    def vote(self, answers: Sequence[str | None]) -> WeightedVote:
        """The weighted vote of ``answers`` (one per expert, None: no answer, votes for nothing)."""
        if len(answers) != len(self.experts):
            raise WorkloadError(f"reliability vote: {len(answers)} answers for {len(self.experts)} experts")
        score: dict[str, float] = {}
        for a, w in zip(answers, self.weights, strict=True):
            if a is not None:
                score[a] = score.get(a, 0.0) + float(w)
        if not score:
            return WeightedVote(None, 0.0, 0.0, (False,) * len(answers))
        best = max(score, key=score.__getitem__)
        unvoted = max(self.n_options - len(score), 0) if self.n_options > 1 else 1  # options nobody gave
        top = max(score.values())
        z = sum(math.exp(s - top) for s in score.values()) + unvoted * math.exp(-top)
        probs = sorted((math.exp(s - top) / z for s in score.values()), reverse=True)
        runner = max(probs[1] if len(probs) > 1 else 0.0, math.exp(-top) / z if unvoted else 0.0)
        return WeightedVote(best, probs[0], probs[0] - runner, tuple(a is not None and a == best for a in answers))


# --- logistic regression ---------------------------------------------------------------------------------------------


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(z, -30.0, 30.0)))


@dataclass(frozen=True, slots=True)
class Logistic:
    """``P(y = 1 | x) = sigmoid(((x - mean) / scale) @ coef + intercept)``."""

    mean: tuple[float, ...]
    scale: tuple[float, ...]
    coef: tuple[float, ...]
    intercept: float

    @classmethod
    def fit(cls, x: np.ndarray, y: np.ndarray, l2: float = 1.0, iters: int = 50) -> Logistic:
        """Newton steps on the L2-penalised log-likelihood (``l2`` on the coefficients, not the intercept)."""
        x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
        if x.ndim != 2 or len(x) != len(y) or len(x) == 0:
            raise WorkloadError(f"logistic fit: {x.shape} features for {y.shape} labels")
        mean, scale = x.mean(axis=0), x.std(axis=0)
        scale = np.where(scale > 1e-12, scale, 1.0)
        z = np.column_stack([(x - mean) / scale, np.ones(len(x))])
        w = np.zeros(z.shape[1])
        penalty = np.full(z.shape[1], float(l2))
        penalty[-1] = 1e-6
        for _ in range(iters):
            p = _sigmoid(z @ w)
            grad = z.T @ (p - y) + penalty * w
            hess = (z * (p * (1 - p))[:, None]).T @ z + np.diag(penalty)
            step = np.linalg.solve(hess, grad)
            w -= step
            if np.abs(step).max() < 1e-8:
                break
        return cls(tuple(mean.tolist()), tuple(scale.tolist()), tuple(w[:-1].tolist()), float(w[-1]))

    def predict(self, x: np.ndarray) -> np.ndarray:
        """P(y = 1) of each row of ``x`` (one row: a 1-d array gives a 1-element result)."""
        x = np.atleast_2d(np.asarray(x, dtype=float))
        if x.shape[1] != len(self.coef):
            raise WorkloadError(f"logistic model takes {len(self.coef)} features, got {x.shape[1]}")
        return _sigmoid(((x - np.array(self.mean)) / np.array(self.scale)) @ np.array(self.coef) + self.intercept)


# --- features --------------------------------------------------------------------------------------------------------

SKIP_FEATURE_NAMES: tuple[str, ...] = (
    "vote_share",  # plain share of the most common answer (the paper's confidence)
    "posterior",  # one-coin weighted posterior that the weighted answer is correct
    "posterior_margin",  # that posterior minus the runner-up's
    "log_odds",  # logit of the posterior (clipped)
    "backers_mean_accuracy",  # mean calibrated accuracy of the experts backing the weighted answer
    "dissenters_max_accuracy",  # highest calibrated accuracy among the others (0 when unanimous)
    "no_answer_share",  # share of experts without an extracted answer
    "log_answer_chars",  # log1p of the mean extracted-answer length (code size, free text)
    "length_spread",  # (max - min) / (max + 1) of the answers' lengths
    "log_question_chars",  # log1p of the question's length in characters
    "n_choices",  # answer options (0: open answer)
)
# then one indicator per expert position: expert j backs the weighted answer ("backs_0", "backs_1", ...)


def skip_feature_names(k: int) -> tuple[str, ...]:
    """:data:`SKIP_FEATURE_NAMES` followed by ``backs_0 .. backs_{k-1}``."""
    return (*SKIP_FEATURE_NAMES, *(f"backs_{j}" for j in range(k)))


def skip_features(query: Query, answers: Sequence[str | None], rel: Reliability,
                  lengths: Sequence[int] | None = None) -> np.ndarray:  # fmt: skip
    """Features of one skip decision, ordered as :func:`skip_feature_names` (float64, finite). ``lengths``: each
    answer's length in characters (default: of ``answers``; pass the code's when answers are cluster labels)."""
    k = len(answers)
    if k == 0:
        raise WorkloadError(f"query {query.id}: skip features need at least one expert answer")
    if lengths is not None and len(lengths) != k:
        raise WorkloadError(f"query {query.id}: {len(lengths)} answer lengths for {k} answers")
    share, _ = confidence(answers)
    vote = rel.vote(answers)
    acc = np.asarray(rel.accuracy)
    backs = np.asarray(vote.backers, dtype=bool)
    p = min(max(vote.posterior, 1e-6), 1 - 1e-6)
    if lengths is None:
        lengths = [len(a) if a is not None else 0 for a in answers]
    lengths = np.asarray(lengths, dtype=float)
    head = [
        share,
        vote.posterior,
        vote.margin,
        math.log(p / (1 - p)),
        float(acc[backs].mean()) if backs.any() else 0.0,
        float(acc[~backs].max()) if (~backs).any() else 0.0,
        sum(a is None for a in answers) / k,
        math.log1p(lengths.mean()),
        (lengths.max() - lengths.min()) / (lengths.max() + 1.0),
        math.log1p(len(query.text)),
        float(len(query.choices)),
    ]
    return np.array([*head, *backs.astype(float)], dtype=float)


# --- the skip model --------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SkipModel:
    """Reliability of the experts, P(majority correct) and P(aggregator correct) over :func:`skip_features`."""

    reliability: Reliability
    majority: Logistic
    aggregator: Logistic

    @classmethod
    def fit(cls, rel: Reliability, x: np.ndarray, majority_correct: np.ndarray, aggregator_correct: np.ndarray,
            l2: float = 1.0) -> SkipModel:  # fmt: skip
        """Both models on the calibration rows ``x`` (features from :func:`skip_features` with ``rel``)."""
        return cls(rel, Logistic.fit(x, majority_correct, l2), Logistic.fit(x, aggregator_correct, l2))

    def features(self, query: Query, answers: Sequence[str | None]) -> np.ndarray:
        return skip_features(query, answers, self.reliability)

    def p_majority(self, x: np.ndarray) -> np.ndarray:
        """Calibrated P(the majority answer is correct) per row."""
        return self.majority.predict(x)

    def expected_loss(self, x: np.ndarray) -> np.ndarray:
        """Expected accuracy a skip loses per row: P(aggregator correct) - P(majority correct)."""
        return self.aggregator.predict(x) - self.majority.predict(x)

    def save(self, path: str | Path) -> Path:
        """Write the model as JSON; :meth:`load` reads it back."""
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(json.dumps(asdict(self), indent=1), encoding="utf-8")
        return p

    @classmethod
    def load(cls, path: str | Path) -> SkipModel:
        """A model written by :meth:`save`; a :class:`ConfigError` when the file is missing or malformed."""
        try:
            d = json.loads(Path(path).read_text(encoding="utf-8"))
            rel = d["reliability"]
            return cls(Reliability(tuple(rel["experts"]), tuple(rel["accuracy"]), int(rel["n_options"])),
                       _logistic(d["majority"]), _logistic(d["aggregator"]))  # fmt: skip
        except (OSError, KeyError, TypeError, ValueError) as err:
            raise ConfigError(f"skip model {path}: cannot read it ({err})") from None


def _logistic(d: dict) -> Logistic:
    return Logistic(tuple(d["mean"]), tuple(d["scale"]), tuple(d["coef"]), float(d["intercept"]))


# --- calibration -----------------------------------------------------------------------------------------------------


def reliability_bins(conf: np.ndarray, correct: np.ndarray, bins: int = 10) -> list[tuple[float, float, int]]:
    """(mean confidence, accuracy, count) of each non-empty equal-width bin of ``conf`` in [0, 1]."""
    c, y = np.asarray(conf, dtype=float), np.asarray(correct, dtype=float)
    if len(c) != len(y):
        raise WorkloadError(f"calibration: {len(c)} confidences for {len(y)} outcomes")
    idx = np.minimum((np.clip(c, 0.0, 1.0) * bins).astype(int), bins - 1)
    out = []
    for b in range(bins):
        m = idx == b
        if m.any():
            out.append((float(c[m].mean()), float(y[m].mean()), int(m.sum())))
    return out


def ece(conf: np.ndarray, correct: np.ndarray, bins: int = 10) -> float:
    """Expected calibration error: count-weighted mean |accuracy - confidence| over equal-width bins."""
    rows = reliability_bins(conf, correct, bins)
    n = sum(r[2] for r in rows)
    return sum(r[2] * abs(r[1] - r[0]) for r in rows) / n if n else 0.0


__all__ = [
    "OPEN_OPTIONS",
    "SKIP_FEATURE_NAMES",
    "Logistic",
    "Reliability",
    "SkipModel",
    "WeightedVote",
    "ece",
    "reliability_bins",
    "skip_feature_names",
    "skip_features",
]
