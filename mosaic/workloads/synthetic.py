"""A synthetic response model calibrated to the paper: per-expert length distributions (reasoning ~3000 tokens,
instruct ~200, heavy lognormal tail) and one per-query difficulty that drives correctness, agreement and length
together, so unanimous queries are short (~1064 tokens) and full splits long (~2696), as the paper measured.

Difficulty is partly visible in the query (its domain and prompt length), so per-query length predictors have a
real signal to learn; the rest is hidden noise.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from mosaic.core.types import Expert, ExpertKind, Response, Responses, Workload

SIGMA = {ExpertKind.REASONING: 0.45, ExpertKind.INSTRUCT: 0.6}  # lognormal spread of one response's length
MAX_TOKENS = {ExpertKind.REASONING: 16384, ExpertKind.INSTRUCT: 4096}  # generation caps
MIN_TOKENS = 8


@dataclass(frozen=True, slots=True)
class ResponseModel:
    """Parameters of the synthetic responses (defaults calibrated to PAPER_NOTES.md; see tests/workloads)."""

    accuracy: Mapping[str, float]  # expert -> logit of a correct answer at mean difficulty (unknown: 0.8)
    difficulty: tuple[float, float] = (2.0, 2.4)  # Beta(a, b) of the hidden part of difficulty
    alpha: float = 1.6  # how much a standard deviation of difficulty lowers the correctness logit
    gamma: float = 0.75  # log-length change per standard deviation of difficulty
    visible: float = 0.6  # share of difficulty variance explained by domain and prompt length
    aggregator_boost: float = 2.5  # logit gain of the aggregator per unit of (share of experts correct - 1/2)
    distractor_concentration: float = 0.5  # Dirichlet over wrong options: small = wrong experts agree more


def difficulty(queries: Sequence, model: ResponseModel, rng: np.random.Generator) -> np.ndarray:
    """Standardised per-query difficulty: a visible part (domain offset, log prompt length) and a hidden Beta part."""
    visible, hidden = difficulty_parts(queries, model, rng)
    return visible + hidden


def difficulty_parts(queries: Sequence, model: ResponseModel, rng: np.random.Generator) -> tuple[np.ndarray, ...]:
    """The (visible, hidden) parts of :func:`difficulty` (the same draws): variances ``model.visible`` and
    ``1 - model.visible``."""
    n = len(queries)
    hidden = rng.beta(*model.difficulty, size=n)
    offset = {d: domain_offset(d) for d in {q.domain for q in queries}}
    visible = np.array([offset[q.domain] for q in queries]) + np.log1p([q.prompt_tokens for q in queries])
    return np.sqrt(model.visible) * _standard(visible), np.sqrt(1.0 - model.visible) * _standard(hidden)


def expected_length(mean: float | np.ndarray, known: np.ndarray, known_var: float, gamma: float) -> np.ndarray:
    """Expected output tokens of a response given the part ``known`` (variance ``known_var``) of its query's
    difficulty, the rest unknown (taken as normal): ``mean x exp(gamma known - gamma^2 known_var / 2)``; the
    generation cap is ignored. ``known_var=1`` with the whole difficulty: the best any length predictor can do
    in expectation (the response's own lognormal noise is unknowable); with the visible part: the best one that
    reads only the query's domain and prompt length."""
    return np.asarray(mean, dtype=float) * np.exp(gamma * np.asarray(known, dtype=float) - gamma**2 * known_var / 2)


def domain_offset(domain: str) -> float:
    """How hard a domain is (standard normal), a fixed function of its name: the same in every run and seed, so
    what a length predictor learns about domains transfers between runs."""
    return float(np.random.default_rng(zlib.crc32(domain.encode("utf-8"))).normal())


def _standard(x: np.ndarray) -> np.ndarray:
    sd = float(np.std(x))
    return (x - float(np.mean(x))) / sd if sd > 0 else np.zeros_like(x, dtype=float)


def _letters(query) -> tuple[str, ...]:
    n = len(query.choices) or 4
    return tuple(chr(ord("A") + i) for i in range(n))


def _log_median(
    mean: float | np.ndarray, z: float | np.ndarray, gamma: float, sigma: float | np.ndarray
) -> float | np.ndarray:
    """The lognormal's ``mu`` of a response: E[exp(gamma z)] ~ exp(gamma^2 / 2) for standardised z and the noise's
    exp(sigma^2 / 2) are divided out, so the expert's mean length stays ``mean``."""
    return np.log(mean) + gamma * z - gamma**2 / 2 - sigma**2 / 2


def _length(expert: Expert, mean: float, z: float, gamma: float, rng: np.random.Generator) -> int:
    s = SIGMA[expert.kind]
    return int(np.clip(round(rng.lognormal(_log_median(mean, z, gamma, s), s)), MIN_TOKENS, MAX_TOKENS[expert.kind]))


def draw_lengths(
    mean: np.ndarray, z: np.ndarray, kinds: Sequence[ExpertKind], gamma: float, rng: np.random.Generator
) -> np.ndarray:
    """Output tokens of responses by experts of ``kinds`` (mean lengths ``mean``) to queries of difficulty ``z``,
    from the same distribution :func:`synthesize` draws them from (vectorised; for analysis: fresh lengths for a
    workload whose difficulties are known)."""
    sigma = np.array([SIGMA[k] for k in kinds], dtype=float)
    cap = np.array([MAX_TOKENS[k] for k in kinds], dtype=float)
    draws = rng.lognormal(_log_median(np.asarray(mean, dtype=float), np.asarray(z, dtype=float), gamma, sigma), sigma)
    return np.clip(np.round(draws), MIN_TOKENS, cap).astype(np.int64)


def draw_hidden(n: int, model: ResponseModel, rng: np.random.Generator) -> np.ndarray:
    """Hidden difficulty parts of ``n`` queries, from the distribution :func:`difficulty_parts` draws them from
    (its Beta, standardised by the Beta's own moments rather than the sample's, times sqrt(1 - visible))."""
    a, b = model.difficulty
    mean, sd = a / (a + b), np.sqrt(a * b / ((a + b) ** 2 * (a + b + 1)))
    return np.sqrt(1.0 - model.visible) * (rng.beta(a, b, size=n) - mean) / sd


def _answer(gold: str, letters: tuple[str, ...], correct: bool, distractors: np.ndarray, rng) -> str:
    if correct:
        return gold
    wrong = [c for c in letters if c != gold]
    return wrong[int(rng.choice(len(wrong), p=distractors))]


def synthesize(
    workload: Workload, means: Mapping[str, float], model: ResponseModel, rng: np.random.Generator
) -> Responses:
    """One response per routed (query, expert) and one aggregator response per query."""
    z = difficulty(workload.queries, model, rng)
    agg = workload.aggregator
    table: dict[tuple[int, str], Response] = {}
    for q, route, zq in zip(workload.queries, workload.routes, z, strict=True):
        letters = _letters(q)
        gold = q.gold if q.gold in letters else letters[0]
        distractors = rng.dirichlet(np.full(len(letters) - 1, model.distractor_concentration))
        answers = []
        for name in route:
            e = workload.expert(name)
            p = 1.0 / (1.0 + np.exp(-(model.accuracy.get(name, 0.8) - model.alpha * zq)))
            ok = bool(rng.random() < p)
            answers.append(_answer(gold, letters, ok, distractors, rng))
            table[(q.id, name)] = Response(_length(e, means[name], zq, model.gamma, rng), answers[-1], ok)
        share = sum(a == gold for a in answers) / len(answers) if answers else 0.5
        logit = model.accuracy.get(agg.name, 0.8) - model.alpha * zq
        ok = bool(rng.random() < 1.0 / (1.0 + np.exp(-(logit + model.aggregator_boost * (share - 0.5)))))
        table[(q.id, agg.name)] = Response(_length(agg, means[agg.name], zq, model.gamma, rng),
                                           _answer(gold, letters, ok, distractors, rng), ok)  # fmt: skip
    return Responses(table)
