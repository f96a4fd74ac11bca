"""The vllm backend's logic with fake engines in threads (no vLLM): records, prompts, answers, resume, failures."""

from __future__ import annotations

import numpy as np
import pytest

from mosaic.core.trace import AGGREGATION_STAGE, EXPERT_STAGE, LoadRecord, RequestRecord, TraceWriter, read_trace
from mosaic.core.types import Cluster
from mosaic.runtime.executor import Executor
from mosaic.runtime.vllm_backend import EngineError, cpu_slices, done_records, expert_messages, extract, question_text

CLUSTER = Cluster.homogeneous(2, "cpu", 8.0)


def run(vt, backend, tmp_path, name="t.jsonl", n=4):
    wl = vt.tiny_workload(tmp_path, n)
    path = tmp_path / name
    try:
        with TraceWriter(path) as trace:
            res = Executor(backend).run(wl, vt.FixedOrder(vt.by_expert), vt.table_costs(wl), CLUSTER,
                                        np.random.default_rng(0), trace)  # fmt: skip
    finally:
        backend.close()
    return wl, res, list(read_trace(path))


def test_both_stages_record_every_request_in_plan_order(vt, tmp_path):
    vt.FakeEngine.opened.clear()
    wl, res, recs = run(vt, vt.FakeBackend(vt.specs(tmp_path)), tmp_path)
    reqs = [r for r in recs if isinstance(r, RequestRecord)]
    expert = sorted(r.request_id for r in reqs if r.stage == EXPERT_STAGE)
    agg = sorted(r.request_id for r in reqs if r.stage == AGGREGATION_STAGE)
    assert expert == list(range(len(wl.requests)))
    assert agg == list(range(len(wl.queries)))
    loads = [(r.stage, r.worker, r.expert) for r in recs if isinstance(r, LoadRecord)]
    assert (EXPERT_STAGE, 0, "a") in loads and (EXPERT_STAGE, 1, "b") in loads
    assert sorted(e for s, _, e in loads if s == AGGREGATION_STAGE) == ["a@agg", "a@agg"]
    # the fake engine answers "(C)", the gold: answers are extracted and judged
    assert all(r.answer == "C" and r.correct for r in reqs)
    assert res.accuracy == 1.0
    assert all(r.end >= r.start >= 0 for r in reqs)
    assert res.aggregation.start == res.expert.end
    assert res.expert.resident == {0: "a", 1: "b"}
    assert set(res.aggregation.resident.values()) == {"a@agg"}
    # output tokens follow max_tokens of each expert's spec (a: 48, b: 96, aggregator: 48)
    assert {r.output_tokens for r in reqs if r.expert == "b"} == {96}


def test_aggregator_prompt_carries_the_expert_responses(vt, tmp_path):
    seen = []

    class Spy(vt.FakeEngine):
        def prompt_ids(self, job):
            seen.append(job)
            return super().prompt_ids(job)

    run(vt, vt.FakeBackend(vt.specs(tmp_path), opener=Spy), tmp_path)
    agg_jobs = [j for j in seen if j["expert"] == "a@agg"]
    assert len(agg_jobs) == 4
    system = agg_jobs[0]["messages"][0]["content"]
    assert "Responses from models" in system and system.count("The answer is (C)") >= 2
    assert "The answer is (X)" in agg_jobs[0]["messages"][1]["content"]


def test_engine_failure_names_expert_and_worker_and_keeps_finished_records(vt, tmp_path):
    wl = vt.tiny_workload(tmp_path)
    b_ids = [r.id for r in wl.requests if r.expert == "b"]

    def opener(expert, spec):
        return vt.FakeEngine(expert, spec, fail_on=frozenset(b_ids) if expert == "b" else frozenset())

    with pytest.raises(EngineError, match=r"expert 'b' on worker 1 failed during serve.*fake engine crash"):
        run(vt, vt.FakeBackend(vt.specs(tmp_path), opener=opener), tmp_path)
    recs = list(read_trace(tmp_path / "t.jsonl"))
    assert any(isinstance(r, LoadRecord) and r.expert == "b" for r in recs)


