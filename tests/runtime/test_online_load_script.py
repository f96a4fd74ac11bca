"""experiments/online_load.py: run as a subprocess on a small GPQA workload."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_script_reports_latency_and_slo_per_scheduler_and_load(tmp_path: Path) -> None:
    out = tmp_path / "out"
    args = ["--config", str(ROOT / "experiments" / "configs" / "gpqa.yaml"), "--set", "workload.num_queries=30",
            "--seeds", "0", "--loads", "0.5", "0.9", "--schedulers", "round-robin", "greedy-online",
            "greedy-lpt+rolling", "--wandb", "disabled", "--out", str(out)]  # fmt: skip
    proc = subprocess.run([sys.executable, str(ROOT / "experiments" / "online_load.py"), *args], capture_output=True,
                          text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    data = json.loads((out / "results.json").read_text())
    assert set(data["runs"]) == {"round-robin", "greedy-online", "greedy-lpt+rolling"}
    cap = data["capacity"]["0"]
    assert cap > 0
    for by_load in data["runs"].values():
        assert set(by_load) == {"0.5", "0.9"}
        for row in by_load.values():
            assert row["p50"][0] <= row["p99"][0] and 0.0 <= row["slo_5x"][0] <= row["slo_10x"][0] <= 1.0
    assert (out / "latency_vs_load.png").stat().st_size > 5_000 and "online serving on gpqa" in (
        out / "table.txt").read_text()  # fmt: skip
