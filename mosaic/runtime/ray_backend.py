"""The ``ray`` backend: the vLLM engine worker as a Ray actor, so a cluster of several nodes runs one plan.

Each cluster worker is one actor (``num_gpus=1`` on GPUs, so Ray sets its ``CUDA_VISIBLE_DEVICES``; on CPUs
``num_cpus`` cores and the same core binding as the ``vllm`` backend). A stage command is a streaming actor call:
the actor yields load and request events as they finish and the driver writes them to the trace at once. The
actor is threaded: a session of the wall-clock runtime loop streams its reports through ``handle({"cmd": "serve"})``
while its commands (``enqueue``, ``withdraw``) are synchronous ``command`` calls answered in another thread.
Ray is imported only when the backend starts workers. ``RAY_ADDRESS`` (or ``address``) joins a running cluster;
without it a local Ray starts (``num_cpus`` = this machine's cores).
"""

from __future__ import annotations

import contextlib
import os
import queue
import threading
from collections.abc import Iterator, Mapping
from typing import Any

from mosaic.core.config import RunConfig
from mosaic.core.types import Responses
from mosaic.predictors.interface import CostModel
from mosaic.runtime.registry import BACKENDS
from mosaic.runtime.vllm_backend import EngineError, VllmBackend, backend_from_config, worker_env

_ACTOR_CLASS: Any = None
ACTOR_THREADS = 4  # a threaded actor: session commands are answered while a stage or session streams


class EngineActor:
    """Ray actor body: one :class:`~mosaic.runtime.vllm_worker.EngineWorker` (vLLM imported in the actor)."""

    def __init__(self, worker_id: int) -> None:
        from mosaic.runtime.vllm_worker import EngineWorker, apply_env_defaults, pin_cpus, preload, warm_up

        pin_cpus()
        apply_env_defaults()
        preload()
        if os.environ.get("MOSAIC_WORKER_WARMUP", "1") == "1":
            warm_up()
        self.worker = EngineWorker(worker_id)

    def pid(self) -> int:
        return os.getpid()

    def handle(self, cmd: Mapping[str, Any]) -> Iterator[dict]:
        from mosaic.runtime.vllm_worker import handle

        yield from handle(self.worker, cmd)

    def command(self, cmd: Mapping[str, Any]) -> dict | None:
        """A session command, answered in its own thread while ``handle({"cmd": "serve"})`` streams in another."""
        return self.worker.command(cmd)

    def close(self) -> None:
        self.worker.close()


def _actor_class() -> Any:
    global _ACTOR_CLASS
    if _ACTOR_CLASS is None:
        import ray

        _ACTOR_CLASS = ray.remote(EngineActor)
    return _ACTOR_CLASS


class RayWorker:
    """Driver-side handle of one engine actor; events go to ``events`` like a :class:`WorkerProcess`'s."""

    def __init__(self, worker_id: int, env: Mapping[str, str], device: str, events: queue.Queue) -> None:
        import ray

        self.worker_id = worker_id
        self._events = events
        keep = ("VLLM_", "OMP_", "MOSAIC_", "TOKENIZERS_", "PYTHONPATH", "HF_")
        env_vars = {k: v for k, v in env.items() if k.startswith(keep) and k != "CUDA_VISIBLE_DEVICES"}
        cpus = len(env.get("VLLM_CPU_OMP_THREADS_BIND", "0").split(",")) if device == "cpu" else 1
        opts = {"num_cpus": cpus, "runtime_env": {"env_vars": env_vars}, "max_concurrency": ACTOR_THREADS}
        if device == "cuda":
            opts["num_gpus"] = 1
        self.actor = _actor_class().options(**opts).remote(worker_id)
        try:
            self.pid = ray.get(self.actor.pid.remote())
        except Exception as err:
            raise EngineError(f"ray actor of worker {worker_id} did not start: {err}") from None
        events.put((worker_id, {"event": "ready", "worker": worker_id, "pid": self.pid}))

    def send(self, cmd: Mapping[str, Any]) -> None:
        gen = self.actor.handle.options(num_returns="streaming").remote(dict(cmd))
        threading.Thread(target=self._drain, args=(gen,), daemon=True, name=f"ray-worker{self.worker_id}").start()

    def _drain(self, gen: Any) -> None:
        import ray

        try:
            for ref in gen:
                self._events.put((self.worker_id, ray.get(ref)))
        except Exception as err:
            self._events.put((self.worker_id, {"event": "exit", "code": f"ray: {type(err).__name__}"}))

    def command(self, cmd: Mapping[str, Any]) -> dict | None:
        """A session command, synchronous (its order kept); the actor's reply, if any (None: the actor is gone)."""
        import ray

        try:
            return ray.get(self.actor.command.remote(dict(cmd)))
        except Exception:
            return None  # the stream reports the actor's death

    def log_tail(self) -> str:
        return ""

    def stop(self) -> None:
        import ray

        with contextlib.suppress(Exception):  # already dead
            ray.get(self.actor.close.remote(), timeout=60)
        ray.kill(self.actor)

    def kill(self) -> None:
        import ray

        ray.kill(self.actor)


class RayBackend(VllmBackend):
    """:class:`VllmBackend` whose workers are Ray actors (local Ray, or ``RAY_ADDRESS``)."""

    name = "ray"

    def __init__(self, *args: Any, address: str | None = None, num_cpus: int | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.address = address or os.environ.get("RAY_ADDRESS")
        self.num_cpus = num_cpus
        self._own_ray = False  # this backend started Ray (and shuts it down on close)

    def _init_ray(self) -> None:
        import ray

        if ray.is_initialized():
            return
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
        if self.address:
            ray.init(address=self.address, log_to_driver=False)
        else:
            ray.init(num_cpus=self.num_cpus or os.cpu_count(), include_dashboard=False, log_to_driver=False)
        self._own_ray = True

    def close(self, kill: bool = False) -> None:
        super().close(kill)
        if self._own_ray:
            import ray

            ray.shutdown()
            self._own_ray = False

    def start_worker(self, worker_id: int, index: int, n: int) -> Any:
        try:
            import ray  # noqa: F401
        except ImportError:
            raise EngineError("the ray backend needs Ray: pip install 'mosaic-moa[ray]'") from None
        self._init_ray()
        return RayWorker(worker_id, worker_env(index, n, self.device, self.devices), self.device, self.events)


def make_ray_backend(cfg: RunConfig, responses: Responses, costs: CostModel) -> RayBackend:
    """BACKENDS factory (same model resolution as ``vllm``)."""
    return backend_from_config(RayBackend, cfg)


BACKENDS.register("ray", help="vLLM engine workers as Ray actors (one per GPU; a Ray cluster runs one plan)")(
    make_ray_backend
)

__all__ = ["EngineActor", "RayBackend", "RayWorker", "make_ray_backend"]
