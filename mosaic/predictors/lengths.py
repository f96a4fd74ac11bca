"""Simple length predictors: the paper's per-expert mean, and the oracle (true lengths, for perfect-information runs).

Registered in :data:`~mosaic.predictors.registry.LENGTH_PREDICTORS` as ``'mean'`` and ``'oracle'``. Factories
take ``(arg, *, means=..., responses=..., workload=...)``; ``mean:TRACE.jsonl`` fits the means from a trace.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np

from mosaic.core.errors import ConfigError, WorkloadError
from mosaic.core.trace import RequestRecord, read_trace
from mosaic.core.types import Request, Responses, Workload
from mosaic.predictors.interface import LengthPredictor
from mosaic.predictors.registry import LENGTH_PREDICTORS

NOISE_STREAM = 2  # child of SeedSequence(seed) the noisy oracle draws from (0: workload, 1: schedulers)


class MeanLengthPredictor(LengthPredictor):
    """Every request of an expert gets that expert's mean output length (the paper's cost input)."""

    name = "mean"

    def __init__(self, means: Mapping[str, float], spreads: Mapping[str, float] | None = None) -> None:
        clean = {e: _mean_value(m) for e, m in means.items()}
        bad = {e: means[e] for e, m in clean.items() if not (math.isfinite(m) and m >= 0)}
        if bad:
            raise ConfigError(f"mean length predictor: means must be finite numbers >= 0, got {bad}")
        sp = {e: _mean_value(v) for e, v in (spreads or {}).items()}
        bad = {e: v for e, v in sp.items() if not (math.isfinite(v) and v >= 0) or e not in clean}
        if bad:
            raise ConfigError(f"mean length predictor: spreads must be finite numbers >= 0 of known experts, got {bad}")
        self.means: Mapping[str, float] = MappingProxyType(clean)  # expert name -> mean output tokens
        self.spreads: Mapping[str, float] = MappingProxyType(sp)  # expert -> std of log output tokens (profiled)

    def mean(self, expert: str) -> float:
        """The mean output tokens of ``expert``; unknown experts list the known ones."""
        try:
            return self.means[expert]
        except KeyError:
            known = ", ".join(sorted(self.means)) or "(none)"
            raise WorkloadError(f"mean length predictor has no mean for expert {expert!r}; it has: {known}") from None

    def missing(self, experts: Sequence[str]) -> list[str]:
        return [e for e in experts if e not in self.means]

    def predict(self, workload: Workload, requests: Sequence[Request]) -> np.ndarray:
        per_expert = {e: self.mean(e) for e in {r.expert for r in requests}}
        return np.fromiter((per_expert[r.expert] for r in requests), dtype=float, count=len(requests))

    def predict_spread(self, workload: Workload, requests: Sequence[Request]) -> np.ndarray | None:
        """The expert's profiled spread of log lengths (0 for experts without one); None without spreads."""
        if not self.spreads:
            return None
        return np.fromiter((self.spreads.get(r.expert, 0.0) for r in requests), dtype=float, count=len(requests))

    @classmethod
    def fit(cls, records: Iterable[Any], stage: str | None = None) -> MeanLengthPredictor:
        """Mean ``output_tokens`` per expert over the :class:`RequestRecord` s in ``records`` (other record
        types are skipped; ``stage`` keeps only ``'expert'`` or ``'aggregation'`` records), and the spread of their
        logs (:meth:`predict_spread`)."""
        lengths: dict[str, list[float]] = {}
        for rec in records:
            if not isinstance(rec, RequestRecord) or (stage is not None and rec.stage != stage):
                continue
            lengths.setdefault(rec.expert, []).append(float(rec.output_tokens))
        if not lengths:
            where = f" of stage {stage!r}" if stage is not None else ""
            raise WorkloadError(f"mean length predictor: no request records{where} to fit on")
        means = {e: float(np.mean(v)) for e, v in sorted(lengths.items())}
        spreads = {e: float(np.std(np.log(np.maximum(v, 1.0)))) for e, v in sorted(lengths.items())}
        return cls(means, spreads)

    @classmethod
    def from_trace(cls, path: str | Path, stage: str | None = None) -> MeanLengthPredictor:
        """:meth:`fit` on the request records of a JSONL trace."""
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"mean length predictor: trace {p} does not exist")
        return cls.fit(read_trace(p), stage)

    def __repr__(self) -> str:
        return f"MeanLengthPredictor({dict(self.means)})"


