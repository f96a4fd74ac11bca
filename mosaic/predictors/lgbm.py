"""LightGBM length predictor: quantile heads (p50, p90) and a mean head per (query, expert) request.

The only module that imports ``lightgbm`` (lazily, so the rest of MOSAIC runs without it). Quantile heads are
trained on log1p(tokens) (quantiles survive the monotone transform; trees fit the log scale better); the mean
head uses a Poisson objective (log link) on raw tokens, so it estimates expected length, which is what total
work and the cost model need.

A saved model is two files: ``MODEL`` (the boosters as LightGBM text, inside one JSON object) and the sidecar
``MODEL.meta.json`` (format, feature spec with vocabularies, LightGBM and MOSAIC versions, training summary,
anything the trainer adds, and the model file's SHA-256). Loading checks that both belong together and that the
model was trained on the features this code builds.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np

from mosaic.core.errors import ConfigError, WorkloadError
from mosaic.core.types import Request, Workload
from mosaic.predictors.features import FeatureSpec, build_features
from mosaic.predictors.interface import LengthPredictor
from mosaic.predictors.length_data import LengthDataset, rows_from_workload
from mosaic.predictors.registry import LENGTH_PREDICTORS

LGBM_FORMAT = "mosaic-lgbm-length/1"
HEADS = ("p50", "p90", "mean")
QUANTILE_OF = {"p50": 0.5, "p90": 0.9}
Z90 = 1.2815515655446004  # standard normal 0.9 quantile
Progress = Callable[[str, int, int], None]  # (head, iteration done, iterations)
_MAY_BE_ZERO = frozenset({"seed", "hash_dims", "lambda_l2", "num_threads"})  # LGBMParams fields allowed to be 0


def _lightgbm():
    # Idle OpenMP threads sleep instead of spinning: with every core in use, spinning threads starve the working
    # ones on a busy machine (measured on 2 cores with one busy: 2 threads took 1.6x one thread's time spinning,
    # the same time passive; on an idle machine both ran 1.8x faster than one thread). Read when OpenMP starts.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    try:
        import lightgbm
    except ModuleNotFoundError:
        raise ConfigError("the lightgbm predictor needs LightGBM: pip install 'mosaic-moa[ml]'") from None
    return lightgbm


@dataclass(frozen=True, slots=True)
class LGBMParams:
    """Training settings shared by every head."""

    num_boost_round: int = 300  # trees per head
    learning_rate: float = 0.05
    num_leaves: int = 15
    min_data_in_leaf: int = 20
    feature_fraction: float = 0.9  # share of columns each tree sees
    lambda_l2: float = 1.0
    max_bin: int = 255
    num_threads: int = 0  # 0: every core this process may use (see usable_cores)
    seed: int = 0  # LightGBM's seed (bagging, column sampling); training is deterministic for a seed
    hash_dims: int = 256  # text n-gram buckets (0: no text features)
    ngram_max: int = 2

    def __post_init__(self) -> None:
        bad = [f"{k}={v!r}" for k, v in asdict(self).items() if k not in _MAY_BE_ZERO and not v > 0]
        bad += [f"{k}={getattr(self, k)!r}" for k in sorted(_MAY_BE_ZERO - {"seed"}) if getattr(self, k) < 0]
        if not 0.0 < self.feature_fraction <= 1.0:
            bad.append(f"feature_fraction={self.feature_fraction!r}")
        if bad:
            raise ConfigError(
                f"lightgbm params out of range (counts and rates > 0, hash_dims, lambda_l2 and num_threads >= 0, "
                f"feature_fraction <= 1): {', '.join(bad)}"
            )

    def threads(self) -> int:
        """LightGBM threads: ``num_threads``, or every usable core when it is 0."""
        return self.num_threads or usable_cores()

    def booster_params(self, head: str) -> dict[str, Any]:
        p = {k: v for k, v in asdict(self).items() if k not in {"num_boost_round", "hash_dims", "ngram_max"}}
        p |= {"verbose": -1, "deterministic": True, "force_row_wise": True, "num_threads": self.threads()}
        if head in QUANTILE_OF:
            return p | {"objective": "quantile", "alpha": QUANTILE_OF[head]}
        return p | {"objective": "poisson"}


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity where the OS tells it)."""
    try:
        return max(len(os.sched_getaffinity(0)), 1)
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def lightgbm_version() -> str | None:
    try:
        return metadata.version("lightgbm")
    except metadata.PackageNotFoundError:
        return None


