"""From a config to (Workload, Responses): questions, skill routing, the aggregator, ground-truth responses."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np

from mosaic.core.config import ExpertCfg, RunConfig
from mosaic.core.errors import ConfigError, WorkloadError
from mosaic.core.trace import RequestRecord, read_trace
from mosaic.core.types import Expert, ExpertKind, Query, Response, Responses, Workload
from mosaic.workloads.arrivals import arrival_times
from mosaic.workloads.presets import PAPER_EXPERTS, Preset, get_preset
from mosaic.workloads.questions import load_questions, shared_data_dir, synthetic_questions
from mosaic.workloads.registry import WORKLOADS
from mosaic.workloads.router import SkillRouter
from mosaic.workloads.synthetic import ResponseModel, difficulty_parts, synthesize

AGGREGATOR_SUFFIX = "@agg"  # the aggregator is its own Expert entry: same model, distinct name in traces and costs
BYTES_PER_PARAM = 2.0  # bf16 weights


def aggregator_name(expert: str) -> str:
    return f"{expert}{AGGREGATOR_SUFFIX}"


def expert_cfgs(cfg: RunConfig) -> tuple[ExpertCfg, ...]:
    """The configured experts, or the paper's six."""
    experts = tuple(cfg.workload.experts or PAPER_EXPERTS)
    names = [e.name for e in experts]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ConfigError(f"workload.experts: duplicate expert names {dup}")
    return experts


def to_expert(e: ExpertCfg, name: str | None = None) -> Expert:
    memory = e.memory_gb if e.memory_gb is not None else e.params_b * BYTES_PER_PARAM
    return Expert(name or e.name, e.model_id, e.params_b, ExpertKind(e.kind), memory)


def _aggregator(cfg: RunConfig, preset: Preset, experts: Sequence[ExpertCfg]) -> ExpertCfg:
    name = cfg.workload.aggregator or preset.aggregator
    for e in experts:
        if e.name == name:
            return e
    if cfg.workload.aggregator is None:
        return max(experts, key=lambda e: e.params_b)  # custom experts without the preset's aggregator
    raise ConfigError(f"workload.aggregator {name!r} is not one of the experts {[e.name for e in experts]}")


def _questions(cfg: RunConfig, preset: Preset, rng: np.random.Generator) -> tuple[Query, ...]:
    n = cfg.workload.num_queries or preset.num_queries
    source = cfg.workload.questions.strip()
    if source == "auto":
        shared = shared_data_dir() / "questions" / (preset.questions_file or "")
        source = str(shared) if preset.questions_file and shared.is_file() else "synthetic"
    if source == "synthetic":
        return synthetic_questions(n, preset.domains, preset.n_choices, rng)
    domain = preset.domains[0] if len(preset.domains) == 1 else "general"
    explicit = cfg.workload.questions.strip() not in ("auto", "synthetic")
    if explicit and cfg.workload.num_queries is None:
        return load_questions(Path(source), default_domain=domain)  # a custom file: all of its questions
    qs = load_questions(Path(source), limit=n, default_domain=domain)
    if len(qs) < n:
        raise ConfigError(f"workload.num_queries = {n} but {source} holds only {len(qs)} questions")
    return qs


def _arrivals(queries: tuple[Query, ...], cfg: RunConfig, rng: np.random.Generator) -> tuple[Query, ...]:
    w = cfg.workload
    if w.arrival_rate is None:
        return queries
    times = arrival_times(len(queries), w.arrival_rate, rng, w.arrival_process, w.arrival_cv, w.arrival_trace)
    return tuple(replace(q, arrival=float(t)) for q, t in zip(queries, times, strict=True))


