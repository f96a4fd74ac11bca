"""``mosaic/Reschedule-v0``: determinism, masks, observation box, reward normalisation, simulator equivalence."""

from __future__ import annotations

import functools

import numpy as np
import pytest

from mosaic.agents.reschedule import _STATE as _RESCHEDULER_STATE
from mosaic.core.errors import ConfigError
from mosaic.core.trace import EXPERT_STAGE, TraceWriter
from mosaic.core.types import plan_from_order
from mosaic.envs.policies import heuristic, random_policy, rollout
from mosaic.envs.reschedule import RescheduleEnv, plan_instance, run_to_decision
from mosaic.runtime.loop import SimLoop
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
    """The loop's run-ahead (queued workers advance up to the others' dry bounds, the rest catch up before a
    decision) sees the same states, rewards and masks as its strict lockstep."""
    make = lambda: RescheduleEnv(noisy_instances, start=start, plan_scheduler="greedy-lpt")  # noqa: E731
    ahead = _trajectory(make(), 3, 400)
    monkeypatch.setattr("mosaic.envs.reschedule.SimLoop", functools.partial(SimLoop, lookahead=False))
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


def test_episode_copy_is_complete_and_independent(noisy_instances) -> None:
    """The episode state (the loop and the rescheduler) copies completely: the copy and the original, driven alike
    from the same moment, end alike; the original is not moved by the copy's run."""
    env = RescheduleEnv(noisy_instances)
    env.reset(seed=0, options={"instance": 0})
    for _ in range(3):
        env.step(int(np.flatnonzero(env.action_masks())[-1]))
    loop, r = env.loop, env.rescheduler
    twin_loop, twin = loop.copy(), r.copy()
    assert set(vars(twin)) == set(vars(r)) == set(_RESCHEDULER_STATE)
    for name in ("mode", "assigned", "pool", "pwork", "pcount", "_asks", "_actions"):
        assert getattr(twin, name) is not getattr(r, name), name
    assert all(a is not b for a, b in zip(twin.pool, r.pool, strict=True))
    runs = []
    for lp, rs in ((twin_loop, twin), (loop, r)):  # the copy first: the original must still be where it started
        rng = np.random.default_rng(0)
        while rs.deciding is not None:
            rs.act(lp, int(rng.choice(np.flatnonzero(rs.mask()))))
            if not run_to_decision(lp, rs):
                break
        runs.append((rs.order, lp.last_end(), rs.steals, rs.takes, rs.waits))
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
    """The observation's blocks recomputed from the loop's view alone: a copy of the loop with the actions decided
    at this event applied (the view shows the state before them), the order each worker got its requests in (its
    admitted ones: those no longer queued), and the decision's worker and modes."""
    r, n_s = env.rescheduler, env.n_slots
    t, w = r.t, env.n_workers
    view = env.loop.copy()
    view.apply(r.decided)
    pred, slot_of = np.array(t.pred), np.array(t.expert_of)
    queues = [list(view.queued(x)) for x in t.workers]
    slots = [t.slot.get(view.resident(x), n_s) for x in t.workers]
    fill = [[len(view.running(x)) / t.max_batch[k]] for x, k in zip(t.workers, slots, strict=True)]
    qwork = np.zeros((w, n_s))
    for i, q in enumerate(queues):
        np.add.at(qwork[i], slot_of[q], pred[q])
    serving = (qwork > 0).sum(axis=0).astype(float)
    steal = qwork.copy()
    for i, (q, k) in enumerate(zip(queues, slots, strict=True)):
        if k < n_s and qwork[i, k] == 0:
            serving[k] += 1
        movable = view.movable(t.workers[i])
        if q and movable[:1] != (q[0],):  # the head stays, and no work of an expert whose load is under way moves
            head = slot_of[q[0]]
            loading = not view.running(t.workers[i]) and head != k
            steal[i, head] = 0.0 if loading else qwork[i, head] - pred[q[0]]
    if r.deciding is not None:
        steal[r.deciding] = 0.0
    admitted = np.zeros(w)
    for i, (x, got) in enumerate(zip(t.workers, r.order, strict=True)):  # what it got and no longer queues
        ids = [q for q in got if q not in set(queues[i])]
        admitted[i] = max(pred[ids].sum() - view.busy(x), 0.0)
    pooled = np.zeros((n_s, len(env.buckets) + 1))
    for q in view.waiting():
        pooled[slot_of[q], t.bucket[q]] += pred[q]
    return {
        "resident": np.eye(n_s + 1)[slots],
        "deciding": np.eye(w)[r.deciding][:, None] if r.deciding is not None else np.zeros((w, 1)),
        "queued": qwork.sum(axis=1, keepdims=True) / t.ref,
        "admitted": admitted[:, None] / t.ref,
        "batch_fill": np.array(fill),
        "waiting": np.array([[m != 0] for m in r.mode], dtype=float),
        "pooled": pooled / t.ref,
        "stealable": steal.sum(axis=0)[:, None] / t.ref,
        "load": np.array(t.load)[:, None] / t.ref,
        "serving": serving[:, None] / w,
        "elapsed": np.array([[view.clock / t.ref]]),
        "pooled_total": np.array([[pooled.sum() / t.ref]]),
        "queued_total": np.array([[qwork.sum() / t.ref]]),
    }


def test_observation_fields_mirror_the_state(small_instances) -> None:
    """Every block of the observation (cut by ``obs_fields``) holds what the loop's view shows, scaled and clipped
    as documented; the valid serve actions are the experts with waiting or stealable work."""
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
        if env.rescheduler.deciding is not None:
            decisions += 1
            have = (fields["pooled"].sum(axis=1) > 0) | (fields["stealable"][:, 0] > 0)
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
