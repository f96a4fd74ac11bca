"""Moved to :mod:`mosaic.core.prompts` (below the workloads and agents that use it); re-exported here for the
runtime's callers."""

from mosaic.core.prompts import (
    CHOICE_FORMAT,
    MOA_SYSTEM_PROMPT,
    NUMERIC_FORMAT,
    AggregatorPrompt,
    build_aggregator_prompt,
    estimate_tokens,
)

__all__ = [
    "CHOICE_FORMAT",
    "MOA_SYSTEM_PROMPT",
    "NUMERIC_FORMAT",
    "AggregatorPrompt",
    "build_aggregator_prompt",
    "estimate_tokens",
]
