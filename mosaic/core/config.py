"""The typed run configuration: YAML file + ``a.b=value`` overrides, validated into one tree.

Every invalid value raises one :class:`ConfigError` naming the field (``cluster.workers``) and why.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from mosaic.core.errors import ConfigError


class _Cfg(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ExpertCfg(_Cfg):
    """One expert LLM as the config names it."""

    name: str = Field(min_length=1, description="the name routes, plans and traces use")
    model_id: str = Field(min_length=1, description="hub id of the model (real engines load path, or this)")
    params_b: float = Field(gt=0, description="parameters, in billions")
    kind: Literal["instruct", "reasoning"] = Field(description="instruct (short answers) or reasoning (long)")
    memory_gb: float | None = Field(None, gt=0, description="GPU memory of the weights; default 2 bytes/param")
    mean_output_tokens: float = Field(gt=0, description="profiled mean output length (the paper's cost input)")
    system_prompt_tokens: int = Field(0, ge=0, description="tokens the expert's system prompt adds per request")
    path: str | None = Field(None, description="real engines: model folder or hub id (default: model_id)")
    temperature: float | None = Field(None, ge=0, description="real engines: sampling temperature (default: model's)")
    top_p: float | None = Field(None, gt=0, le=1, description="real engines: nucleus sampling (default: model's)")
    max_tokens: int | None = Field(None, gt=0, description="real engines: output cap (default: 4 x mean_output_tokens)")
    system_prompt: str | None = Field(None, description="real engines: the expert's system prompt")


class WorkloadCfg(_Cfg):
    """Which questions, which experts, how queries are routed."""

    preset: str = Field(
        "medmcqa",
        min_length=1,
        description="a registered workload (`mosaic list`): a paper preset (its size, experts and aggregator) or "
        "custom (experts given here); checked against the registry when the run is prepared",
    )
    num_queries: int | None = Field(None, gt=0, description="override the preset's size")
    questions: str = Field("auto", description="auto | synthetic | PATH to a JSONL/JSON/CSV question file")
    k: int = Field(3, gt=0, description="experts per query")
    skew: float = Field(1.0, ge=0, description="routing skew: 0 = uniform demand, larger = more skewed")
    experts: list[ExpertCfg] | None = Field(None, description="default: the preset's six paper experts")
    aggregator: str | None = Field(None, description="expert name of the aggregator; default: the preset's")
    arrival_rate: float | None = Field(None, gt=0, description="mean queries/s; default: all at t=0 (offline)")
    arrival_process: Literal["poisson", "gamma", "trace"] = Field("poisson", description="gaps between arrivals")
    arrival_cv: float = Field(1.0, gt=0, description="gamma: coefficient of variation of the gaps (1: Poisson)")
    arrival_trace: str | None = Field(None, description="trace: CSV with a TIMESTAMP column, time-scaled to the rate")

    @model_validator(mode="after")
    def _arrivals_are_complete(self) -> WorkloadCfg:
        if self.arrival_process == "trace" and not self.arrival_trace:
            raise ValueError("arrival_process 'trace' needs arrival_trace: a CSV with a TIMESTAMP column")
        if self.arrival_rate is None and (self.arrival_process != "poisson" or self.arrival_trace):
            raise ValueError(f"arrival_process {self.arrival_process!r} needs arrival_rate (mean queries/s)")
        return self


class ResponsesCfg(_Cfg):
    """Where the ground-truth answers and output lengths come from."""

    model: Literal["synthetic", "recorded"] = Field(
        "synthetic", description="synthetic (calibrated to the paper) or recorded answers and lengths (path)"
    )
    path: str | None = Field(None, description="recorded: JSONL trace or RouterBench-style CSV")


class ClusterCfg(_Cfg):
    workers: int = Field(4, gt=0, description="GPU workers (one engine each)")
    gpu_type: str = Field("A100-80GB", description="GPU type the cost profile prices (A100-80GB, H100-80GB, ...)")
    memory_gb: float = Field(80.0, gt=0, description="GPU memory per worker")


class CostsCfg(_Cfg):
    profile: str = Field("roofline", description="roofline | PATH to a CostProfile YAML/JSON")
    predictor: str = Field("mean", description="mean | linear | lightgbm:PATH")
    expected: bool = Field(
        False,
        description="price requests by their expected cost under the predictor's spread "
        "(mean:TRACE, lightgbm); default: at the predicted length",
    )
    step_model: Literal["sum", "max"] | None = Field(
        None,
        description="roofline profile: a decode step as the max of memory and compute time with KV bytes from the "
        "architecture (max, the default: calibrated against Vidur, docs/simulator_fidelity.md) or the sum of weight "
        "reads, compute, KV reads and a fixed overhead (sum, the model before issue 22); a profile file prices its "
        "steps itself (sum or unset only)",
    )
    memory_mode: Literal["reserve", "paged"] = Field(
        "paged",
        description="simulated engines' KV cache, for every profile (roofline or file): paged blocks as tokens are "
        "generated, preempting by recompute (paged, the default, as vLLM) or a request's prompt + output reserved up "
        "front (reserve, the model before issue 22)",
    )


class RuntimeCfg(_Cfg):
    backend: str = Field("sim", description="sim (discrete-event simulator) | vllm | ray (mosaic list)")
    max_batch: int = Field(256, gt=0, description="max concurrent sequences per engine")
    engine: dict[str, Any] = Field(
        default_factory=dict,
        description="real engines: settings for every expert "
        "(dtype, max_model_len, gpu_memory_utilization, enforce_eager, engine_args)",
    )
    co_resident: bool = Field(False, description="real engines: keep every expert a worker serves loaded")
    barrier: bool = Field(
        True,
        description="the paper's two stages: aggregation planned once every expert has finished (false: each "
        "query's aggregation decided and dispatched when its own experts finish)",
    )


class AggregationCfg(_Cfg):
    mode: str = Field(
        "always",
        min_length=1,
        description="always aggregate, adaptive (skip at confidence >= threshold), learned (a trained agent), or any "
        "registered aggregation policy (`mosaic list`: load-aware, calibrated, ...) built with `options`",
    )
    threshold: float = Field(1.0, gt=0, le=1, description="skip when confidence >= threshold")
    model: str | None = Field(
        None,
        description="learned: a trained skip agent (mosaic train threshold; an AggOnline-v0 agent sees the load "
        "and needs runtime.barrier: false)",
    )
    options: dict[str, Any] = Field(
        default_factory=dict,
        description="a registered policy's keyword options, e.g. {busy_threshold: 0.67, backlog_s: 30} (load-aware) "
        "or {model: PATH, max_loss: 0.01} (calibrated)",
    )

    @model_validator(mode="after")
    def _learned_needs_a_model(self) -> AggregationCfg:
        if self.mode == "learned" and not self.model:
            raise ValueError("mode 'learned' needs model: the path of a trained threshold agent (model.zip)")
        return self


TrackingMode = Literal["offline", "online", "disabled"]
TRACKING_MODES: tuple[str, ...] = get_args(TrackingMode)


class TrackingCfg(_Cfg):
    mode: TrackingMode = Field("offline", description="W&B: offline run directory, online, or disabled")
    project: str = Field("mosaic", description="W&B project")
    entity: str | None = Field(None, description="W&B entity (team or user)")


class RunConfig(_Cfg):
    """One experiment: workload, cluster, costs, runtime, schedulers, tracking."""

    name: str = Field("run", description="the run's name (run folders, W&B)")
    seed: int = Field(0, ge=0, description="seeds the workload, responses and schedulers (same seed, same trace)")
    workload: WorkloadCfg = WorkloadCfg()
    responses: ResponsesCfg = ResponsesCfg()
    cluster: ClusterCfg = ClusterCfg()
    costs: CostsCfg = CostsCfg()
    runtime: RuntimeCfg = RuntimeCfg()
    aggregation: AggregationCfg = AggregationCfg()
    tracking: TrackingCfg = TrackingCfg()
    scheduler: str = Field("round-robin", description="the scheduler of mosaic run (mosaic list)")
    scheduler_options: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        description="scheduler name -> keyword options of its constructor, e.g. "
        "{mosaic-ilp: {solver: cbc, time_limit_s: 5, buckets: 8}}",
    )
    baseline: str = Field("round-robin", description="speedups are reported against this scheduler")
    out_dir: str = Field("runs", description="where run folders go")

    @field_validator("scheduler", "baseline")
    @classmethod
    def _nonempty(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("must not be empty")
        return v


def _set_path(tree: dict, dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = tree
    for k in keys[:-1]:
        child = node.setdefault(k, {})
        if not isinstance(child, dict):
            raise ConfigError(f"config override {dotted!r}: {k!r} is not a section")
        node = child
    node[keys[-1]] = value


def apply_overrides(tree: dict, overrides: Sequence[str]) -> dict:
    """Apply ``a.b=value`` strings (values parsed as YAML scalars) to a raw config tree."""
    out = yaml.safe_load(yaml.safe_dump(tree)) or {}
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"config override {item!r} is not of the form section.field=value")
        _set_path(out, key.strip(), yaml.safe_load(raw))
    return out


def _format(err: ValidationError, source: str) -> str:
    lines = []
    for e in err.errors():
        field = ".".join(str(p) for p in e["loc"]) or "(root)"
        got = "" if e["type"] == "missing" else f" (got {e.get('input')!r})"
        lines.append(f"config field '{field}': {e['msg']}{got}")
    return f"invalid config {source}: " + "; ".join(lines)


def parse_config(tree: dict, source: str = "<dict>") -> RunConfig:
    """Validate a raw tree; one ConfigError lists every bad field."""
    if not isinstance(tree, dict):
        raise ConfigError(f"invalid config {source}: the top level must be a mapping, got {type(tree).__name__}")
    try:
        return RunConfig.model_validate(tree)
    except ValidationError as err:
        raise ConfigError(_format(err, source)) from None


def load_config(path: str | Path | None, overrides: Sequence[str] = ()) -> RunConfig:
    """Read a YAML config (or defaults when ``path`` is None) and apply CLI overrides."""
    tree: dict = {}
    source = "<defaults>"
    if path is not None:
        p = Path(path)
        source = str(p)
        if not p.is_file():
            raise ConfigError(f"config file {p} does not exist")
        try:
            tree = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as err:
            raise ConfigError(f"config file {p} is not valid YAML: {err}") from None
    return parse_config(apply_overrides(tree, overrides), source)


def config_to_dict(cfg: RunConfig) -> dict:
    """Plain dict (for W&B and the run directory)."""
    return cfg.model_dump(mode="json")
