"""The ``vllm`` backend: one engine process per worker, each running real vLLM engines in plan order.

Each worker is a subprocess ``python -m mosaic.runtime.vllm_worker ID`` (interpreter: ``python`` argument,
``MOSAIC_VLLM_PYTHON`` or this one) with its own device: ``CUDA_VISIBLE_DEVICES`` on GPUs, its own CPU cores
(``VLLM_CPU_OMP_THREADS_BIND``) on CPUs. For a static plan the backend sends every worker its requests of the stage
(prompts built here: the question for experts, the Mixture-of-Agents synthesis prompt for the aggregator); any other
policy runs on the wall-clock runtime loop (:mod:`mosaic.runtime.wall_loop`), which hands the workers' sessions
their requests as it decides. Each load and request record is written to the trace as the workers report it (the
trace flushes per record), so a crash loses nothing finished. An engine that dies raises :class:`EngineError`
naming the expert and worker; ``done`` records (from an earlier trace) are not run again (``--resume``).
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from mosaic.agents.policy import PlanReplay, Policy
from mosaic.aggregation.answers import extract_choice, extract_number, normalize_number
from mosaic.aggregation.prompts import CHOICE_FORMAT, NUMERIC_FORMAT, build_aggregator_prompt
from mosaic.core.config import RunConfig
from mosaic.core.errors import MosaicError
from mosaic.core.trace import AGGREGATION_STAGE, LoadRecord, RequestRecord, TraceWriter, finished_requests, read_trace
from mosaic.core.types import Cluster, Plan, Query, Response, Responses, Workload
from mosaic.predictors.interface import CostModel
from mosaic.runtime.engine_link import run_on_engines
from mosaic.runtime.engine_spec import ModelSpec, apply_env_defaults, check_local_paths, resolve_models
from mosaic.runtime.interface import Backend, Gates, StageResult
from mosaic.runtime.registry import BACKENDS

PYTHON_ENV = "MOSAIC_VLLM_PYTHON"
DEVICE_ENV = "MOSAIC_VLLM_DEVICE"
READY_TIMEOUT_S = 600.0
LOG_TAIL = 1500  # characters of a dead worker's log quoted in the error


class EngineError(MosaicError):
    """A real engine failed or died; the message names the expert and the worker."""


# --- prompts and answers -------------------------------------------------------------------------------------------


def question_text(q: Query) -> str:
    """The question with its lettered options (when it has any)."""
    letters = [chr(65 + i) for i in range(len(q.choices))]
    if not q.choices or all(f"({c})" in q.text for c in letters):  # no options, or the text lists them already
        return q.text.strip()
    opts = "\n".join(f"{chr(65 + i)}) {c}" for i, c in enumerate(q.choices))
    return f"{q.text.strip()}\n\n{opts}"


def answer_format(q: Query) -> str | None:
    if q.choices:
        return CHOICE_FORMAT
    if q.gold is not None and normalize_number(q.gold) is not None:
        return NUMERIC_FORMAT
    return None


def expert_messages(q: Query, system_prompt: str | None) -> list[dict[str, str]]:
    fmt = answer_format(q)
    user = question_text(q) if fmt is None else f"{question_text(q)}\n\n{fmt}"
    msgs = [{"role": "system", "content": system_prompt}] if system_prompt else []
    return [*msgs, {"role": "user", "content": user}]


def extract(q: Query, text: str | None) -> tuple[str | None, bool | None]:
    """(answer, correct) of a response to ``q``: a choice letter, or a number when the gold is numeric."""
    if q.choices:
        answer = extract_choice(text, len(q.choices), q.choices)
    elif q.gold is not None and normalize_number(q.gold) is not None:
        answer = extract_number(text)
    else:
        return None, None
    if q.gold is None:
        return answer, None
    gold = q.gold if q.choices else normalize_number(q.gold)
    return answer, answer is not None and answer == gold


# --- worker processes ----------------------------------------------------------------------------------------------


def cpu_slices(n: int, cores: list[int] | None = None) -> list[str]:
    """CPU cores of each of ``n`` workers as vLLM bind strings (``"0"``, ``"2,3"``); shared when too few."""
    cores = sorted(os.sched_getaffinity(0)) if cores is None else cores
    if n <= len(cores):
        per = len(cores) // n
        return [",".join(str(c) for c in cores[i * per : (i + 1) * per]) for i in range(n)]
    return [str(cores[i % len(cores)]) for i in range(n)]


def detect_device() -> str:
    """``cuda`` when an NVIDIA GPU is visible (``nvidia-smi``), else ``cpu``; ``MOSAIC_VLLM_DEVICE`` wins."""
    forced = os.environ.get(DEVICE_ENV)
    if forced:
        return forced
    return "cuda" if shutil.which("nvidia-smi") else "cpu"


def worker_env(index: int, n: int, device: str, devices: Mapping[int, str] | None = None) -> dict[str, str]:
    """Environment of worker ``index`` of ``n``: its GPU, or its CPU cores and threads."""
    env = apply_env_defaults(dict(os.environ))
    root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    if device == "cuda":
        env["CUDA_VISIBLE_DEVICES"] = (devices or {}).get(index, str(index))
    else:
        bind = (devices or {}).get(index) or cpu_slices(n)[index]
        env["VLLM_CPU_OMP_THREADS_BIND"] = env["MOSAIC_WORKER_CPUS"] = bind
        env["OMP_NUM_THREADS"] = str(len(bind.split(",")))
    return env


def cpu_defaults(spec: ModelSpec) -> ModelSpec:
    """On CPUs ``dtype: auto`` becomes float32 (bf16 is emulated and slow on AVX2-only CPUs)."""
    return replace(spec, dtype="float32") if spec.dtype == "auto" else spec


class WorkerProcess:
    """One engine subprocess; its events go to ``events`` as ``(worker id, event dict)``."""

    def __init__(self, worker_id: int, env: Mapping[str, str], python: str, log_dir: Path, events: queue.Queue):
        self.worker_id = worker_id
        self.log_path = log_dir / f"worker{worker_id}.log"
        self._log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [python, "-m", "mosaic.runtime.vllm_worker", str(worker_id)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log, env=dict(env), text=True,
        )  # fmt: skip
        self._events = events
        self._replies: queue.Queue = queue.Queue()  # answers to withdraw commands (None: the process is gone)
        self._reader = threading.Thread(target=self._read, name=f"vllm-worker{worker_id}", daemon=True)
        self._reader.start()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            try:
                ev = json.loads(line)
            except json.JSONDecodeError:
                continue
            if ev.get("event") == "withdrawn":
                self._replies.put(ev)
            else:
                self._events.put((self.worker_id, ev))
        self._replies.put(None)
        self._events.put((self.worker_id, {"event": "exit", "code": self.proc.wait()}))

    def send(self, cmd: Mapping[str, Any]) -> None:
        try:
            assert self.proc.stdin is not None
            self.proc.stdin.write(json.dumps(cmd) + "\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            pass  # the reader reports the exit

    def command(self, cmd: Mapping[str, Any]) -> dict | None:
        """A session command; ``withdraw`` waits for the worker's answer (None when the process is gone)."""
        self.send(cmd)
        if cmd.get("cmd") != "withdraw":
            return None
        reply = self._replies.get()
        if reply is None:
            self._replies.put(None)  # for the next one too
        return reply

    def log_tail(self) -> str:
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")[-LOG_TAIL:]
        except OSError:
            return ""

    def stop(self, timeout: float = 20.0) -> None:
        if self.proc.poll() is None:
            self.send({"cmd": "exit"})
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._log.close()