def build_workload(cfg: RunConfig, rng: np.random.Generator) -> tuple[Workload, Responses]:
    """The configured workload and its ground-truth responses; same config and rng state -> same result."""
    preset = get_preset(cfg.workload.preset)
    ecfgs = expert_cfgs(cfg)
    agg_cfg = _aggregator(cfg, preset, ecfgs)
    q_rng, route_rng, resp_rng, arr_rng = _streams(rng)
    queries = _arrivals(_questions(cfg, preset, q_rng), cfg, arr_rng)
    names = [e.name for e in ecfgs]
    router = SkillRouter.build(names, preset.skills, [q.domain for q in queries], cfg.workload.k, cfg.workload.skew,
                               route_rng)  # fmt: skip
    routes = router.route(queries, route_rng)
    experts = tuple(to_expert(e) for e in ecfgs)
    aggregator = to_expert(agg_cfg, aggregator_name(agg_cfg.name))
    overhead = {e.name: e.system_prompt_tokens for e in ecfgs}
    workload = Workload.build(preset.name if cfg.workload.preset != "custom" else cfg.name, queries, experts,
                              routes, aggregator, overhead)  # fmt: skip
    if cfg.responses.model == "recorded":
        return workload, recorded_responses(cfg.responses.path, workload)
    return workload, synthesize(workload, expert_means(cfg, workload), response_model(cfg, workload), resp_rng)


def _streams(rng: np.random.Generator) -> list[np.random.Generator]:
    """The generators of :func:`build_workload`: questions, routing, responses, arrivals."""
    return rng.spawn(4)


def response_model(cfg: RunConfig, workload: Workload) -> ResponseModel:
    """The synthetic response model of ``cfg``'s preset (the aggregator takes its base expert's accuracy)."""
    preset = get_preset(cfg.workload.preset)
    base = workload.aggregator.name.removesuffix(AGGREGATOR_SUFFIX)
    accuracy = {**preset.accuracy, workload.aggregator.name: preset.accuracy.get(base, 0.8)}
    return ResponseModel(accuracy=accuracy, difficulty=preset.difficulty)


def synthetic_difficulty(cfg: RunConfig, workload: Workload, rng: np.random.Generator) -> tuple[np.ndarray, ...]:
    """The (visible, hidden) difficulty parts of ``workload``'s queries that :func:`build_workload` drew for its
    synthetic responses, given ``rng`` in the state ``build_workload`` got it (for analysis: what an ideal length
    predictor could know). Raises ConfigError for recorded responses, which have no such difficulty."""
    if cfg.responses.model == "recorded":
        raise ConfigError("synthetic_difficulty: the config's responses are recorded, not synthetic")
    return difficulty_parts(workload.queries, response_model(cfg, workload), _streams(rng)[2])


def expert_means(cfg: RunConfig, workload: Workload) -> dict[str, float]:
    """Expert (and aggregator) name -> profiled mean output tokens, the paper's per-model cost input."""
    by_name = {e.name: e.mean_output_tokens for e in expert_cfgs(cfg)}
    means = {e.name: by_name[e.name] for e in workload.experts}
    base = workload.aggregator.name.removesuffix(AGGREGATOR_SUFFIX)
    means[workload.aggregator.name] = by_name.get(base, max(means.values()))
    return means


def recorded_responses(path: str | None, workload: Workload) -> Responses:
    """Responses replayed from a JSONL trace of an earlier run of the same workload (``responses.path``)."""
    if not path:
        raise ConfigError("responses.model is 'recorded' but responses.path is not set")
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"responses.path {p} does not exist")
    table: dict[tuple[int, str], Response] = {}
    for rec in read_trace(p):
        if isinstance(rec, RequestRecord):
            table[(rec.query_id, rec.expert)] = Response(rec.output_tokens, rec.answer, rec.correct, rec.text)
    needed = [(r.query_id, r.expert) for r in workload.requests]
    needed += [(q.id, workload.aggregator.name) for q in workload.queries]
    missing = [k for k in needed if k not in table]
    if missing:
        raise WorkloadError(f"recorded responses {p} lack {len(missing)} of {len(needed)} (query, expert) pairs "
                            f"of workload {workload.name!r}, e.g. {missing[:3]}")  # fmt: skip
    return Responses(table)


for _name, _help in (
    ("mmlu_pro", "MMLU-Pro test, 2100 questions, aggregator LlamaR1"),
    ("medmcqa", "MedMCQA test, 4183 questions, aggregator EXAONE"),
    ("gpqa", "GPQA diamond, 198 questions, aggregator QwenR1"),
    ("custom", "any JSONL/JSON/CSV question file (workload.questions) with configured experts"),
):
    WORKLOADS.register(_name, help=_help)(get_preset)
