"""``mosaic/AggOnline-v0``: skip decisions at run time, on the pipeline's own online run (no re-implemented loop)."""

from __future__ import annotations

import json
import threading
import warnings

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env as gym_check_env
from stable_baselines3.common.env_checker import check_env as sb3_check_env

from mosaic.aggregation.thresholds import (
    FEATURE_NAMES,
    ONLINE_FEATURE_NAMES,
    FixedThreshold,
    LearnedLoadPolicy,
    load_features,
)
from mosaic.core.config import load_config
from mosaic.core.errors import ConfigError
from mosaic.envs import AGG_ONLINE_ID
from mosaic.envs.agg_online import AggOnlineEnv
from mosaic.pipeline import Experiment, plan_scheduler, prepare, run_scheduler, skip_context
from mosaic.report.metrics import answer_times

# 60 synthetic MedMCQA-like questions arriving at 0.2 q/s on 4 workers, no stage barrier: an episode in ~0.1 s
ONLINE = ("workload.preset=medmcqa", "workload.num_queries=60", "workload.questions=synthetic",
          "workload.arrival_rate=0.2", "runtime.barrier=false", "tracking.mode=disabled")  # fmt: skip


def _exp(seed: int = 0, *extra: str) -> Experiment:
    return prepare(load_config(None, (*ONLINE, f"seed={seed}", *extra)))


@pytest.fixture(scope="module")
def exps() -> list[Experiment]:
    return [_exp(0), _exp(1)]


def _episode(env: AggOnlineEnv, act, seed: int = 0, experiment: int = 0) -> tuple[list, list, dict]:
    obs, _ = env.reset(seed=seed, options={"experiment": experiment})
    seen, rewards, done, info = [obs], [], False, {}
    while not done:
        obs, r, done, _, info = env.step(act(obs))
        seen.append(obs)
        rewards.append(r)
    return seen, rewards, info


def test_registered_and_passes_both_checkers(exps) -> None:
    env = gym.make(AGG_ONLINE_ID, experiments=exps)
    assert gym.spec(AGG_ONLINE_ID).max_episode_steps is None  # an episode is a whole run
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        gym_check_env(env.unwrapped, skip_render_check=False)
        sb3_check_env(env.unwrapped, warn=True, skip_render_check=False)
    env.close()
    assert env.observation_space.shape == (len(ONLINE_FEATURE_NAMES),)


def test_an_episode_is_the_pipelines_run(exps) -> None:
    """Acting as T = 1 in the env gives the run `mosaic compare` makes with T = 1: same skips, accuracy, answers."""
    exp = exps[0]
    env = AggOnlineEnv([exp])
    _, rewards, info = _episode(env, lambda obs: int(obs[0] >= 1.0 - 1e-6))
    run = run_scheduler(exp, plan_scheduler(exp, "greedy-lpt+rolling", FixedThreshold(1.0)))
    assert len(rewards) == len(exp.workload.queries)
    assert info["skip_rate"] == run.result.skip_rate > 0
    assert info["accuracy"] == run.result.accuracy
    assert env.episode.answered == answer_times(run.records)
    assert info["p99_s"] == pytest.approx(run.metrics.latency["p99"], rel=1e-12)
    env.close()


def test_return_is_accuracy_gained_minus_latency_cost(exps) -> None:
    exp = exps[1]
    env = AggOnlineEnv([exp], accuracy_weight=2.0, latency_weight=0.5, latency_scale_s=50.0, latency_power=2.0)
    _, rewards, info = _episode(env, lambda obs: int(obs[0] >= 0.6))
    ep, qs = env.episode, exp.workload.queries
    decisions = ep.result.decisions
    gained = sum(ep.correct_skip[d.query_id] - ep.correct_agg[d.query_id] for d in decisions if d.skipped)
    latency = sum(((ep.answered[q.id] - q.arrival) / 50.0) ** 2 for q in qs)
    assert info["answered"] == len(qs)
    assert sum(rewards) == pytest.approx(2.0 * gained - 0.5 * latency, rel=1e-9)
    env.close()


def _replay(actions: np.ndarray):
    it = iter(actions)
    return lambda obs: int(next(it))


def test_same_seed_same_episode_and_threads_end(exps) -> None:
    env = AggOnlineEnv(exps)
    rng = np.random.default_rng(3)
    actions = rng.integers(0, 2, size=len(exps[0].workload.queries))
    first = _episode(env, _replay(actions), seed=7)
    env.reset(seed=1)  # a run left mid-episode ends with the next reset
    for _ in range(5):
        env.step(1)
    again = _episode(env, _replay(actions), seed=7)
    assert all(np.array_equal(a, b) for a, b in zip(first[0], again[0], strict=True))
    assert first[1] == again[1]
    env.reset(seed=2)
    env.close()
    assert not any(t.name == "mosaic-agg-online" for t in threading.enumerate())


