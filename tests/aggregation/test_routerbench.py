"""RouterBench loader: prompt parsing, gold derivation, a hand-written CSV, and the real files when present."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mosaic.aggregation.answers import AnswerKind
from mosaic.core.errors import WorkloadError
from mosaic.workloads.routerbench import MODELS, default_data_dir, derive_gold, load_routerbench, parse_prompt


def test_parse_prompt_takes_the_last_question() -> None:
    prompt = repr(["Q1?\nA) x\nB) y\nAnswer:\nA\n\nWhat is 2+2?\nA) 3\nB) 4\nC) 5\nPrint only a letter.\nAnswer:"])
    question, choices = parse_prompt(prompt)
    assert question == "What is 2+2?"
    assert choices == ("3", "4", "5")
    assert parse_prompt(repr(["Write a function to add."])) == ("Write a function to add.", ())


def test_derive_gold() -> None:
    assert derive_gold(["A", "B", "A", None], [True, False, True, True]) == "A"
    assert derive_gold(["A", "B"], [True, True]) is None  # tie: unknown
    assert derive_gold(["A", "B"], [False, False]) is None


def test_load_hand_written_csv(tiny_routerbench: Path) -> None:
    arc = load_routerbench("arc-challenge", tiny_routerbench)
    assert arc.kind is AnswerKind.CHOICE and arc.models == MODELS
    assert len(arc.queries) == 8 and arc.correct.shape == (8, 11) and arc.cost.shape == (8, 11)
    q = arc.queries[1]
    assert q.text == "Question 1?" and q.choices == ("dry palms", "wet palms", "oily palms", "lotion") and q.gold == "B"
    assert arc.answers(1, MODELS[6:9]) == ["C", None, "B"]
    resp = arc.responses.get(1, MODELS[8])
    assert resp.text == "B)" and resp.correct is True and resp.output_tokens >= 1
    assert np.isclose(arc.cost.sum(), 8 * 11 * 0.001)
    mbpp = load_routerbench("mbpp", tiny_routerbench, limit=2)
    assert len(mbpp.queries) == 2 and mbpp.answers(0, MODELS[:1]) == ["def add(a, b):\n    return a + b"]
    assert mbpp.correct[:, :6].all() and not mbpp.correct[:, 6:].any()


def test_bad_inputs(tiny_routerbench: Path, tmp_path: Path) -> None:
    with pytest.raises(WorkloadError, match="unknown RouterBench task"):
        load_routerbench("hellaswag", tiny_routerbench)
    with pytest.raises(WorkloadError, match="not found"):
        load_routerbench("mbpp", tmp_path / "nowhere")
    (tmp_path / "arc_challenge_train.csv").write_text("sample_id,prompt\nx,y\n")
    with pytest.raises(WorkloadError, match="lacks columns"):
        load_routerbench("arc-challenge", tmp_path)
    arc = load_routerbench("arc-challenge", tiny_routerbench)
    with pytest.raises(WorkloadError, match="no model"):
        arc.model_index("gpt-5")


@pytest.mark.parametrize(("task", "rows"), [("arc-challenge", 1039), ("winogrande", 887), ("mbpp", 299)])
def test_real_files(task: str, rows: int) -> None:
    root = default_data_dir()
    if not root.is_dir():
        pytest.skip(f"RouterBench answers not present at {root} (set MOSAIC_SHARED_DATA or place ../shared/data)")
    t = load_routerbench(task, root)
    assert len(t.queries) == rows and len(t.responses) == rows * len(MODELS)
    acc = t.correct.mean(axis=0)
    assert acc[t.model_index("gpt-4-1106-preview")] == acc.max()  # the documented stand-in aggregator is the best
    assert (t.cost >= 0).all()
