"""``mosaic/Reschedule-v0``: determinism, masks, observation box, reward normalisation, simulator equivalence."""

from __future__ import annotations

import functools
from collections import deque

import numpy as np
import pytest

from mosaic.core.errors import ConfigError
from mosaic.core.trace import EXPERT_STAGE, TraceWriter
from mosaic.core.types import plan_from_order
from mosaic.envs.dispatch import _DISPATCHER_STATE, Dispatcher
from mosaic.envs.policies import heuristic, random_policy, rollout
from mosaic.envs.reschedule import RescheduleEnv, plan_instance
from mosaic.runtime.sim import SimBackend


def _trajectory(env: RescheduleEnv, seed: int, steps: int = 200) -> list[tuple]:
    rng = np.random.default_rng(seed)
    obs, info = env.reset(seed=seed)
    out = [(obs.tobytes(), info["instance"])]
    for _ in range(steps):
        action = int(rng.choice(np.flatnonzero(env.action_masks())))
        obs, reward, term, trunc, info = env.step(action)
        out.append((obs.tobytes(), action, reward, term, info["makespan"]))
        if term or trunc:
            obs, info = env.reset()
            out.append((obs.tobytes(), info["instance"]))
    return out


@pytest.mark.parametrize("start", ["empty", "plan"])
def test_same_seed_same_rollout(start: str, small_instances) -> None:
    make = lambda: RescheduleEnv(small_instances, start=start, plan_scheduler="greedy-lpt")  # noqa: E731
    a, b = _trajectory(make(), 7), _trajectory(make(), 7)
    assert a == b
    assert a != _trajectory(make(), 8)


@pytest.mark.parametrize("start", ["empty", "plan"])
def test_lookahead_gives_the_lockstep_rollout(start: str, noisy_instances, monkeypatch) -> None:
    """Advancing queued workers up to the others' dry bounds (then catching the rest up before a decision) sees
    the same states, rewards and masks as advancing every worker one event time at a time."""
    make = lambda: RescheduleEnv(noisy_instances, start=start, plan_scheduler="greedy-lpt")  # noqa: E731
    ahead = _trajectory(make(), 3, 400)
    monkeypatch.setattr("mosaic.envs.reschedule.Dispatcher", functools.partial(Dispatcher, lookahead=False))
    assert _trajectory(make(), 3, 400) == ahead


class _Uncached(RescheduleEnv):
    """Simulates every reset's start from scratch (the env itself copies a cached first decision point)."""

    def _first_decision(self, index, plan, given):
        return super()._first_decision(index, plan, True)


@pytest.mark.parametrize("start", ["empty", "plan"])
def test_cached_start_gives_the_fresh_rollout(start: str, noisy_instances) -> None:
    """Episodes that start from a copy of an instance's cached first decision point (each instance comes back
    several times) run exactly as episodes simulated from scratch."""
    kw = {"start": start, "plan_scheduler": "greedy-lpt"}
    cached = _trajectory(RescheduleEnv(noisy_instances, **kw), 5, 600)
    assert sum(len(step) == 2 for step in cached) > 2 * len(noisy_instances)  # resets: instances repeat
    assert cached == _trajectory(_Uncached(noisy_instances, **kw), 5, 600)


def test_dispatcher_copy_is_complete_and_independent(noisy_instances) -> None:
    env = RescheduleEnv(noisy_instances)
    env.reset(seed=0, options={"instance": 0})
    for _ in range(3):
        env.step(int(np.flatnonzero(env.action_masks())[-1]))
    d = env.dispatcher
    twin = d.copy()
    assert set(vars(twin)) == set(vars(d)) == set(_DISPATCHER_STATE)
    for name, value in vars(d).items():
        if isinstance(value, list | set | deque) and name != "ids":
            assert vars(twin)[name] is not value, name
            if isinstance(value, list) and value and isinstance(value[0], list | deque):
                assert all(a is not b for a, b in zip(vars(twin)[name], value, strict=True)), name
    runs = []
    for disp in (twin, d):  # the copy first: the original must still be where the copy started
        rng = np.random.default_rng(0)
        while disp.deciding is not None:
            disp.apply(int(rng.choice(np.flatnonzero(disp.valid_actions(disp.deciding)))))
            if not disp.advance():
                break
        runs.append((disp.order(), disp.makespan(), disp.steals, disp.takes, disp.waits))
    assert runs[0] == runs[1]


