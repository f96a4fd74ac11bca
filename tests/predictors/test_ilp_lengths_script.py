"""experiments/ilp_lengths.py: run as a subprocess on a small GPQA workload over two seeds."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from mosaic.core.config import load_config
from mosaic.pipeline import prepare

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "experiments" / "ilp_lengths.py"
LABELS = {"mean", "mean (trace) expected", "lightgbm", "lightgbm expected", "lightgbm@p50", "lightgbm@p90",
          "difficulty known (ceiling)", "visible difficulty (ceiling)", "oracle"}  # fmt: skip
SELECTIONS = {"best plan, visible difficulty drawn (ceiling)", "best plan, difficulty known, noise drawn (ceiling)"}


def test_script_plans_every_predictor_on_every_seed(tmp_path: Path) -> None:
    out = tmp_path / "out"
    args = ["--config", str(ROOT / "experiments" / "configs" / "gpqa.yaml"), "--set", "workload.num_queries=60",
            "--seeds", "0", "1", "--wandb", "disabled", "--out", str(out), "--selection-draws", "2"]  # fmt: skip
    proc = subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "over 2 seeds" in proc.stdout and "95% CI" in proc.stdout
    data = json.loads((out / "gpqa-heldout-summary.json").read_text())
    assert set(data) == {"0", "1"}
    for seed, by_predictor in data.items():
        assert set(by_predictor) == LABELS | SELECTIONS
        for label in SELECTIONS:  # one of the scheduler's own plans (the oracle's excluded)
            for sched, r in by_predictor[label].items():
                made = [by_predictor[p][sched]["makespan_s"] for p in LABELS - {"oracle"}]
                assert r["makespan_s"] in made
        assert (out / f"gpqa-heldout-s{seed}-scatter.png").stat().st_size > 0
        bound = by_predictor["oracle"]["mosaic-ilp"]["lower_bound_s"]  # from true lengths: valid for any plan
        for by_sched in by_predictor.values():
            assert set(by_sched) == {"mosaic-ilp", "greedy-lpt"}
            assert all(r["makespan_s"] >= bound - 1e-6 for r in by_sched.values())
        for r in by_predictor["oracle"].values():  # true lengths: the cost model predicts what the simulator runs
            assert r["predicted_s"] == pytest.approx(r["makespan_s"], rel=0.02)


@pytest.mark.parametrize(("args", "message"), [
    (["--mode", "both"], "--mode must be heldout or cross-seed"),
    (["--selection-draws", "-1"], "--selection-draws must be >= 0"),
    (["--set", "cluster.workers=0"], "error: invalid config"),  # before any training, no traceback
    (["--config", "nope.yaml"], "error: config file nope.yaml does not exist"),
])  # fmt: skip
def test_script_refuses_bad_arguments(args: list[str], message: str) -> None:
    proc = subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0 and message in proc.stderr and "Traceback" not in proc.stderr


def test_retraining_rewrites_the_training_trace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = importlib.util.spec_from_file_location("ilp_lengths", SCRIPT)
    script = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "ilp_lengths", script)  # its dataclasses look their module up
    spec.loader.exec_module(script)
    exp = prepare(load_config(ROOT / "experiments" / "configs" / "gpqa.yaml", ["workload.num_queries=40"]))
    path = tmp_path / "m.lgbm"
    lines = []
    for ids in ({*range(30)}, {*range(30)}, {*range(20)}):  # the same model twice, then another
        script.train_model(exp.workload, exp.responses, ids, path)
        lines.append(len(script.trace_of(path).read_text().splitlines()))
    per_query = len(exp.workload.routes[0]) + 1  # this workload routes every query to k experts, plus @agg
    assert lines == [30 * per_query, 30 * per_query, 20 * per_query]
