"""The MoA aggregator prompt and its token estimate."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mosaic.aggregation.prompts import CHOICE_FORMAT, MOA_SYSTEM_PROMPT, build_aggregator_prompt, estimate_tokens
from mosaic.core.errors import WorkloadError


def test_prompt_numbers_every_response_in_order() -> None:
    p = build_aggregator_prompt("What is 2+2?\nA) 3\nB) 4", ["  The answer is (B).", "B", "I think A"])
    assert p.system.startswith(MOA_SYSTEM_PROMPT)
    body = p.system.split("Responses from models:", 1)[1]
    assert body.index("1. The answer is (B).") < body.index("2. B") < body.index("3. I think A")
    assert p.user == "What is 2+2?\nA) 3\nB) 4"
    assert p.messages() == [{"role": "system", "content": p.system}, {"role": "user", "content": p.user}]
    assert p.text == f"{p.system}\n\n{p.user}"


def test_answer_format_and_custom_system() -> None:
    p = build_aggregator_prompt("Q?", ["x"], system="Be brief.", answer_format=CHOICE_FORMAT)
    assert p.system.startswith("Be brief.") and p.user.endswith(CHOICE_FORMAT)


def test_no_responses_is_an_error() -> None:
    with pytest.raises(WorkloadError, match="at least one"):
        build_aggregator_prompt("Q?", [])


def test_token_estimate() -> None:
    assert estimate_tokens("") == 0
    assert estimate_tokens("a b c d") == 4  # one per word at least
    assert estimate_tokens("x" * 400) == 100  # ~4 characters per token
    p = build_aggregator_prompt("Q?", ["short"])
    assert p.tokens() == estimate_tokens(p.system) + estimate_tokens(p.user)
    assert p.tokens(len) == len(p.system) + len(p.user)  # a tokenizer's length function plugs in


@given(st.lists(st.text(min_size=1, max_size=200), min_size=1, max_size=6), st.text(max_size=200))
def test_more_responses_never_shorter(responses: list[str], extra: str) -> None:
    base = build_aggregator_prompt("Question?", responses).tokens()
    assert build_aggregator_prompt("Question?", [*responses, extra or "x"]).tokens() >= base
