"""Trace records (every request, model load and aggregation decision) and JSONL IO, flushed per record."""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, fields
from pathlib import Path
from typing import IO, ClassVar

from mosaic.core.errors import MosaicError, TornLineWarning, TraceError

EXPERT_STAGE = "expert"
AGGREGATION_STAGE = "aggregation"


@dataclass(frozen=True, slots=True)
class RequestRecord:
    """One request served by a worker."""

    TYPE: ClassVar[str] = "request"
    stage: str  # "expert" | "aggregation"
    request_id: int
    query_id: int
    expert: str
    worker: int
    start: float  # seconds: admitted to the batch
    end: float  # seconds: last token
    prompt_tokens: int
    output_tokens: int
    answer: str | None = None  # extracted answer, when known
    correct: bool | None = None
    text: str | None = None  # response text (real backends)


_NEW, _SET = object.__new__, object.__setattr__


def request_record(
    stage: str, request_id: int, query_id: int, expert: str, worker: int, start: float, end: float,
    prompt_tokens: int, output_tokens: int, answer: str | None = None, correct: bool | None = None,
    text: str | None = None,
) -> RequestRecord:  # fmt: skip
    """``RequestRecord(...)`` for the simulator's hot path: the same frozen record, built ~25% faster (the generated
    ``__init__`` looks ``object.__setattr__`` up once per field; tests check both give equal records)."""
    rec = _NEW(RequestRecord)
    _SET(rec, "stage", stage)
    _SET(rec, "request_id", request_id)
    _SET(rec, "query_id", query_id)
    _SET(rec, "expert", expert)
    _SET(rec, "worker", worker)
    _SET(rec, "start", start)
    _SET(rec, "end", end)
    _SET(rec, "prompt_tokens", prompt_tokens)
    _SET(rec, "output_tokens", output_tokens)
    _SET(rec, "answer", answer)
    _SET(rec, "correct", correct)
    _SET(rec, "text", text)
    return rec


@dataclass(frozen=True, slots=True)
class LoadRecord:
    """One model load on a worker."""

    TYPE: ClassVar[str] = "load"
    stage: str
    worker: int
    expert: str
    start: float
    end: float


@dataclass(frozen=True, slots=True)
class AggregationRecord:
    """Whether a query's aggregator call ran or was skipped, and the final answer."""

    TYPE: ClassVar[str] = "aggregation"
    query_id: int
    confidence: float  # share of experts giving the most common answer
    skipped: bool
    answer: str | None = None
    correct: bool | None = None


Record = RequestRecord | LoadRecord | AggregationRecord
RECORD_TYPES: tuple[type, ...] = (RequestRecord, LoadRecord, AggregationRecord)  # every record a trace holds
_TYPES: dict[str, type] = {c.TYPE: c for c in RECORD_TYPES}


_FIELDS: dict[type, tuple[str, ...]] = {}


def record_to_dict(rec: Record) -> dict:
    """``{"type": ..., field: value, ...}`` (records are flat, so no deep copy as ``asdict`` would make)."""
    cls = type(rec)
    names = _FIELDS.get(cls)
    if names is None:
        names = _FIELDS[cls] = tuple(f.name for f in fields(cls))
    return {"type": rec.TYPE, **{n: getattr(rec, n) for n in names}}


def record_from_dict(d: dict) -> Record:
    d = dict(d)
    kind = d.pop("type", None)
    if kind not in _TYPES:
        raise MosaicError(f"trace record has unknown type {kind!r}; valid: {sorted(_TYPES)}")
    cls = _TYPES[kind]
    names = {f.name for f in fields(cls)}
    return cls(**{k: v for k, v in d.items() if k in names})


def record_key(rec: Record) -> tuple | None:
    """What a trace holds at most once: a request of a stage, a query's aggregation decision (loads: no key)."""
    if isinstance(rec, RequestRecord):
        return ("request", rec.stage, rec.request_id)
    if isinstance(rec, AggregationRecord):
        return ("aggregation", rec.query_id)
    return None


def finished_requests(records: Iterable[Record]) -> dict[tuple[str, int], RequestRecord]:
    """(stage, request id) -> the request's record among ``records`` (the last one wins)."""
    return {(r.stage, r.request_id): r for r in records if isinstance(r, RequestRecord)}