class LightGBMLengthPredictor(LengthPredictor):
    """Per-request output tokens from query and expert features. ``point`` picks the head ``predict`` returns;
    ``fallback`` gives the tokens :meth:`predict` uses for experts the model never saw (else it guesses from
    their size and kind alone)."""

    name = "lightgbm"

    def __init__(
        self,
        spec: FeatureSpec,
        boosters: Mapping[str, Any],
        point: str = "mean",
        meta: Mapping[str, Any] | None = None,
        fallback: Mapping[str, float] | None = None,
    ) -> None:
        missing = [h for h in (*QUANTILE_OF, point) if h not in boosters]
        if point not in HEADS or missing:
            raise ConfigError(f"lightgbm predictor: point {point!r} (valid: {HEADS}); missing heads {missing}")
        self.spec = spec
        self.boosters = MappingProxyType(dict(boosters))  # head -> lightgbm.Booster
        self.point = point
        self.meta = MappingProxyType(dict(meta or {}))  # the sidecar's contents (after load or save)
        self.fallback = MappingProxyType({e: float(v) for e, v in (fallback or {}).items()})  # expert -> tokens
        self._last: tuple[Workload, tuple, LengthDataset, dict[str, np.ndarray]] | None = None  # see _workload_heads

    @classmethod
    def fit(
        cls, ds: LengthDataset, params: LGBMParams | None = None, progress: Progress | None = None
    ) -> LightGBMLengthPredictor:
        """Train every head on labelled rows."""
        lgb = _lightgbm()
        params = params or LGBMParams()
        if not ds.labelled:
            raise WorkloadError(f"length dataset {ds.name!r}: training needs rows with known output tokens")
        spec = FeatureSpec.fit(ds, params.hash_dims, params.ngram_max)
        y = np.maximum(ds.output_tokens, 0.0)
        data = lgb.Dataset(build_features(spec, ds), np.log1p(y), feature_name=list(spec.names()),
                           categorical_feature=list(spec.categorical()), free_raw_data=False,
                           params={"max_bin": params.max_bin, "verbose": -1}).construct()  # fmt: skip
        boosters = {}
        for head in HEADS:  # one binned Dataset, relabelled per head
            data.set_label(np.log1p(y) if head in QUANTILE_OF else y)
            callbacks = [_progress_callback(head, progress)] if progress else None
            boosters[head] = lgb.train(params.booster_params(head), data, params.num_boost_round, callbacks=callbacks)
        meta = {"params": asdict(params), "trained_on": {"dataset": ds.name, "rows": len(ds)}}
        return cls(spec, boosters, "mean", meta)

    def with_point(self, point: str) -> LightGBMLengthPredictor:
        """The same model returning head ``point`` from ``predict``."""
        return LightGBMLengthPredictor(self.spec, self.boosters, point, self.meta, self.fallback)

    def with_fallback(self, means: Mapping[str, float] | None) -> LightGBMLengthPredictor:
        """The same model using ``means`` (expert -> tokens) for experts outside its training vocabulary."""
        return LightGBMLengthPredictor(self.spec, self.boosters, self.point, self.meta, means)

    def predict_heads(self, ds: LengthDataset) -> dict[str, np.ndarray]:
        """Every head's prediction (tokens, >= 1); p90 is kept >= p50."""
        x = build_features(self.spec, ds)
        out = {}
        for head, b in self.boosters.items():
            raw = b.predict(x) if len(ds) else np.zeros(0)
            out[head] = np.maximum(np.expm1(raw) if head in QUANTILE_OF else raw, 1.0)
        out["p90"] = np.maximum(out["p90"], out["p50"])
        return out

    def predict_rows(self, ds: LengthDataset) -> np.ndarray:
        return self.predict_heads(ds)[self.point]

    def quantile_rows(self, ds: LengthDataset, head: str = "p90") -> np.ndarray:
        if head not in QUANTILE_OF:
            raise ConfigError(f"lightgbm predictor: unknown quantile head {head!r}; valid: {sorted(QUANTILE_OF)}")
        return self.predict_heads(ds)[head]

    def _workload_heads(self, workload: Workload, requests: Sequence[Request]) -> tuple[LengthDataset, dict]:
        """The rows of ``requests`` and every head's predictions (copies). The last call's are reused when asked
        again for the same workload and the same tuple of requests (a cost model with expected costs asks for
        :meth:`predict` and :meth:`predict_spread` of one workload)."""
        last = self._last
        if last is not None and last[0] is workload and last[1] is requests:
            ds, heads = last[2], last[3]
        else:
            ds = rows_from_workload(workload, requests)
            heads = self.predict_heads(ds)
            self._last = (workload, requests, ds, heads) if isinstance(requests, tuple) else None
        return ds, {k: v.copy() for k, v in heads.items()}

    def predict_spread(self, workload: Workload, requests: Sequence[Request]) -> np.ndarray:
        """Std of the log length from the quantile heads, read as a lognormal: ``ln(p90 / p50) / z_0.9``; 0 for
        requests :meth:`predict` answers with a fallback mean (no distribution known there)."""
        ds, heads = self._workload_heads(workload, requests)
        spread = np.log(heads["p90"] / heads["p50"]) / Z90
        spread[self._fallback_rows(ds)] = 0.0
        return spread

    def predict(self, workload: Workload, requests: Sequence[Request]) -> np.ndarray:
        ds, heads = self._workload_heads(workload, requests)
        out = heads[self.point]
        experts = np.asarray(ds.expert)
        fallback = self._fallback_rows(ds)
        out[fallback] = [self.fallback[e] for e in experts[fallback]]
        return out

    def _fallback_rows(self, ds: LengthDataset) -> np.ndarray:
        """Rows of experts outside the model's vocabulary that have a fallback mean."""
        known = set(self.spec.experts)
        return np.array([e not in known and e in self.fallback for e in ds.expert], dtype=bool)

    def save(self, path: str | Path, extra: Mapping[str, Any] | None = None) -> Path:
        """Write ``path`` and its sidecar; returns the sidecar's path."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        body = json.dumps(
            {"format": LGBM_FORMAT, "boosters": {h: b.model_to_string() for h, b in self.boosters.items()}}
        )
        path.write_text(body, encoding="utf-8")
        meta = {
            **{k: v for k, v in self.meta.items() if k not in {"format", "feature_spec", "model_sha256"}},
            **dict(extra or {}),
            "format": LGBM_FORMAT, "feature_spec": self.spec.to_dict(), "heads": sorted(self.boosters),
            "lightgbm_version": lightgbm_version(), "mosaic_version": _mosaic_version(),
            "model_sha256": hashlib.sha256(body.encode()).hexdigest(),
        }  # fmt: skip
        side = sidecar_path(path)
        side.write_text(json.dumps(meta, indent=1, sort_keys=True), encoding="utf-8")
        self.meta = MappingProxyType(meta)
        return side

    @classmethod
    def load(cls, path: str | Path, point: str = "mean") -> LightGBMLengthPredictor:
        """Read a saved model; fails clearly on a missing or foreign sidecar and on other feature columns."""
        lgb = _lightgbm()
        path = Path(path)
        meta, body = _read_pair(path)
        spec = FeatureSpec.from_dict(meta.get("feature_spec") or {})
        boosters = {h: lgb.Booster(model_str=s) for h, s in body["boosters"].items()}
        for h, b in boosters.items():
            if tuple(b.feature_name()) != spec.names():
                raise ConfigError(
                    f"lightgbm model {path}: head {h!r} was trained on {b.num_feature()} feature columns that differ "
                    f"from the {len(spec.names())} this code builds from its feature spec; retrain it"
                )
        return cls(spec, boosters, point, meta)


def _progress_callback(head: str, progress: Progress) -> Callable:
    def cb(env: Any) -> None:
        progress(head, env.iteration + 1 - env.begin_iteration, env.end_iteration - env.begin_iteration)

    return cb


def _mosaic_version() -> str | None:
    try:
        return metadata.version("mosaic-moa")
    except metadata.PackageNotFoundError:
        return None


def sidecar_path(path: str | Path) -> Path:
    """``MODEL.meta.json`` beside ``MODEL``."""
    path = Path(path)
    return path.with_name(path.name + ".meta.json")


def _read_json(path: Path, what: str) -> tuple[dict, str]:
    if not path.is_file():
        raise ConfigError(f"lightgbm {what} {path} does not exist (train one: mosaic predictor train)")
    try:
        text = path.read_text(encoding="utf-8")
        d = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ConfigError(f"lightgbm {what} {path} is not a MOSAIC model file: {err}") from None
    if not isinstance(d, dict) or d.get("format") != LGBM_FORMAT:
        found = d.get("format") if isinstance(d, dict) else None
        raise ConfigError(f"lightgbm {what} {path}: format {found!r}, expected {LGBM_FORMAT!r}")
    return d, text


def _read_pair(path: Path) -> tuple[dict, dict]:
    body, body_text = _read_json(path, "model")
    meta, _ = _read_json(sidecar_path(path), "model sidecar")
    if meta.get("model_sha256") != hashlib.sha256(body_text.encode()).hexdigest():
        raise ConfigError(f"lightgbm model {path} does not match its sidecar {sidecar_path(path)} (SHA-256 differs)")
    if not isinstance(body.get("boosters"), dict) or not body["boosters"]:
        raise ConfigError(f"lightgbm model {path} holds no boosters")
    return meta, body


def parse_predictor_arg(arg: str | None) -> tuple[str, str]:
    """``PATH``, ``PATH@mean``, ``PATH@p50`` or ``PATH@p90`` -> (path, head)."""
    if not arg:
        raise ConfigError(
            "costs.predictor 'lightgbm' needs a model path: lightgbm:PATH (mean head), lightgbm:PATH@p50 or @p90"
        )
    path, sep, head = arg.rpartition("@")
    if not sep or head not in HEADS:
        return arg, "mean"
    return path, head


@LENGTH_PREDICTORS.register("lightgbm", help="LightGBM per-request lengths: lightgbm:PATH (mean head), PATH@p50, @p90")
def lightgbm_factory(
    arg: str | None = None, *_: object, means: Mapping[str, float] | None = None, **__: object
) -> LightGBMLengthPredictor:
    """``lightgbm:PATH`` loads a model from ``mosaic predictor train`` (mean head unless ``@p50``/``@p90``);
    the configured per-expert ``means`` cover experts the model was not trained on (e.g. the aggregator)."""
    path, head = parse_predictor_arg(arg)
    return LightGBMLengthPredictor.load(path, head).with_fallback(means)
