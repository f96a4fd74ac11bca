"""Mean and oracle length predictors, their registry entries and the predictor factory."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mosaic.core.errors import ConfigError, RegistryError, WorkloadError
from mosaic.core.trace import AGGREGATION_STAGE, EXPERT_STAGE, LoadRecord, RequestRecord, TraceWriter
from mosaic.core.types import Response, Responses, Workload
from mosaic.predictors.factory import build_length_predictor
from mosaic.predictors.lengths import MeanLengthPredictor, OracleLengthPredictor
from mosaic.predictors.registry import LENGTH_PREDICTORS

MEANS = {"inst": 200.0, "reas": 3000.0, "inst2": 150}


def rec(expert: str, tokens: int, stage: str = EXPERT_STAGE, rid: int = 0) -> RequestRecord:
    return RequestRecord(stage, rid, rid, expert, 0, 0.0, 1.0, 10, tokens)


def responses_for(wl: Workload) -> Responses:
    return Responses({(r.query_id, r.expert): Response(10 * r.query_id + len(r.expert)) for r in wl.requests})


def test_mean_predicts_the_expert_mean(tiny_workload: Workload) -> None:
    pred = MeanLengthPredictor(MEANS).predict(tiny_workload, tiny_workload.requests)
    assert pred.shape == (len(tiny_workload.requests),) and pred.dtype == float
    assert pred.tolist() == [MEANS[r.expert] for r in tiny_workload.requests]
    sub = tiny_workload.requests[2:4]
    assert MeanLengthPredictor(MEANS).predict(tiny_workload, sub).tolist() == [MEANS[r.expert] for r in sub]
    assert MeanLengthPredictor(MEANS).predict(tiny_workload, ()).shape == (0,)


def test_mean_unknown_expert_lists_the_known_ones(tiny_workload: Workload) -> None:
    with pytest.raises(WorkloadError, match=r"no mean for expert 'reas'; it has: inst, inst2"):
        MeanLengthPredictor({"inst": 1.0, "inst2": 2.0}).predict(tiny_workload, tiny_workload.requests)


@pytest.mark.parametrize("bad", [-1.0, float("nan"), float("inf"), "200", None, True])
def test_mean_rejects_bad_means(bad: object) -> None:
    with pytest.raises(ConfigError, match="means must be finite numbers >= 0"):
        MeanLengthPredictor({"inst": bad})  # type: ignore[dict-item]


def test_mean_accepts_numpy_numbers() -> None:
    assert MeanLengthPredictor({"a": np.int64(3), "b": np.float32(2.5)}).means == {"a": 3.0, "b": 2.5}


def test_fit_averages_request_records_per_expert() -> None:
    records = [rec("a", 100), rec("a", 300), rec("b", 50), LoadRecord(EXPERT_STAGE, 0, "a", 0.0, 1.0),
               rec("a", 1000, AGGREGATION_STAGE)]  # fmt: skip
    assert MeanLengthPredictor.fit(records).means == {"a": 1400 / 3, "b": 50.0}
    assert MeanLengthPredictor.fit(records, stage=EXPERT_STAGE).means == {"a": 200.0, "b": 50.0}
    assert MeanLengthPredictor.fit(records, stage=AGGREGATION_STAGE).means == {"a": 1000.0}
    with pytest.raises(WorkloadError, match="no request records of stage 'aggregation' to fit on"):
        MeanLengthPredictor.fit(records[:4], stage=AGGREGATION_STAGE)


def test_fit_from_a_trace_file(tmp_path: Path) -> None:
    path = tmp_path / "trace.jsonl"
    with TraceWriter(path) as w:
        w.extend([rec("a", 10, rid=0), rec("a", 20, rid=1), rec("b", 7, rid=2)])
    assert MeanLengthPredictor.from_trace(path).means == {"a": 15.0, "b": 7.0}
    assert build_length_predictor(f"mean:{path}").means == {"a": 15.0, "b": 7.0}  # type: ignore[attr-defined]
    with pytest.raises(ConfigError, match="does not exist"):
        MeanLengthPredictor.from_trace(tmp_path / "missing.jsonl")


def test_oracle_returns_true_lengths(tiny_workload: Workload) -> None:
    responses = responses_for(tiny_workload)
    pred = OracleLengthPredictor(responses).predict(tiny_workload, tiny_workload.requests)
    assert pred.tolist() == [responses.get(r.query_id, r.expert).output_tokens for r in tiny_workload.requests]
    partial = Responses({k: v for k, v in responses.table.items() if k != (1, "reas")})
    with pytest.raises(WorkloadError, match="no recorded response of expert 'reas' to query 1"):
        OracleLengthPredictor(partial).predict(tiny_workload, tiny_workload.requests)


def test_registry_and_factory(tiny_workload: Workload) -> None:
    assert "mean" in LENGTH_PREDICTORS and "oracle" in LENGTH_PREDICTORS
    mean = build_length_predictor("mean", means=MEANS, responses=None, workload=tiny_workload)
    assert isinstance(mean, MeanLengthPredictor) and mean.means["inst2"] == 150.0
    oracle = build_length_predictor("oracle", means=MEANS, responses=responses_for(tiny_workload))
    assert isinstance(oracle, OracleLengthPredictor)
    with pytest.raises(ConfigError, match="'oracle' needs the ground-truth responses"):
        build_length_predictor("oracle", means=MEANS, responses=None)
    with pytest.raises(ConfigError, match="'oracle' takes no argument"):
        build_length_predictor("oracle:x", responses=responses_for(tiny_workload))
    with pytest.raises(ConfigError, match="'mean' needs per-expert means"):
        build_length_predictor("mean")
    with pytest.raises(ConfigError, match="must name a length predictor"):
        build_length_predictor(":x")


def test_unknown_predictor_is_the_registry_error() -> None:
    with pytest.raises(RegistryError, match=r"unknown length predictor 'magic'; valid: .*mean, noisy-oracle, oracle"):
        build_length_predictor("magic:arg", means=MEANS)


def test_noisy_oracle_from_the_config_is_seeded_and_checked():
    from mosaic.core.config import load_config
    from mosaic.pipeline import prepare

    def predicted(seed: int, spec: str = "noisy-oracle:0.6") -> np.ndarray:
        exp = prepare(load_config(None, ["workload.preset=gpqa", "workload.num_queries=20", f"seed={seed}",
                                         f"costs.predictor={spec}"]))  # fmt: skip
        truth = [exp.responses.get(r.query_id, r.expert).output_tokens for r in exp.workload.requests]
        return np.array([exp.costs.predicted_tokens(r) / t for r, t in zip(exp.workload.requests, truth, strict=True)])

    a = predicted(0)
    assert (a == predicted(0)).all() and not np.allclose(predicted(1), a)  # same seed, same errors
    assert 0.4 < float(np.std(np.log(a))) < 0.8  # a log-normal error of sigma 0.6 (60 requests)
    assert np.allclose(predicted(0, "noisy-oracle:0"), 1.0)
    with pytest.raises(ConfigError, match="noise level >= 0"):
        predicted(0, "noisy-oracle:-1")
