"""experiments/routerbench_aggregation.py: run as a subprocess on a hand-written CSV and on the real files."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

from mosaic.workloads.routerbench import default_data_dir

SCRIPT = Path(__file__).resolve().parents[2] / "experiments" / "routerbench_aggregation.py"


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=120)


def _table(out: Path, name: str = "table.csv") -> list[dict[str, str]]:
    with (out / name).open() as fh:
        return list(csv.DictReader(fh))


def test_script_on_hand_written_data(tiny_routerbench: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    proc = _run("--data-dir", str(tiny_routerbench), "--out", str(out), "--fixed", "claude-v1", "claude-v2",
                "meta/llama-2-70b-chat")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "skip %" in proc.stdout and "delta pp" in proc.stdout
    assert "W&B (offline) ->" in proc.stdout and any((out / "wandb").glob("offline-run-*"))  # tracked by default
    rows = _table(out)
    assert {(r["task"], r["set"], float(r["T"])) for r in rows} == {
        (t, s, th) for t in ("arc-challenge", "winogrande", "mbpp") for s in ("fixed", "routed") for th in (1.0, 0.67)
    }
    for r in rows:
        skip, always, adaptive = float(r["skip_pct"]), float(r["acc_always_pct"]), float(r["acc_adaptive_pct"])
        assert 0 <= skip <= 100 and float(r["delta_pp"]) == pytest.approx(adaptive - always, abs=1e-6)
    arc = {float(r["T"]): r for r in rows if r["task"] == "arc-challenge" and r["set"] == "fixed"}
    # claude-v1 and claude-v2 give the gold letter on every question, llama-2-70b never answers: confidence 2/3
    assert float(arc[1.0]["skip_pct"]) == 0.0 and float(arc[0.67]["skip_pct"]) == 100.0
    assert float(arc[0.67]["acc_adaptive_pct"]) == 100.0
    assert (out / "accuracy_vs_skip.png").stat().st_size > 10_000 and (out / "reliability.png").is_file()
    assert json.loads((out / "results.json").read_text())["args"]["aggregator"] == "gpt-4-1106-preview"
    learned = _table(out, "learned.csv")
    assert {r["policy"] for r in learned} >= {"expected loss @T=1 skip", "P(majority) @T=1 acc"}
    for r in learned:
        assert float(r["gain_vs_t1_pp_lo"]) <= float(r["gain_vs_t1_pp"]) <= float(r["gain_vs_t1_pp_hi"])
    assert {r["task"] for r in _table(out, "calibration.csv")} == {"arc-challenge", "winogrande", "mbpp"}
    assert "ECE" in proc.stdout and "vs front pp" in proc.stdout


def test_script_eval_dir_evaluates_on_the_other_files(tiny_routerbench: Path, tiny_routerbench_eval: Path,
                                                      tmp_path: Path) -> None:  # fmt: skip
    """--eval-dir: calibrate on every question of --data-dir, evaluate on the same-named files of DIR."""
    ev = tiny_routerbench_eval
    rows = list(csv.DictReader((ev / "arc_challenge_train.csv").open()))
    with (ev / "arc_challenge_train.csv").open("w", newline="") as fh:  # a smaller evaluation file
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows[:3])
    out = tmp_path / "out"
    proc = _run("--data-dir", str(tiny_routerbench), "--eval-dir", str(ev), "--out", str(out), "--tasks",
                "arc-challenge", "--boot", "50")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert {int(r["n"]) for r in _table(out)} == {3} and {int(r["n"]) for r in _table(out, "learned.csv")} == {3}
    proc = _run("--data-dir", str(tiny_routerbench), "--eval-dir", str(tmp_path / "none"), "--out", str(out))
    assert proc.returncode == 2 and "--eval-dir" in proc.stderr


def test_script_rejects_bad_arguments(tiny_routerbench: Path, tmp_path: Path) -> None:
    assert _run("--data-dir", str(tmp_path / "missing"), "--out", str(tmp_path)).returncode == 2
    proc = _run("--data-dir", str(tiny_routerbench), "--out", str(tmp_path), "--tasks", "hellaswag")
    assert proc.returncode == 2 and "valid" in proc.stderr
    proc = _run("--data-dir", str(tiny_routerbench), "--out", str(tmp_path), "--aggregator", "gpt-5")
    assert proc.returncode == 2 and "no model 'gpt-5'" in proc.stderr
    for flag, value, message in (("--k", "4", "--k must be"), ("--code-agreement", "fuzzy", "--code-agreement must"),
                                 ("--embedder", "bert", "unknown embedder")):  # fmt: skip
        proc = _run("--data-dir", str(tiny_routerbench), "--out", str(tmp_path), flag, value)
        assert proc.returncode == 2 and message in proc.stderr


def test_script_on_real_routerbench(tmp_path: Path) -> None:
    if not default_data_dir().is_dir():
        pytest.skip(f"RouterBench answers not present at {default_data_dir()} (set MOSAIC_SHARED_DATA)")
    out = tmp_path / "real"
    proc = _run("--out", str(out), "--boot", "200")
    assert proc.returncode == 0, proc.stderr
    rows = {(r["task"], r["set"], float(r["T"])): r for r in _table(out)}
    for task in ("arc-challenge", "winogrande", "mbpp"):
        for s in ("fixed", "routed"):
            t1, t23 = rows[(task, s, 1.0)], rows[(task, s, 0.67)]
            assert float(t23["skip_pct"]) >= float(t1["skip_pct"])  # a lower threshold skips at least as often
    assert float(rows[("winogrande", "fixed", 0.67)]["skip_pct"]) == 100.0  # 2 options, 3 votes: always >= 2/3
    assert float(rows[("arc-challenge", "routed", 1.0)]["skip_pct"]) > 50.0
