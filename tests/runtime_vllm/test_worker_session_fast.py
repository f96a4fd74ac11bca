"""Worker sessions (:mod:`mosaic.runtime.worker_session`) with fake engines, and the session protocol of the worker
subprocess: queue order, head-of-line arrivals, batch room, withdrawals answered while the engine runs or loads,
co-resident switches, abort, failures."""

from __future__ import annotations

import json
import queue
import subprocess
import sys
import threading
import time

import pytest

from mosaic.runtime.vllm_backend import worker_env
from mosaic.runtime.vllm_worker import EngineWorker, handle

SPEC = {"max_num_seqs": 2}


def job(rid, expert="a", arrival=0.0, tokens=3):
    return {"request_id": rid, "query_id": rid, "expert": expert, "arrival": arrival, "max_tokens": tokens,
            "messages": [{"role": "user", "content": f"question {rid}"}], "stage": "expert"}  # fmt: skip


class Session:
    """A worker with a session open, served in a thread; its events collected in order."""

    def __init__(self, vt, opener=None, co_resident=False, models=("a", "b")):
        self.worker = EngineWorker(0, opener or vt.FakeEngine)
        self.worker.command({"cmd": "session", "stage": "expert", "start": 0.0, "co_resident": co_resident,
                             "models": dict.fromkeys(models, SPEC)})  # fmt: skip
        self.events: queue.Queue = queue.Queue()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        for ev in handle(self.worker, {"cmd": "serve"}):
            self.events.put(ev)

    def cmd(self, kind, **kw):
        return self.worker.command({"cmd": kind, **kw})

    def finish(self, timeout=10.0):
        self.cmd("end")
        self.thread.join(timeout)
        assert not self.thread.is_alive()
        out = []
        while not self.events.empty():
            out.append(self.events.get())
        return out


def admitted_order(events):
    return [r for ev in events if ev["event"] == "admit" for r in ev["request_ids"]]


def test_jobs_run_in_queue_order_an_expert_at_a_time_with_one_load_per_switch(vt):
    s = Session(vt)
    s.cmd("enqueue", jobs=[job(0), job(1), job(2, "b"), job(3, "a")])
    events = s.finish()
    assert admitted_order(events) == [0, 1, 2, 3]
    assert [ev["expert"] for ev in events if ev["event"] == "load"] == ["a", "b", "a"]
    assert [ev["event"] for ev in events if ev["event"] in ("loading", "load")] == ["loading", "load"] * 3
    reqs = [ev for ev in events if ev["event"] == "request"]
    assert sorted(ev["request_id"] for ev in reqs) == [0, 1, 2, 3] and all(ev["output_tokens"] == 3 for ev in reqs)
    b_load = next(ev for ev in events if ev["event"] == "load" and ev["expert"] == "b")
    assert b_load["start"] >= max(ev["end"] for ev in reqs if ev["request_id"] < 2)  # the batch drained first
    done = events[-1]
    assert done["event"] == "done" and done["resident"] == "a" and done["end"] == max(ev["end"] for ev in reqs)
    assert s.worker.session is None


def test_the_batch_holds_max_num_seqs_and_the_head_waits_for_its_arrival(vt):
    s = Session(vt)
    s.cmd("enqueue", jobs=[job(0, tokens=20), job(1, tokens=20), job(2), job(3, arrival=0.3), job(4)])
    events = s.finish()
    admits = [ev for ev in events if ev["event"] == "admit"]
    assert admits[0]["request_ids"] == [0, 1]  # room for two
    assert admitted_order(events) == [0, 1, 2, 3, 4]  # 4 never ahead of 3, which had not arrived
    t3 = next(ev["time"] for ev in admits if 3 in ev["request_ids"])
    assert t3 >= 0.3


def test_withdraw_takes_queued_jobs_and_names_those_in_the_engine(vt):
    gate = threading.Event()

    class Held(vt.FakeEngine):
        def step(self):
            gate.wait(5)
            return super().step()

    s = Session(vt, lambda e, spec: Held(e, spec))
    s.cmd("enqueue", jobs=[job(i) for i in range(5)])
    while True:  # 0 and 1 enter the engine, whose first step then blocks
        ev = s.events.get(timeout=5)
        if ev["event"] == "admit":
            break
    reply = s.cmd("withdraw", request_ids=[1, 3, 4, 9], token=7)
    assert reply == {"event": "withdrawn", "worker": 0, "token": 7, "request_ids": [3, 4], "admitted": [1]}
    gate.set()
    events = s.finish()
    assert sorted(ev["request_id"] for ev in events if ev["event"] == "request") == [0, 1, 2]


