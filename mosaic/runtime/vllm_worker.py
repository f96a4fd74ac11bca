"""One engine worker: vLLM engines for the experts a plan places on one GPU (or one CPU slice), run in plan order.

The same :class:`EngineWorker` runs in a subprocess (``python -m mosaic.runtime.vllm_worker``, JSON lines on
stdin/stdout: the :mod:`mosaic.runtime.vllm_backend`) or inside a Ray actor (:mod:`mosaic.runtime.ray_backend`).
This module imports vLLM only when an engine is opened, so it stays importable without vLLM.

Stage semantics (mirrors :mod:`mosaic.runtime.sim_worker`): jobs run strictly in plan order, grouped into runs of one
expert. Before a run whose expert is not resident, the worker frees the resident engine(s) (one-resident mode) and
loads the new one: one ``load`` event spanning free + load. A run's requests are handed to the engine in order,
each not before its arrival (head-of-line: never ahead of an earlier job that has not arrived). A request's
``start`` is the start of the engine step that first returns output for it (its admission and prefill), ``end``
the end of the step that finished it. Times are seconds on the run clock: ``start`` of the stage plus the time
since the worker received the stage command.

For the wall-clock runtime loop a worker serves a *session* instead (``session`` then ``serve``;
:mod:`mosaic.runtime.worker_session`): jobs arrive over time (``enqueue``) and may be asked back (``withdraw``),
with the same order and load semantics. The subprocess reads stdin in a thread, so session commands are answered
while the engine runs.
"""

from __future__ import annotations

import gc
import json
import os
import queue
import sys
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from mosaic.runtime.engine_spec import ENGINE_ENV_DEFAULTS, apply_env_defaults  # noqa: F401  (re-exported)
from mosaic.runtime.worker_session import SESSION_COMMANDS, serve_session, session_command

DEFAULT_MAX_MODEL_LEN = 2048
KV_ENV = "VLLM_CPU_KVCACHE_SPACE"  # GiB; vLLM's CPU platform lets it override kv_cache_memory_bytes
# Imported when a worker starts (~12 s on CPU), so that a model load times the engine start only.
PRELOAD = ("vllm", "vllm.engine.arg_utils", "vllm.v1.engine.llm_engine", "vllm.v1.worker.cpu_worker",
           "vllm.v1.worker.gpu_worker")  # fmt: skip
Event = dict[str, Any]
# MOSAIC_STEP_LOG=FILE: one JSON line per engine step [worker, expert, start, seconds, sequences, KV tokens]
_STEP_LOG = open(os.environ["MOSAIC_STEP_LOG"], "a", buffering=1) if os.environ.get("MOSAIC_STEP_LOG") else None  # noqa: SIM115
SAMPLING_KEYS = frozenset({"temperature", "top_p", "top_k", "min_p", "repetition_penalty", "presence_penalty",
                           "frequency_penalty"})  # fmt: skip


def pin_cpus() -> None:
    """Pin this process (and the threads it starts) to ``MOSAIC_WORKER_CPUS`` (e.g. ``"0"`` or ``"2,3"``), so that
    CPU workers do not compete for each other's cores, as GPU workers have a GPU each."""
    cpus = os.environ.get("MOSAIC_WORKER_CPUS")
    if cpus and hasattr(os, "sched_setaffinity"):
        try:
            os.sched_setaffinity(0, {int(c) for c in cpus.split(",") if c.strip()})
        except (OSError, ValueError) as err:
            print(f"mosaic worker: cannot pin to CPUs {cpus!r}: {err}", file=sys.stderr)


def _memory_share(spec: Mapping[str, Any]) -> dict[str, float]:
    share = spec.get("gpu_memory_utilization")
    return {"gpu_memory_utilization": float(share)} if share else {}


def _platform_args(spec: Mapping[str, Any]) -> dict[str, Any]:
    """Engine settings this platform needs. On CPU: no chunked prefill (vLLM 0.32 rewinds the per-request seeded
    generator after a partial prefill, which CPU generators do not support: "CPU Generator does not use offset"),
    and a KV cache no larger than a full batch of full-length sequences can use (allocating and zeroing the
    default 1 GiB makes a tiny model's start slow)."""
    from vllm.platforms import current_platform

    if not current_platform.is_cpu():
        return {}
    out: dict[str, Any] = {"enable_chunked_prefill": False}
    need = kv_bytes_needed(spec)
    limit = int(float(os.environ.get(KV_ENV, "1")) * 2**30)
    if need is not None and need < limit:
        out["kv_cache_memory_bytes"] = need
    return out


