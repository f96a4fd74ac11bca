"""``mosaic/AggOnline-v0``: skip or run the aggregator for each query when its experts finish, under online load.

One episode is one online run of an experiment (``runtime.barrier: false``, the config's arrivals) on the
simulator, run exactly as ``mosaic compare`` runs it (:func:`~mosaic.pipeline.plan_scheduler` and the
:class:`~mosaic.runtime.executor.Executor`): the run's skip policy is a
:class:`~mosaic.aggregation.thresholds.LearnedLoadPolicy` whose model is the agent, so the observation is the one the
deployed policy computes (:data:`~mosaic.aggregation.thresholds.ONLINE_FEATURE_NAMES`: the 9 agreement features,
the aggregator's backlog and queue per worker, the query's wait) and nothing about timing or dispatch is
re-implemented. The run goes on in a worker thread that hands each decision to the env and waits for the action;
the two never run at once, so an episode is as deterministic as the run.

Reward of a decision: ``accuracy_weight`` x (correct if skipped - correct if aggregated) when it skips (0 when it
aggregates: the aggregator's answer is the reference), minus the latency cost accrued since the previous decision: a
query costs ``latency_weight`` x (latency / ``latency_scale_s``) ** ``latency_power``, charged as its age grows while
it waits (a holding cost, so that a skip shows in the next rewards). An episode's return is thus ``accuracy_weight``
x the correct answers gained over always aggregating minus the latency cost of every query.
"""

from __future__ import annotations

import math
import queue
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from mosaic.aggregation.interface import AggregationPolicy, AlwaysAggregate
from mosaic.aggregation.thresholds import ONLINE_FEATURE_HIGH, ONLINE_FEATURE_NAMES, FixedThreshold, LearnedLoadPolicy
from mosaic.core.config import RunConfig, load_config
from mosaic.core.errors import ConfigError
from mosaic.core.trace import AGGREGATION_STAGE, RequestRecord, TraceWriter
from mosaic.pipeline import Experiment, make_backend, plan_scheduler, prepare, run_scheduler, skip_context
from mosaic.runtime.executor import Executor, RunResult, is_correct

# without experiments: MedMCQA at 0.44 queries/s, 80% of what greedy-lpt+rolling sustains online with always-aggregate
# (docs/aggregation.md, `experiments/online_aggregation.py`)
DEFAULT_ONLINE = ("workload.preset=medmcqa", "workload.arrival_rate=0.44", "workload.arrival_process=poisson",
                  "runtime.barrier=false", "tracking.mode=disabled")  # fmt: skip
OBS_HIGH = np.array([ONLINE_FEATURE_HIGH[n] for n in ONLINE_FEATURE_NAMES], dtype=np.float32)


class _Abort(BaseException):
    """Raised in the run's thread to end an episode the env left (reset or close before its end)."""


class _Handoff(LearnedLoadPolicy):
    """The run's skip policy: the features of the deployed policy, the decision from the env's agent."""

    def __init__(self, episode: Episode, context: Any) -> None:
        super().__init__(episode.ask, context)
        self.query_id, self.now = -1, 0.0  # the query being decided, and the run's clock then

    def decide(self, query, answers, confidence) -> bool:  # type: ignore[no-untyped-def]
        self.query_id = query.id
        self.now = self.probe().now if self.probe is not None else 0.0
        return super().decide(query, answers, confidence)


