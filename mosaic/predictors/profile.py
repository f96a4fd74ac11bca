"""Cost profiles: (expert name, GPU type) -> :class:`ModelCost`, and their YAML/JSON file format.

File schema (YAML or JSON, chosen by suffix; ``.json`` is JSON, anything else YAML)::

    version: 1
    meta: {source: roofline, ...}          # optional, free-form (how the numbers were obtained)
    gpu_types:
      A100-80GB:
        experts:
          QwenR1: {load_s: 36.2, prefill_tps: 13370.0, step_base_s: 0.0166, step_per_seq_s: 9.1e-05,
                   step_per_kv_token_s: 8.5e-08, memory_gb: 18.2, max_batch: 256, kv_capacity_tokens: 390000,
                   unload_s: 1.1}

``max_batch``, ``kv_capacity_tokens`` and ``unload_s`` (seconds to free the engine before another expert loads in
its place) may be left out (``ModelCost`` defaults: 256, 1,000,000 and 0), and so may the second step line
``step_compute_base_s``, ``step_compute_per_seq_s``, ``step_compute_per_kv_token_s`` (default 0: a step is priced by
the first line alone; set, a step takes the larger of the two), ``kv_block_tokens`` (16) and ``memory_mode``
(``reserve`` | ``paged``, default ``reserve``). Every bad field raises one
:class:`ProfileError` naming the file and the field's path, e.g.
``profile p.yaml: gpu_types.A100-80GB.experts.QwenR1.prefill_tps must be > 0 (got 0)``.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any

import yaml

from mosaic.core.errors import ProfileError
from mosaic.predictors.interface import MEMORY_MODES, ModelCost

PROFILE_VERSION = 1
_FIELDS = tuple(f.name for f in fields(ModelCost))
_COMPUTE_LINE = ("step_compute_base_s", "step_compute_per_seq_s", "step_compute_per_kv_token_s")
_ADDED = (*_COMPUTE_LINE, "kv_block_tokens", "memory_mode")  # written only when not at their defaults
_OPTIONAL = {"max_batch", "kv_capacity_tokens", "unload_s", *_ADDED}
_INT_FIELDS = {"max_batch", "kv_capacity_tokens", "kv_block_tokens"}
# field -> (lower limit, limit included?)
_LIMITS: dict[str, tuple[float, bool]] = {
    "load_s": (0.0, True),
    "prefill_tps": (0.0, False),
    "step_base_s": (0.0, True),
    "step_per_seq_s": (0.0, True),
    "step_per_kv_token_s": (0.0, True),
    "memory_gb": (0.0, False),
    "max_batch": (1, True),
    "kv_capacity_tokens": (1, True),
    "unload_s": (0.0, True),
    **{name: (0.0, True) for name in _COMPUTE_LINE},
    "kv_block_tokens": (1, True),
}


@dataclass(frozen=True, slots=True)
class CostProfile:
    """Profiled costs of every expert on every GPU type it was profiled on."""

    table: Mapping[str, Mapping[str, ModelCost]]  # GPU type -> expert name -> costs
    meta: Mapping[str, Any] = field(default_factory=dict)  # how the numbers were obtained (free-form, JSON-able)

    def __post_init__(self) -> None:
        frozen = {g: MappingProxyType(dict(es)) for g, es in self.table.items()}
        object.__setattr__(self, "table", MappingProxyType(frozen))
        object.__setattr__(self, "meta", MappingProxyType(dict(self.meta)))

    # ----------------------------------------------------------------- queries
    @property
    def gpu_types(self) -> tuple[str, ...]:
        return tuple(sorted(self.table))

    @property
    def experts(self) -> tuple[str, ...]:
        """Every expert profiled on at least one GPU type."""
        return tuple(sorted({e for es in self.table.values() for e in es}))

    def get(self, expert: str, gpu_type: str) -> ModelCost:
        """The costs of ``expert`` on ``gpu_type``; a :class:`ProfileError` lists what the profile has."""
        per_gpu = self.table.get(gpu_type)
        if per_gpu is None:
            raise ProfileError(f"cost profile has no GPU type {gpu_type!r}; it has: {', '.join(self.gpu_types)}")
        mc = per_gpu.get(expert)
        if mc is None:
            have = ", ".join(sorted(per_gpu)) or "(none)"
            raise ProfileError(f"cost profile has no expert {expert!r} on GPU type {gpu_type!r}; it has: {have}")
        return mc

    def require(self, experts: Iterable[str], gpu_types: Iterable[str]) -> None:
        """Raise one :class:`ProfileError` listing every (expert, GPU type) pair the profile lacks."""
        missing = [(e, g) for g in dict.fromkeys(gpu_types) for e in dict.fromkeys(experts)
                   if e not in self.table.get(g, {})]  # fmt: skip
        if missing:
            pairs = ", ".join(f"{e}@{g}" for e, g in missing)
            raise ProfileError(
                f"cost profile lacks {pairs}; it has experts {list(self.experts)} on GPU types {list(self.gpu_types)}"
            )

    # ----------------------------------------------------------------- derived profiles
    def merge(self, other: CostProfile) -> CostProfile:
        """A profile with the entries of both; ``other`` wins where both have an (expert, GPU type)."""
        table = {g: dict(es) for g, es in self.table.items()}
        for g, es in other.table.items():
            table.setdefault(g, {}).update(es)
        return CostProfile(table, {**self.meta, **other.meta})

    def with_max_batch(self, n: int, cap: bool = False) -> CostProfile:
        """Every entry's ``max_batch`` set to ``n`` (``cap=True``: lowered to ``n`` only where larger)."""
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ProfileError(f"max_batch must be an integer >= 1, got {n!r}")

        def new(mc: ModelCost) -> ModelCost:
            return replace(mc, max_batch=min(mc.max_batch, n) if cap else n)

        return CostProfile({g: {e: new(mc) for e, mc in es.items()} for g, es in self.table.items()}, self.meta)

    def with_memory_mode(self, mode: str) -> CostProfile:
        """Every entry's ``memory_mode`` set to ``mode`` (``reserve`` | ``paged``)."""
        mode = memory_mode(mode, "memory_mode")
        table = {g: {e: replace(mc, memory_mode=mode) for e, mc in es.items()} for g, es in self.table.items()}
        return CostProfile(table, {**self.meta, "memory_mode": mode})

    # ----------------------------------------------------------------- dict and file IO
    def to_dict(self) -> dict:
        """The file schema as plain data."""
        gpus = {g: {"experts": {e: _entry(mc) for e, mc in sorted(es.items())}}
                for g, es in sorted(self.table.items())}  # fmt: skip
        out: dict[str, Any] = {"version": PROFILE_VERSION}
        if self.meta:
            out["meta"] = dict(self.meta)
        out["gpu_types"] = gpus
        return out

    @classmethod
    def from_dict(cls, data: Any, source: str = "<dict>") -> CostProfile:
        """Validate plain data of the file schema (``source`` names the file in errors)."""
        where = f"profile {source}"
        top = _mapping(data, where, "(top level)")
        _no_extra(top, {"version", "meta", "gpu_types"}, where, "")
        if top.get("version") != PROFILE_VERSION:
            raise ProfileError(f"{where}: version must be {PROFILE_VERSION} (got {top.get('version')!r})")
        meta = _mapping(top.get("meta", {}), where, "meta")
        gpus = _mapping(top.get("gpu_types"), where, "gpu_types")
        if not gpus:
            raise ProfileError(f"{where}: gpu_types must list at least one GPU type")
        table: dict[str, dict[str, ModelCost]] = {}
        for g, body in gpus.items():
            node = _mapping(body, where, f"gpu_types.{g}")
            _no_extra(node, {"experts"}, where, f"gpu_types.{g}.")
            experts = _mapping(node.get("experts"), where, f"gpu_types.{g}.experts")
            table[str(g)] = {str(e): _model_cost(v, where, f"gpu_types.{g}.experts.{e}") for e, v in experts.items()}
        return cls(table, meta)

    @classmethod
    def from_file(cls, path: str | Path) -> CostProfile:
        """Read a YAML or JSON profile (``.json`` suffix: JSON; otherwise YAML)."""
        p = Path(path)
        if not p.is_file():
            raise ProfileError(f"profile {p} does not exist")
        text = p.read_text(encoding="utf-8")
        try:
            data = json.loads(text) if p.suffix.lower() == ".json" else yaml.safe_load(text)
        except (json.JSONDecodeError, yaml.YAMLError) as err:
            kind = "JSON" if p.suffix.lower() == ".json" else "YAML"
            raise ProfileError(f"profile {p} is not valid {kind}: {err}") from None
        return cls.from_dict(data, str(p))

    def to_file(self, path: str | Path) -> Path:
        """Write atomically (a temporary file in the same folder, then a rename); ``.json`` suffix: JSON."""
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        data = self.to_dict()
        if p.suffix.lower() == ".json":
            text = json.dumps(data, indent=2) + "\n"
        else:
            text = yaml.safe_dump(data, sort_keys=False, default_flow_style=False)
        fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(text)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, p)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return p


