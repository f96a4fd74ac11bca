"""The ``mosaic`` command as a user runs it: a subprocess, real files, offline W&B."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "experiments" / "configs" / "gpqa.yaml"


def mosaic(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true", "COLUMNS": "220"}
    return subprocess.run([sys.executable, "-m", "mosaic.cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)  # fmt: skip


def test_compare_prints_one_table_and_writes_gantt_traces_and_wandb(tmp_path):
    out = tmp_path / "cmp"
    proc = mosaic("compare", str(CONFIG), "--schedulers", "round-robin,data-parallel,greedy-lpt", "--out", str(out),
                  cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    text = proc.stdout
    assert text.count("scheduler ") == 1 and text.count("┃ expert s ") == 1  # one table
    for col in ("aggregation s", "end-to-end s", "expert x", "gap %"):
        assert col in text
    for name in ("round-robin", "data-parallel", "greedy-lpt"):
        assert name in text
        assert (out / f"{name}.trace.jsonl").stat().st_size > 0
    assert "paper (MOSAIC vs round-robin, gpqa)" in text
    png = out / "gantt.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    assert list((out / "wandb").glob("offline-run-*/run-*.wandb"))
    metrics = json.loads((out / "metrics.json").read_text())
    runs = metrics["runs"] if isinstance(metrics, dict) else metrics
    by_name = {r["scheduler"]: r for r in runs}
    assert set(by_name) == {"round-robin", "data-parallel", "greedy-lpt"}
    rr = by_name["round-robin"]
    assert f"{rr['expert_makespan']:,.1f}" in text  # the table shows what metrics.json holds
    assert rr["end_to_end"] >= rr["expert_makespan"] + rr["aggregation_time"] - 1e-6


def test_run_with_overrides_and_adaptive_aggregation(tmp_path):
    out = tmp_path / "run"
    proc = mosaic("run", str(CONFIG), "--scheduler", "greedy-lpt", "--seed", "3", "--threshold", "0.67",
                  "--set", "workload.num_queries=30", "--set", "tracking.mode=disabled", "--out", str(out),
                  cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "30 queries" in proc.stdout and "adaptive" in proc.stdout
    saved = (out / "config.yaml").read_text()
    assert "seed: 3" in saved and "threshold: 0.67" in saved


@pytest.mark.parametrize(
    "args,needle",
    [
        (["--set", "cluster.workers=0"], "cluster.workers"),
        (["--set", "workload.preset=imagenet"], "workload.preset"),
        (["--set", "cluster.gpus=4"], "cluster.gpus"),
        (["--set", "costs.predictor=nope"], "nope"),
    ],
)
def test_bad_config_is_one_clear_error(tmp_path, args, needle):
    proc = mosaic("run", str(CONFIG), *args, "--set", "tracking.mode=disabled", "--out", str(tmp_path / "x"),
                  cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 2
    assert "error:" in proc.stdout and needle in proc.stdout
    assert "Traceback" not in proc.stdout + proc.stderr


def test_unknown_scheduler_and_missing_config(tmp_path):
    proc = mosaic("compare", str(CONFIG), "--schedulers", "round-robin,magic", cwd=tmp_path)
    assert proc.returncode == 2 and "magic" in proc.stdout and "greedy-lpt" in proc.stdout
    proc = mosaic("run", str(tmp_path / "none.yaml"), cwd=tmp_path)
    assert proc.returncode == 2 and "does not exist" in proc.stdout


def test_list_shows_registries(tmp_path):
    proc = mosaic("list", cwd=tmp_path)
    assert proc.returncode == 0
    for name in ("round-robin", "greedy-lpt", "sim", "medmcqa", "threshold"):
        assert name in proc.stdout
