"""Feature spec: column layout, deterministic text hashing, vocabularies, and the version/digest checks on load."""

from __future__ import annotations

import numpy as np
import pytest

from mosaic.core.errors import ConfigError
from mosaic.predictors import features
from mosaic.predictors.features import (
    CATEGORICAL,
    NUMERIC,
    FeatureSpec,
    build_features,
    dense_features,
    hash_ngrams,
    hashed_counts,
    text_stats,
)
from mosaic.predictors.length_data import LengthDataset


def rows(texts: list[str], experts: list[str], domains: list[str] | None = None) -> LengthDataset:
    n = len(texts)
    return LengthDataset(
        name="t", query_id=np.arange(n), text=tuple(texts), domain=tuple(domains or ["d"] * n),
        n_choices=np.zeros(n), expert=tuple(experts), expert_kind=("instruct",) * n,
        expert_size=np.full(n, 7.0), prompt_tokens=np.arange(n) * 10.0, output_tokens=np.ones(n),
    )  # fmt: skip


def test_columns_match_names_and_hashing_is_deterministic() -> None:
    ds = rows(["what is 2+2?", "def f(x): return x;", "what is 2+2?"], ["a", "b", "a"], ["math", "code", "math"])
    spec = FeatureSpec.fit(ds, hash_dims=16, ngram_max=2)
    x = build_features(spec, ds)
    assert x.shape == (3, len(NUMERIC) + len(CATEGORICAL) + 16) == (3, len(spec.names()))
    assert spec.domains == ("code", "math") and spec.experts == ("a", "b")
    dense = x.toarray()
    np.testing.assert_array_equal(dense[0, 1:], dense[2, 1:])  # same text and expert: only prompt_tokens differ
    assert dense[:, spec.names().index("domain")].tolist() == [1, 0, 1]
    assert dense[:, spec.names().index("expert")].tolist() == [0, 1, 0]
    # "what is 2 2" has 4 words + 3 bigrams = 7 n-gram counts in total
    assert dense[0, -16:].sum() == 7
    assert hash_ngrams("Hello hello world", 1000, 1) == hash_ngrams("hello HELLO world", 1000, 1)
    assert sum(hash_ngrams("Hello hello world", 1000, 1).values()) == 3


def test_bulk_hashing_equals_hashing_each_text() -> None:
    rng = np.random.default_rng(0)
    vocab = ["a", "B", "c1", "dd", "e_e", "2", "x", "Ä"]
    texts = [" ".join(rng.choice(vocab, size=int(rng.integers(0, 12)))) + rng.choice(["", "?", " {;}"])
             for _ in range(60)] + ["", "one", "a a a a"]  # fmt: skip
    for dims, n in ((1000, 1), (16, 2), (7, 3)):
        bulk = hashed_counts(texts, dims, n).toarray()
        for i, t in enumerate(texts):
            one = np.zeros(dims, np.float32)
            for b, v in hash_ngrams(t, dims, n).items():
                one[b] = v
            np.testing.assert_array_equal(bulk[i], one, err_msg=f"{t!r}, dims {dims}, n-grams up to {n}")
    assert hashed_counts([], 8, 2).shape == (0, 8)


def test_text_stats_counts() -> None:
    chars, words, lines, digit_frac, code, questions = text_stats("a1\nb2 ? {x;}")
    assert (chars, words, lines, code, questions) == (12, 4, 2, 2, 1)
    assert digit_frac == pytest.approx(2 / 12)
    assert text_stats("") == (0.0, 0.0, 0.0, 0.0, 0.0, 0.0)


def test_unknown_domain_and_expert_are_missing_codes() -> None:
    spec = FeatureSpec.fit(rows(["x"], ["a"], ["math"]), hash_dims=0)
    dense = dense_features(spec, rows(["y"], ["zz"], ["law"]))
    assert dense[0, -2:].tolist() == [-1, -1]  # LightGBM treats negative categories as missing
    assert build_features(spec, rows(["y"], ["zz"])).shape == (1, len(NUMERIC) + len(CATEGORICAL))
    assert build_features(spec, rows([], [])).shape == (0, len(NUMERIC) + len(CATEGORICAL))


def test_spec_round_trip_and_mismatches(monkeypatch: pytest.MonkeyPatch) -> None:
    spec = FeatureSpec(hash_dims=8, domains=("a",), experts=("e",))
    assert FeatureSpec.from_dict(spec.to_dict()) == spec
    with pytest.raises(ConfigError, match="feature spec version 0; this code builds version 1"):
        FeatureSpec.from_dict({**spec.to_dict(), "version": 0})
    with pytest.raises(ConfigError, match="malformed"):
        FeatureSpec.from_dict({"version": features.FEATURE_SPEC_VERSION, "hash_dims": 8})
    saved = spec.to_dict()
    monkeypatch.setattr(features, "NUMERIC", (*NUMERIC, "a_new_feature"))  # the code now builds other columns
    with pytest.raises(ConfigError, match="other feature columns than this code builds: retrain"):
        FeatureSpec.from_dict(saved)
    with pytest.raises(ConfigError, match="hash_dims must be >= 0"):
        FeatureSpec(hash_dims=-1)