def test_observations_in_space_and_masks_valid(small_instances) -> None:
    env = RescheduleEnv(small_instances)
    policy = random_policy(np.random.default_rng(0))
    for i in range(len(small_instances)):
        obs, _ = env.reset(seed=i, options={"instance": i})
        done = False
        while not done:
            assert env.observation_space.contains(obs)
            mask = env.action_masks()
            assert mask.dtype == bool and mask.shape == (env.action_space.n,) and mask.any()
            assert not mask[len(small_instances[i].workload.experts) : env.n_slots].any()  # unused expert slots
            obs, _, done, trunc, info = env.step(policy(obs, mask))
            assert not info["invalid_action"] and not trunc
        assert env.observation_space.contains(obs)


def _expected_fields(env: RescheduleEnv) -> dict[str, np.ndarray]:
    """The observation's blocks recomputed from the dispatcher's and the simulated workers' state."""
    d, n_s = env.dispatcher, env.n_slots
    p, sims, w = d.p, d.sims, len(d.sims)
    slots = [p.slot.get(s.resident, n_s) for s in sims]
    qcount = np.array(d.qcount)
    serving = (qcount > 0).sum(axis=0).astype(float)
    for i, k in enumerate(slots):
        if k < n_s and qcount[i, k] == 0:
            serving[k] += 1
    steal = np.array(d.stealable())
    return {
        "resident": np.eye(n_s + 1)[slots],
        "deciding": np.eye(w)[d.deciding][:, None] if d.deciding is not None else np.zeros((w, 1)),
        "queued": np.array(d.qwork).sum(axis=1, keepdims=True) / p.ref,
        "admitted": np.array([[max(a - s.busy_s, 0.0)] for a, s in zip(d.admitted_pred, sims, strict=True)]) / p.ref,
        "batch_fill": np.array([[s.batch_size / p.max_batch_list[k]] for s, k in zip(sims, slots, strict=True)]),
        "pooled": d.pool_work / p.ref,
        "stealable": steal.sum(axis=0)[:, None] / p.ref,
        "load": p.load_s[:, None] / p.ref,
        "serving": serving[:, None] / w,
        "elapsed": np.array([[d.now / p.ref]]),
        "pooled_total": np.array([[d.pool_work.sum() / p.ref]]),
        "queued_total": np.array([[np.array(d.qwork).sum() / p.ref]]),
    }


def test_observation_fields_mirror_the_state(small_instances) -> None:
    """Every block of the observation (cut by ``obs_fields``) holds what the dispatcher and workers hold, scaled
    and clipped as documented; the valid serve actions are the experts with pooled or stealable work."""
    env = RescheduleEnv(small_instances)
    policy = random_policy(np.random.default_rng(1))
    obs, _ = env.reset(seed=0, options={"instance": 1})
    decisions = 0
    for _ in range(200):
        fields = env.obs_fields(obs)
        assert sum(f.size for f in fields.values()) == obs.size
        for name, want in _expected_fields(env).items():
            np.testing.assert_allclose(fields[name], np.minimum(want, 16.0), rtol=1e-6, atol=1e-7, err_msg=name)
        assert set(np.unique(fields["waiting"])) <= {0.0, 1.0}
        mask = env.action_masks()
        if env.dispatcher.deciding is not None:
            decisions += 1
            have = (np.array(env.dispatcher.pcount) > 0) | (fields["stealable"][:, 0] > 0)
            np.testing.assert_array_equal(mask[: env.n_slots], have)
        obs, _, done, _, _ = env.step(policy(obs, mask))
        if done:
            break
    assert decisions >= 5 and done
    with pytest.raises(ConfigError, match=r"one observation of shape \(107,\), got shape \(2, 107\)"):
        env.obs_fields(np.stack([obs, obs]))


def test_invalid_action_is_replaced_and_flagged(small_instances) -> None:
    env = RescheduleEnv(small_instances)
    env.reset(seed=0, options={"instance": 0})
    mask = env.action_masks()
    invalid = int(np.flatnonzero(~mask)[0])
    _, _, _, _, info = env.step(invalid)
    assert info["invalid_action"] is True
    _, _, _, _, info = env.step(10_000)
    assert info["invalid_action"] is True


@pytest.mark.parametrize("start", ["empty", "plan"])
def test_return_is_minus_makespan_over_lower_bound(start: str, small_instances) -> None:
    env = RescheduleEnv(small_instances, start=start, plan_scheduler="greedy-lpt")
    for i in range(len(small_instances)):
        ep = rollout(env, random_policy(np.random.default_rng(i)), {"instance": i})
        assert ep.ret == pytest.approx(-ep.makespan / ep.lower_bound, rel=1e-9)
        assert ep.lower_bound == pytest.approx(env.prepared(i).ref)
        assert ep.makespan > 0 and not ep.truncated


