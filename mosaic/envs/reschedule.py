"""``mosaic/Reschedule-v0``: decide at run time what each GPU worker serves next, on the discrete-event simulator."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from mosaic.core.errors import ConfigError
from mosaic.core.types import Plan
from mosaic.envs.dispatch import _ACTIVE, DEFAULT_BUCKETS, Dispatcher, Prepared
from mosaic.envs.problem import Instance

OBS_HIGH = 16.0  # every observation entry is clipped to [0, OBS_HIGH]
# the observation's blocks in order: name -> (rows, columns) as functions of (workers W, expert slots S, buckets B)
OBS_BLOCKS = {
    "resident": lambda w, s, b: (w, s + 1),  # resident expert, one-hot (last column: none)
    "deciding": lambda w, s, b: (w, 1),  # the worker whose decision is pending
    "queued": lambda w, s, b: (w, 1),  # predicted seconds queued
    "admitted": lambda w, s, b: (w, 1),  # predicted seconds admitted, not yet covered by busy time
    "batch_fill": lambda w, s, b: (w, 1),  # batch size / max batch
    "waiting": lambda w, s, b: (w, 1),  # waiting flag (chose wait)
    "pooled": lambda w, s, b: (s, b),  # predicted seconds pooled per predicted-length bucket
    "stealable": lambda w, s, b: (s, 1),  # predicted seconds queued elsewhere that this worker may steal
    "load": lambda w, s, b: (s, 1),  # load seconds
    "serving": lambda w, s, b: (s, 1),  # workers queueing or holding the expert / W
    "elapsed": lambda w, s, b: (1, 1),  # simulated seconds so far
    "pooled_total": lambda w, s, b: (1, 1),
    "queued_total": lambda w, s, b: (1, 1),
}
_SECONDS_BLOCKS = ("queued", "admitted", "pooled", "stealable", "load", "elapsed", "pooled_total", "queued_total")
START_MODES = ("empty", "plan")
INSTANCE_ORDERS = ("random", "cycle")
REWARD_REFS = ("lower_bound", "plan", "round-robin")


class RescheduleEnv(gym.Env[np.ndarray, int]):
    """
    ## Description

    One episode runs the expert stage of one workload in the simulator (:mod:`mosaic.runtime.sim_worker`). A
    decision point comes when a worker's queue runs dry (it went idle, or admitted its last queued request) while
    work is left that it could take. The agent picks what that worker serves next. With ``start="empty"`` every
    request starts in a pool and the agent dispatches all of it (RL alone); with ``start="plan"`` the workers start
    with a scheduler's plan (default: the MOSAIC ILP when registered, else greedy LPT) and the agent reschedules
    when true lengths differ from the predicted ones (prediction error is its reason to exist). Every second comes
    from the simulator; the env only moves requests (see :mod:`mosaic.envs.dispatch`).

    ## Action Space

    ``Discrete(n_slots + 2)``; slot ``e`` is the e-th expert of the workload (unused slots are always invalid):

    - ``0 .. n_slots-1``: serve expert ``e``: take a quantum (``quantum_frac`` x lower bound seconds) of its pooled
      requests, longest predicted first; with none pooled, steal the tail half of its queued work from the worker
      holding the most of it (replication). The worker loads ``e`` when needed (after draining its batch).
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
        self._start_states: list[tuple[Dispatcher, bool] | None] = [None] * len(self.instances)  # _first_decision
        shapes = [block(self.n_workers, n_slots, len(self.buckets) + 1) for block in OBS_BLOCKS.values()]
        self._obs_sizes = [rows * cols for rows, cols in shapes]
        size = sum(self._obs_sizes)
        self.observation_space = spaces.Box(0.0, OBS_HIGH, (size,), np.float32)
        self.action_space = spaces.Discrete(n_slots + 2)
        self.dispatcher: Dispatcher | None = None
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
        self.dispatcher, more = self._first_decision(index, plan, given is not None)
        self._ref = self._reward_ref(index, plan, given is not None)
        self._last_time = 0.0
        self._done = not more
        return self._obs(), self._info(False) | {"instance": index}

    def step(self, action: int) -> tuple[np.ndarray, float, bool, bool, dict]:
        d = self._dispatcher()
        invalid = False
        if not self._done:
            a = int(action)
            invalid = not d.is_valid(a)
            d.apply(self._fallback(d.valid_actions(d.deciding)) if invalid else a)
            self._done = not d.advance()
        now = d.makespan() if self._done else d.now
        reward = -(now - self._last_time) / self._ref
        self._last_time = now
        return self._obs(), float(reward), self._done, False, self._info(invalid)

    def action_masks(self) -> np.ndarray:
        """Valid actions at the current decision point (all but wait are invalid once the episode is over)."""
        d = self._dispatcher()
        if self._done or d.deciding is None:
            mask = np.zeros(self.n_slots + 2, dtype=bool)
            mask[d.wait_action] = True
            return mask
        return d.valid_actions(d.deciding)

    def render(self) -> str | None:
        if self.render_mode != "ansi":
            return None
        d = self._dispatcher()
        rows = [f"t={d.now:.1f}s deciding={d.deciding} pooled={d.pool_total} makespan={d.makespan():.1f}s"]
        for i, sim in enumerate(d.sims):
            rows.append(f"  worker {d.ids[i]}: resident={sim.resident} batch={sim.batch_size} queued={sim.queued}")
        return "\n".join(rows)

    def _next_instance(self) -> int:
        n = len(self.instances)
        if self.instance_order == "cycle":
            self._episodes += 1
            return (self._episodes - 1) % n
        return int(self.np_random.integers(n))

    # --- instances and plans -----------------------------------------------------------------------------------

    def prepared(self, index: int) -> Prepared:
        """The per-instance arrays of instance ``index`` (built on first use)."""
        prep = self._prepared[index]
        if prep is None:
            prep = self._prepared[index] = Prepared(self.instances[index], self.n_slots, self.buckets)
        return prep

    def _first_decision(self, index: int, plan: Plan | None, given: bool) -> tuple[Dispatcher, bool]:
        """A dispatcher of instance ``index`` run to its first decision point, and whether work is left. Nothing
        is decided before that point, so it is simulated once per instance and later resets start from a copy
        (``given``: a start plan from ``reset`` options, not cached)."""
        start = None if given else self._start_states[index]
        if start is None:
            d = Dispatcher(self.prepared(index), self.n_slots, self.quantum_frac, plan)
            start = (d, d.advance())
            if given:
                return start
            self._start_states[index] = start
        return start[0].copy(), start[1]

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

    def _dispatcher(self) -> Dispatcher:
        if self.dispatcher is None:
            raise ConfigError("reschedule env: call reset() before step()")
        return self.dispatcher

    def _fallback(self, mask: np.ndarray) -> int:
        d = self._dispatcher()
        pooled = np.where(mask[: self.n_slots], d.pool_work.sum(axis=1) + 1e-12, -1.0)
        if pooled.max() >= 0:
            return int(pooled.argmax())
        return d.steal_action if mask[d.steal_action] else d.wait_action

    def _info(self, invalid: bool) -> dict[str, Any]:
        d = self._dispatcher()
        return {"time": float(d.now), "makespan": float(d.makespan()), "lower_bound": float(d.p.ref),
                "reward_ref_s": float(self._ref),
                "invalid_action": invalid, "steals": d.steals, "takes": d.takes, "waits": d.waits}  # fmt: skip

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
        """The observation (see the class docstring): raw values (seconds, counts) gathered in one list, block by
        block (one pass over the workers), then scaled by :meth:`_obs_scale` and clipped in three array calls. It
        runs on every step: plain loops and list operations (profiled faster than comprehensions or array calls
        at these sizes)."""
        d = self._dispatcher()
        p, n_s, n_w, qwork = d.p, self.n_slots, self.n_workers, d.qwork
        obs: list[float] = [0.0] * ((n_s + 2) * n_w)  # resident one-hot + deciding
        if d.deciding is not None and not self._done:
            obs[(n_s + 1) * n_w + d.deciding] = 1.0
        queued = list(map(sum, qwork))
        admitted, fill, waiting = [], [], []
        serving = [n_w - col.count(0.0) for col in zip(*qwork, strict=True)]  # queued work is never negative
        slot_of, max_batch = p.slot, p.max_batch_list
        for i, (sim, row, a, m) in enumerate(zip(d.sims, qwork, d.admitted_pred, d.mode, strict=True)):
            k = slot_of.get(sim.resident, n_s)  # the resident expert's slot (n_s: none)
            obs[i * (n_s + 1) + k] = 1.0
            if k < n_s and not row[k]:
                serving[k] += 1  # it holds the expert without queueing it
            left = a - sim.busy_s
            admitted.append(left if left > 0.0 else 0.0)
            fill.append(sim.batch_size / max_batch[k])
            waiting.append(m != _ACTIVE)
        obs += queued
        obs += admitted
        obs += fill
        obs += waiting
        for row in d.pwork:
            obs += row
        obs += d.stealable_by_expert()
        obs += p.load_list
        obs += serving
        obs += (d.now, sum(map(sum, d.pwork)), sum(queued))
        out = np.array(obs, dtype=float)
        out *= self._obs_scale(p)
        return np.minimum(out, OBS_HIGH, out=out).astype(np.float32)  # every raw value is >= 0

    def _obs_scale(self, p: Prepared) -> np.ndarray:
        """Per-entry factors of the raw observation of instance ``p``: 1 / lower bound for seconds, 1 / W for the
        serving counts, 1 for flags and fractions (cached per instance)."""
        if p.obs_scale is None:
            factor = {name: 1.0 / p.ref for name in _SECONDS_BLOCKS} | {"serving": 1.0 / self.n_workers}
            p.obs_scale = np.repeat([factor.get(name, 1.0) for name in OBS_BLOCKS], self._obs_sizes)
        return p.obs_scale


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


def default_plan_scheduler() -> str:
    """``mosaic-ilp`` when the MOSAIC ILP scheduler is importable, else ``greedy-lpt``."""
    from mosaic.agents import SCHEDULERS

    if "mosaic-ilp" not in SCHEDULERS:
        try:
            import mosaic.agents.ilp_scheduler  # noqa: F401  (registers 'mosaic-ilp')
        except ImportError:
            return "greedy-lpt"
    return "mosaic-ilp" if "mosaic-ilp" in SCHEDULERS else "greedy-lpt"


def plan_instance(inst: Instance, scheduler: str) -> Plan:
    """Plan ``inst`` with the scheduler registered as ``scheduler`` (deterministic rng; validated)."""
    from mosaic.agents import make_scheduler

    if scheduler == "mosaic-ilp":
        default_plan_scheduler()  # imports the ILP module so the name resolves
    plan = make_scheduler(scheduler).plan(inst.workload, inst.costs, inst.cluster, np.random.default_rng(0),
                                          dict(inst.resident) or None)  # fmt: skip
    plan.validate(inst.workload, inst.cluster)
    return plan
