"""experiments/stealing.py: run as a subprocess on a small GPQA workload over two seeds."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_script_compares_each_planner_with_and_without_stealing(tmp_path: Path) -> None:
    out = tmp_path / "out"
    args = ["--config", str(ROOT / "experiments" / "configs" / "gpqa.yaml"), "--set", "workload.num_queries=40",
            "--seeds", "0", "1", "--planners", "round-robin", "greedy-lpt", "--wandb", "disabled",
            "--out", str(out)]  # fmt: skip
    proc = subprocess.run([sys.executable, str(ROOT / "experiments" / "stealing.py"), *args], capture_output=True,
                          text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    data = json.loads((out / "results.json").read_text())
    assert set(data["runs"]) == {"round-robin", "round-robin+steal", "greedy-lpt", "greedy-lpt+steal"}
    assert all(len(v["expert"]) == 2 for v in data["runs"].values())
    for row in data["rows"]:
        plan, steal = data["runs"][row["planner"]]["expert"], data["runs"][row["planner"] + "+steal"]["expert"]
        assert abs(row["expert"]["ratio"][0] - sum(s / p for s, p in zip(steal, plan, strict=True)) / 2) < 1e-12
    assert (out / "stealing.png").stat().st_size > 5_000 and "work stealing on gpqa" in (out / "table.txt").read_text()
