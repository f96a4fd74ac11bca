"""The aggregator's Mixture-of-Agents synthesis prompt, and a token estimate for scheduling it.

Structure as in Mixture-of-Agents (Wang et al., 2024, "Aggregate-and-Synthesize"): a system prompt that asks the
aggregator to critically synthesise the experts' responses, followed by the numbered responses; the question goes
in the user turn. The wording here is our own.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from mosaic.core.errors import WorkloadError

MOA_SYSTEM_PROMPT = (
    "You are given several responses that different models wrote to the user's latest question. "
    "Synthesise them into one answer of the highest quality. Judge each response critically: some of them may be "
    "wrong, incomplete or biased. Do not merely copy one of them; give a refined, accurate and complete reply that "
    "is well organised and coherent."
)

CHOICE_FORMAT = 'Finish with the sentence "The answer is (X)", where X is the letter of the correct option.'
NUMERIC_FORMAT = 'Finish with "#### N", where N is the final numeric answer.'


def estimate_tokens(text: str) -> int:
    """Rough token count for scheduling: ~4 characters per token, at least one per word; 0 for empty text."""
    if not text:
        return 0
    return max(len(text.split()), -(-len(text) // 4))


@dataclass(frozen=True, slots=True)
class AggregatorPrompt:
    """A chat prompt for the aggregator: system turn (instructions + numbered responses) and user turn."""

    system: str
    user: str

    def messages(self) -> list[dict[str, str]]:
        """OpenAI/vLLM chat messages."""
        return [{"role": "system", "content": self.system}, {"role": "user", "content": self.user}]

    @property
    def text(self) -> str:
        """Both turns as one plain string (for engines without a chat template)."""
        return f"{self.system}\n\n{self.user}"

    def tokens(self, count: Callable[[str], int] = estimate_tokens) -> int:
        """Prompt length in tokens (``count``: a tokenizer's length function; default: the rough estimate)."""
        return count(self.system) + count(self.user)


def build_aggregator_prompt(
    question: str,
    responses: Sequence[str],
    system: str = MOA_SYSTEM_PROMPT,
    answer_format: str | None = None,
) -> AggregatorPrompt:
    """System prompt + "Responses from models:" numbered 1..k + the question (and an optional answer format line).

    Raises :class:`WorkloadError` when there is no response to aggregate.
    """
    if not responses:
        raise WorkloadError("aggregator prompt needs at least one expert response")
    numbered = "\n\n".join(f"{i}. {r.strip()}" for i, r in enumerate(responses, start=1))
    system_text = f"{system}\n\nResponses from models:\n\n{numbered}"
    user = question.strip() if answer_format is None else f"{question.strip()}\n\n{answer_format}"
    return AggregatorPrompt(system_text, user)