def test_a_head_whose_load_has_begun_stays(vt):
    started, release = threading.Event(), threading.Event()

    def opener(expert, spec):
        started.set()
        release.wait(5)
        return vt.FakeEngine(expert, spec)

    s = Session(vt, opener)
    s.cmd("enqueue", jobs=[job(0), job(1)])
    assert started.wait(5)
    reply = s.cmd("withdraw", request_ids=[0, 1])  # answered during the load
    assert reply["request_ids"] == [1] and reply["admitted"] == []
    release.set()
    events = s.finish()
    assert [ev["request_id"] for ev in events if ev["event"] == "request"] == [0]


def test_co_resident_engines_switch_without_a_load(vt):
    vt.FakeEngine.opened.clear()
    s = Session(vt, co_resident=True)
    s.cmd("enqueue", jobs=[job(0), job(1, "b"), job(2), job(3, "b")])
    events = s.finish()
    assert vt.FakeEngine.opened == ["a", "b"]
    assert [ev["expert"] for ev in events if ev["event"] == "switch"] == ["a", "b"]


def test_abort_ends_at_once_and_failures_end_the_session_with_an_error(vt):
    s = Session(vt)
    s.cmd("enqueue", jobs=[job(i, tokens=10_000) for i in range(3)])
    time.sleep(0.05)
    s.cmd("end", abort=True)
    s.thread.join(5)
    assert not s.thread.is_alive()

    def broken(expert, spec):
        raise OSError("no such model")

    s = Session(vt, broken)
    s.cmd("enqueue", jobs=[job(0)])
    s.thread.join(5)
    events = list(s.events.queue)
    assert events[-1]["event"] == "error" and events[-1]["phase"] == "load" and "no such model" in events[-1]["message"]
    assert EngineWorker(1).command({"cmd": "enqueue", "jobs": []})["phase"] == "protocol"  # no session open


def test_the_worker_process_answers_withdrawals_while_its_session_serves(monkeypatch):
    """The subprocess's stdin reader applies session commands at once: a session with nothing to run answers a
    withdrawal and ends; a job of a model that cannot load (no vLLM here, or no such folder) ends the next one
    with an error naming the expert."""
    monkeypatch.setenv("MOSAIC_WORKER_PRELOAD", "0")
    monkeypatch.setenv("MOSAIC_WORKER_WARMUP", "0")
    proc = subprocess.Popen([sys.executable, "-m", "mosaic.runtime.vllm_worker", "2"], env=worker_env(0, 1, "cpu"),
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)  # fmt: skip
    session = {"cmd": "session", "stage": "expert", "start": 0.0, "models": {"a": {"path": "/nonexistent/model"}}}

    def send(*cmds):
        proc.stdin.write("".join(json.dumps(c) + "\n" for c in cmds))
        proc.stdin.flush()

    def until(kind):
        out = []
        while not out or out[-1]["event"] != kind:
            out.append(json.loads(proc.stdout.readline()))
        return out

    try:
        assert until("ready")[-1]["worker"] == 2
        send(session, {"cmd": "serve"}, {"cmd": "withdraw", "request_ids": [5], "token": 1}, {"cmd": "end"})
        answer = {"event": "withdrawn", "worker": 2, "token": 1, "request_ids": [], "admitted": []}
        assert until("done") == [answer, {"event": "done", "worker": 2, "end": 0.0, "resident": None, "busy": 0.0,
                                          "loading": 0.0}]  # fmt: skip
        send(session, {"cmd": "serve"}, {"cmd": "enqueue", "jobs": [job(0)]})
        err = until("error")[-1]
        assert err["phase"] == "load" and err["expert"] == "a"
        send({"cmd": "exit"})
        assert proc.wait(60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()


@pytest.mark.parametrize("kind", ["withdraw", "end"])
def test_session_commands_without_a_session_are_protocol_errors(vt, kind):
    reply = EngineWorker(0, vt.FakeEngine).command({"cmd": kind, "request_ids": []})
    assert reply["event"] == "error" and "no session" in reply["message"]
