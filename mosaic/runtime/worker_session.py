"""A worker session: an engine worker serving jobs it receives over time, for the wall-clock runtime loop.

:class:`EngineSession` keeps a queue of jobs (``enqueue``), hands them back on request while they have not started
(``withdraw``) and serves them with the semantics of :meth:`~mosaic.runtime.vllm_worker.EngineWorker.run_stage`:
strictly in queue order (head-of-line: never ahead of an earlier job that has not arrived, or of another expert's);
before a job of another expert the running batch drains, then the resident engine is freed (one-resident mode) and
the new one loaded; a job enters the engine when it has arrived and the batch has room (``max_num_seqs``). It
reports ``admit`` (jobs entering the engine), ``loading`` / ``load`` (a swap's start and end), ``request`` (each
completion, with its real output tokens) and, when the session ends, ``done``.

The commands are safe from any thread: the subprocess's stdin reader and a threaded Ray actor call them while
:meth:`EngineSession.serve` runs the engine in its own thread, so a withdrawal is answered at once, even during a
model load. A job whose model load has begun (the head of the queue) is kept: it stays where it is.
"""

from __future__ import annotations

import threading
import time
import traceback
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from typing import Any

Event = dict[str, Any]
SESSION_COMMANDS = frozenset({"session", "enqueue", "withdraw", "end"})
_LOAD, _ADMIT, _STEP, _WAIT, _END = range(5)


def error_event(expert: str | None, phase: str, err: BaseException) -> Event:
    """The ``error`` event of a failure in ``phase`` (load, serve) of ``expert``'s engine."""
    return {"event": "error", "expert": expert, "phase": phase, "message": f"{type(err).__name__}: {err}",
            "traceback": traceback.format_exc(limit=8)}  # fmt: skip


