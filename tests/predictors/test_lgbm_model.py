"""LightGBM length predictor: quantile heads, beating the per-expert mean, save/load, feature-spec checks, factory."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("lightgbm", reason="LightGBM is not installed (pip install 'mosaic-moa[ml]')")

from mosaic.core.errors import ConfigError
from mosaic.core.types import Expert, ExpertKind, Query, Workload
from mosaic.predictors import features
from mosaic.predictors.factory import build_length_predictor
from mosaic.predictors.length_data import TOY_EXPERTS, LengthDataset, split_by_query, toy
from mosaic.predictors.length_eval import compare_fitted, evaluate
from mosaic.predictors.lgbm import LGBMParams, LightGBMLengthPredictor, sidecar_path, usable_cores
from mosaic.predictors.linear import LinearLengthPredictor

PARAMS = LGBMParams(num_boost_round=120, hash_dims=32)


@pytest.fixture(scope="module")
def split() -> tuple[LengthDataset, LengthDataset]:
    return split_by_query(toy(900, np.random.default_rng(0)), 0.25, np.random.default_rng(1))


@pytest.fixture(scope="module")
def model(split: tuple[LengthDataset, LengthDataset]) -> LightGBMLengthPredictor:
    return LightGBMLengthPredictor.fit(split[0], PARAMS)


def test_beats_the_expert_mean_on_per_query_signal(split, model) -> None:
    train, test = split
    comp = compare_fitted([LinearLengthPredictor.fit(train, use_prompt=False), model], test, train)
    mean, lgb = comp.metrics["expert-mean"], comp.metrics["lightgbm-mean"]
    assert lgb.mae < 0.7 * mean.mae  # >= 30% lower MAE
    assert comp.metrics["lightgbm-p50"].mae < 0.7 * mean.mae
    assert lgb.tau_within > 0.5 > mean.tau_within
    assert lgb.bucket_acc > mean.bucket_acc


def test_quantile_heads_are_ordered_and_calibrated(split, model) -> None:
    _, test = split
    h = model.predict_heads(test)
    assert set(h) == {"p50", "p90", "mean"} and all(v.shape == (len(test),) for v in h.values())
    assert (h["p50"] <= h["p90"]).all() and (h["p50"] >= 1).all()
    assert np.mean(h["p90"] > 1.2 * h["p50"]) > 0.9  # the p90 head is a real upper quantile, not a copy
    below50, below90 = np.mean(test.output_tokens <= h["p50"]), np.mean(test.output_tokens <= h["p90"])
    assert 0.35 < below50 < 0.65 and 0.8 < below90 < 0.97
    assert model.with_point("p90").predict_rows(test).tolist() == h["p90"].tolist()
    assert evaluate(test.output_tokens, h["p50"], h["p90"]).p90_coverage == pytest.approx(below90)
    with pytest.raises(ConfigError, match="unknown quantile head 'p99'"):
        model.quantile_rows(test, "p99")


def test_training_is_deterministic_and_reports_progress(split) -> None:
    small = split[0].take(np.arange(300))
    calls: list[tuple[str, int, int]] = []
    a = LightGBMLengthPredictor.fit(small, LGBMParams(num_boost_round=5, hash_dims=8),
                                    lambda h, i, n: calls.append((h, i, n)))  # fmt: skip
    b = LightGBMLengthPredictor.fit(small, LGBMParams(num_boost_round=5, hash_dims=8))
    assert a.predict_rows(split[1]).tolist() == b.predict_rows(split[1]).tolist()
    assert [c for c in calls if c[1] == 5] == [("p50", 5, 5), ("p90", 5, 5), ("mean", 5, 5)] and len(calls) == 15
    with pytest.raises(ConfigError, match="num_boost_round=0"):
        LGBMParams(num_boost_round=0)
    with pytest.raises(ConfigError, match=r"feature_fraction=1\.5"):
        LGBMParams(feature_fraction=1.5)
    with pytest.raises(ConfigError, match="num_threads=-1"):
        LGBMParams(num_threads=-1)
    assert LGBMParams().threads() == usable_cores() >= 1  # 0: every usable core
    assert LGBMParams(num_threads=1).booster_params("mean")["num_threads"] == 1


def test_save_load_round_trip(tmp_path: Path, split, model) -> None:
    path = tmp_path / "len.lgbm"
    side = model.save(path, {"note": "x"})
    assert side == sidecar_path(path) and side.is_file()
    meta = json.loads(side.read_text())
    assert meta["feature_spec"]["hash_dims"] == 32 and meta["note"] == "x" and meta["lightgbm_version"]
    loaded = LightGBMLengthPredictor.load(path)
    for head, values in model.predict_heads(split[1]).items():
        np.testing.assert_allclose(loaded.predict_heads(split[1])[head], values, rtol=1e-9)
    assert loaded.spec == model.spec and LightGBMLengthPredictor.load(path, "p50").point == "p50"


def test_load_fails_clearly_on_other_features_or_files(tmp_path: Path, model, monkeypatch) -> None:
    path = tmp_path / "len.lgbm"
    side = model.save(path)
    meta = json.loads(side.read_text())
    spec = {k: v for k, v in meta["feature_spec"].items() if k != "names_digest"}
    side.write_text(json.dumps({**meta, "feature_spec": {**spec, "hash_dims": 64}}))
    with pytest.raises(ConfigError, match="trained on 44 feature columns that differ from the 76 this code builds"):
        LightGBMLengthPredictor.load(path)
    side.write_text(json.dumps(meta))
    monkeypatch.setattr(features, "NUMERIC", features.NUMERIC[:-1])  # the code now builds one column less
    with pytest.raises(ConfigError, match="other feature columns than this code builds: retrain"):
        LightGBMLengthPredictor.load(path)
    monkeypatch.undo()
    path.write_text(path.read_text().replace("p50", "p5O", 1))
    with pytest.raises(ConfigError, match="does not match its sidecar"):
        LightGBMLengthPredictor.load(path)
    side.unlink()
    with pytest.raises(ConfigError, match=r"sidecar .*len\.lgbm\.meta\.json does not exist"):
        LightGBMLengthPredictor.load(path)
    (tmp_path / "other.json").write_text('{"format": "something-else"}')
    with pytest.raises(ConfigError, match="format 'something-else', expected 'mosaic-lgbm-length/1'"):
        LightGBMLengthPredictor.load(tmp_path / "other.json")


def _workload(expert_names: tuple[str, ...]) -> Workload:
    known = {name: (kind, size) for name, kind, size, _ in TOY_EXPERTS}
    specs = [(n, *known.get(n, ("instruct", 7.0))) for n in expert_names]
    experts = tuple(Expert(n, f"org/{n}", size, ExpertKind(kind), 2 * size) for n, kind, size in specs)
    queries = tuple(Query(i, f"math question: w{i} answer step by step", "math", prompt_tokens=20 + i)
                    for i in range(3))  # fmt: skip
    return Workload.build("wl", queries, experts, tuple(expert_names for _ in queries), experts[0])


def test_heads_of_one_workload_are_computed_once(model, monkeypatch) -> None:
    wl, other = _workload(("inst-a", "reas-a")), _workload(("reas-a",))
    first = model.predict(wl, wl.requests)
    fresh = model.with_point("mean")  # a new predictor: nothing cached
    spread = fresh.predict_spread(wl, wl.requests)
    calls, heads = [], model.predict_heads
    monkeypatch.setattr(model, "predict_heads", lambda ds: calls.append(len(ds)) or heads(ds))
    expected = first.copy()
    first[:] = -1.0  # callers get copies: the cached heads stay intact
    assert np.array_equal(model.predict(wl, wl.requests), expected)
    assert np.array_equal(model.predict_spread(wl, wl.requests), spread) and calls == []
    assert np.array_equal(model.predict(other, other.requests), fresh.predict(other, other.requests))
    assert calls == [len(other.requests)]  # another workload is predicted afresh


def test_factory_predicts_a_workload_with_fallback_for_unseen_experts(tmp_path: Path, model) -> None:
    path = tmp_path / "len.lgbm"
    model.save(path)
    wl = _workload(("inst-a", "reas-a", "newcomer"))
    pred = build_length_predictor(f"lightgbm:{path}@p90", means={"newcomer": 123.0})
    assert isinstance(pred, LightGBMLengthPredictor) and pred.point == "p90"
    out = pred.predict(wl, wl.requests)
    by = {e: out[[r.expert == e for r in wl.requests]] for e in ("inst-a", "reas-a", "newcomer")}
    assert (by["newcomer"] == 123.0).all()
    assert (by["reas-a"] > 3 * by["inst-a"]).all()  # the reasoning expert writes far more
    spread = pred.predict_spread(wl, wl.requests)
    newcomer = np.array([r.expert == "newcomer" for r in wl.requests])
    assert (spread[newcomer] == 0.0).all() and (spread[~newcomer] > 0).all()  # no distribution behind a fallback
    with pytest.raises(ConfigError, match="needs a model path"):
        build_length_predictor("lightgbm")
    with pytest.raises(ConfigError, match="does not exist"):
        build_length_predictor(f"lightgbm:{tmp_path / 'nope.lgbm'}")