def test_every_request_runs_exactly_once(small_instances) -> None:
    env = RescheduleEnv(small_instances)
    for i, inst in enumerate(small_instances):
        ep = rollout(env, random_policy(np.random.default_rng(i)), {"instance": i})
        ran = sorted(r for reqs in ep.order.values() for r in reqs)
        assert ran == list(range(len(inst.workload.requests)))


@pytest.mark.parametrize("scheduler", ["round-robin", "greedy-lpt", "data-parallel"])
@pytest.mark.parametrize("which", ["small_instances", "noisy_instances"])
def test_static_plan_through_env_equals_simulator(scheduler: str, which: str, request) -> None:
    """A plan driven through the env (the agent always waits) ends exactly when the simulator says it does."""
    instances = request.getfixturevalue(which)
    env = RescheduleEnv(instances, start="plan", plan_scheduler=scheduler)
    for i, inst in enumerate(instances):
        ep = rollout(env, heuristic("wait", env), {"instance": i})
        plan = plan_instance(inst, scheduler)
        with TraceWriter(None) as trace:
            stage = SimBackend(inst.responses, inst.costs, inst.max_batch).run_stage(
                EXPERT_STAGE, plan, inst.workload, inst.cluster, trace
            )
        assert ep.makespan == pytest.approx(stage.makespan, rel=1e-12)
        assert {w: tuple(r) for w, r in ep.order.items()} == {w: tuple(r) for w, r in plan.order.items()}


def test_dispatched_order_replayed_by_simulator_is_never_later(small_instances) -> None:
    """The order an agent dispatched, replayed as a static plan (work known from the start), cannot end later:
    the env only adds the constraint that work taken at time t starts no earlier than t."""
    env = RescheduleEnv(small_instances)
    for i, inst in enumerate(small_instances):
        ep = rollout(env, heuristic("greedy", env), {"instance": i})
        plan = plan_from_order("replay", inst.workload, ep.order, 0.0, 0.0)
        plan.validate(inst.workload, inst.cluster)
        with TraceWriter(None) as trace:
            stage = SimBackend(inst.responses, inst.costs, inst.max_batch).run_stage(
                EXPERT_STAGE, plan, inst.workload, inst.cluster, trace
            )
        assert stage.makespan <= ep.makespan + 1e-6


def test_greedy_stealing_never_worse_than_a_bad_plan(small_instances) -> None:
    """Stealing from round-robin's one-expert-per-worker plan can only shorten it on these instances."""
    env = RescheduleEnv(small_instances, start="plan", plan_scheduler="round-robin")
    for i in range(len(small_instances)):
        static = rollout(env, heuristic("wait", env), {"instance": i}).makespan
        stolen = rollout(env, heuristic("greedy", env), {"instance": i})
        assert stolen.makespan <= static + 1e-6
        assert stolen.info["steals"] >= 1


def test_cycle_order_and_bad_arguments(small_instances) -> None:
    env = RescheduleEnv(small_instances, instance_order="cycle")
    assert [env.reset()[1]["instance"] for _ in range(4)] == [0, 1, 2, 0]
    with pytest.raises(ConfigError, match="start"):
        RescheduleEnv(small_instances, start="later")
    with pytest.raises(ConfigError, match="instance"):
        env.reset(options={"instance": 9})
    with pytest.raises(ConfigError, match="reset"):
        RescheduleEnv(small_instances).step(0)
    shown = RescheduleEnv(small_instances, render_mode="ansi")
    shown.reset(seed=0)
    assert "worker 0" in shown.render()


def test_reward_ref_plan_and_round_robin(small_instances) -> None:
    """With ``reward_ref="plan"`` never moving work returns exactly -1; rewards stay -elapsed / ref."""
    env = RescheduleEnv(small_instances, start="plan", plan_scheduler="round-robin", reward_ref="plan")
    rr = RescheduleEnv(small_instances, reward_ref="round-robin")
    for i in range(len(small_instances)):
        static = rollout(env, heuristic("wait", env), {"instance": i})
        assert static.ret == pytest.approx(-1.0, abs=1e-12)
        stolen = rollout(env, heuristic("greedy", env), {"instance": i})
        assert stolen.ret == pytest.approx(-stolen.makespan / static.makespan)
        assert stolen.info["reward_ref_s"] == pytest.approx(static.makespan)
        dispatched = rollout(rr, heuristic("greedy", rr), {"instance": i})
        assert dispatched.ret == pytest.approx(-dispatched.makespan / static.makespan)  # the same round-robin plan
    with pytest.raises(ConfigError, match="reward_ref"):
        RescheduleEnv(small_instances, reward_ref="plan")  # no start plan
