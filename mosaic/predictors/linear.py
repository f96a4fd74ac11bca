"""Prompt-length linear baseline: output tokens = a_e + b_e * prompt tokens, per expert (numpy least squares).

With ``use_prompt=False`` the slope is dropped and the model is the per-expert mean (the paper's view), so
both baselines share one implementation, one file format and the same p90 rule: prediction times the
expert's 90th-percentile ratio of true to predicted length on the training rows.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from types import MappingProxyType

import numpy as np

from mosaic.core.errors import ConfigError, WorkloadError
from mosaic.core.types import Request, Workload
from mosaic.predictors.interface import LengthPredictor
from mosaic.predictors.length_data import LengthDataset, rows_from_workload
from mosaic.predictors.registry import LENGTH_PREDICTORS

LINEAR_FORMAT = "mosaic-linear-length/1"
MIN_TOKENS = 1.0


@dataclass(frozen=True, slots=True)
class LinearCoef:
    """One expert's fit."""

    intercept: float  # output tokens at zero prompt tokens
    slope: float  # output tokens per prompt token
    p90_factor: float  # 90th percentile of true / predicted length on the training rows
    n: int  # training rows


def _fit_one(x: np.ndarray, y: np.ndarray, use_prompt: bool) -> LinearCoef:
    if use_prompt and len(np.unique(x)) >= 2:
        a = np.column_stack([np.ones_like(x), x])
        (intercept, slope), *_ = np.linalg.lstsq(a, y, rcond=None)
    else:
        intercept, slope = float(y.mean()), 0.0
    pred = np.maximum(intercept + slope * x, MIN_TOKENS)
    factor = float(np.quantile(y / pred, 0.9))
    return LinearCoef(float(intercept), float(slope), max(factor, 1.0), len(y))


def _finite(c: LinearCoef) -> bool:
    return all(math.isfinite(v) for v in (c.intercept, c.slope, c.p90_factor))


class LinearLengthPredictor(LengthPredictor):
    """Per-expert least squares on prompt tokens (or the per-expert mean); unseen experts use the pooled fit."""

    def __init__(self, coefs: Mapping[str, LinearCoef], pooled: LinearCoef, use_prompt: bool = True) -> None:
        self.coefs = MappingProxyType(dict(coefs))  # expert name -> fit
        self.pooled = pooled
        self.use_prompt = use_prompt
        self.name = "linear" if use_prompt else "expert-mean"

    @classmethod
    def fit(cls, ds: LengthDataset, use_prompt: bool = True) -> LinearLengthPredictor:
        """Fit on labelled rows."""
        if not ds.labelled:
            raise WorkloadError(f"length dataset {ds.name!r}: fitting needs rows with known output tokens")
        experts = np.asarray(ds.expert)
        coefs = {
            e: _fit_one(ds.prompt_tokens[experts == e], ds.output_tokens[experts == e], use_prompt)
            for e in sorted(set(ds.expert))
        }
        return cls(coefs, _fit_one(ds.prompt_tokens, ds.output_tokens, use_prompt), use_prompt)

    def _coef_arrays(self, experts: Sequence[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        cs = [self.coefs.get(e, self.pooled) for e in experts]
        return (np.array([c.intercept for c in cs]), np.array([c.slope for c in cs]),
                np.array([c.p90_factor for c in cs]))  # fmt: skip

    def predict_rows(self, ds: LengthDataset) -> np.ndarray:
        """Expected output tokens of each row (at least one)."""
        a, b, _ = self._coef_arrays(ds.expert)
        return np.maximum(a + b * ds.prompt_tokens, MIN_TOKENS)

    def quantile_rows(self, ds: LengthDataset, head: str = "p90") -> np.ndarray:
        """The p90 estimate (the only quantile this baseline knows)."""
        if head != "p90":
            raise ConfigError(f"{self.name} predictor knows only the p90 quantile, not {head!r}")
        a, b, f = self._coef_arrays(ds.expert)
        return np.maximum(a + b * ds.prompt_tokens, MIN_TOKENS) * f

    def predict(self, workload: Workload, requests: Sequence[Request]) -> np.ndarray:
        return self.predict_rows(rows_from_workload(workload, requests))

    def to_dict(self) -> dict:
        return {"format": LINEAR_FORMAT, "use_prompt": self.use_prompt, "pooled": asdict(self.pooled),
                "experts": {e: asdict(c) for e, c in self.coefs.items()}}  # fmt: skip

    @classmethod
    def from_dict(cls, d: Mapping) -> LinearLengthPredictor:
        if d.get("format") != LINEAR_FORMAT:
            raise ConfigError(f"not a linear length model: format {d.get('format')!r}, expected {LINEAR_FORMAT!r}")
        try:
            coefs = {e: LinearCoef(**c) for e, c in d["experts"].items()}
            pooled = LinearCoef(**d["pooled"])
            use_prompt = bool(d["use_prompt"])
        except (KeyError, TypeError, AttributeError) as err:
            raise ConfigError(f"linear length model is malformed: {err}") from None
        bad = [e for e, c in {**coefs, "(pooled)": pooled}.items() if not _finite(c)]
        if bad:
            raise ConfigError(f"linear length model: non-finite coefficients for {bad}")
        return cls(coefs, pooled, use_prompt)

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=1), encoding="utf-8")
        return path

    @classmethod
    def load(cls, path: str | Path) -> LinearLengthPredictor:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"linear length model {path} does not exist (train one: mosaic predictor train)")
        try:
            d = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise ConfigError(f"linear length model {path} is not JSON: {err}") from None
        return cls.from_dict(d)


@LENGTH_PREDICTORS.register("linear", help="per-expert prompt-length least squares: linear:PATH (JSON model)")
def linear_factory(arg: str | None = None, *_: object, **__: object) -> LinearLengthPredictor:
    """``linear:PATH`` loads a model written by ``mosaic predictor train --kind linear``."""
    if not arg:
        raise ConfigError("costs.predictor 'linear' needs a fitted model: linear:PATH (mosaic predictor train)")
    return LinearLengthPredictor.load(arg)
