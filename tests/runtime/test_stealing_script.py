"""experiments/stealing.py: run as a subprocess on a small GPQA workload over two seeds."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_script_compares_each_planner_with_and_without_its_run_time_corrections(tmp_path: Path) -> None:
    out = tmp_path / "out"
    args = ["--config", str(ROOT / "experiments" / "configs" / "gpqa.yaml"), "--set", "workload.num_queries=40",
            "--seeds", "0", "1", "--planners", "round-robin", "greedy-lpt", "--extra", "greedy-online", "--wandb",
            "disabled",
            "--out", str(out)]  # fmt: skip
    proc = subprocess.run([sys.executable, str(ROOT / "experiments" / "stealing.py"), *args], capture_output=True,
                          text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    data = json.loads((out / "results.json").read_text())
    assert set(data["runs"]) == {
        "round-robin",
        "round-robin+steal",
        "greedy-lpt",
        "greedy-lpt+steal",
        "greedy-lpt+rolling",
        "greedy-online",
    }  # round-robin has no +rolling; an extra row
    assert all(len(v["expert"]) == 2 for v in data["runs"].values())
    for row in data["rows"]:
        p = row["planner"]
        for c in ("steal", "rolling"):
            if f"{p}+{c}" not in data["runs"]:
                assert c not in row["expert"]
                continue
            plan, new = data["runs"][p]["expert"], data["runs"][f"{p}+{c}"]["expert"]
            ratio = sum(s / b for s, b in zip(new, plan, strict=True)) / 2
            assert abs(row["expert"][c]["ratio"][0] - ratio) < 1e-12
    text = (out / "table.txt").read_text()
    assert (out / "stealing.png").stat().st_size > 5_000 and "run-time correction on gpqa" in text
    assert "greedy-online" in text
