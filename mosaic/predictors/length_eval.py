"""Length-prediction metrics, always against the per-expert mean and the prompt-length linear baselines.

Metrics: MAE, MAPE, Kendall tau over all rows and within each expert (ranking is what a scheduler uses; the
per-expert mean cannot rank requests of one expert), accuracy of the power-of-two length bucket, p90 coverage.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from mosaic.core.errors import WorkloadError
from mosaic.predictors.length_data import LengthDataset
from mosaic.predictors.linear import LinearLengthPredictor

BUCKET_EDGES = tuple(2**i for i in range(4, 14))  # 16 .. 8192 tokens: bucket b holds [edge[b-1], edge[b])


class RowPredictor(Protocol):
    name: str

    def predict_rows(self, ds: LengthDataset) -> np.ndarray: ...

    def quantile_rows(self, ds: LengthDataset, head: str = "p90") -> np.ndarray: ...


@dataclass(frozen=True, slots=True)
class LengthMetrics:
    """How well one predictor's point estimate (and p90) match true output tokens."""

    n: int
    mae: float  # tokens
    mape: float  # mean |error| / max(true, 1)
    tau: float  # Kendall tau-b over all rows
    tau_within: float  # row-weighted mean of Kendall tau-b inside each expert (0 for a constant prediction)
    bucket_acc: float  # share of rows whose predicted power-of-two bucket equals the true one
    p90_coverage: float  # share of rows with true <= predicted p90 (nan: no p90)


@dataclass(frozen=True, slots=True)
class Comparison:
    """Metrics and predictions of several predictors on one held-out set."""

    test: LengthDataset
    metrics: Mapping[str, LengthMetrics]  # predictor name -> metrics
    predictions: Mapping[str, np.ndarray]  # predictor name -> point predictions (test row order)


def bucket_of(tokens: np.ndarray, edges: Sequence[float] = BUCKET_EDGES) -> np.ndarray:
    """Length bucket of each value (0: below the first edge)."""
    return np.digitize(np.asarray(tokens, dtype=float), np.asarray(edges, dtype=float))


def _kendall_numpy(x: np.ndarray, y: np.ndarray, block: int = 512) -> float:
    num = dx_sum = dy_sum = 0.0
    for a in range(0, len(x), block):
        sx = np.sign(x[a : a + block, None] - x[None, :])
        sy = np.sign(y[a : a + block, None] - y[None, :])
        num += float((sx * sy).sum())
        dx_sum += float(np.abs(sx).sum())
        dy_sum += float(np.abs(sy).sum())
    return num / math.sqrt(dx_sum * dy_sum) if dx_sum and dy_sum else 0.0


def kendall_tau(x: np.ndarray, y: np.ndarray) -> float:
    """Kendall tau-b (scipy when installed, else an exact O(n^2) numpy version); 0 when either side is constant."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if len(x) != len(y):
        raise WorkloadError(f"kendall tau: {len(x)} vs {len(y)} values")
    if len(x) < 2 or np.all(x == x[0]) or np.all(y == y[0]):
        return 0.0
    try:
        from scipy.stats import kendalltau
    except ModuleNotFoundError:
        return _kendall_numpy(x, y)
    return float(kendalltau(x, y).statistic)


def _tau_within(true: np.ndarray, pred: np.ndarray, groups: Sequence[str]) -> float:
    g = np.asarray(groups)
    total = weight = 0.0
    for name in np.unique(g):
        m = g == name
        if m.sum() >= 2:
            total += kendall_tau(true[m], pred[m]) * m.sum()
            weight += m.sum()
    return total / weight if weight else 0.0


def evaluate(
    true: np.ndarray,
    pred: np.ndarray,
    p90: np.ndarray | None = None,
    groups: Sequence[str] | None = None,
    edges: Sequence[float] = BUCKET_EDGES,
) -> LengthMetrics:
    """Metrics of point predictions ``pred`` (and optional ``p90``) against ``true``; ``groups`` = experts."""
    true, pred = np.asarray(true, dtype=float), np.asarray(pred, dtype=float)
    if true.shape != pred.shape or not len(true):
        raise WorkloadError(f"evaluate: need equal, non-empty arrays, got {true.shape} and {pred.shape}")
    if np.isnan(true).any():
        raise WorkloadError("evaluate: true lengths contain nan (unlabelled rows)")
    err = np.abs(true - pred)
    cover = float(np.mean(true <= np.asarray(p90))) if p90 is not None else math.nan
    return LengthMetrics(
        n=len(true),
        mae=float(err.mean()),
        mape=float(np.mean(err / np.maximum(true, 1.0))),
        tau=kendall_tau(true, pred),
        tau_within=_tau_within(true, pred, groups) if groups is not None else math.nan,
        bucket_acc=float(np.mean(bucket_of(true, edges) == bucket_of(pred, edges))),
        p90_coverage=cover,
    )


def expert_quantile(train: LengthDataset, test: LengthDataset, q: float = 0.5) -> np.ndarray:
    """Per-expert ``q`` quantile of the training lengths for each test row (pooled for unseen experts)."""
    experts = np.asarray(train.expert)
    table = {e: float(np.quantile(train.output_tokens[experts == e], q)) for e in np.unique(experts)}
    pooled = float(np.quantile(train.output_tokens, q))
    return np.array([table.get(e, pooled) for e in test.expert])


def _heads(model: Any, test: LengthDataset) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Name -> (point, p90) rows one model contributes (the LightGBM model gives its p50 and mean heads)."""
    if hasattr(model, "predict_heads"):
        h = model.predict_heads(test)
        return {f"{model.name}-p50": (h["p50"], h["p90"]), f"{model.name}-mean": (h["mean"], h["p90"])}
    return {model.name: (model.predict_rows(test), model.quantile_rows(test, "p90"))}


