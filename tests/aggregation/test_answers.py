"""Answer extraction: choice letters, boxed and numeric answers, code, explicit "no answer"."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mosaic.aggregation.answers import (
    LETTERS,
    AnswerKind,
    extract_answer,
    extract_boxed,
    extract_choice,
    extract_code,
    extract_number,
    normalize_code,
    normalize_number,
    unwrap_list_string,
)
from mosaic.core.errors import WorkloadError


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("The answer is (C).", "C"),
        ("Let me think... so the answer is B", "B"),
        ("Answer: D", "D"),
        ("answer:\n(A)", "A"),
        ("A", "A"),
        ("B\n", "B"),
        ("['C\\n']", "C"),
        ("(A)", "A"),
        ("A)", "A"),
        ("D) eyeglasses", "D"),
        ("A. Stay with a classmate", "A"),
        ("D (", "D"),
        ("**B**", "B"),
        ("[C]", "C"),
        ("Therefore \\boxed{B}", "B"),
        ("Option D is right.", "D"),
        ("Reasoning first.\nThen more.\nC", "C"),
        ("The answer is (A). Wait, no: the answer is (B).", "B"),
    ],
)
def test_choice_letters(text: str, expected: str) -> None:
    assert extract_choice(text, 4) == expected


@pytest.mark.parametrize(
    "text",
    ["I do not know", "Unfortunately I cannot", "A questioning mind", "A chart", "There is", "", "   ", "E", "G\n",
     "The answer is a bit unclear", "answer: e"],
)  # fmt: skip
def test_no_choice_answer(text: str) -> None:
    assert extract_choice(text, 4) is None


def test_option_count_awareness() -> None:
    assert extract_choice("E", 4) is None
    assert extract_choice("E", 5) == "E"
    assert extract_choice("The answer is (J)", 10) == "J"
    assert extract_choice("The answer is (J)", 4) is None
    assert extract_choice("I do", 10) is None  # pronoun, not option I
    with pytest.raises(WorkloadError, match="n_options"):
        extract_choice("A", 0)


def test_choice_by_option_text() -> None:
    choices = ["a chart", "a graph", "a diagram", "a map"]
    assert extract_choice("A chart", 4, choices) == "A"
    assert extract_choice("a graph.", 4, choices) == "B"
    assert extract_choice("Rober", 2, ["Robert", "Maria"]) == "A"  # truncated prefix of exactly one option
    assert extract_choice("Ma", 2, ["Robert", "Maria"]) is None  # too short to trust
    assert extract_choice("Sediment", 4, choices) is None


TEMPLATES = ["{}", "({})", "{})", "{}.", "The answer is ({}).", "Answer: {}", "**{}**", "\\boxed{{{}}}", "x\n\n{}"]


@given(st.integers(1, 26).flatmap(lambda n: st.tuples(st.just(n), st.integers(0, n - 1))), st.sampled_from(TEMPLATES))
def test_any_valid_letter_in_any_template(n_and_i: tuple[int, int], template: str) -> None:
    n, i = n_and_i
    assert extract_choice(template.format(LETTERS[i]), n) == LETTERS[i]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("so she has 18 left.\n#### 18", "18"),
        ("#### 1,234", "1234"),
        ("The total is \\boxed{42}.", "42"),
        ("\\boxed{\\frac{1}{2}}", "0.5"),
        ("\\boxed{-\\dfrac{3}{4}}", "-0.75"),
        ("\\boxed{1{,}000}", "1000"),
        ("The answer is $7.50.", "7.5"),
        ("first 3 then 4.0", "4"),
        ("no digits here", None),
        (None, None),
    ],
)
def test_numeric(text: str | None, expected: str | None) -> None:
    assert extract_number(text) == expected


def test_boxed_nested_and_truncated() -> None:
    assert extract_boxed("x \\boxed{1} then \\boxed{\\frac{a}{b}}") == "\\frac{a}{b}"
    assert extract_boxed("\\boxed{\\frac{1}{2") is None
    assert extract_boxed("no box") is None
    assert extract_boxed("\\boxed{ }") is None


def test_normalize_number() -> None:
    assert normalize_number("$1,000.00") == "1000"
    assert normalize_number("50%") == "50"
    assert normalize_number("abc") is None
    assert normalize_number("nan") is None


@given(st.integers(-(10**9), 10**9))
def test_integer_round_trip(n: int) -> None:
    assert extract_number(f"#### {n:,}") == str(n)
    assert extract_number(f"... so the answer is \\boxed{{{n}}}") == str(n)


def test_code_extraction_and_normalisation() -> None:
    fenced = "Here:\n```python\ndef f(x):\n    '''doc'''\n    # add one\n    return x+1\n```\nDone."
    tagged = " \n[PYTHON]\ndef f(x):\n    return x + 1\n[/PYTHON]\n[TESTS]\nassert f(1) == 2"
    assert extract_code(fenced).startswith("def f(x):")
    assert normalize_code(fenced) == normalize_code(tagged) == "def f(x):\n    return x + 1"
    assert extract_code("```python\ndef g():\n    return 1") == "def g():\n    return 1"  # truncated fence
    assert extract_code("Sorry, I cannot write that.") is None
    assert normalize_code("```python\ndef broken(:\n  pass # x\n```") == "def broken(:\npass"


def test_dispatch_and_unwrap() -> None:
    assert unwrap_list_string("['A\\n']") == "A\n"
    assert unwrap_list_string("[not a list") == "[not a list"
    assert extract_answer("#### 5", AnswerKind.NUMERIC) == "5"
    assert extract_answer("\\boxed{x^2}", "boxed") == "x^2"
    assert extract_answer("(B)", "choice", 2) == "B"
    assert extract_answer("  hello ", "text") == "hello"
    assert extract_answer(None, "text") is None
    with pytest.raises(WorkloadError, match="unknown answer kind"):
        extract_answer("A", "letters")
