"""Feature spec for per-request length prediction: query features, expert features, hashed text n-grams.

A :class:`FeatureSpec` is fitted on training rows (it keeps the domain and expert vocabularies) and saved with the
model; :func:`build_features` turns a :class:`LengthDataset` into a sparse matrix whose columns are
``spec.names()``. Text n-grams are hashed with CRC-32 (deterministic across processes; no global state).
"""

from __future__ import annotations

import itertools
import math
import re
import zlib
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import TypeVar

import numpy as np

from mosaic.core.errors import ConfigError
from mosaic.predictors.length_data import LengthDataset

FEATURE_SPEC_VERSION = 1
T = TypeVar("T")
_TOKEN_RE = re.compile(r"[a-z0-9_]+")
NUMERIC = (
    "prompt_tokens",  # tokens of the request's prompt
    "n_choices",  # answer options (0: free form)
    "expert_size_b",  # parameters in billions (nan: unknown)
    "expert_reasoning",  # 1 reasoning, 0 instruct, nan unknown
    "text_chars",  # characters of the query text
    "text_words",
    "text_lines",
    "text_digit_frac",  # share of characters that are digits
    "text_code_marks",  # ``` fences, "def ", "{" and ";" counts: code in the question
    "text_questions",  # question marks
)
CATEGORICAL = ("domain", "expert")  # integer codes into the spec's vocabularies; -1 unknown (LightGBM: missing)


@dataclass(frozen=True, slots=True)
class FeatureSpec:
    """Which features a model uses; saved beside the model and compared on load."""

    version: int = FEATURE_SPEC_VERSION
    hash_dims: int = 256  # buckets of hashed word n-grams
    ngram_max: int = 2  # n-grams of 1..ngram_max lower-case words
    domains: tuple[str, ...] = ()  # vocabulary: domain code -> name
    experts: tuple[str, ...] = ()  # vocabulary: expert code -> name

    def __post_init__(self) -> None:
        if self.hash_dims < 0 or self.ngram_max < 1:
            raise ConfigError(f"feature spec: hash_dims must be >= 0 and ngram_max >= 1, got {self}")
        object.__setattr__(self, "domains", tuple(self.domains))
        object.__setattr__(self, "experts", tuple(self.experts))

    @classmethod
    def fit(cls, ds: LengthDataset, hash_dims: int = 256, ngram_max: int = 2) -> FeatureSpec:
        """A spec whose vocabularies are the training rows' domains and experts (sorted)."""
        return cls(FEATURE_SPEC_VERSION, hash_dims, ngram_max, tuple(sorted(set(ds.domain))),
                   tuple(sorted(set(ds.expert))))  # fmt: skip

    def names(self) -> tuple[str, ...]:
        """Column names, in matrix order."""
        return (*NUMERIC, *CATEGORICAL, *(f"ngram_{i}" for i in range(self.hash_dims)))

    def categorical(self) -> tuple[str, ...]:
        return CATEGORICAL

    def to_dict(self) -> dict:
        return {**asdict(self), "names_digest": names_digest(self.names())}

    @classmethod
    def from_dict(cls, d: dict) -> FeatureSpec:
        """Rebuild a saved spec; a spec of another feature version fails with a clear error."""
        version = d.get("version")
        if version != FEATURE_SPEC_VERSION:
            raise ConfigError(
                f"model was trained on feature spec version {version}; this code builds version "
                f"{FEATURE_SPEC_VERSION}: retrain it with `mosaic predictor train`"
            )
        try:
            spec = cls(int(d["version"]), int(d["hash_dims"]), int(d["ngram_max"]), tuple(d["domains"]),
                       tuple(d["experts"]))  # fmt: skip
        except (KeyError, TypeError, ValueError) as err:
            raise ConfigError(f"feature spec in model file is malformed: {err}") from None
        if "names_digest" in d and d["names_digest"] != names_digest(spec.names()):
            raise ConfigError("model was trained on other feature columns than this code builds: retrain it")
        return spec


def names_digest(names: Sequence[str]) -> str:
    """Short fingerprint of a column list."""
    return f"{zlib.crc32('|'.join(names).encode()):08x}"


def hash_ngrams(text: str, dims: int, ngram_max: int) -> dict[int, float]:
    """Bucket -> count of the lower-case word n-grams of ``text`` (CRC-32 mod ``dims``)."""
    words = _TOKEN_RE.findall(text.lower())
    out: dict[int, float] = {}
    for n in range(1, ngram_max + 1):
        for i in range(len(words) - n + 1):
            b = zlib.crc32(" ".join(words[i : i + n]).encode()) % dims
            out[b] = out.get(b, 0.0) + 1.0
    return out