def kv_bytes_needed(spec: Mapping[str, Any]) -> int | None:
    """KV-cache bytes for ``max_num_seqs`` sequences of ``max_model_len`` tokens (+10 %, at least 64 MiB), from the
    model folder's ``config.json``; None when the folder or its fields are not there."""
    try:
        cfg = json.loads((Path(spec["path"]) / "config.json").read_text(encoding="utf-8"))
        layers, heads = int(cfg["num_hidden_layers"]), int(cfg["num_attention_heads"])
        kv_heads = int(cfg.get("num_key_value_heads") or heads)
        head_dim = int(cfg.get("head_dim") or int(cfg["hidden_size"]) // heads)
    except (OSError, KeyError, ValueError, TypeError):
        return None
    width = 4 if str(spec.get("dtype", "auto")) in ("float32", "float") else 2
    tokens = int(spec.get("max_num_seqs") or 256) * int(spec.get("max_model_len") or DEFAULT_MAX_MODEL_LEN)
    return max(64 * 2**20, int(1.1 * tokens * layers * kv_heads * head_dim * 2 * width))


class Engine:
    """One vLLM engine (in-process engine core) with its tokenizer and default sampling."""

    def __init__(self, expert: str, spec: Mapping[str, Any]) -> None:
        from vllm import EngineArgs, LLMEngine

        self.expert = expert
        self.spec = dict(spec)
        args = {
            "model": spec["path"],
            "dtype": spec.get("dtype", "auto"),
            "max_model_len": int(spec.get("max_model_len") or DEFAULT_MAX_MODEL_LEN),
            "max_num_seqs": int(spec.get("max_num_seqs") or 256),
            "enforce_eager": bool(spec.get("enforce_eager", True)),
            "disable_log_stats": True,
            "seed": int(spec.get("seed", 0)),
            **_memory_share(spec),
            **_platform_args(spec),
            **dict(spec.get("engine_args") or {}),
        }
        legacy = os.environ.pop(KV_ENV, None) if "kv_cache_memory_bytes" in args else None  # it would win
        try:
            self.engine = LLMEngine.from_engine_args(EngineArgs(**args))
        finally:
            if legacy is not None:
                os.environ[KV_ENV] = legacy
        self.tokenizer = self.engine.get_tokenizer()
        self.max_model_len = int(self.engine.model_config.max_model_len)
        self.defaults = dict(self.engine.model_config.get_diff_sampling_param() or {})

    def prompt_ids(self, job: Mapping[str, Any]) -> list[int]:
        """Token ids of the job's chat messages (the model's chat template), or of its raw ``prompt``."""
        messages = job.get("messages")
        if messages and getattr(self.tokenizer, "chat_template", None):
            text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            return list(self.tokenizer.encode(text, add_special_tokens=False))
        text = "\n\n".join(m["content"] for m in messages) + "\n\n" if messages else job["prompt"]
        return list(self.tokenizer.encode(text))

    def sampling(self, job: Mapping[str, Any], prompt_len: int) -> Any:
        """SamplingParams: the model's defaults, then the job's settings; output returned as deltas."""
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind

        room = self.max_model_len - prompt_len
        if room < 1:
            raise ValueError(
                f"request {job['request_id']}: prompt of {prompt_len} tokens leaves no room in "
                f"max_model_len={self.max_model_len} of expert {self.expert!r}"
            )
        params = dict(self.defaults)
        for key in ("temperature", "top_p", "top_k"):
            if job.get(key) is not None:
                params[key] = job[key]
        params = {k: v for k, v in params.items() if k in SAMPLING_KEYS}
        max_tokens = min(int(job.get("max_tokens") or 256), room)
        return SamplingParams(**params, max_tokens=max_tokens, seed=job.get("seed"),
                              ignore_eos=bool(job.get("ignore_eos", False)),
                              output_kind=RequestOutputKind.DELTA)  # fmt: skip

    def close(self) -> None:
        """Shut the engine core down and free its memory."""
        core = getattr(self.engine, "engine_core", None)
        if core is not None:
            core.shutdown()
        self.engine = None
        gc.collect()
        try:
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        except ImportError:
            pass


class EngineWorker:
    """The engines of one worker and the stage loop; events are plain dicts (JSON-able)."""

    def __init__(self, worker_id: int, opener: Callable[[str, Mapping[str, Any]], Any] = Engine) -> None:
        self.worker_id = worker_id
        self.engines: dict[str, Any] = {}  # expert -> open engine, in load order
        self._open = opener
        self.session: Any = None  # the open session (mosaic.runtime.worker_session), if any

    @property
    def resident(self) -> str | None:
        return next(reversed(self.engines), None)

    def close(self) -> None:
        for name in list(self.engines):
            self.engines.pop(name).close()

    def open_engine(self, expert: str, spec: Mapping[str, Any]) -> Any:
        """A new engine of ``expert`` (not yet among :attr:`engines`)."""
        return self._open(expert, spec)

    def command(self, cmd: Mapping[str, Any]) -> Event | None:
        """A session command (:data:`~mosaic.runtime.worker_session.SESSION_COMMANDS`), safe from any thread; its
        reply event, if it has one."""
        return session_command(self, cmd, _log_step if _STEP_LOG is not None else None)

    def run_stage(self, cmd: Mapping[str, Any]) -> Iterator[Event]:
        """Run ``cmd['jobs']`` in order; yields load / request events, then one ``done`` event."""
        t0, start = time.perf_counter(), float(cmd.get("start", 0.0))
        clock = lambda: start + time.perf_counter() - t0  # noqa: E731
        stage, specs, co_resident = cmd["stage"], cmd["models"], bool(cmd.get("co_resident", False))
        busy = loading = 0.0
        last_end = start
        for expert, group in _runs(cmd["jobs"]):
            if expert not in self.engines:
                t = clock()
                try:
                    if not co_resident:
                        self.close()
                    self.engines[expert] = self._open(expert, specs[expert])
                except Exception as err:
                    yield _error(expert, "load", err)
                    return
                loading += clock() - t
                yield {"event": "load", "stage": stage, "worker": self.worker_id, "expert": expert, "start": t,
                       "end": clock()}  # fmt: skip
            else:  # move to the end: it is the one in use now
                self.engines[expert] = self.engines.pop(expert)
            stats: dict[str, float] = {"busy": 0.0, "last_end": last_end}
            try:
                yield from serve(self.engines[expert], group, stage, self.worker_id, clock, stats)
            except Exception as err:
                yield _error(expert, "serve", err)
                return
            busy += stats["busy"]
            last_end = stats["last_end"]
        yield {"event": "done", "worker": self.worker_id, "end": last_end, "resident": self.resident, "busy": busy,
               "loading": loading}  # fmt: skip


def _log_step(row: list) -> None:
    """One engine step of a session to ``MOSAIC_STEP_LOG`` (as :func:`serve` writes them)."""
    if _STEP_LOG is not None:
        _STEP_LOG.write(json.dumps([*row[:2], round(row[2], 6), round(row[3], 6), *row[4:]]) + "\n")


def _runs(jobs: list[Mapping[str, Any]]) -> Iterator[tuple[str, list[Mapping[str, Any]]]]:
    """Consecutive jobs of one expert, in order."""
    group: list[Mapping[str, Any]] = []
    for job in jobs:
        if group and job["expert"] != group[0]["expert"]:
            yield group[0]["expert"], group
            group = []
        group.append(job)
    if group:
        yield group[0]["expert"], group


def _error(expert: str, phase: str, err: BaseException) -> Event:
    return {"event": "error", "expert": expert, "phase": phase, "message": f"{type(err).__name__}: {err}",
            "traceback": traceback.format_exc(limit=8)}  # fmt: skip


def serve(
    engine: Any,
    jobs: list[Mapping[str, Any]],
    stage: str,
    worker: int,
    clock: Callable[[], float],
    stats: dict[str, float],
) -> Iterator[Event]:
    """Stream ``jobs`` (one expert) through ``engine`` in order; yields a ``request`` event as each finishes."""
    pending = deque(jobs)
    state: dict[str, dict[str, Any]] = {}  # engine request id -> job, start, text, token count
    core = engine.engine
    while pending or state:
        while pending and pending[0].get("arrival", 0.0) <= clock() + 1e-9:
            job = pending.popleft()
            ids = engine.prompt_ids(job)
            rid = f"{stage}-{job['request_id']}"
            core.add_request(rid, {"prompt_token_ids": ids}, engine.sampling(job, len(ids)))
            state[rid] = {"job": job, "start": None, "text": [], "tokens": 0, "prompt": len(ids)}
        if not state:  # idle until the head arrives (no skipping ahead)
            time.sleep(max(0.0, pending[0]["arrival"] - clock()))
            continue
        t = clock()
        outputs = core.step()
        end = clock()
        stats["busy"] += end - t
        if _STEP_LOG is not None:
            kv = sum(st["prompt"] + st["tokens"] for st in state.values())
            _STEP_LOG.write(json.dumps([worker, engine.expert, round(t, 6), round(end - t, 6), len(state), kv]) + "\n")
        for out in outputs:
            st = state.get(out.request_id)
            if st is None:
                continue
            if st["start"] is None:
                st["start"] = t
            comp = out.outputs[0]
            st["text"].append(comp.text)
            st["tokens"] += len(comp.token_ids)
            if out.finished:
                del state[out.request_id]
                stats["last_end"] = end
                job = st["job"]
                yield {"event": "request", "stage": stage, "request_id": job["request_id"],
                       "query_id": job["query_id"], "expert": job["expert"], "worker": worker, "start": st["start"],
                       "end": end, "prompt_tokens": st["prompt"], "output_tokens": st["tokens"],
                       "text": "".join(st["text"]), "finish_reason": comp.finish_reason}  # fmt: skip


# --- subprocess entry point ------------------------------------------------------------------------------------


def _protocol_stream() -> Any:
    """A private copy of stdout for JSON events; fd 1 then points at stderr, so library prints go to the log."""
    proto = os.fdopen(os.dup(1), "w", buffering=1, encoding="utf-8")
    os.dup2(2, 1)
    return proto


def handle(worker: EngineWorker, cmd: Mapping[str, Any]) -> Iterator[Event]:
    """Events answering one command: ``stage``, ``serve`` (the open session's), ``profile``, ``ping`` or
    ``close``."""
    kind = cmd.get("cmd")
    if kind == "stage":
        yield from worker.run_stage(cmd)
    elif kind == "serve":
        yield from serve_session(worker)
    elif kind == "profile":
        from mosaic.runtime.profiler import profile_engine

        worker.close()
        try:
            options = cmd.get("options") or {}
            yield {"event": "profile", **profile_engine(cmd["expert"], cmd["spec"], options, Engine)}
        except Exception as err:
            yield _error(cmd["expert"], "profile", err)
    elif kind == "ping":
        yield {"event": "ready", "worker": worker.worker_id, "pid": os.getpid()}
    elif kind == "close":
        worker.close()
        yield {"event": "closed", "worker": worker.worker_id}
    else:
        yield {"event": "error", "expert": None, "phase": "protocol", "message": f"unknown command {kind!r}"}


def preload() -> None:
    """Import vLLM's engine modules now (not part of any model load); absent ones (other platform) skipped."""
    import importlib

    for mod in PRELOAD:
        try:
            importlib.import_module(mod)
        except Exception:
            continue


def warm_up() -> None:
    """Start and free one engine of a tiny random model, so that the first real load is not a cold one (the
    first engine of a process also initialises the runtime: +2 s on CPU). Failures are ignored."""
    import tempfile

    from mosaic.runtime.models import TinySpec, make_tiny

    try:
        with tempfile.TemporaryDirectory(prefix="mosaic-warmup-") as tmp:
            path = make_tiny(tmp, TinySpec(hidden=64, heads=1, kv_heads=1, intermediate=64, layers=1), seed=0)
            Engine("warm-up", {"path": str(path), "dtype": "float32", "max_model_len": 256, "max_num_seqs": 2}).close()
    except Exception as err:
        print(f"mosaic worker: warm-up engine failed ({err}); the first load will be a cold one", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    """``python -m mosaic.runtime.vllm_worker WORKER_ID``: read JSON commands on stdin, write events on stdout."""
    args = sys.argv[1:] if argv is None else argv
    worker_id = int(args[0]) if args else 0
    proto = _protocol_stream()
    pin_cpus()
    apply_env_defaults()
    if os.environ.get("MOSAIC_WORKER_PRELOAD", "1") == "1":
        preload()
    if os.environ.get("MOSAIC_WORKER_WARMUP", "1") == "1":
        warm_up()
    worker = EngineWorker(worker_id)
    write = _writer(proto)
    write({"event": "ready", "worker": worker_id, "pid": os.getpid()})
    commands = _read_commands(worker, write)
    try:
        while (cmd := commands.get()).get("cmd") != "exit":
            for event in handle(worker, cmd):
                write(event)
    finally:
        worker.close()
        proto.flush()
    return 0


def _writer(proto: Any) -> Callable[[Event], None]:
    """Write one event as a JSON line; safe from several threads."""
    lock = threading.Lock()

    def write(event: Event) -> None:
        line = json.dumps(event) + "\n"
        with lock:
            proto.write(line)

    return write


def _read_commands(worker: EngineWorker, write: Callable[[Event], None]) -> queue.Queue:
    """Read stdin in a thread: session commands are applied at once (their replies written), the others queued
    for the main thread; ``exit`` (or the end of stdin) aborts an open session and is queued last."""
    commands: queue.Queue = queue.Queue()

    def read() -> None:
        try:
            for line in sys.stdin:
                if not line.strip():
                    continue
                cmd = json.loads(line)
                if cmd.get("cmd") == "exit":
                    break
                if cmd.get("cmd") in SESSION_COMMANDS:
                    reply = worker.command(cmd)
                    if reply is not None:
                        write(reply)
                else:
                    commands.put(cmd)
        finally:  # also when a line is not JSON: the process then exits, which the backend reports
            if worker.session is not None:
                worker.session.end(abort=True)
            commands.put({"cmd": "exit"})

    threading.Thread(target=read, name="mosaic-worker-stdin", daemon=True).start()
    return commands


if __name__ == "__main__":
    sys.exit(main())