# --- the backend ---------------------------------------------------------------------------------------------------


class VllmBackend(Backend):
    """Runs stages on real vLLM engines, one worker process per cluster worker.

    ``models``: expert name -> :class:`ModelSpec` (default: resolved from the workload's ``model_id`` + ``cfg``).
    ``done``: (stage, request id) -> finished record of an earlier run; those requests are not run again.
    """

    name = "vllm"
    resumable = True
    runs_policies = True

    def __init__(
        self,
        models: Mapping[str, ModelSpec] | None = None,
        cfg: Any = None,
        *,
        seed: int = 0,
        device: str | None = None,
        devices: Mapping[int, str] | None = None,
        python: str | None = None,
        log_dir: str | Path | None = None,
        co_resident: bool = False,
        done: Mapping[tuple[str, int], RequestRecord] | None = None,
    ) -> None:
        self.models = dict(models) if models is not None else None
        self.cfg = cfg
        self.seed = seed
        self.device = device or detect_device()
        self.devices = dict(devices or {})
        self.python = python or os.environ.get(PYTHON_ENV) or sys.executable
        self.log_dir = Path(log_dir) if log_dir else Path(tempfile.mkdtemp(prefix="mosaic-vllm-"))
        self.co_resident = co_resident
        self.done = dict(done or {})
        self.events: queue.Queue = queue.Queue()
        self.workers: dict[int, Any] = {}  # worker id -> WorkerProcess (or an actor handle)
        self.loaded: dict[int, str | None] = {}  # worker id -> expert its engine holds now
        self.texts: dict[tuple[int, str], str] = {}  # (query id, expert) -> response text (for the aggregator)
        self.routes: dict[int, tuple[str, ...]] = {}  # query id -> experts of the expert stage

    def resume_from(self, done: Mapping[tuple[str, int], RequestRecord]) -> None:
        self.done = dict(done)

    # ----------------------------------------------------------------- workers
    def start_worker(self, worker_id: int, index: int, n: int) -> Any:
        env = worker_env(index, n, self.device, self.devices)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        return WorkerProcess(worker_id, env, self.python, self.log_dir, self.events)

    def spawn(self, ids: Iterable[int], total: int | None = None) -> None:
        """Start workers ``ids`` (the i-th gets device slice i of ``total``, default len(ids)) that are not running
        yet, and wait until each has imported vLLM (not part of any stage)."""
        ids = list(ids)
        new = [w for w in ids if w not in self.workers]
        for i, w in enumerate(ids):
            if w in new:
                self.workers[w] = self.start_worker(w, i, total or len(ids))
                self.loaded.setdefault(w, None)
        waiting = set(new)
        while waiting:
            wid, ev = self._next_event(None)
            if ev["event"] == "ready" and wid in waiting:
                waiting.discard(wid)

    def ensure_workers(self, cluster: Cluster) -> None:
        self.spawn(cluster.ids)

    def request(self, wid: int, cmd: Mapping[str, Any], kind: str) -> dict:
        """Send ``cmd`` to worker ``wid`` and wait for its event ``kind`` (errors raise :class:`EngineError`)."""
        return self.request_all({wid: cmd}, kind)[wid]

    def request_all(self, cmds: Mapping[int, Mapping[str, Any]], kind: str) -> dict[int, dict]:
        """Send each worker its command at once, then wait until every one has answered with event ``kind``."""
        for wid, cmd in cmds.items():
            self.workers[wid].send(cmd)
        experts = {wid: cmd.get("expert") for wid, cmd in cmds.items()}
        out: dict[int, dict] = {}
        while len(out) < len(cmds):
            w, ev = self._next_event(experts)
            if w in cmds and ev["event"] == kind:
                out[w] = ev
        return out

    def worker_pids(self) -> dict[int, int]:
        return {w: h.pid for w, h in self.workers.items() if getattr(h, "pid", None)}

    def _next_event(self, expert_of: Mapping[int, str | None] | None) -> tuple[int, dict]:
        try:
            wid, ev = self.events.get(timeout=READY_TIMEOUT_S if expert_of is None else None)
        except queue.Empty:
            self.close(kill=True)
            raise EngineError(f"vllm workers did not start within {READY_TIMEOUT_S:.0f} s") from None
        if ev["event"] in ("exit", "error"):
            self._fail(wid, ev, expert_of or {})
        return wid, ev

    def _fail(self, wid: int, ev: Mapping[str, Any], expert_of: Mapping[int, str | None]) -> None:
        handle = self.workers.get(wid)
        tail = handle.log_tail() if handle is not None and hasattr(handle, "log_tail") else ""
        expert = ev.get("expert") or expert_of.get(wid) or self.loaded.get(wid)
        if ev["event"] == "exit" and expert is None:
            what = f"engine process of worker {wid} exited (code {ev.get('code')}) before serving any expert"
        elif ev["event"] == "exit":
            what = f"engine process of worker {wid} died (exit code {ev.get('code')}) while serving expert {expert!r}"
        else:
            what = f"engine of expert {expert!r} on worker {wid} failed during {ev.get('phase')}: {ev.get('message')}"
        self.close(kill=True)
        log = f"\n--- worker {wid} log tail ---\n{tail}" if tail else ""
        raise EngineError(f"{what}; finished records are in the trace{log}")

    # ----------------------------------------------------------------- jobs
    def model_specs(self, workload: Workload) -> dict[str, ModelSpec]:
        if self.models is None:
            self.models = {n: cpu_defaults(s) if self.device == "cpu" else s
                           for n, s in resolve_models(workload, self.cfg).items()}  # fmt: skip
            check_local_paths(self.models)
        missing = [e.name for e in (*workload.experts, workload.aggregator) if e.name not in self.models]
        if missing:
            raise EngineError(f"vllm backend: no model for expert(s) {missing}; known: {sorted(self.models)}")
        return self.models

    def job(self, stage: str, workload: Workload, rid: int, spec: ModelSpec) -> dict[str, Any]:
        r = workload.requests[rid]
        q = workload.queries[r.query_id]
        if stage == AGGREGATION_STAGE:
            route = self.routes.get(q.id) or tuple(e for (qid, e) in self.texts if qid == q.id)
            texts = [self.texts.get((q.id, e), "") for e in route]
            prompt = build_aggregator_prompt(question_text(q), texts or [""], answer_format=answer_format(q))
            messages = prompt.messages()
        else:
            messages = expert_messages(q, spec.system_prompt)
        offset = 1_000_003 if stage == AGGREGATION_STAGE else 0
        return {"request_id": rid, "query_id": q.id, "expert": r.expert, "messages": messages,
                "arrival": float(q.arrival), "max_tokens": spec.max_tokens, "temperature": spec.temperature,
                "top_p": spec.top_p, "top_k": spec.top_k,
                "seed": (self.seed * 7_919 + offset + rid) % (2**31)}  # fmt: skip

    # ----------------------------------------------------------------- stage
    def run_stage(
        self,
        stage: str,
        plan: Plan,
        workload: Workload,
        cluster: Cluster,
        trace: TraceWriter,
        start: float = 0.0,
        resident: Mapping[int, str | None] | None = None,
    ) -> StageResult:
        plan.require_workers(cluster)
        specs = self.model_specs(workload)
        if stage != AGGREGATION_STAGE:
            self.routes.update({q.id: route for q, route in zip(workload.queries, workload.routes, strict=True)})
        seen: dict[tuple[int, str], Response] = {}
        jobs = {w: self._jobs(stage, workload, plan.order.get(w, ()), specs, seen) for w in cluster.ids}
        active = [w for w in cluster.ids if jobs[w]]
        if active:
            self.ensure_workers(cluster)
        for w in active:
            self.workers[w].send({"cmd": "stage", "stage": stage, "start": start, "jobs": jobs[w],
                                  "models": self.engine_dicts(plan.placement.get(w, ()), specs),
                                  "co_resident": self.co_resident})  # fmt: skip
        done = self._collect(stage, workload, trace, set(active), jobs, seen)
        ends = {w: done[w]["end"] if w in done else start for w in cluster.ids}
        res = {w: self.loaded.get(w) for w in cluster.ids}
        busy = {w: done[w]["busy"] if w in done else 0.0 for w in cluster.ids}
        loading = {w: done[w]["loading"] if w in done else 0.0 for w in cluster.ids}
        end = max(ends.values(), default=start)
        return StageResult(stage, start, end, ends, res, Responses(seen), busy, loading)

    def engine_dicts(self, experts: Iterable[str], specs: Mapping[str, ModelSpec]) -> dict[str, dict[str, Any]]:
        """Engine settings of a worker's experts; co-resident engines on a GPU split its memory share evenly."""
        names = list(dict.fromkeys(experts))
        out = {e: specs[e].engine_dict(self.seed) for e in names}
        if self.co_resident and self.device == "cuda" and len(names) > 1:
            for e in names:
                out[e]["gpu_memory_utilization"] = (specs[e].gpu_memory_utilization or 0.9) / len(names)
        return out

    def _jobs(self, stage: str, workload: Workload, order: tuple[int, ...], specs: Mapping[str, ModelSpec],
              seen: dict[tuple[int, str], Response]) -> list[dict[str, Any]]:  # fmt: skip
        """Jobs of one worker in plan order; requests finished in an earlier run are restored, not run."""
        out = []
        for rid in order:
            r = workload.requests[rid]
            old = self.done.get((stage, rid))
            if old is not None and old.expert == r.expert and old.query_id == r.query_id:
                seen[(r.query_id, r.expert)] = Response(old.output_tokens, old.answer, old.correct, old.text)
                self.texts[(r.query_id, r.expert)] = old.text or ""
                continue
            out.append(self.job(stage, workload, rid, specs[r.expert]))
        return out

    def _collect(self, stage: str, workload: Workload, trace: TraceWriter, pending: set[int],
                 jobs: Mapping[int, list[dict]], seen: dict[tuple[int, str], Response]) -> dict[int, dict]:  # fmt: skip
        """Write records as workers report them, until every active worker is done."""
        current = {w: (jobs[w][0]["expert"] if jobs[w] else None) for w in pending}
        done: dict[int, dict] = {}
        while pending:
            wid, ev = self._next_event(current)
            kind = ev["event"]
            if kind == "load":
                current[wid] = self.loaded[wid] = ev["expert"]
                trace.write(LoadRecord(ev["stage"], wid, ev["expert"], ev["start"], ev["end"]))
            elif kind == "request":
                rec = self.record_of(workload, wid, ev)
                trace.write(rec)
                seen[(rec.query_id, rec.expert)] = Response(rec.output_tokens, rec.answer, rec.correct, rec.text)
            elif kind == "done":
                self.loaded[wid] = ev["resident"]
                done[wid] = ev
                pending.discard(wid)
        return done

    def record_of(self, workload: Workload, wid: int, ev: Mapping[str, Any]) -> RequestRecord:
        """The record of worker ``wid``'s ``request`` event (its answer extracted; its text kept for aggregators)."""
        q = workload.queries[ev["query_id"]]
        answer, correct = extract(q, ev["text"])
        self.texts[(q.id, ev["expert"])] = ev["text"]
        return RequestRecord(ev["stage"], ev["request_id"], ev["query_id"], ev["expert"], wid, ev["start"], ev["end"],
                             ev["prompt_tokens"], ev["output_tokens"], answer, correct, ev["text"])  # fmt: skip

    def run_policy(
        self,
        stage: str,
        policy: Policy,
        workload: Workload,
        costs: CostModel,
        cluster: Cluster,
        trace: TraceWriter,
        start: float = 0.0,
        resident: Mapping[int, str | None] | None = None,
        gates: Gates | None = None,
    ) -> StageResult:
        """A static plan without gates as :meth:`run_stage` (one command per worker); any other policy on the
        wall-clock runtime loop, the workers serving sessions (:func:`~mosaic.runtime.engine_link.run_on_engines`)."""
        if isinstance(policy, PlanReplay) and gates is None:
            return self.run_stage(stage, policy.plan, workload, cluster, trace, start, resident)
        return run_on_engines(self, stage, policy, workload, costs, cluster, trace, start, resident, gates)

    def close(self, kill: bool = False) -> None:
        """Stop every worker (``kill``: at once, without letting a running stage finish)."""
        workers, self.workers = self.workers, {}
        for h in workers.values():
            h.kill() if kill else h.stop()
        self.loaded = {}
        self.events = queue.Queue()  # exits of the stopped workers stay in the old queue


def done_records(path: str | Path) -> dict[tuple[str, int], RequestRecord]:
    """(stage, request id) -> finished request record of a trace (the last one wins)."""
    return finished_requests(read_trace(path))


def backend_from_config(cls: type[VllmBackend], cfg: Any) -> VllmBackend:
    """A ``cls`` engine backend configured from a run config: models from the experts' ``model_id``
    (+ ``MOSAIC_VLLM_MODELS``), seed and ``runtime.co_resident`` from ``cfg``."""
    runtime = getattr(cfg, "runtime", None)
    return cls(
        None, cfg, seed=int(getattr(cfg, "seed", 0) or 0), co_resident=bool(getattr(runtime, "co_resident", False))
    )


def make_vllm_backend(cfg: RunConfig, responses: Responses, costs: CostModel) -> VllmBackend:
    """BACKENDS factory (engine processes on this machine)."""
    return backend_from_config(VllmBackend, cfg)


BACKENDS.register("vllm", help="real vLLM engines, one process per worker (GPU, or CPU with vllm-cpu)")(
    make_vllm_backend
)

__all__ = ["EngineError", "VllmBackend", "done_records", "make_vllm_backend"]