class Episode:
    """One online run in a worker thread, stopped at each skip decision (:meth:`start`, :meth:`act`)."""

    def __init__(self, exp: Experiment, scheduler: str) -> None:
        if exp.cfg.runtime.backend != "sim" or exp.cfg.runtime.barrier:
            raise ConfigError("AggOnline-v0 needs runtime.backend=sim and runtime.barrier=false (decisions at run "
                              f"time), got {exp.cfg.runtime.backend!r}, barrier={exp.cfg.runtime.barrier}")  # fmt: skip
        self.exp, wl = exp, exp.workload
        self.policy = _Handoff(self, skip_context(exp))
        self.planned = plan_scheduler(exp, scheduler, self.policy)
        votes = Executor(None, AlwaysAggregate()).votes(wl, exp.responses)  # type: ignore[arg-type]
        agg = [exp.responses.get(q.id, wl.aggregator.name) for q in wl.queries]
        self.correct_skip = [bool(v.majority_correct) for v in votes]
        self.correct_agg = [bool(is_correct(r.answer, q, r.correct)) for q, r in zip(wl.queries, agg, strict=True)]
        self.k = [len(r) for r in wl.routes]
        self.trace = TraceWriter(None)
        self.to_env: queue.SimpleQueue = queue.SimpleQueue()
        self.to_run: queue.SimpleQueue = queue.SimpleQueue()
        self.thread = threading.Thread(target=self._run, name="mosaic-agg-online", daemon=True)
        self.result: RunResult | None = None
        self.arrivals = np.array([q.arrival for q in wl.queries], dtype=float)
        self.answer_at = np.full(len(wl.queries), np.inf)  # query -> when its answer came (inf: not yet)
        self.charged = 0.0  # the latency cost charged so far (see AggOnlineEnv._holding_cost)
        self._seen, self._expert_end, self._experts_done = 0, {}, {}  # records read; per query: last end, count
        self._skipped: set[int] = set()  # skipped queries whose experts' records are not all read yet

    def ask(self, obs: np.ndarray) -> int:
        """In the run's thread: hand the observation over, wait for the action."""
        self.to_env.put(("decide", obs))
        action = self.to_run.get()
        if action is None:
            raise _Abort
        return int(action)

    def _run(self) -> None:
        exp, p = self.exp, self.planned
        try:
            backend = make_backend(exp, planned=[p])
            try:
                executor = Executor(backend, p.policy, barrier=False)
                result = executor.run(exp.workload, p.scheduler, exp.costs, exp.cluster, p.rng, self.trace, p.plan)
            finally:
                backend.close()
            self.to_env.put(("done", result))
        except _Abort:
            self.to_env.put(("aborted", None))
        except BaseException as err:  # handed to the env's thread, raised there
            self.to_env.put(("error", err))

    def start(self) -> tuple[str, Any]:
        self.thread.start()
        return self._wait()

    def act(self, skip: bool) -> tuple[str, Any]:
        self.to_run.put(int(skip))
        return self._wait()

    def _wait(self) -> tuple[str, Any]:
        kind, value = self.to_env.get()
        if kind == "error":
            self.thread.join()
            raise value
        if kind == "done":
            self.result = value
            self.thread.join()
        return kind, value

    def stop(self) -> None:
        """End the run where it is (its thread is waiting for an action)."""
        if self.thread.is_alive():
            self.to_run.put(None)
            self._wait_aborted()

    def _wait_aborted(self) -> None:
        while self.to_env.get()[0] not in ("aborted", "done", "error"):
            self.to_run.put(None)
        self.thread.join()

    def read_records(self) -> None:
        """Read the records written since the last call: when each query was answered (a skipped one: when its last
        expert finished; an aggregated one: when its aggregator request did)."""
        recs = self.trace.records
        for rec in recs[self._seen :]:
            if type(rec) is not RequestRecord:
                continue
            q = rec.query_id
            if rec.stage == AGGREGATION_STAGE:
                self.answer_at[q] = rec.end
            else:
                self._expert_end[q] = max(self._expert_end.get(q, rec.end), rec.end)
                self._experts_done[q] = self._experts_done.get(q, 0) + 1
        self._seen = len(recs)
        for q in [q for q in self._skipped if self._experts_done.get(q, 0) == self.k[q]]:
            self._skipped.discard(q)
            self.answer_at[q] = self._expert_end[q]

    @property
    def answered(self) -> dict[int, float]:
        """Query -> when its answer came, for the queries answered so far."""
        return {int(q): float(self.answer_at[q]) for q in np.flatnonzero(np.isfinite(self.answer_at))}

    def skipped(self, query: int) -> None:
        self._skipped.add(query)


