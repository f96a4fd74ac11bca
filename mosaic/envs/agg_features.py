"""Reliability features for ``mosaic/AggThreshold-v0``: the experts' answers behind each row of a skip table, the
:class:`~mosaic.aggregation.reliability.Reliability` fitted on a training table only, and the observation rows
(the 9 agreement features followed by :func:`~mosaic.aggregation.reliability.skip_features`) the env serves.

The env never fits anything: a caller fits :func:`fit_reliability` on the *training* table and hands the same
object to the training and the evaluation env, so held-out questions never inform the experts' accuracies.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mosaic.aggregation.reliability import OPEN_OPTIONS, Reliability, skip_feature_names, skip_features
from mosaic.aggregation.skip_front import Questions
from mosaic.aggregation.thresholds import FEATURE_HIGH, FEATURE_NAMES
from mosaic.core.errors import ConfigError
from mosaic.envs.skip_tables import SkipTable
from mosaic.runtime.executor import is_correct

FEATURE_SETS = ("agreement", "reliability")  # observation of AggThreshold-v0: the 9 features, or 9 + reliability
LOG_ODDS_MAX = 13.82  # |logit| of skip_features' posterior, clipped to [1e-6, 1 - 1e-6]
_SKIP_HIGH = {"log_odds": LOG_ODDS_MAX, "log_answer_chars": 16.0, "log_question_chars": 16.0, "n_choices": 32.0}


@dataclass(frozen=True, slots=True, eq=False)
class TableAnswers:
    """The experts' answers behind each row of a skip table (arrays and tuples aligned by row)."""

    experts: tuple[str, ...]  # the route every row shares, in answer order
    n_options: int  # answer options shared by every row (0: they differ, or open answers)
    votes: tuple[tuple[str | None, ...], ...]  # row -> each expert's extracted answer (None: none)
    lengths: tuple[tuple[int, ...], ...]  # row -> each expert's response length (characters)
    expert_correct: np.ndarray  # (rows, k) bool: each expert's answer is correct


def table_answers(table: SkipTable) -> TableAnswers:
    """Answers, lengths and correctness of each row's experts (every row must have the same route)."""
    wl, resp = table.instance.workload, table.instance.responses
    routes = {tuple(wl.routes[int(q)]) for q in table.query_ids}
    if len(routes) != 1:
        raise ConfigError(f"reliability features need one expert set for every row, got {len(routes)}")
    experts = routes.pop()
    votes, lengths, correct = [], [], []
    for qid in table.query_ids:
        q = wl.queries[int(qid)]
        rs = [resp.get(q.id, e) for e in experts]
        votes.append(tuple(r.answer for r in rs))
        lengths.append(tuple(len(r.text) if r.text else len(r.answer or "") for r in rs))
        correct.append([bool(is_correct(r.answer, q, r.correct)) for r in rs])
    n_choices = {len(wl.queries[int(q)].choices) for q in table.query_ids}
    n_options = n_choices.pop() if len(n_choices) == 1 else OPEN_OPTIONS
    return TableAnswers(experts, n_options, tuple(votes), tuple(lengths),
                        np.array(correct, dtype=bool).reshape(len(table), len(experts)))  # fmt: skip


def fit_reliability(train: SkipTable, prior: float = 1.0) -> Reliability:
    """Per-expert accuracies on the rows of ``train`` only (pass the training split, never held-out rows)."""
    ans = table_answers(train)
    return Reliability.fit(ans.experts, ans.expert_correct, ans.n_options, prior)


def feature_names(features: str, k: int) -> tuple[str, ...]:
    """Names of the observation's entries for the feature set ``features`` and ``k`` experts (reliability names
    that repeat an agreement feature's get a ``rel_`` prefix)."""
    check_features(features)
    if features == "agreement":
        return FEATURE_NAMES
    return (*FEATURE_NAMES, *(f"rel_{n}" if n in FEATURE_NAMES else n for n in skip_feature_names(k)))


def check_features(features: str) -> None:
    if features not in FEATURE_SETS:
        raise ConfigError(f"agg threshold env: features must be one of {FEATURE_SETS}, got {features!r}")


def observation_bounds(features: str, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(low, high) of the observation box (float32)."""
    names = feature_names(features, k)
    low = np.array([-LOG_ODDS_MAX if n == "log_odds" else 0.0 for n in names], dtype=np.float32)
    head = [FEATURE_HIGH[n] for n in FEATURE_NAMES]
    tail = [_SKIP_HIGH.get(n.removeprefix("rel_"), 1.0) for n in names[len(FEATURE_NAMES) :]]
    return low, np.array([*head, *tail], dtype=np.float32)


def observation_rows(table: SkipTable, features: str = "agreement", rel: Reliability | None = None) -> np.ndarray:
    """(rows, width) float32 observations of ``table``, clipped into :func:`observation_bounds`; ``rel`` (fitted on
    the training split) is required by ``"reliability"`` and must name the table's experts in route order."""
    check_features(features)
    if features == "agreement":
        if rel is not None:
            raise ConfigError("agg threshold env: reliability is only used with features='reliability'")
        low, high = observation_bounds(features, 0)
        return np.clip(table.features, low, high).astype(np.float32)
    if rel is None:
        raise ConfigError("agg threshold env: features='reliability' needs reliability= (fit_reliability(train))")
    ans = table_answers(table)
    if ans.experts != rel.experts:
        raise ConfigError(f"agg threshold env: reliability of {rel.experts} for a table of {ans.experts}")
    wl = table.instance.workload
    tail = [skip_features(wl.queries[int(q)], v, rel, n) for q, v, n in zip(table.query_ids, ans.votes, ans.lengths,
                                                                          strict=True)]  # fmt: skip
    x = np.column_stack([table.features, np.array(tail, dtype=float).reshape(len(table), -1)])
    low, high = observation_bounds(features, len(rel.experts))
    return np.clip(x, low, high).astype(np.float32)


def table_questions(table: SkipTable) -> Questions:
    """The table as :class:`~mosaic.aggregation.skip_front.Questions` (the supervised skip model's input)."""
    ans = table_answers(table)
    wl = table.instance.workload
    queries = tuple(wl.queries[int(q)] for q in table.query_ids)
    return Questions(ans.experts, ans.n_options, queries, ans.votes, ans.lengths, ans.expert_correct,
                     table.majority_correct, table.aggregator_correct, table.confidence)  # fmt: skip


__all__ = [
    "FEATURE_SETS",
    "TableAnswers",
    "feature_names",
    "fit_reliability",
    "observation_bounds",
    "observation_rows",
    "table_answers",
    "table_questions",
]