class TraceWriter:
    """Appends records to a JSONL file, one line each, flushed as written.

    ``resume=True`` continues an interrupted run's trace: a torn last line is cut off first (with a
    :class:`TornLineWarning`), the records already there are :attr:`prior`, and a request or decision that is
    already there is not written again, so the finished trace holds each exactly once.
    """

    def __init__(self, path: str | Path | None, meta: dict | None = None, resume: bool = False) -> None:
        self.path = Path(path) if path else None
        self.records: list[Record] = []
        self.prior: tuple[Record, ...] = ()
        self._seen: set[tuple] = set()
        self._fh: IO[str] | None = None
        if resume:
            if self.path is None or not self.path.is_file():
                raise TraceError(f"cannot resume: trace {self.path} does not exist")
            repair_torn_tail(self.path)
            self.prior = tuple(read_trace(self.path))
            self._seen = {k for r in self.prior if (k := record_key(r)) is not None}
        if self.path:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fh = self.path.open("a", encoding="utf-8")
            if meta is not None:
                self._write({"type": "meta", **meta})

    def _write(self, d: dict) -> None:
        if self._fh:
            self._fh.write(json.dumps(d) + "\n")  # the default encoder is cached; keys keep field order
            self._fh.flush()

    def write(self, rec: Record) -> None:
        if self._seen and record_key(rec) in self._seen:
            return  # finished before the interruption: its record is already in the trace
        self.records.append(rec)
        if self._fh:
            self._write(record_to_dict(rec))

    def extend(self, recs: Iterable[Record]) -> None:
        for r in recs:
            self.write(r)

    def close(self) -> None:
        if self._fh:
            self._fh.close()
            self._fh = None

    def __enter__(self) -> TraceWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _torn(path: Path, line: int, text: str) -> TornLineWarning:
    return TornLineWarning(f"{path}: line {line} is cut short (a crash mid-write?); it is ignored: {text[:60]!r}")


def read_jsonl(path: str | Path) -> Iterator[dict]:
    """The JSON objects of a JSONL file (:func:`numbered_jsonl` without the line numbers)."""
    for _, d in numbered_jsonl(path):
        yield d


def numbered_jsonl(path: str | Path) -> Iterator[tuple[int, dict]]:
    """(line number, JSON object) of a JSONL file, one per non-empty line. A line that is not a JSON object raises
    :class:`TraceError` naming the file and line, except a torn last line (a crash mid-write), which is skipped
    with a :class:`TornLineWarning` (an error under ``warnings.simplefilter("error", TornLineWarning)``)."""
    p = Path(path)
    try:
        lines = p.read_text(encoding="utf-8").split("\n")  # not splitlines: JSON strings may hold U+2028 etc.
    except (OSError, UnicodeDecodeError) as err:
        raise TraceError(f"cannot read {p}: {err}") from None
    last = max((i for i, line in enumerate(lines) if line.strip()), default=-1)
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            d = json.loads(line)
        except json.JSONDecodeError as err:
            if i == last:
                warnings.warn(_torn(p, i + 1, line), stacklevel=3)
                return
            raise TraceError(f"{p}: line {i + 1} is not valid JSON ({err.msg} at column {err.colno})") from None
        if not isinstance(d, dict):
            raise TraceError(f"{p}: line {i + 1} is not a JSON object (got {type(d).__name__})")
        yield i + 1, d


def repair_torn_tail(path: str | Path) -> bool:
    """Cut a torn last line off a JSONL file (with a :class:`TornLineWarning`) so that appending to it gives valid
    lines; a complete last line without its newline gets one. True when something was cut."""
    p = Path(path)
    data = p.read_bytes()
    if not data or data.endswith(b"\n"):
        return False
    cut = data.rfind(b"\n") + 1
    tail = data[cut:].decode("utf-8", errors="replace")
    try:
        json.loads(tail)
    except json.JSONDecodeError:
        warnings.warn(_torn(p, data.count(b"\n") + 1, tail), stacklevel=2)
        with p.open("r+b") as fh:
            fh.truncate(cut)
        return True
    with p.open("ab") as fh:
        fh.write(b"\n")
    return False


def read_trace(path: str | Path) -> Iterator[Record]:
    """Records of a JSONL trace (meta lines skipped; :func:`read_jsonl` says how bad lines are treated)."""
    for line, d in numbered_jsonl(path):
        if d.get("type") == "meta":
            continue
        try:
            yield record_from_dict(d)
        except (MosaicError, TypeError) as err:  # an unknown type, a missing field
            raise TraceError(f"{path}: line {line} is not a trace record: {err}") from None