class AggOnlineEnv(gym.Env):
    """Skip decisions at run time; see the module doc. ``experiments``: online experiments or their configs (each
    reset draws one with the env's seeded generator, or takes the next with ``experiment_order="cycle"``;
    default: :data:`DEFAULT_ONLINE`); ``scheduler``: the expert and aggregator scheduler of every run."""

    metadata: ClassVar[dict[str, Any]] = {"render_modes": []}

    def __init__(self, experiments: Sequence[Experiment | RunConfig] | None = None,
                 scheduler: str = "greedy-lpt+rolling", accuracy_weight: float = 1.0, latency_weight: float = 0.01,
                 latency_scale_s: float = 100.0, latency_power: float = 1.0,
                 experiment_order: str = "random") -> None:  # fmt: skip
        if experiments is None:
            experiments = [load_config(None, DEFAULT_ONLINE)]
        if not experiments:
            raise ConfigError("AggOnline-v0 needs at least one experiment")
        if experiment_order not in ("random", "cycle"):
            raise ConfigError(f"AggOnline-v0: experiment_order must be random or cycle, got {experiment_order!r}")
        if not (accuracy_weight >= 0 and latency_weight >= 0 and latency_scale_s > 0 and latency_power > 0):
            raise ConfigError(f"AggOnline-v0: weights must be >= 0 and the latency scale and power > 0, got "
                              f"{accuracy_weight}, {latency_weight}, {latency_scale_s}, {latency_power}")  # fmt: skip
        self.experiments = [prepare(e) if isinstance(e, RunConfig) else e for e in experiments]
        self.scheduler, self.experiment_order, self._resets = scheduler, experiment_order, 0
        self.accuracy_weight, self.latency_weight = float(accuracy_weight), float(latency_weight)
        self.latency_scale_s, self.latency_power = float(latency_scale_s), float(latency_power)
        self.observation_space = spaces.Box(0.0, OBS_HIGH, dtype=np.float32)
        self.action_space = spaces.Discrete(2)  # 1: skip the aggregator
        self.episode: Episode | None = None
        self._obs = np.zeros(len(ONLINE_FEATURE_NAMES), dtype=np.float32)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        self._stop()
        n = len(self.experiments)
        drawn = self._resets % n if self.experiment_order == "cycle" else self.np_random.integers(n)
        index, self._resets = int((options or {}).get("experiment", drawn)), self._resets + 1
        self.episode = Episode(self.experiments[index], self.scheduler)
        kind, value = self.episode.start()
        if kind != "decide":
            raise ConfigError(f"AggOnline-v0: experiment {index} has no skip decision to make")
        self._obs = self._clip(value)
        return self._obs, {"experiment": index}

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict]:
        ep = self.episode
        if ep is None or ep.result is not None:
            raise gym.error.ResetNeeded("AggOnline-v0: call reset() first")
        q, skip = ep.policy.query_id, bool(int(action))
        reward = self.accuracy_weight * (ep.correct_skip[q] - ep.correct_agg[q]) if skip else 0.0
        if skip:
            ep.skipped(q)
        kind, value = ep.act(skip)
        ep.read_records()
        done = kind != "decide"
        reward -= self._holding_cost(ep, math.inf if done else ep.policy.now)
        if not done:
            self._obs = self._clip(value)
            return self._obs, float(reward), False, False, {}
        return self._obs, float(reward), True, False, self.summary()

    def _holding_cost(self, ep: Episode, now: float) -> float:
        """The latency cost accrued up to ``now`` and not charged yet: every query that has arrived costs
        ``latency_weight x (age / latency_scale_s) ** latency_power`` at its answer, charged as its age grows (a
        holding cost: the queries in the system pay at every step, so a skip shows in the next rewards, not only
        when the aggregator would have answered). Charged in full, the cost is the same sum over the answered
        queries' latencies, whatever the decision times."""
        age = np.minimum(ep.answer_at, now) - ep.arrivals
        total = self.latency_weight * float(np.sum((np.maximum(age, 0.0) / self.latency_scale_s) ** self.latency_power))
        cost, ep.charged = total - ep.charged, total
        return cost

    def summary(self) -> dict[str, float]:
        """The finished episode's accuracy, skip rate and latency percentiles (seconds)."""
        ep = self.episode
        if ep is None or ep.result is None:
            return {}
        done = np.isfinite(ep.answer_at)
        lat = ep.answer_at[done] - ep.arrivals[done]
        pct = np.percentile(lat, [50, 99]) if lat.size else (math.nan, math.nan)
        acc = ep.result.accuracy if ep.result.accuracy is not None else math.nan
        return {"accuracy": float(acc), "skip_rate": ep.result.skip_rate, "p50_s": float(pct[0]),
                "p99_s": float(pct[1]), "answered": int(lat.size)}  # fmt: skip

    @staticmethod
    def _clip(obs: np.ndarray) -> np.ndarray:
        return np.clip(np.asarray(obs, dtype=np.float32), 0.0, OBS_HIGH)

    def _stop(self) -> None:
        if self.episode is not None:
            self.episode.stop()
            self.episode = None

    def close(self) -> None:
        self._stop()
        super().close()