def test_step_before_reset_and_bad_arguments(exps) -> None:
    env = AggOnlineEnv(exps)
    with pytest.raises(gym.error.ResetNeeded):
        env.step(0)
    with pytest.raises(ConfigError, match="at least one experiment"):
        AggOnlineEnv([])
    with pytest.raises(ConfigError, match="weights must be"):
        AggOnlineEnv(exps, latency_scale_s=0.0)
    barrier = prepare(load_config(None, (*ONLINE, "runtime.barrier=true")))
    with pytest.raises(ConfigError, match=r"runtime\.barrier=false"):
        AggOnlineEnv([barrier]).reset(seed=0)


def test_learned_load_policy_sees_the_load(exps) -> None:
    """Deployed, the policy's model gets the agreement features and the load at each decision (zeros behind a
    stage barrier, where no load is known)."""
    seen: list[np.ndarray] = []

    def model(obs: np.ndarray) -> int:
        seen.append(obs)
        return 0

    exp = exps[0]
    run_scheduler(exp, plan_scheduler(exp, "greedy-lpt+rolling", LearnedLoadPolicy(model, skip_context(exp))))
    load = np.array(seen)[:, len(FEATURE_NAMES) :]
    assert load.shape == (len(exp.workload.queries), 3)
    assert (load[:, 2] > 0).all() and (load[:, 0] > 0).any()  # every query waited; the aggregator queue built
    barrier = prepare(load_config(None, (*ONLINE, "runtime.barrier=true")))
    seen.clear()
    run_scheduler(barrier, plan_scheduler(barrier, "round-robin", LearnedLoadPolicy(model)))
    assert not np.array(seen)[:, len(FEATURE_NAMES) :].any()
    assert not load_features(exp.workload.queries[0], None).any()


def test_a_trained_agent_runs_from_a_config(exps, tmp_path) -> None:
    """An agent trained in the env, saved with task ``online``, is the run's skip policy from
    ``aggregation.mode: learned`` (a LearnedLoadPolicy, deciding as the agent does on the same observations)."""
    from stable_baselines3 import PPO

    from mosaic.agents.rl import ONLINE_TASK, save_meta
    from mosaic.pipeline import aggregation_policy

    env = AggOnlineEnv(exps[:1])
    model = PPO("MlpPolicy", env, n_steps=64, batch_size=32, n_epochs=1, seed=0, device="cpu")
    model.learn(total_timesteps=64)
    path = tmp_path / "online.zip"
    model.save(str(path))
    save_meta(path, {"task": ONLINE_TASK, "algo": "ppo"})
    exp = _exp(0, "aggregation.mode=learned", f"aggregation.model={path}")
    policy = aggregation_policy(exp)
    assert isinstance(policy, LearnedLoadPolicy)
    sb3, deployed = policy.model.agent.model, []
    predict = sb3.predict

    def recording(obs, **kw):
        deployed.append(np.asarray(obs, dtype=np.float32).ravel())
        return predict(obs, **kw)

    sb3.predict = recording
    run = run_scheduler(exp, plan_scheduler(exp, "greedy-lpt+rolling", policy))
    obs, _ = env.reset(seed=0, options={"experiment": 0})
    skips, observed, done = {}, [obs], False
    while not done:
        a = int(predict(obs, deterministic=True)[0])
        skips[env.episode.policy.query_id] = bool(a)
        obs, _, done, _, _ = env.step(a)
        observed.append(obs)
    assert {d.query_id: d.skipped for d in run.result.decisions} == skips
    assert np.array_equal(np.array(deployed), np.array(observed[:-1]))  # the same observation at each decision
    env.close()
    assert AggOnlineEnv().experiments[0].workload.name.startswith("medmcqa")  # the default: MedMCQA online


def test_train_online_command(tmp_path) -> None:
    """``mosaic train online``: PPO on the config's training runs, the held-out runs' table beside the fixed T."""
    from mosaic.agents.rl import load_agent
    from mosaic.envs.commands import main

    sets = [x for s in ONLINE if not s.startswith("runtime.") for x in ("--set", s)]
    out = tmp_path / "online"
    rc = main(["train", "online", *sets, "--timesteps", "256", "--n-train", "1", "--n-eval", "1", "--eval-freq",
               "128", "--wandb", "disabled", "--out", str(out)])  # fmt: skip
    assert rc == 0
    agent = load_agent(out / "model.zip", "online")
    assert agent.algo == "ppo" and agent.meta["env"]["train_seeds"] == [100]
    assert agent.meta["env"]["heldout_seeds"] == [200] and agent.meta["hyper"]["gamma"] == 0.999
    rows = json.loads((out / "heldout.json").read_text())["online"]
    assert [r["policy"] for r in rows] == ["always", "T=1", "T=2/3", "learned (RL)"]
    assert rows[0]["skip_rate"] == 0 and rows[1]["skip_rate"] > 0
    offline = tmp_path / "offline.yaml"  # no arrivals, a stage barrier: nothing to decide at run time
    offline.write_text("name: offline\nworkload: {preset: medmcqa, num_queries: 60, questions: synthetic}\n")
    assert main(["train", "online", "--config", str(offline), "--timesteps", "64", "--out", str(tmp_path / "x")]) == 2
    assert not (tmp_path / "x").exists()
    assert main(["train", "online", "--algo", "maskable-ppo", "--timesteps", "64", "--out", str(tmp_path / "y")]) == 2