def test_resume_skips_finished_requests(vt, tmp_path):
    run(vt, vt.FakeBackend(vt.specs(tmp_path)), tmp_path, "first.jsonl")
    done = {k: v for k, v in done_records(tmp_path / "first.jsonl").items() if k[0] == EXPERT_STAGE and k[1] < 5}
    vt.FakeEngine.opened.clear()
    wl, res, recs = run(vt, vt.FakeBackend(vt.specs(tmp_path), done=done), tmp_path, "second.jsonl")
    expert_ids = sorted(r.request_id for r in recs if isinstance(r, RequestRecord) and r.stage == EXPERT_STAGE)
    assert expert_ids == [i for i in range(len(wl.requests)) if i >= 5]
    assert len(res.expert.responses) == len(wl.requests)  # restored + new
    assert sum(isinstance(r, RequestRecord) and r.stage == AGGREGATION_STAGE for r in recs) == 4


def test_fully_done_worker_loads_nothing(vt, tmp_path):
    run(vt, vt.FakeBackend(vt.specs(tmp_path)), tmp_path, "first.jsonl")
    done = done_records(tmp_path / "first.jsonl")
    vt.FakeEngine.opened.clear()
    _, res, recs = run(vt, vt.FakeBackend(vt.specs(tmp_path), done=done), tmp_path, "second.jsonl")
    assert not [r for r in recs if isinstance(r, RequestRecord)]
    assert vt.FakeEngine.opened == []
    assert res.accuracy == 1.0


def test_missing_model_spec_is_an_engine_error(vt, tmp_path):
    specs = vt.specs(tmp_path)
    del specs["b"]
    with pytest.raises(EngineError, match=r"no model for expert\(s\) \['b'\]"):
        run(vt, vt.FakeBackend(specs), tmp_path)


def test_prompts_and_answer_extraction(vt, tmp_path):
    q = vt.tiny_workload(tmp_path).queries[0]
    text = question_text(q)
    assert "A) red" in text and "D) white" in text
    msgs = expert_messages(q, "You are terse.")
    assert msgs[0] == {"role": "system", "content": "You are terse."}
    assert "The answer is (X)" in msgs[1]["content"]
    assert extract(q, "so the answer is (C).") == ("C", True)
    assert extract(q, "I think the answer is (A)") == ("A", False)
    assert extract(q, "no idea") == (None, False)


def test_cpu_slices_split_cores():
    assert cpu_slices(2, [0, 1]) == ["0", "1"]
    assert cpu_slices(2, [0, 1, 2, 3]) == ["0,1", "2,3"]
    assert cpu_slices(3, [0, 1]) == ["0", "1", "0"]


def test_co_resident_engines_split_gpu_memory_and_stay_loaded(vt, tmp_path):
    from mosaic.runtime.vllm_backend import VllmBackend

    be = VllmBackend(vt.specs(tmp_path), device="cuda", co_resident=True)
    dicts = be.engine_dicts(["a", "b", "a"], be.models)
    assert dicts["a"]["gpu_memory_utilization"] == dicts["b"]["gpu_memory_utilization"] == pytest.approx(0.45)
    one = VllmBackend(vt.specs(tmp_path), device="cuda").engine_dicts(["a", "b"], be.models)
    assert one["a"]["gpu_memory_utilization"] is None  # one-resident: the engine's default share
    vt.FakeEngine.opened.clear()
    wl = vt.tiny_workload(tmp_path)
    split = {0: [r.id for r in wl.requests if r.query_id < 2], 1: [r.id for r in wl.requests if r.query_id >= 2]}
    backend = vt.FakeBackend(vt.specs(tmp_path), co_resident=True)
    with TraceWriter(None) as trace:
        Executor(backend).run(wl, vt.FixedOrder(lambda w: split), vt.table_costs(wl), CLUSTER,
                              np.random.default_rng(0), trace)  # fmt: skip
    backend.close()
    # each worker alternates a, b, a, b: co-resident engines load each expert once
    assert sorted(vt.FakeEngine.opened) == ["a", "a", "a@agg", "a@agg", "b", "b"]