def online_experiments(cfg: RunConfig, seeds: Sequence[int]) -> list[Experiment]:
    """``cfg``'s online experiment at each seed; a :class:`ConfigError` unless it runs online on the simulator."""
    if cfg.runtime.backend != "sim" or cfg.runtime.barrier or cfg.workload.arrival_rate is None:
        raise ConfigError("the online skip task needs runtime.backend=sim, runtime.barrier=false and "
                          f"workload.arrival_rate (online arrivals); config {cfg.name!r} has "
                          f"{cfg.runtime.backend!r}, barrier={cfg.runtime.barrier}, "
                          f"arrival_rate={cfg.workload.arrival_rate}")  # fmt: skip
    return [prepare(cfg.model_copy(update={"seed": int(s)})) for s in seeds]


OnlinePolicies = Mapping[str, Callable[[Experiment], AggregationPolicy]]  # name -> the policy for an experiment
FIXED_ONLINE: OnlinePolicies = {"always": lambda exp: AlwaysAggregate(), "T=1": lambda exp: FixedThreshold(1.0),
                                "T=2/3": lambda exp: FixedThreshold(0.67)}  # fmt: skip


def compare_online(experiments: Sequence[Experiment], policies: OnlinePolicies,
                   scheduler: str = "greedy-lpt+rolling") -> list[dict[str, Any]]:  # fmt: skip
    """Each policy's online runs of ``experiments`` (as ``mosaic compare`` makes them): mean accuracy, skip rate
    and p50 / p99 latency over the experiments, one row per policy."""
    rows = []
    for name, make in policies.items():
        runs = [run_scheduler(exp, plan_scheduler(exp, scheduler, make(exp))) for exp in experiments]
        accs = [r.result.accuracy for r in runs if r.result.accuracy is not None]
        rows.append({"policy": name, "accuracy": float(np.mean(accs)) if accs else math.nan,
                     "skip_rate": float(np.mean([r.result.skip_rate for r in runs])),
                     "p50_s": float(np.mean([r.metrics.latency["p50"] for r in runs])),
                     "p99_s": float(np.mean([r.metrics.latency["p99"] for r in runs]))})  # fmt: skip
    return rows


__all__ = ["FIXED_ONLINE", "AggOnlineEnv", "Episode", "compare_online", "online_experiments"]