_DEFAULTS = {f.name: f.default for f in fields(ModelCost)}


def _entry(mc: ModelCost) -> dict[str, Any]:
    """One expert's fields as the file writes them: every field, except the fields added since version 1 of the
    schema (the second step line, the paged-KV settings) while they hold their defaults, so older profiles are
    written as before."""
    return {f: getattr(mc, f) for f in _FIELDS if f not in _ADDED or getattr(mc, f) != _DEFAULTS[f]}


def memory_mode(value: Any, where: str) -> str:
    """``value`` as a memory mode; anything else raises one ProfileError naming it and the valid ones."""
    if value not in MEMORY_MODES:
        raise ProfileError(f"{where} must be one of {', '.join(MEMORY_MODES)} (got {value!r})")
    return str(value)


def _mapping(value: Any, where: str, path: str) -> Mapping:
    if not isinstance(value, Mapping):
        got = "nothing" if value is None else type(value).__name__
        raise ProfileError(f"{where}: {path} must be a mapping (got {got})")
    return value


def _no_extra(node: Mapping, allowed: set[str], where: str, prefix: str) -> None:
    extra = sorted(str(k) for k in node if k not in allowed)
    if extra:
        raise ProfileError(f"{where}: unknown field {prefix}{extra[0]}; allowed: {', '.join(sorted(allowed))}")


