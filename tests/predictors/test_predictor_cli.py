"""`mosaic predictor train|eval` through the CLI entry point (main) and once as a subprocess."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mosaic.cli import main
from mosaic.predictors.commands import dataset_digest, load_model
from mosaic.predictors.length_data import toy, write_rows_jsonl
from mosaic.predictors.lgbm import sidecar_path

pytest.importorskip("lightgbm", reason="LightGBM is not installed (pip install 'mosaic-moa[ml]')")


@pytest.fixture(scope="module")
def rows_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("cli") / "rows.jsonl"
    write_rows_jsonl(toy(300, np.random.default_rng(0)), path)
    return path


def test_train_then_eval(tmp_path: Path, rows_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = tmp_path / "m.lgbm"
    assert main(["predictor", "train", "--data", str(rows_file), "--out", str(model), "--rounds", "150",
                 "--hash-dims", "16", "--seed", "3"]) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert "trained lightgbm on 480 rows" in out and "lightgbm-p50" in out and "expert-mean" in out
    meta = json.loads(sidecar_path(model).read_text())
    assert meta["split"]["seed"] == 3 and meta["split"]["test_rows"] == 120 and meta["train_seconds"] > 0
    report = tmp_path / "eval.json"
    assert main(["predictor", "eval", "--model", str(model), "--data", str(rows_file), "--json", str(report)]) == 0
    out = capsys.readouterr().out
    assert "120 held-out rows" in out and "warning" not in out  # the training split is reused: unseen rows only
    metrics = json.loads(report.read_text())["metrics"]
    assert set(metrics) == {"expert-median", "expert-mean", "linear", "lightgbm-p50", "lightgbm-mean"}
    assert metrics["lightgbm-mean"]["mae"] < 0.8 * metrics["expert-mean"]["mae"]
    assert metrics["expert-mean"]["tau_within"] == 0.0 and metrics["lightgbm-p50"]["p90_coverage"] > 0.6
    assert main(["predictor", "eval", "--model", str(model), "--data", str(rows_file), "--seed", "4"]) == 0
    assert "warning" in capsys.readouterr().out  # another split of the training data: seen rows


def test_linear_kind_and_bad_input(tmp_path: Path, rows_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    lin = tmp_path / "lin.json"
    assert main(["predictor", "train", "--data", str(rows_file), "--out", str(lin), "--kind", "linear"]) == 0
    assert load_model(lin).name == "linear"
    assert main(["predictor", "eval", "--model", str(lin), "--data", str(rows_file)]) == 0
    capsys.readouterr()
    assert main(["predictor", "train", "--data", str(tmp_path / "none.jsonl"), "--out", str(lin)]) == 2
    assert "length data" in capsys.readouterr().out
    assert main(["predictor", "train", "--data", str(rows_file), "--out", str(lin), "--test-frac", "1.5"]) == 2
    assert "--test-frac must be in [0, 1)" in capsys.readouterr().out
    assert main(["predictor", "train", "--data", str(rows_file), "--out", str(lin), "--rounds", "0"]) == 2
    assert "num_boost_round=0" in capsys.readouterr().out
    (tmp_path / "junk.bin").write_text("hello")
    assert main(["predictor", "eval", "--model", str(tmp_path / "junk.bin"), "--data", str(rows_file)]) == 2
    assert "not a MOSAIC length model" in capsys.readouterr().out
    assert dataset_digest(toy(3, np.random.default_rng(0))) != dataset_digest(toy(3, np.random.default_rng(1)))


def test_subprocess_all_rows(tmp_path: Path, rows_file: Path) -> None:
    model = tmp_path / "all.lgbm"
    args = [sys.executable, "-m", "mosaic.cli", "predictor", "train", "--data", str(rows_file), "--out", str(model),
            "--rounds", "10", "--hash-dims", "0", "--test-frac", "0"]  # fmt: skip
    done = subprocess.run(args, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "trained lightgbm on 600 rows" in done.stdout and model.is_file()
    assert load_model(model).meta["split"]["test_rows"] == 0
