"""``mosaic/Reschedule-v0``: decide at run time what each GPU worker serves next, on the runtime loop.

The env is a thin adapter: :class:`~mosaic.runtime.loop.SimLoop` runs the engines and stops at events, a
:class:`~mosaic.agents.reschedule.Rescheduler` (in ``mosaic.agents``) turns events into decision points,
observations and masks and the agent's actions into the loop's (Dispatch / Steal).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from mosaic.agents.reschedule import (
    DEFAULT_BUCKETS,
    OBS_BLOCKS,
    OBS_HIGH,
    Rescheduler,
    RescheduleTables,
    default_plan_scheduler,
    obs_sizes,
)
from mosaic.core.errors import ConfigError
from mosaic.core.trace import EXPERT_STAGE, TraceWriter
from mosaic.core.types import Plan
from mosaic.envs.problem import Instance
from mosaic.runtime.loop import SimLoop
from mosaic.runtime.sim import SimBackend

START_MODES = ("empty", "plan")
INSTANCE_ORDERS = ("random", "cycle")
REWARD_REFS = ("lower_bound", "plan", "round-robin")
Start = tuple[SimLoop, Rescheduler, bool]  # an episode at its first decision point (and whether work is left)


class Prepared:
    """What every episode on one instance shares (built once): the rescheduler's tables, the simulator backend,
    the start plans and static makespans (caches), and the episodes' first decision points (resets copy them)."""

    def __init__(self, inst: Instance, n_slots: int, buckets: Sequence[float] = DEFAULT_BUCKETS) -> None:
        self.inst = inst
        self.tables = RescheduleTables.build(inst.workload, inst.costs, inst.cluster, inst.resident, n_slots, buckets,
                                             inst.max_batch)  # fmt: skip
        self.backend = SimBackend(inst.responses, inst.costs, inst.max_batch)
        self.plans: dict[str, Plan] = {}  # scheduler name -> its plan of this instance (cache)
        self.static_makespans: dict[str, float] = {}  # scheduler name -> simulated makespan of its plan (cache)
        self.starts: dict[str | None, Start] = {}  # start plan's scheduler (None: no plan) -> first decision point
        self.start_obs: dict[str | None, np.ndarray] = {}  # the same -> its observation

    @property
    def ref(self) -> float:
        """Seconds: the lower bound of the predicted lengths (the observation's unit)."""
        return self.tables.ref

    def loop(self) -> SimLoop:
        """A fresh loop of the instance's expert stage (timing only: the engines make no records)."""
        inst = self.inst
        return SimLoop(self.backend, EXPERT_STAGE, inst.workload, inst.costs, inst.cluster, TraceWriter(None), 0.0,
                       inst.resident, keep_records=False)  # fmt: skip

    def simulate(self, plan: Plan) -> float:
        """Simulated makespan of ``plan`` run as is (true lengths, the instance's resident experts)."""
        inst = self.inst
        with TraceWriter(None) as trace:
            stage = self.backend.run_stage(EXPERT_STAGE, plan, inst.workload, inst.cluster, trace, 0.0, inst.resident)
        return stage.makespan


def run_to_decision(loop: SimLoop, r: Rescheduler) -> bool:
    """Run ``loop`` to ``r``'s next decision point (applying what was decided); False once every request ran.
    Once nothing waits, nothing is queued and every request is dispatched, no decision can come: the engines run
    to the end in one go."""
    while r.next_decision(loop) is None:
        loop.apply(r.take())
        if not r.pool_total and not loop.undispatched() and not any(map(loop.queued, r.t.workers)):
            loop.run_out()
            return False
        event = loop.advance()
        if event is None:
            return False
        r.notice(loop, event)
    return True