class EngineSession:
    """One session of a worker (``worker``: an :class:`~mosaic.runtime.vllm_worker.EngineWorker`); ``cmd``: the
    ``session`` command (``stage``, ``start``: the run clock now, ``models``: expert -> engine settings,
    ``co_resident``)."""

    def __init__(self, worker: Any, cmd: Mapping[str, Any], step_log: Callable[[list], None] | None = None) -> None:
        self.worker, self.stage = worker, str(cmd.get("stage", "expert"))
        self.specs = dict(cmd.get("models") or {})
        self.co_resident = bool(cmd.get("co_resident", False))
        self.start, self._t0 = float(cmd.get("start", 0.0)), time.perf_counter()
        self._cond = threading.Condition()
        self._queue: deque[Mapping[str, Any]] = deque()
        self._pinned: int | None = None  # the head whose model load has begun
        self._admitted: set[int] = set()  # every job that entered the engine in this session
        self._ending = self._abort = False
        self._engine: Any = worker.engines[worker.resident] if worker.resident is not None else None
        self._state: dict[str, dict[str, Any]] = {}  # engine request id -> the running job's progress
        self.busy = self.loading = 0.0
        self.last_end = self.start
        self._log = step_log

    def clock(self) -> float:
        """Seconds on the run clock now."""
        return self.start + time.perf_counter() - self._t0

    # --- commands (any thread) -----------------------------------------------------------------------------------

    def enqueue(self, jobs: list[Mapping[str, Any]]) -> None:
        with self._cond:
            self._queue.extend(jobs)
            self._cond.notify_all()

    def withdraw(self, request_ids: list[int], token: Any = None) -> Event:
        """Take the queued jobs ``request_ids`` back (not one that entered the engine, nor a head being loaded for);
        the reply names those taken and those that entered the engine already."""
        want = set(request_ids)
        with self._cond:
            taken = {r for j in self._queue if (r := j["request_id"]) in want and r != self._pinned}
            if taken:
                self._queue = deque(j for j in self._queue if j["request_id"] not in taken)
            admitted = [r for r in request_ids if r in self._admitted]
        return {"event": "withdrawn", "worker": self.worker.worker_id, "token": token,
                "request_ids": [r for r in request_ids if r in taken], "admitted": admitted}  # fmt: skip

    def end(self, abort: bool = False) -> None:
        """Serve what is queued, then end (``abort``: end now, dropping the queue and the running requests)."""
        with self._cond:
            self._ending, self._abort = True, self._abort or abort
            self._cond.notify_all()

    # --- serving (one thread) ------------------------------------------------------------------------------------

    def serve(self) -> Iterator[Event]:
        """Serve until the session ends; yields the session's events, the last one ``done`` (or an ``error``)."""
        while True:
            kind, arg = self._next()
            if kind == _END:
                break
            if kind == _LOAD:
                ev = yield from self._load(arg)
            elif kind == _ADMIT:
                ev = yield from self._admit(arg)
            else:
                ev = yield from self._step()
            if ev is not None:
                yield ev
                return
        self._drop()
        yield {"event": "done", "worker": self.worker.worker_id, "end": self.last_end, "resident": self.worker.resident,
               "busy": self.busy, "loading": self.loading}  # fmt: skip

    def _next(self) -> tuple[int, Any]:
        """What to do next (under the lock): load for the head, admit jobs, run an engine step, or end."""
        with self._cond:
            while True:
                if self._abort:
                    return _END, None
                head = self._queue[0] if self._queue else None
                current = self._engine.expert if self._engine is not None else None
                if head is not None and head["expert"] != current:
                    if self._state:
                        return _STEP, None  # drain the batch first
                    self._pinned = head["request_id"]
                    return _LOAD, head["expert"]
                admit = self._admissible(current) if head is not None else []
                if admit:
                    return _ADMIT, admit
                if self._state:
                    return _STEP, None
                if head is None and self._ending:
                    return _END, None
                wait = max(0.0, float(head.get("arrival", 0.0)) - self.clock()) if head is not None else None
                self._cond.wait(wait)

    def _admissible(self, expert: str | None) -> list[Mapping[str, Any]]:
        """Jobs at the head that have arrived and fit the batch, taken out of the queue (under the lock)."""
        room = int(self.specs.get(expert, {}).get("max_num_seqs") or 256) - len(self._state)
        now, out = self.clock(), []
        while self._queue and room > 0:
            job = self._queue[0]
            if job["expert"] != expert or float(job.get("arrival", 0.0)) > now + 1e-9:
                break
            out.append(self._queue.popleft())
            self._admitted.add(job["request_id"])
            room -= 1
        if out:
            self._pinned = None
        return out

    def _load(self, expert: str) -> Iterator[Event]:
        engines = self.worker.engines
        if expert in engines:  # co-resident: switch without a load
            engines[expert] = engines.pop(expert)
            self._engine = engines[expert]
            yield {"event": "switch", "worker": self.worker.worker_id, "expert": expert, "time": self.clock()}
            return None
        t = self.clock()
        yield {"event": "loading", "worker": self.worker.worker_id, "expert": expert, "start": t}
        try:
            if not self.co_resident:
                self.worker.close()
            self._engine = None
            engines[expert] = self.worker.open_engine(expert, self.specs[expert])
        except Exception as err:
            return error_event(expert, "load", err)
        self._engine = engines[expert]
        end = self.clock()
        self.loading += end - t
        yield {"event": "load", "stage": self.stage, "worker": self.worker.worker_id, "expert": expert, "start": t,
               "end": end}  # fmt: skip
        return None

    def _admit(self, jobs: list[Mapping[str, Any]]) -> Iterator[Event]:
        engine, t = self._engine, self.clock()
        try:
            for job in jobs:
                ids = engine.prompt_ids(job)
                rid = f"{job.get('stage', self.stage)}-{job['request_id']}"
                engine.engine.add_request(rid, {"prompt_token_ids": ids}, engine.sampling(job, len(ids)))
                self._state[rid] = {"job": job, "start": None, "text": [], "tokens": 0, "prompt": len(ids)}
        except Exception as err:
            return error_event(engine.expert, "serve", err)
        yield {"event": "admit", "worker": self.worker.worker_id, "time": t,
               "request_ids": [j["request_id"] for j in jobs]}  # fmt: skip
        return None

    def _step(self) -> Iterator[Event]:
        engine, state = self._engine, self._state
        t = self.clock()
        try:
            outputs = engine.engine.step()
        except Exception as err:
            return error_event(engine.expert, "serve", err)
        end = self.clock()
        self.busy += end - t
        if self._log is not None:
            self._log([self.worker.worker_id, engine.expert, t, end - t, len(state),
                       sum(st["prompt"] + st["tokens"] for st in state.values())])  # fmt: skip
        for out in outputs:
            st = state.get(out.request_id)
            if st is None:
                continue
            st["start"] = t if st["start"] is None else st["start"]
            comp = out.outputs[0]
            st["text"].append(comp.text)
            st["tokens"] += len(comp.token_ids)
            if out.finished:
                del state[out.request_id]
                self.last_end = end
                yield self._finished(st, end, comp.finish_reason)
        return None

    def _finished(self, st: Mapping[str, Any], end: float, reason: Any) -> Event:
        job = st["job"]
        return {"event": "request", "stage": job.get("stage", self.stage), "request_id": job["request_id"],
                "query_id": job["query_id"], "expert": job["expert"], "worker": self.worker.worker_id,
                "start": st["start"], "end": end, "prompt_tokens": st["prompt"], "output_tokens": st["tokens"],
                "text": "".join(st["text"]), "finish_reason": reason, "busy": self.busy}  # fmt: skip

    def _drop(self) -> None:
        """On abort: the queue goes, the engine's running requests are aborted."""
        if not self._abort:
            return
        with self._cond:
            self._queue.clear()
        core = getattr(self._engine, "engine", None)
        if self._state and hasattr(core, "abort_request"):
            core.abort_request(list(self._state))
        self._state.clear()


def session_command(worker: Any, cmd: Mapping[str, Any], step_log: Callable[[list], None] | None = None
                    ) -> Event | None:  # fmt: skip
    """Apply a session command to ``worker`` (``session`` opens one; ``enqueue``, ``withdraw``, ``end``); the reply
    event, if the command has one (``withdrawn``; an ``error`` when no session is open)."""
    kind = cmd.get("cmd")
    if kind == "session":
        worker.session = EngineSession(worker, cmd, step_log)
        return None
    session = worker.session
    if session is None:
        return {"event": "error", "expert": None, "phase": "protocol", "message": f"{kind!r}: no session is open"}
    if kind == "enqueue":
        session.enqueue(list(cmd.get("jobs") or []))
    elif kind == "withdraw":
        return session.withdraw([int(r) for r in cmd.get("request_ids") or []], cmd.get("token"))
    elif kind == "end":
        session.end(bool(cmd.get("abort", False)))
    return None


def serve_session(worker: Any) -> Iterator[Event]:
    """The open session's events until it ends (the ``serve`` command); the worker then has no session."""
    session = worker.session
    if session is None:
        yield {"event": "error", "expert": None, "phase": "protocol", "message": "'serve': no session is open"}
        return
    try:
        yield from session.serve()
    finally:
        if worker.session is session:
            worker.session = None


__all__ = ["SESSION_COMMANDS", "EngineSession", "error_event", "serve_session", "session_command"]