def compare_fitted(models: Sequence[RowPredictor], test: LengthDataset, train: LengthDataset | None = None):
    """Evaluate fitted models on ``test``; with ``train``, add the per-expert median as a reference row."""
    if not test.labelled:
        raise WorkloadError(f"length dataset {test.name!r}: evaluation needs known output tokens")
    preds: dict[str, np.ndarray] = {}
    metrics: dict[str, LengthMetrics] = {}
    if train is not None:
        med = expert_quantile(train, test, 0.5)
        preds["expert-median"] = med
        metrics["expert-median"] = evaluate(test.output_tokens, med, expert_quantile(train, test, 0.9), test.expert)
    for m in models:
        for name, (point, p90) in _heads(m, test).items():
            preds[name] = point
            metrics[name] = evaluate(test.output_tokens, point, p90, test.expert)
    return Comparison(test, metrics, preds)


def baselines(train: LengthDataset) -> list[LinearLengthPredictor]:
    """The two baselines every report includes: per-expert mean and per-expert prompt-length linear fit."""
    return [LinearLengthPredictor.fit(train, use_prompt=False), LinearLengthPredictor.fit(train)]


def compare_on_split(
    train: LengthDataset,
    test: LengthDataset,
    lgbm_params: Any = None,
    progress: Callable[[str, int, int], None] | None = None,
) -> tuple[Comparison, Any]:
    """Fit the baselines and LightGBM on ``train``; evaluate all on ``test``. Returns (comparison, LightGBM)."""
    from mosaic.predictors.lgbm import LightGBMLengthPredictor

    lgbm = LightGBMLengthPredictor.fit(train, lgbm_params, progress)
    return compare_fitted([*baselines(train), lgbm], test, train), lgbm


def metrics_table(comp: Comparison, title: str, reference: str = "expert-mean"):
    """A rich table of ``comp`` with each MAE relative to ``reference``."""
    from rich.table import Column, Table

    ref = comp.metrics.get(reference)
    table = Table(Column("predictor", no_wrap=True), "MAE", "vs mean", "MAPE", "tau", "tau/expert", "bucket",
                  "p90 cov", title=f"{title} ({comp.test.name}, {len(comp.test)} held-out rows)")  # fmt: skip
    for name, m in comp.metrics.items():
        rel = f"{m.mae / ref.mae - 1:+.1%}" if ref and ref.mae else "-"
        cover = "-" if math.isnan(m.p90_coverage) else f"{m.p90_coverage:.2f}"
        table.add_row(name, f"{m.mae:.1f}", rel, f"{m.mape:.2f}", f"{m.tau:.3f}", f"{m.tau_within:.3f}",
                      f"{m.bucket_acc:.2f}", cover)  # fmt: skip
    return table


def cross_expert_ceiling(train: LengthDataset, test: LengthDataset) -> tuple[float, float, int]:
    """How much per-query signal the data holds: MAE of a reference that *peeks* at the other experts' true lengths
    on the same query (expert mean x the mean log-ratio of the others' lengths to their means), next to the
    per-expert mean's MAE on the same rows. Returns (reference MAE, mean MAE, rows); nan without multi-expert
    queries. Not a predictor: no scheduler knows other experts' lengths in advance."""
    experts = np.asarray(train.expert)
    means = {e: float(train.output_tokens[experts == e].mean()) for e in np.unique(experts)}
    pooled = float(train.output_tokens.mean())
    mean = np.array([means.get(e, pooled) for e in test.expert])
    y = test.output_tokens
    r = np.log(np.maximum(y, 1.0) / np.maximum(mean, 1.0))
    _, inv, counts = np.unique(test.query_id, return_inverse=True, return_counts=True)
    sums = np.bincount(inv, weights=r)
    ok = counts[inv] >= 2
    if not ok.any():
        return math.nan, math.nan, 0
    others = (sums[inv][ok] - r[ok]) / (counts[inv][ok] - 1)
    ref = mean[ok] * np.exp(others)
    return float(np.abs(ref - y[ok]).mean()), float(np.abs(mean[ok] - y[ok]).mean()), int(ok.sum())