class RescheduleEnv(gym.Env[np.ndarray, int]):
    """
    ## Description

    One episode runs the expert stage of one workload on the runtime loop (:class:`~mosaic.runtime.loop.SimLoop`
    over the simulator's engines); one step is one decision point of the loop: a worker's queue ran dry (it went
    idle, or admitted its last queued request) while work is left that it could take. The agent picks what that
    worker serves next. With ``start="empty"`` every
    request starts in a pool and the agent dispatches all of it (RL alone); with ``start="plan"`` the workers start
    with a scheduler's plan (default: the MOSAIC ILP when registered, else greedy LPT) and the agent reschedules
    when true lengths differ from the predicted ones (prediction error is its reason to exist). Every second comes
    from the loop; the env only translates actions (:class:`~mosaic.agents.reschedule.Rescheduler`, which the live
    agent ``rl-reschedule`` shares, so that it acts as in the env).

    ## Action Space

    ``Discrete(n_slots + 2)``; slot ``e`` is the e-th expert of the workload (unused slots are always invalid):

    - ``0 .. n_slots-1``: serve expert ``e``: take a quantum (``quantum_frac`` x lower bound seconds) of its pooled
      requests, longest predicted first; with none pooled, steal the tail half of its queued work from the worker
      holding the most of it (replication). The worker loads ``e`` when needed (after draining its batch). Only
      requests the loop lets move are stolen (behind a queue's head, or a head that waits for its batch to drain).
    - ``n_slots``: steal the tail half of the queued work of the most loaded worker's last expert.
    - ``n_slots + 1``: wait: ask this worker again when it has gone idle (when idle: when another worker has).

    :meth:`action_masks` gives the valid actions. An invalid action is replaced by the valid one with the most
    pooled work (else steal, else wait) and flagged ``info["invalid_action"]``.

    ## Observation Space

    ``Box(0, 16, (W * (n_slots + 6) + n_slots * (B + 3) + 3,), float32)`` for ``W`` workers and ``B`` length buckets:
    the blocks of :data:`OBS_BLOCKS` one after the other (row-major; :meth:`obs_fields` cuts a vector into them);
    seconds are divided by the instance's lower bound (:func:`mosaic.agents.bounds.lower_bound`). Per worker:
    resident expert (one-hot, last = none), deciding flag, queued predicted work, admitted predicted work not yet
    covered by busy time, batch size / max batch, waiting flag. Per expert: pooled predicted work per predicted-length
    bucket, work stealable from other workers (seen by the deciding worker), load time, workers serving it / W.
    Global: elapsed time, pooled work, queued work.

    ## Rewards

    ``-(elapsed seconds since the previous decision) / ref``; the return is ``-makespan / ref`` (the makespan in units
    of ``ref``, so returns compare across workloads). ``reward_ref``: ``lower_bound`` (default; the lower bound of
    the predicted lengths), ``plan`` (the start plan's makespan as the simulator runs it: "never move anything"
    scores exactly -1, which removes the instance-to-instance variance of the return) or ``round-robin`` (that
    plan's simulated makespan). Truncated episodes miss the rest.

    ## Starting State

    ``reset`` draws one instance (workload, true lengths, predictions, cluster) from the env's instance list with
    ``self.np_random`` (or the next one, ``instance_order="cycle"``; ``options={"instance": i}`` picks one) and runs
    the simulator to the first decision point. When an instance needs no decision at all, the first ``step`` (any
    action) finishes it and returns the whole ``-makespan / lower bound``.

    ## Episode End

    Termination: every request has finished. Truncation: ``max_episode_steps`` (registration: 1000).

    ## Arguments

    ``instances`` (list of :class:`~mosaic.envs.problem.Instance`; default: built from ``config`` by
    :func:`mosaic.envs.instances.config_instances`), ``config`` (RunConfig or YAML path; None: a 40-query
    GPQA-like scenario), ``n_instances``, ``instance_seed``, ``instance_stream`` (1: training, 2: evaluation),
    ``noise`` (None: the config's length predictor, e.g. the paper's per-expert mean; a float: true lengths times a
    log-normal error of that sigma), ``start`` (``empty`` | ``plan``), ``instance_order`` (``random``: drawn with
    ``self.np_random``; ``cycle``: 0, 1, 2, ... for evaluation), ``plan_scheduler``, ``plans`` (start plans, one
    per instance, e.g. a :class:`~mosaic.envs.problem.PlanSet`; default: ``plan_scheduler``'s), ``quantum_frac``,
    ``reward_ref``, ``n_slots``, ``buckets``, ``render_mode`` (``ansi``).
    """

    metadata: ClassVar[dict[str, Any]] = {"render_modes": ["ansi"], "render_fps": 4}

    def __init__(
        self,
        instances: Sequence[Instance] | None = None,
        *,
        config: Any = None,
        n_instances: int = 4,
        instance_seed: int = 0,
        instance_stream: int = 1,
        noise: float | None = None,
        start: str = "empty",
        instance_order: str = "random",
        plan_scheduler: str | None = None,
        plans: Sequence[Plan] | None = None,
        reward_ref: str = "lower_bound",
        quantum_frac: float = 0.25,
        n_slots: int = 8,
        buckets: Sequence[float] = DEFAULT_BUCKETS,
        render_mode: str | None = None,
    ) -> None:
        _check_modes(start, instance_order, reward_ref, render_mode, self.metadata["render_modes"])
        if not quantum_frac > 0:
            raise ConfigError(f"reschedule env: quantum_frac must be > 0, got {quantum_frac}")
        if instances is None:
            from mosaic.envs.instances import config_instances

            instances = config_instances(config, n_instances, instance_seed, noise, instance_stream)
        self.instances = tuple(instances)
        if not self.instances:
            raise ConfigError("reschedule env: no instances to run")
        sizes = {len(i.cluster) for i in self.instances}
        if len(sizes) != 1:
            raise ConfigError(f"reschedule env: every instance needs the same number of workers, got {sorted(sizes)}")
        self.n_workers = sizes.pop()
        self.n_slots, self.buckets = n_slots, tuple(buckets)
        self.start, self.quantum_frac, self.render_mode = start, quantum_frac, render_mode
        self.instance_order, self.reward_ref = instance_order, reward_ref
        self._ref = 1.0  # seconds: the reward normaliser of the current episode
        self._episodes = 0  # resets so far (the "cycle" order's position)
        self.plan_scheduler = plan_scheduler or default_plan_scheduler()
        if plans is not None and len(plans) != len(self.instances):
            raise ConfigError(f"reschedule env: {len(plans)} start plans for {len(self.instances)} instances")
        self.plans = tuple(plans) if plans is not None else None  # instance -> start plan (None: plan_scheduler's)
        self._prepared: list[Prepared | None] = [None] * len(self.instances)
        self._obs_sizes = obs_sizes(self.n_workers, n_slots, len(self.buckets) + 1)
        self.observation_space = spaces.Box(0.0, OBS_HIGH, (sum(self._obs_sizes),), np.float32)
        self.action_space = spaces.Discrete(n_slots + 2)
        self.loop: SimLoop | None = None  # the episode's runtime loop
        self.rescheduler: Rescheduler | None = None  # the episode's decision state
        self._last_time = 0.0
        self._done = False

    # --- gymnasium API -----------------------------------------------------------------------------------------

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        options = options or {}
        index = int(options.get("instance", self._next_instance()))
        if not 0 <= index < len(self.instances):
            raise ConfigError(f"reschedule env: options['instance'] must be in 0..{len(self.instances) - 1}")
        given = options.get("plan")
        plan = self.plan_of(index) if given is None and self.start == "plan" else given
        self.loop, self.rescheduler, more = self._first_decision(index, plan, given is not None)
        self._ref = self._reward_ref(index, plan, given is not None)
        self._last_time = 0.0
        self._done = not more
        return self._start_obs(index, plan, given is not None), self._info(False) | {"instance": index}

    def step(self, action: int) -> tuple[np.ndarray, float, bool, bool, dict]:
        loop, r = self._episode()
        invalid = False
        if not self._done:
            invalid = not r.act(loop, int(action))
            self._done = not run_to_decision(loop, r)
        now = self.makespan() if self._done else loop.clock
        reward = -(now - self._last_time) / self._ref
        self._last_time = now
        return self._obs(), float(reward), self._done, False, self._info(invalid)

    def action_masks(self) -> np.ndarray:
        """Valid actions at the current decision point (all but wait are invalid once the episode is over)."""
        return self._episode()[1].mask()

    def render(self) -> str | None:
        if self.render_mode != "ansi":
            return None
        loop, r = self._episode()
        deciding = None if r.deciding is None else r.t.workers[r.deciding]
        rows = [f"t={loop.clock:.1f}s deciding={deciding} pooled={r.pool_total} makespan={self.makespan():.1f}s"]
        for w in loop.cluster.ids:
            rows.append(f"  worker {w}: resident={loop.resident(w)} batch={len(loop.running(w))} "
                        f"queued={len(loop.queued(w))}")  # fmt: skip
        return "\n".join(rows)

    def _next_instance(self) -> int:
        n = len(self.instances)
        if self.instance_order == "cycle":
            self._episodes += 1
            return (self._episodes - 1) % n
        return int(self.np_random.integers(n))

    # --- the episode ---------------------------------------------------------------------------------------------

    def makespan(self) -> float:
        """When the episode's last request finished so far (0 before any)."""
        loop, _ = self._episode()
        return loop.last_end()

    def schedule(self) -> dict[int, list[int]]:
        """Worker id -> request ids in the order they ran (the episode's schedule, once finished): the order each
        worker got them in (its queue runs first in, first out), stolen ones taken out."""
        _, r = self._episode()
        return {w: list(ids) for w, ids in zip(r.t.workers, r.order, strict=True)}

    @property
    def lower_bound(self) -> float:
        """Seconds: the current instance's lower bound (the observation's unit)."""
        return self._episode()[1].t.ref

    # --- instances and plans -----------------------------------------------------------------------------------

    def prepared(self, index: int) -> Prepared:
        """What the episodes of instance ``index`` share (built on first use)."""
        prep = self._prepared[index]
        if prep is None:
            prep = self._prepared[index] = Prepared(self.instances[index], self.n_slots, self.buckets)
        return prep

    def _first_decision(self, index: int, plan: Plan | None, given: bool) -> Start:
        """Instance ``index``'s loop run to its first decision point, its decision state, and whether work is left.
        Nothing is decided before that point, so it is run once per instance and start plan; later resets start
        from a copy (``given``: a start plan from ``reset`` options, not cached)."""
        prep = self.prepared(index)
        key = None if plan is None else plan.scheduler
        start = None if given else prep.starts.get(key)
        if start is None:
            loop, r = prep.loop(), Rescheduler(prep.tables, self.quantum_frac, plan)
            r.notice(loop, loop.begin(r.events, "reschedule-env"))
            start = (loop, r, run_to_decision(loop, r))
            if given:
                return start
            prep.starts[key] = start
        return start[0].copy(), start[1].copy(), start[2]

    def _start_obs(self, index: int, plan: Plan | None, given: bool) -> np.ndarray:
        """The observation at the first decision point (the same at every reset from the same start: cached)."""
        if given:
            return self._obs()
        starts, key = self.prepared(index).start_obs, None if plan is None else plan.scheduler
        if key not in starts:
            starts[key] = self._obs()
        return starts[key].copy()

    def plan_of(self, index: int) -> Plan:
        """The start plan of instance ``index``: the one given in ``plans``, else :attr:`plan_scheduler`'s (cached)."""
        if self.plans is not None:
            return self.plans[index]
        prep = self.prepared(index)
        plan = prep.plans.get(self.plan_scheduler)
        if plan is None:
            inst = self.instances[index]
            plan = plan_instance(inst, self.plan_scheduler)
            prep.plans[self.plan_scheduler] = plan
        return plan

    def _reward_ref(self, index: int, plan: Plan | None, given: bool) -> float:
        """Seconds the rewards are divided by: the lower bound of the predicted lengths, or the simulated makespan
        of the start plan / of round-robin's plan on this instance (returns then read as makespan ratios).
        ``given``: the plan came in ``reset(options)`` (simulated every time, not cached)."""
        prep = self.prepared(index)
        if self.reward_ref == "lower_bound":
            return prep.ref
        if self.reward_ref == "plan" and plan is not None:
            if given:
                return max(prep.simulate(plan), 1e-9)
            key = "plan:" + plan.scheduler
        else:
            key, plan = "round-robin", prep.plans.get("round-robin") or plan_instance(prep.inst, "round-robin")
            prep.plans["round-robin"] = plan
        if key not in prep.static_makespans:
            prep.static_makespans[key] = max(prep.simulate(plan), 1e-9)
        return prep.static_makespans[key]

    # --- helpers -----------------------------------------------------------------------------------------------

    def _episode(self) -> tuple[SimLoop, Rescheduler]:
        if self.loop is None or self.rescheduler is None:
            raise ConfigError("reschedule env: call reset() before step()")
        return self.loop, self.rescheduler

    def _info(self, invalid: bool) -> dict[str, Any]:
        loop, r = self._episode()
        end = loop.last_end()
        return {"time": float(max(loop.clock, end) if self._done else loop.clock), "makespan": float(end),
                "lower_bound": float(r.t.ref), "reward_ref_s": float(self._ref), "invalid_action": invalid,
                "steals": r.steals, "takes": r.takes, "waits": r.waits}  # fmt: skip

    def obs_fields(self, obs: np.ndarray) -> dict[str, np.ndarray]:
        """One observation vector cut into the named blocks of :data:`OBS_BLOCKS` (views, shaped (rows, columns))."""
        obs = np.asarray(obs)
        if obs.shape != self.observation_space.shape:
            raise ConfigError(f"reschedule env: obs_fields takes one observation of shape "
                              f"{self.observation_space.shape}, got shape {obs.shape}")  # fmt: skip
        n_w, n_s, n_b = self.n_workers, self.n_slots, len(self.buckets) + 1
        parts = np.split(obs, np.cumsum(self._obs_sizes)[:-1])
        blocks = zip(OBS_BLOCKS.items(), parts, strict=True)
        return {name: part.reshape(block(n_w, n_s, n_b)) for (name, block), part in blocks}

    def _obs(self) -> np.ndarray:
        """The observation of the pending decision (see the class docstring; built by the rescheduler)."""
        loop, r = self._episode()
        return r.observation(loop)


