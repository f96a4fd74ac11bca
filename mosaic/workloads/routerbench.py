"""RouterBench answers of 11 LLMs (ARC-challenge, Winogrande, MBPP) as queries + recorded responses.

The CSVs (``../shared/data/routerbench``, see its README) hold, per question, each model's raw response (a
Python-list-like string), its correctness (1.0/0.0, graded by RouterBench) and its API cost. Correctness is taken
from the file as is; the extracted answer is ours (:mod:`mosaic.aggregation.answers`).
"""

from __future__ import annotations

import csv
import os
import re
import sys
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mosaic.aggregation.answers import AnswerKind, extract_answer, unwrap_list_string
from mosaic.aggregation.prompts import estimate_tokens
from mosaic.core.errors import WorkloadError
from mosaic.core.types import Query, Response, Responses

MODELS: tuple[str, ...] = (
    "WizardLM/WizardLM-13B-V1.2",
    "claude-instant-v1",
    "claude-v1",
    "claude-v2",
    "gpt-3.5-turbo-1106",
    "gpt-4-1106-preview",
    "meta/code-llama-instruct-34b-chat",
    "meta/llama-2-70b-chat",
    "mistralai/mistral-7b-chat",
    "mistralai/mixtral-8x7b-chat",
    "zero-one-ai/Yi-34B-Chat",
)


@dataclass(frozen=True, slots=True)
class TaskSpec:
    """Where a RouterBench task lives and what kind of answer it expects."""

    file: str  # CSV file name inside the routerbench directory
    kind: AnswerKind


TASKS: Mapping[str, TaskSpec] = {
    "arc-challenge": TaskSpec("arc_challenge_train.csv", AnswerKind.CHOICE),
    "winogrande": TaskSpec("winograde_train.csv", AnswerKind.CHOICE),
    "mbpp": TaskSpec("mbpp_train.csv", AnswerKind.CODE),
}


@dataclass(frozen=True, slots=True, eq=False)
class RouterBenchTask:
    """One task: queries, the models that answered, and every (query, model) response.

    ``correct`` and ``cost`` are arrays aligned with ``queries`` x ``models`` for vectorised experiments; the same
    facts are in ``responses`` (core :class:`Responses`, keyed by (query id, model name)).
    """

    name: str
    kind: AnswerKind
    queries: tuple[Query, ...]
    models: tuple[str, ...]
    responses: Responses  # (query id, model) -> text, extracted answer, correctness, estimated output tokens
    correct: np.ndarray  # bool (n_queries, n_models): RouterBench's grading
    cost: np.ndarray  # float (n_queries, n_models): API cost in USD
    sample_ids: tuple[str, ...]  # query id -> RouterBench sample_id

    def model_index(self, model: str) -> int:
        """Column of ``model`` in ``correct``/``cost``."""
        try:
            return self.models.index(model)
        except ValueError:
            raise WorkloadError(f"task {self.name!r} has no model {model!r}; valid: {list(self.models)}") from None

    def answers(self, query_id: int, models: Sequence[str]) -> list[str | None]:
        """Extracted answers of ``models`` to one query, in the given order."""
        return [self.responses.get(query_id, m).answer for m in models]

    def texts(self, query_id: int, models: Sequence[str]) -> list[str]:
        """Raw response texts of ``models`` to one query."""
        return [self.responses.get(query_id, m).text or "" for m in models]


def default_data_dir() -> Path:
    """``$MOSAIC_SHARED_DATA/routerbench``, else ``<repo>/../shared/data/routerbench``."""
    env = os.environ.get("MOSAIC_SHARED_DATA")
    base = Path(env) if env else Path(__file__).resolve().parents[2].parent / "shared" / "data"
    return base / "routerbench"


def parse_prompt(prompt: str) -> tuple[str, tuple[str, ...]]:
    """RouterBench prompt (a list-like string of few-shot text) -> (last question, its option texts).

    The few-shot examples come first; the question asked is the last block. Options are its ``X) text`` lines.
    """
    blocks = unwrap_list_string(prompt).split("\n\n")
    last = next((b for b in reversed(blocks) if b.strip()), "")
    options: list[str] = []
    question: list[str] = []
    for line in last.splitlines():
        m = re.match(r"^([A-Z])\)\s?(.*)$", line)
        if m and m.group(1) == chr(ord("A") + len(options)):
            options.append(m.group(2).strip())
        elif not options:
            question.append(line)
    return "\n".join(question).strip(), tuple(options)


def derive_gold(answers: Sequence[str | None], correct: Sequence[bool]) -> str | None:
    """The gold answer implied by the grading: the most common answer among correct models (ties -> None)."""
    counts = Counter(a for a, c in zip(answers, correct, strict=True) if c and a is not None)
    top = counts.most_common(2)
    if not top or (len(top) == 2 and top[0][1] == top[1][1]):
        return None
    return top[0][0]


def _read_rows(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        raise WorkloadError(f"RouterBench file not found: {path} (set MOSAIC_SHARED_DATA or pass data_dir)")
    csv.field_size_limit(sys.maxsize)
    with path.open(encoding="utf-8", newline="") as fh:
        rows = list(csv.DictReader(fh))
    if not rows:
        raise WorkloadError(f"RouterBench file {path} has no rows")
    missing = [f"{m}|model_response" for m in MODELS if f"{m}|model_response" not in rows[0]]
    if missing:
        raise WorkloadError(f"RouterBench file {path} lacks columns {missing[:3]}")
    return rows


def _float(row: dict[str, str], col: str, path: Path, i: int) -> float:
    try:
        return float(row[col] or "nan")
    except (KeyError, ValueError):
        raise WorkloadError(f"{path.name} row {i}: column {col!r} is not a number: {row.get(col)!r}") from None


def load_routerbench(task: str, data_dir: str | Path | None = None, limit: int | None = None) -> RouterBenchTask:
    """Load one task (``arc-challenge``, ``winogrande``, ``mbpp``) with answers extracted and gold derived."""
    if task not in TASKS:
        raise WorkloadError(f"unknown RouterBench task {task!r}; valid: {sorted(TASKS)}")
    spec = TASKS[task]
    path = Path(data_dir or default_data_dir()) / spec.file
    rows = _read_rows(path)[:limit]
    queries, table, sample_ids = [], {}, []
    correct = np.zeros((len(rows), len(MODELS)), dtype=bool)
    cost = np.zeros((len(rows), len(MODELS)))
    for i, row in enumerate(rows):
        question, choices = parse_prompt(row["prompt"])
        answers = []
        for j, m in enumerate(MODELS):
            text = unwrap_list_string(row[f"{m}|model_response"])
            correct[i, j] = _float(row, m, path, i) >= 0.5
            cost[i, j] = _float(row, f"{m}|total_cost", path, i)
            answers.append(extract_answer(text, spec.kind, len(choices) or 4, choices))
            table[(i, m)] = Response(estimate_tokens(text), answers[-1], bool(correct[i, j]), text)
        gold = derive_gold(answers, list(correct[i])) if spec.kind is AnswerKind.CHOICE else None
        queries.append(Query(i, question, task, choices, gold, 0.0, estimate_tokens(question)))
        sample_ids.append(row.get("sample_id", str(i)))
    return RouterBenchTask(task, spec.kind, tuple(queries), MODELS, Responses(table), correct, cost, tuple(sample_ids))
