"""experiments/calibration.py: the fidelity study on a tiny job as a subprocess; the 1k job's figures as filed."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "experiments" / "calibration.py"


@pytest.fixture(scope="module")
def script():
    spec = importlib.util.spec_from_file_location("calibration", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["calibration"] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop("calibration", None)


def test_script_writes_every_mode_above_the_floor(tmp_path: Path) -> None:
    out = tmp_path / "out"
    args = ["--sizes", "200", "1000", "--caps", "16", "128", "--fit", "--out", str(out)]
    proc = subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    data = json.loads((out / "results.json").read_text())
    assert [(r["cap"], r["requests"]) for r in data["rows"]] == [(16, 200), (16, 1000), (128, 200), (128, 1000)]
    for r in data["rows"]:
        for mode in ("sum/reserve", "max/reserve", "sum/paged", "max/paged"):
            assert r[mode]["makespan_s"] > r["floor_s"] > 0
        assert (r["vidur_s"] is not None) == (r["cap"] == 128 and r["requests"] == 1000)
    assert "fitted max_seq_share" in (out / "table.txt").read_text() and "microsoft/vidur" in proc.stdout
    assert (out / "calibration.png").stat().st_size > 5_000


def test_the_1k_job_reproduces_the_issue_and_lands_near_vidur(script) -> None:
    items = script.job(1000, 0)
    today = script.simulate(items, script.model_cost(256, "sum", "reserve"))["makespan_s"]
    assert today == pytest.approx(script.ISSUE_MOSAIC_S[1000], abs=0.05)  # the issue's figure, as filed
    new = script.simulate(items, script.model_cost(128, "max", "paged"))["makespan_s"]
    assert abs(new / script.VIDUR_MAKESPAN_S[1000] - 1) <= 0.10 and new > script.floor_s(items, 128)
    assert script.floor_s(items, 128) == pytest.approx(187.1, abs=0.1)  # the issue's ~187 s


def test_paper_script_runs_every_scheduler_under_both_models(tmp_path: Path) -> None:
    out = tmp_path / "paper"
    args = ["--configs", "gpqa", "--schedulers", "round-robin", "greedy-lpt", "--set", "workload.num_queries=40",
            "--out", str(out)]  # fmt: skip
    proc = subprocess.run([sys.executable, str(ROOT / "experiments" / "fidelity_paper.py"), *args],
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    rows = json.loads((out / "results.json").read_text())["rows"]
    assert [(r["config"], r["mode"]) for r in rows] == [("gpqa", "sum/reserve"), ("gpqa", "max/paged")]
    assert all(set(r["makespan_s"]) == set(r["expert_makespan_s"]) == {"round-robin", "greedy-lpt"} for r in rows)
    assert all(r["expert_makespan_s"][s] <= r["makespan_s"][s] for r in rows for s in r["makespan_s"])
    text = (out / "table.txt").read_text()
    assert "greedy-lpt speedup" in text and "expert-stage makespan" in text