def _check_modes(start: str, order: str, reward_ref: str, render_mode: str | None, renders: list[str]) -> None:
    """Raise ConfigError naming the first bad mode argument of :class:`RescheduleEnv`."""
    if start not in START_MODES:
        raise ConfigError(f"reschedule env: start must be one of {START_MODES}, got {start!r}")
    if order not in INSTANCE_ORDERS:
        raise ConfigError(f"reschedule env: instance_order must be one of {INSTANCE_ORDERS}, got {order!r}")
    if reward_ref not in REWARD_REFS or (reward_ref == "plan" and start != "plan"):
        raise ConfigError(f"reschedule env: reward_ref must be one of {REWARD_REFS} ('plan' needs start='plan'), "
                          f"got {reward_ref!r} with start={start!r}")  # fmt: skip
    if render_mode is not None and render_mode not in renders:
        raise ConfigError(f"reschedule env: render_mode must be None or one of {renders}, got {render_mode!r}")


def plan_instance(inst: Instance, scheduler: str) -> Plan:
    """Plan ``inst`` with the scheduler registered as ``scheduler`` (deterministic rng; validated)."""
    from mosaic.agents import make_scheduler

    if scheduler == "mosaic-ilp":
        default_plan_scheduler()  # imports the ILP module so the name resolves
    plan = make_scheduler(scheduler).plan(inst.workload, inst.costs, inst.cluster, np.random.default_rng(0),
                                          dict(inst.resident) or None)  # fmt: skip
    plan.validate(inst.workload, inst.cluster)
    return plan
