"""Moved to :mod:`mosaic.core.answers` (below the workloads and agents that use it); re-exported here for the
runtime's callers."""

from mosaic.core.answers import (
    LETTERS,
    MAX_OPTIONS,
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

__all__ = [
    "LETTERS",
    "MAX_OPTIONS",
    "AnswerKind",
    "extract_answer",
    "extract_boxed",
    "extract_choice",
    "extract_code",
    "extract_number",
    "normalize_code",
    "normalize_number",
    "unwrap_list_string",
]
