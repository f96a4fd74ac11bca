"""The real backends' side of the wall-clock runtime loop: a policy's stage on worker sessions.

:class:`SessionLink` is the :class:`~mosaic.runtime.wall_loop.EngineLink` of a
:class:`~mosaic.runtime.vllm_backend.VllmBackend` (and of the Ray backend, whose workers take the same commands):
it opens a session on every worker (``session``, then ``serve``: the worker streams its reports), builds each
request's job with the backend's prompts, sends ``enqueue`` / ``withdraw`` / ``end`` through the worker handles'
``command``, and turns ``request`` reports into records. :func:`run_on_engines` runs one stage.
"""

from __future__ import annotations

import queue
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from mosaic.agents.policy import Policy
from mosaic.core.trace import AGGREGATION_STAGE, RequestRecord, TraceWriter
from mosaic.core.types import Cluster, Workload
from mosaic.predictors.interface import CostModel
from mosaic.runtime.interface import Gates, StageResult
from mosaic.runtime.wall_loop import Job, WallLoop

if TYPE_CHECKING:
    from mosaic.runtime.vllm_backend import VllmBackend


class SessionLink:
    """One stage's sessions on ``backend``'s workers (``workload``: the stage's requests)."""

    def __init__(self, backend: VllmBackend, stage: str, workload: Workload, cluster: Cluster) -> None:
        self.backend, self.stage, self.workload, self.cluster = backend, stage, workload, cluster
        self.specs = backend.model_specs(workload)
        self.sessions: list[int] = []
        self.current: dict[int, str | None] = {}  # worker -> expert it serves or loads (error messages)
        self.clock: Callable[[], float] = time.perf_counter  # the run clock, from open()

    def open(self, workers: Sequence[int], clock: Callable[[], float]) -> None:
        be = self.backend
        self.clock = clock
        be.ensure_workers(self.cluster)
        names = [e.name for e in (*self.workload.experts, self.workload.aggregator)]
        models = be.engine_dicts([n for n in dict.fromkeys(names) if n in self.specs], self.specs)
        for w in workers:
            self.current[w] = be.loaded.get(w)
            handle = be.workers[w]
            handle.command({"cmd": "session", "stage": self.stage, "start": clock(), "models": models,
                            "co_resident": be.co_resident})  # fmt: skip
            handle.send({"cmd": "serve"})
            self.sessions.append(w)

    def job(self, stage: str, request_id: int, prerequisites: Sequence[RequestRecord] = (),
            arrival: float | None = None, prompt_tokens: int | None = None) -> Job:  # fmt: skip
        be, r = self.backend, self.workload.requests[request_id]
        spec = self.specs[r.expert]
        if prerequisites:  # a released aggregator request: its prompt carries its prerequisites' texts
            be.routes[r.query_id] = tuple(p.expert for p in prerequisites)
            for p in prerequisites:
                be.texts[(r.query_id, p.expert)] = p.text or ""
            job = be.job(AGGREGATION_STAGE, self.workload, request_id, spec)
        else:
            job = be.job(stage, self.workload, request_id, spec)
        job["stage"] = stage
        if arrival is not None:
            job["arrival"] = float(arrival)
        return job

    def restored(self, stage: str, request_id: int) -> RequestRecord | None:
        old = self.backend.done.get((stage, request_id))
        r = self.workload.requests[request_id]
        if old is None or old.expert != r.expert or old.query_id != r.query_id:
            return None
        self.backend.texts[(r.query_id, r.expert)] = old.text or ""
        return old

    def enqueue(self, worker: int, jobs: list[Job]) -> None:
        self.backend.workers[worker].command({"cmd": "enqueue", "jobs": jobs})

    def withdraw(self, worker: int, request_ids: tuple[int, ...]) -> tuple[tuple[int, ...], tuple[int, ...]]:
        reply = self.backend.workers[worker].command({"cmd": "withdraw", "request_ids": list(request_ids)})
        if not reply or reply.get("event") != "withdrawn":
            return (), ()  # the worker is gone: its exit comes as a report
        return tuple(reply["request_ids"]), tuple(reply.get("admitted", ()))

    def next_event(self, until: float | None) -> tuple[int, Mapping[str, Any]] | None:
        be = self.backend
        wait = None if until is None else until - self.clock()
        try:
            wid, ev = be.events.get(timeout=wait) if wait is None or wait > 0 else be.events.get_nowait()
        except queue.Empty:
            return None
        kind = ev.get("event")
        if kind in ("exit", "error"):
            be._fail(wid, ev, self.current)
        if kind == "loading":
            self.current[wid] = ev["expert"]
        elif kind == "load":
            self.current[wid] = be.loaded[wid] = ev["expert"]
        return wid, ev

    def record(self, worker: int, event: Mapping[str, Any]) -> RequestRecord:
        return self.backend.record_of(self.workload, worker, event)

    def close(self, abort: bool = False) -> dict[int, Mapping[str, Any]]:
        be, open_ = self.backend, [w for w in self.sessions if w in self.backend.workers]
        self.sessions = []
        for w in open_:
            be.workers[w].command({"cmd": "end", "abort": abort})
        done: dict[int, Mapping[str, Any]] = {}
        while len(done) < len(open_):
            got = self.next_event(None)
            if got is not None and got[1].get("event") == "done" and got[0] in open_:
                done[got[0]] = got[1]
                be.loaded[got[0]] = got[1].get("resident")
        return done


def run_on_engines(
    backend: VllmBackend,
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
    """The stage under ``policy`` on ``backend``'s engines (:class:`~mosaic.runtime.wall_loop.WallLoop`); the view
    starts with the experts the engines hold (``resident`` where a worker has not started yet)."""
    if stage != AGGREGATION_STAGE and gates is None:
        backend.routes.update({q.id: route for q, route in zip(workload.queries, workload.routes, strict=True)})
    link = SessionLink(backend, stage, workload, cluster)
    backend.ensure_workers(cluster)
    held = {w: backend.loaded.get(w, (resident or {}).get(w)) for w in cluster.ids}
    return WallLoop(link, stage, workload, costs, cluster, trace, start, held, gates).run(policy)


__all__ = ["SessionLink", "run_on_engines"]
