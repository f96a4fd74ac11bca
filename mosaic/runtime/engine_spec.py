"""Which local model folder (or hub id) and sampling serve each expert on a real engine.

Sources, later ones winning: the expert's ``model_id`` (a local folder or a model id the engine can open), the
config's expert fields when the config has them (``path``, ``temperature``, ``top_p``, ``max_tokens``,
``system_prompt``), ``runtime.engine`` (extra engine settings) when present, then an explicit mapping (tests,
``MOSAIC_VLLM_MODELS``: a YAML/JSON file ``{expert name: {field: value}, _engine: {field: value}}``).
Sampling left unset falls back to the model folder's ``generation_config.json`` (as ``vllm serve`` does).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import yaml

from mosaic.core.errors import ConfigError
from mosaic.core.types import Workload

MODELS_ENV = "MOSAIC_VLLM_MODELS"
ENGINE_KEY = "_engine"  # mapping key: settings for every expert
DEFAULT_MAX_TOKENS = 256
MAX_TOKENS_PER_MEAN = 4  # default max_tokens = this x the expert's mean_output_tokens


# Environment every engine process gets unless the caller set it (see RUNTIME_NOTES: CPU needs a KV space).
ENGINE_ENV_DEFAULTS = {
    "VLLM_ENABLE_V1_MULTIPROCESSING": "0",  # engine core in-process: 2-6 s start, clean shutdown
    "VLLM_NO_USAGE_STATS": "1",
    "VLLM_CPU_KVCACHE_SPACE": "1",  # GiB of KV cache per engine on CPU
    "RAY_AUTH_MODE": "disabled",
    "TOKENIZERS_PARALLELISM": "false",
}


def apply_env_defaults(env: dict[str, str] | None = None) -> dict[str, str]:
    """``env`` (default: ``os.environ``) with :data:`ENGINE_ENV_DEFAULTS` filled in where unset."""
    target = os.environ if env is None else env
    for k, v in ENGINE_ENV_DEFAULTS.items():
        target.setdefault(k, v)
    return dict(target)


@dataclass(frozen=True, slots=True)
class ModelSpec:
    """How one expert runs on a real engine."""

    path: str  # local model folder (or a hub id on a machine that may download)
    dtype: str = "auto"  # "float32" on CPUs without bf16
    max_model_len: int | None = None  # default: the worker's DEFAULT_MAX_MODEL_LEN
    max_num_seqs: int | None = None  # engine's max concurrent sequences (default: runtime.max_batch)
    gpu_memory_utilization: float | None = None  # GPU share of this engine (co-resident engines split it)
    enforce_eager: bool = True
    temperature: float | None = None  # None: the model's generation_config
    top_p: float | None = None
    top_k: int | None = None
    max_tokens: int = DEFAULT_MAX_TOKENS
    system_prompt: str | None = None
    engine_args: Mapping[str, Any] = field(default_factory=dict)  # more vLLM EngineArgs

    def engine_dict(self, seed: int) -> dict[str, Any]:
        """What the worker needs to open the engine (JSON-able)."""
        return {"path": self.path, "dtype": self.dtype, "max_model_len": self.max_model_len,
                "max_num_seqs": self.max_num_seqs, "gpu_memory_utilization": self.gpu_memory_utilization,
                "enforce_eager": self.enforce_eager, "seed": seed, "engine_args": dict(self.engine_args)}  # fmt: skip


_SPEC_FIELDS = {f.name for f in fields(ModelSpec)}


def load_mapping(path: str | Path) -> dict[str, dict[str, Any]]:
    """A YAML/JSON expert -> settings file (``MOSAIC_VLLM_MODELS``)."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{MODELS_ENV}: model mapping file {p} does not exist")
    text = p.read_text(encoding="utf-8")
    data = json.loads(text) if p.suffix.lower() == ".json" else yaml.safe_load(text)
    if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
        raise ConfigError(f"model mapping {p} must map expert names to settings mappings")
    return data


def _config_fields(cfg: Any, name: str) -> dict[str, Any]:
    """Settings the typed config holds for expert ``name`` (its optional real-engine fields, mean length)."""
    out: dict[str, Any] = {}
    experts = getattr(getattr(cfg, "workload", None), "experts", None) or []
    for e in experts:
        if getattr(e, "name", None) != name:
            continue
        mean = getattr(e, "mean_output_tokens", None)
        if mean:
            out["max_tokens"] = max(1, math.ceil(MAX_TOKENS_PER_MEAN * mean))
        for key in ("path", "temperature", "top_p", "max_tokens", "system_prompt"):
            value = getattr(e, key, None)
            if value is not None:
                out[key] = value
    return out


def _runtime_fields(cfg: Any) -> dict[str, Any]:
    runtime = getattr(cfg, "runtime", None)
    out: dict[str, Any] = {}
    if getattr(runtime, "max_batch", None):
        out["max_num_seqs"] = int(runtime.max_batch)
    engine = getattr(runtime, "engine", None)
    if isinstance(engine, Mapping):
        out.update(engine)
    return out


def _build(name: str, settings: Mapping[str, Any]) -> ModelSpec:
    unknown = sorted(set(settings) - _SPEC_FIELDS)
    if unknown:
        raise ConfigError(f"expert {name!r}: unknown model setting {unknown[0]!r}; valid: {sorted(_SPEC_FIELDS)}")
    if not settings.get("path"):
        raise ConfigError(f"expert {name!r}: no model path (set its model_id to a model folder)")
    try:
        return ModelSpec(**settings)
    except TypeError as err:
        raise ConfigError(f"expert {name!r}: bad model settings: {err}") from None


def resolve_models(
    workload: Workload, cfg: Any = None, extra: Mapping[str, Mapping[str, Any]] | None = None
) -> dict[str, ModelSpec]:
    """Expert (and aggregator) name -> :class:`ModelSpec` for every model ``workload`` uses."""
    if extra is None and os.environ.get(MODELS_ENV):
        extra = load_mapping(os.environ[MODELS_ENV])
    extra = extra or {}
    common = {**_runtime_fields(cfg), **extra.get(ENGINE_KEY, {})}
    out = {}
    for expert in (*workload.experts, workload.aggregator):
        settings = {"path": expert.model_id, **common, **_config_fields(cfg, expert.name),
                    **extra.get(expert.name, {})}  # fmt: skip
        out[expert.name] = _build(expert.name, settings)
    return out


def check_local_paths(specs: Mapping[str, ModelSpec]) -> None:
    """Raise :class:`ConfigError` for a path that looks local (``./``, ``/``, ``models/``) but does not exist."""
    for name, spec in specs.items():
        p = Path(spec.path)
        looks_local = p.is_absolute() or spec.path.startswith((".", "models/")) or len(p.parts) != 2
        if looks_local and not p.is_dir():
            raise ConfigError(
                f"expert {name!r}: model folder {spec.path} does not exist "
                f"(build tiny models with `mosaic models make-tiny --out models`)"
            )


def with_defaults(spec: ModelSpec, **kwargs: Any) -> ModelSpec:
    """``spec`` with the fields in ``kwargs`` set where they are still None."""
    return replace(spec, **{k: v for k, v in kwargs.items() if getattr(spec, k) is None})


__all__ = ["MODELS_ENV", "ModelSpec", "check_local_paths", "load_mapping", "resolve_models", "with_defaults"]
