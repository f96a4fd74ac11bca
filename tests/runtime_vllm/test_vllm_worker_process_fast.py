"""The engine worker subprocess and its JSON-lines protocol, without vLLM (preload and warm-up switched off)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from mosaic.core.trace import TraceWriter
from mosaic.core.types import Cluster
from mosaic.runtime.executor import Executor
from mosaic.runtime.vllm_backend import EngineError, VllmBackend, worker_env


@pytest.fixture
def no_preload(monkeypatch):
    monkeypatch.setenv("MOSAIC_WORKER_PRELOAD", "0")
    monkeypatch.setenv("MOSAIC_WORKER_WARMUP", "0")


def test_worker_speaks_json_lines_and_keeps_stdout_clean(no_preload):
    env = worker_env(0, 1, "cpu")
    cmds = "\n".join(json.dumps(c) for c in ({"cmd": "ping"}, {"cmd": "bogus"}, {"cmd": "exit"})) + "\n"
    out = subprocess.run([sys.executable, "-m", "mosaic.runtime.vllm_worker", "3"], input=cmds, env=env,
                         capture_output=True, text=True, timeout=60)  # fmt: skip
    assert out.returncode == 0, out.stderr
    events = [json.loads(line) for line in out.stdout.splitlines()]
    assert events[0]["event"] == "ready" and events[0]["worker"] == 3
    assert events[1] == {"event": "ready", "worker": 3, "pid": events[0]["pid"]}
    assert events[2]["event"] == "error" and "bogus" in events[2]["message"]


def test_worker_env_binds_cores_or_gpus(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda _: {0, 1, 2, 3})
    cpu = worker_env(1, 2, "cpu")
    assert cpu["VLLM_CPU_OMP_THREADS_BIND"] == "2,3" and cpu["OMP_NUM_THREADS"] == "2"
    assert cpu["VLLM_CPU_KVCACHE_SPACE"] == os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1")
    gpu = worker_env(1, 2, "cuda", {1: "5"})
    assert gpu["CUDA_VISIBLE_DEVICES"] == "5"
    assert worker_env(3, 4, "cuda")["CUDA_VISIBLE_DEVICES"] == "3"


@pytest.mark.skipif(
    __import__("importlib").util.find_spec("vllm") is not None, reason="checks the failure when vLLM is missing"
)
def test_load_failure_in_a_real_worker_process_names_expert_and_worker(vt, tmp_path, no_preload):
    wl = vt.tiny_workload(tmp_path)
    backend = VllmBackend(vt.specs(tmp_path), device="cpu", log_dir=tmp_path / "logs")
    with TraceWriter(tmp_path / "t.jsonl") as trace, pytest.raises(EngineError) as err:
        Executor(backend).run(wl, vt.FixedOrder(vt.by_expert), vt.table_costs(wl), Cluster.homogeneous(2, "cpu", 8),
                              np.random.default_rng(0), trace)  # fmt: skip
    msg = str(err.value)
    assert "failed during load" in msg and "ModuleNotFoundError" in msg
    # both workers load at once and both fail; the error names the first to fail, a real (expert, worker) pair
    named = re.findall(r"expert '(\w+)' on worker (\d+)", msg)
    assert named and all((e, int(w)) in {("a", 0), ("b", 1)} for e, w in named)
    assert backend.workers == {}  # closed on failure