def hashed_counts(texts: Sequence[str], dims: int, ngram_max: int):
    """``scipy.sparse.csr_matrix`` (float32, ``len(texts) x dims``): row i is :func:`hash_ngrams` of ``texts[i]``,
    computed in bulk: words become integer ids, n-grams integer ids (numpy), and each distinct n-gram's CRC-32
    extends its (n-1)-gram prefix's (``zlib.crc32`` continues a running checksum)."""
    from scipy import sparse

    vocab: defaultdict[str, int] = defaultdict(itertools.count().__next__)  # word -> id, new words numbered
    ids: list[int] = []
    lengths = []
    for t in texts:
        words = _TOKEN_RE.findall(t.lower())
        ids += map(vocab.__getitem__, words)
        lengths.append(len(words))
    word_ids = np.asarray(ids, dtype=np.int64)
    text_of = np.repeat(np.arange(len(texts)), lengths)
    encoded = [w.encode() for w in vocab]  # id -> bytes
    crc = [zlib.crc32(w) for w in encoded]  # n-gram id -> CRC-32 of its text (n = 1: the word ids)
    gram = word_ids  # position -> id of the n-gram starting there
    rows, cols = [], []
    for n in range(1, ngram_max + 1):
        m = len(word_ids) - n + 1
        if m <= 0:
            break
        if n > 1:
            prefix = [zlib.crc32(b" ", c) for c in crc]  # "w1 .. w(n-1) " per (n-1)-gram id
            prev = gram[:m]  # the (n-1)-gram starting at each position
            gram = np.unique(prev * len(encoded) + word_ids[n - 1 :], return_inverse=True)[1].reshape(-1)
            rep = np.empty(int(gram.max()) + 1, dtype=np.int64)
            rep[gram] = np.arange(m)  # a position of each n-gram
            pairs = zip(prev[rep].tolist(), word_ids[rep + n - 1].tolist(), strict=True)
            crc = [zlib.crc32(encoded[w], prefix[g]) for g, w in pairs]
        same_text = text_of[:m] == text_of[n - 1 :]
        rows.append(text_of[:m][same_text])
        cols.append((np.asarray(crc, dtype=np.int64) % dims)[gram[same_text]])
    r = np.concatenate(rows) if rows else np.zeros(0, np.int64)
    c = np.concatenate(cols) if cols else np.zeros(0, np.int64)
    return sparse.coo_matrix((np.ones(len(r), np.float32), (r, c)), shape=(len(texts), dims)).tocsr()  # summed


def text_stats(text: str) -> tuple[float, ...]:
    """The ``text_*`` numeric features of one text."""
    n = len(text)
    digits = sum(map(str.isdigit, text))
    code = text.count("```") + text.count("def ") + text.count("{") + text.count(";")
    return (float(n), float(len(text.split())), float(text.count("\n") + 1 if text else 0),
            digits / n if n else 0.0, float(code), float(text.count("?")))  # fmt: skip


def per_text(fn: Callable[[str], T], texts: Sequence[str]) -> list[T]:
    """``fn`` of each text, computed once per distinct text."""
    cache: dict[str, T] = {}
    out = []
    for t in texts:
        if t not in cache:
            cache[t] = fn(t)
        out.append(cache[t])
    return out


def _kind_code(kind: str) -> float:
    return {"reasoning": 1.0, "instruct": 0.0}.get(kind, math.nan)


def dense_features(spec: FeatureSpec, ds: LengthDataset) -> np.ndarray:
    """Numeric and categorical columns (float32, rows x (len(NUMERIC) + len(CATEGORICAL)))."""
    stats = np.array(per_text(text_stats, ds.text), dtype=float).reshape(len(ds), 6)
    dom = {d: i for i, d in enumerate(spec.domains)}
    exp = {e: i for i, e in enumerate(spec.experts)}
    cols = [
        ds.prompt_tokens, ds.n_choices.astype(float), ds.expert_size,
        np.array([_kind_code(k) for k in ds.expert_kind]), *stats.T,
        np.array([dom.get(d, -1) for d in ds.domain], dtype=float),
        np.array([exp.get(e, -1) for e in ds.expert], dtype=float),
    ]  # fmt: skip
    return np.column_stack(cols).astype(np.float32) if len(ds) else np.zeros((0, len(cols)), np.float32)


def build_features(spec: FeatureSpec, ds: LengthDataset):
    """The full feature matrix (``scipy.sparse.csr_matrix``, float32) with columns ``spec.names()``.

    Each distinct text is hashed once (a query routed to k experts appears in k rows)."""
    from scipy import sparse

    dense = sparse.csr_matrix(dense_features(spec, ds))
    if spec.hash_dims == 0:
        return dense
    index: dict[str, int] = {}
    row_text = np.fromiter((index.setdefault(t, len(index)) for t in ds.text), dtype=np.int64, count=len(ds))
    hashed = hashed_counts(list(index), spec.hash_dims, spec.ngram_max)[row_text]
    return sparse.hstack([dense, hashed], format="csr", dtype=np.float32)
