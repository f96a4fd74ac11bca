"""Question sources: a generic JSONL/JSON/CSV loader, the real benchmark texts beside the project, and a packaged
synthetic fallback so every workload runs without any data files."""

from __future__ import annotations

import csv
import json
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np

from mosaic.aggregation.prompts import estimate_tokens
from mosaic.core.errors import WorkloadError
from mosaic.core.types import Query

TEXT_KEYS = ("question", "text", "prompt", "query", "input")
GOLD_KEYS = ("gold_answer", "gold", "answer", "label")
DOMAIN_KEYS = ("category", "domain", "subject", "topic")
CHOICE_KEYS = ("choices", "options")
_OPTION = re.compile(r"\(([A-Z])\)\s*")


def shared_data_dir() -> Path:
    """``$MOSAIC_SHARED_DATA``, else ``<repo>/../shared/data`` (may not exist)."""
    env = os.environ.get("MOSAIC_SHARED_DATA")
    return Path(env) if env else Path(__file__).resolve().parents[3] / "shared" / "data"


def split_options(text: str) -> tuple[str, ...]:
    """Option texts of a question written as ``... The options are: (A) x (B) y``; () when it has none."""
    parts = _OPTION.split(text)
    if len(parts) < 5:  # stem + at least two (letter, text) pairs
        return ()
    return tuple(p.strip() for p in parts[2::2])


def _first(row: Mapping, keys: Sequence[str]) -> object | None:
    for k in keys:
        if k in row and row[k] not in (None, ""):
            return row[k]
    return None


def query_from_row(i: int, row: Mapping, source: str, default_domain: str = "general") -> Query:
    """Query ``i`` from one record; the text field is required, the rest optional."""
    if not isinstance(row, Mapping):
        raise WorkloadError(f"{source}: record {i} is a {type(row).__name__}, expected an object")
    text = _first(row, TEXT_KEYS)
    if not isinstance(text, str) or not text.strip():
        raise WorkloadError(f"{source}: record {i} has no question text (one of {', '.join(TEXT_KEYS)})")
    raw_choices = _first(row, CHOICE_KEYS)
    if isinstance(raw_choices, str):
        raw_choices = json.loads(raw_choices) if raw_choices.startswith("[") else raw_choices.split("|")
    choices = tuple(str(c) for c in raw_choices) if raw_choices else split_options(text)
    gold = _first(row, GOLD_KEYS)
    domain = str(_first(row, DOMAIN_KEYS) or default_domain)
    return Query(i, text.strip(), domain, choices, None if gold is None else str(gold).strip(),
                 prompt_tokens=estimate_tokens(text))  # fmt: skip


def _records(path: Path) -> Iterable[Mapping]:
    suffix = path.suffix.lower()
    if suffix == ".csv":
        csv.field_size_limit(1 << 30)
        with path.open(encoding="utf-8", newline="") as fh:
            yield from csv.DictReader(fh)
        return
    text = path.read_text(encoding="utf-8")
    if suffix == ".json":
        data = json.loads(text)
        if isinstance(data, Mapping):
            data = _first(data, ("data", "questions", "rows"))
        if not isinstance(data, list):
            raise WorkloadError(f"{path}: a JSON question file must hold a list of objects")
        yield from data
        return
    for n, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                yield json.loads(line)
            except json.JSONDecodeError as err:
                raise WorkloadError(f"{path}: line {n} is not valid JSON ({err.msg})") from None


def load_questions(path: str | Path, limit: int | None = None, default_domain: str = "general") -> tuple[Query, ...]:
    """Queries from a JSONL, JSON (list of objects) or CSV file with a ``question``/``text``/``prompt`` field and
    optional gold answer, choices (or ``(A) ... (B) ...`` options in the text) and category."""
    p = Path(path)
    if not p.is_file():
        raise WorkloadError(f"question file {p} does not exist")
    if p.suffix.lower() not in (".jsonl", ".json", ".csv"):
        raise WorkloadError(f"question file {p}: unsupported format {p.suffix!r}; use .jsonl, .json or .csv")
    out: list[Query] = []
    try:
        for i, row in enumerate(_records(p)):
            if limit is not None and i >= limit:
                break
            out.append(query_from_row(i, row, str(p), default_domain))
    except json.JSONDecodeError as err:
        raise WorkloadError(f"{p}: not valid JSON ({err.msg} at line {err.lineno})") from None
    if not out:
        raise WorkloadError(f"question file {p} holds no questions")
    return tuple(out)


_STEMS = (
    "Which of the following best explains {t} in {d}?",
    "A {d} problem: given what is known about {t}, which statement is correct?",
    "In {d}, which option is NOT true of {t}?",
    "Consider {t}. Under standard assumptions in {d}, what follows?",
)
_WORDS = (
    "mechanism", "rate", "structure", "response", "equilibrium", "pathway", "theory", "model", "limit",
    "process", "factor", "interaction", "principle", "effect", "measure", "system", "function", "cause",
)  # fmt: skip


def synthetic_questions(n: int, domains: Sequence[str], n_choices: int, rng: np.random.Generator) -> tuple[Query, ...]:
    """``n`` multiple-choice questions with realistic lengths, random domains and gold letters (the fallback when no
    real question texts are present)."""
    if n < 1:
        raise WorkloadError(f"synthetic questions: need n >= 1, got {n}")
    letters = [chr(ord("A") + i) for i in range(n_choices)]
    out = []
    for i in range(n):
        d = str(domains[int(rng.integers(len(domains)))])
        words = rng.choice(_WORDS, size=int(rng.integers(2, 5)))
        stem = _STEMS[int(rng.integers(len(_STEMS)))].format(t=" ".join(words), d=d)
        context = " ".join(rng.choice(_WORDS, size=int(rng.lognormal(3.0, 0.6))))
        options = tuple(" ".join(rng.choice(_WORDS, size=int(rng.integers(2, 9)))) for _ in letters)
        listed = " ".join(f"({c}) {o}" for c, o in zip(letters, options, strict=True))
        text = f"{context}. {stem} The options are: {listed}"
        gold = letters[int(rng.integers(n_choices))]
        out.append(Query(i, text, d, options, gold, prompt_tokens=estimate_tokens(text)))
    return tuple(out)