def _number(value: Any, name: str, where: str, path: str) -> float | int:
    want_int = name in _INT_FIELDS
    ok_type = isinstance(value, int) if want_int else isinstance(value, int | float)
    if isinstance(value, bool) or not ok_type:
        kind = "an integer" if want_int else "a number"
        raise ProfileError(f"{where}: {path}.{name} must be {kind} (got {value!r})")
    if not math.isfinite(value):
        raise ProfileError(f"{where}: {path}.{name} must be finite (got {value!r})")
    low, inclusive = _LIMITS[name]
    if value < low or (value == low and not inclusive):
        raise ProfileError(f"{where}: {path}.{name} must be {'>=' if inclusive else '>'} {low:g} (got {value!r})")
    return value if want_int else float(value)


def _model_cost(value: Any, where: str, path: str) -> ModelCost:
    node = _mapping(value, where, path)
    _no_extra(node, set(_FIELDS), where, f"{path}.")
    missing = [f for f in _FIELDS if f not in node and f not in _OPTIONAL]
    if missing:
        raise ProfileError(f"{where}: {path} lacks {', '.join(missing)}")
    kwargs = {f: _number(node[f], f, where, path) for f in _FIELDS if f in node and f != "memory_mode"}
    if "memory_mode" in node:
        kwargs["memory_mode"] = memory_mode(node["memory_mode"], f"{where}: {path}.memory_mode")
    mc = ModelCost(**kwargs)
    if mc.step_base_s + mc.step_per_seq_s <= 0:
        raise ProfileError(f"{where}: {path}: step_base_s + step_per_seq_s must be > 0 (a decode step takes time)")
    return mc
