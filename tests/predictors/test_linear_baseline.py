"""Prompt-length linear baseline and the per-expert mean it reduces to: exact fits, p90 rule, file format."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from mosaic.core.errors import ConfigError, WorkloadError
from mosaic.core.types import Workload
from mosaic.predictors.factory import build_length_predictor
from mosaic.predictors.length_data import LengthDataset
from mosaic.predictors.linear import LinearLengthPredictor


def ds_of(experts: list[str], prompt: list[float], out: list[float]) -> LengthDataset:
    n = len(experts)
    return LengthDataset(
        name="lin", query_id=np.arange(n), text=("",) * n, domain=("d",) * n, n_choices=np.zeros(n),
        expert=tuple(experts), expert_kind=("instruct",) * n, expert_size=np.full(n, np.nan),
        prompt_tokens=np.array(prompt), output_tokens=np.array(out),
    )  # fmt: skip


def test_exact_linear_fit_per_expert_and_pooled_fallback() -> None:
    ds = ds_of(["a"] * 3 + ["b"] * 3, [10, 20, 30, 10, 20, 30], [25, 45, 65, 300, 300, 300])
    m = LinearLengthPredictor.fit(ds)
    assert m.coefs["a"].intercept == pytest.approx(5) and m.coefs["a"].slope == pytest.approx(2)
    assert m.coefs["b"].slope == pytest.approx(0, abs=1e-9) and m.coefs["b"].p90_factor == pytest.approx(1.0)
    q = ds_of(["a", "b", "zz"], [40, 40, 20], [0, 0, 0])
    pred = m.predict_rows(q)
    assert pred[:2] == pytest.approx([85, 300])
    assert pred[2] == pytest.approx(m.pooled.intercept + m.pooled.slope * 20)  # unseen expert: pooled fit
    assert m.name == "linear"


def test_mean_mode_and_p90_factor() -> None:
    ds = ds_of(["a"] * 10, list(range(10)), [100.0] * 9 + [300.0])
    m = LinearLengthPredictor.fit(ds, use_prompt=False)
    assert m.name == "expert-mean" and m.predict_rows(ds) == pytest.approx([120.0] * 10)
    ratio90 = np.quantile(np.array([100.0] * 9 + [300.0]) / 120.0, 0.9)
    assert m.quantile_rows(ds) == pytest.approx([120.0 * ratio90] * 10)
    with pytest.raises(ConfigError, match="only the p90 quantile"):
        m.quantile_rows(ds, "p50")
    with pytest.raises(WorkloadError, match="needs rows with known output tokens"):
        LinearLengthPredictor.fit(ds_of(["a"], [1], [np.nan]))


def test_save_load_and_factory(tmp_path: Path, tiny_workload: Workload) -> None:
    m = LinearLengthPredictor.fit(ds_of(["inst", "inst", "reas", "reas"], [10, 60, 10, 60], [100, 200, 1000, 2000]))
    path = m.save(tmp_path / "lin.json")
    loaded = build_length_predictor(f"linear:{path}")
    assert isinstance(loaded, LinearLengthPredictor) and loaded.coefs == m.coefs
    pred = loaded.predict(tiny_workload, tiny_workload.requests)
    expect = [m.coefs.get(r.expert, m.pooled).intercept + m.coefs.get(r.expert, m.pooled).slope * r.prompt_tokens
              for r in tiny_workload.requests]  # fmt: skip
    assert pred == pytest.approx(expect)
    bad = json.loads(path.read_text())
    bad["experts"]["inst"]["slope"] = float("inf")
    path.write_text(json.dumps(bad))
    with pytest.raises(ConfigError, match=r"non-finite coefficients for \['inst'\]"):
        LinearLengthPredictor.load(path)
    path.write_text('{"format": "x"}')
    with pytest.raises(ConfigError, match="not a linear length model"):
        LinearLengthPredictor.load(path)
    with pytest.raises(ConfigError, match="needs a fitted model"):
        build_length_predictor("linear")