def _mean_value(m: object) -> float:
    if isinstance(m, bool | str):
        return math.nan
    try:
        return float(m)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return math.nan


class OracleLengthPredictor(LengthPredictor):
    """True output lengths from the recorded/synthetic responses (tests and perfect-information experiments)."""

    name = "oracle"

    def __init__(self, responses: Responses) -> None:
        self.responses = responses

    def predict(self, workload: Workload, requests: Sequence[Request]) -> np.ndarray:
        get = self.responses.get
        return np.fromiter((get(r.query_id, r.expert).output_tokens for r in requests), dtype=float,
                           count=len(requests))  # fmt: skip


class NoisyOracleLengthPredictor(LengthPredictor):
    """True output lengths times a fixed log-normal error per (query, expert): ``exp(sigma * z)``."""

    name = "noisy-oracle"

    def __init__(self, responses: Responses, sigma: float, rng: np.random.Generator) -> None:
        if not (np.isfinite(sigma) and sigma >= 0):
            raise ConfigError(f"noisy oracle predictor: noise must be a finite number >= 0, got {sigma!r}")
        self.responses, self.sigma = responses, float(sigma)
        keys = sorted(responses.table)
        self._factor = dict(zip(keys, np.exp(self.sigma * rng.standard_normal(len(keys))).tolist(), strict=True))

    def predict(self, workload: Workload, requests: Sequence[Request]) -> np.ndarray:
        out = np.empty(len(requests))
        for i, r in enumerate(requests):
            key = (r.query_id, r.expert)
            out[i] = self.responses.get(*key).output_tokens * self._factor.get(key, 1.0)
        return out


@LENGTH_PREDICTORS.register("mean", help="per-expert mean output tokens (the paper); mean:TRACE.jsonl fits them")
def mean_factory(arg: str | None = None, *_: object, means: Mapping[str, float] | None = None,
                 **__: object) -> MeanLengthPredictor:  # fmt: skip
    """``mean`` uses the configured per-expert means; ``mean:TRACE.jsonl`` fits them on a trace."""
    if arg:
        return MeanLengthPredictor.from_trace(arg)
    if means is None:
        raise ConfigError("costs.predictor 'mean' needs per-expert means (experts' mean_output_tokens) or mean:TRACE")
    return MeanLengthPredictor(means)


@LENGTH_PREDICTORS.register("oracle", help="true output lengths from the responses (perfect information)")
def oracle_factory(arg: str | None = None, *_: object, responses: Responses | None = None,
                   **__: object) -> OracleLengthPredictor:  # fmt: skip
    """``oracle`` reads the true lengths from the run's ground-truth responses."""
    if arg:
        raise ConfigError(f"costs.predictor 'oracle' takes no argument, got {arg!r}")
    if responses is None:
        raise ConfigError("costs.predictor 'oracle' needs the ground-truth responses (none were given)")
    return OracleLengthPredictor(responses)


@LENGTH_PREDICTORS.register(
    "noisy-oracle", help="true lengths times a log-normal error: noisy-oracle:SIGMA (0.6 ~ 60%)"
)
def noisy_oracle_factory(arg: str | None = None, *_: object, responses: Responses | None = None, seed: int = 0,
                         **__: object) -> NoisyOracleLengthPredictor:  # fmt: skip
    """``noisy-oracle:SIGMA``: each (query, expert)'s true length times ``exp(SIGMA * z)``, ``z ~ N(0, 1)`` drawn
    from the run's seed (its own stream: the workload and the schedulers draw from others)."""
    try:
        sigma = float(arg) if arg else math.nan
    except ValueError:
        sigma = math.nan
    if not (math.isfinite(sigma) and sigma >= 0):
        raise ConfigError(
            f"costs.predictor 'noisy-oracle' needs a noise level >= 0, e.g. noisy-oracle:0.6; got {arg!r}"
        )
    if responses is None:
        raise ConfigError("costs.predictor 'noisy-oracle' needs the ground-truth responses (none were given)")
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(NOISE_STREAM,)))
    return NoisyOracleLengthPredictor(responses, sigma, rng)
