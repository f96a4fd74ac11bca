"""The live RL agent (``rl-reschedule``): the same SB3 model acts through the runtime loop (``SimBackend.run_policy``)
as in ``mosaic/Reschedule-v0``: the same decisions, schedules and makespans, on the engines' true state."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mosaic.agents.reschedule import ReschedulePolicy
from mosaic.agents.rl import RLRescheduleScheduler, load_agent, save_meta
from mosaic.core.errors import ConfigError
from mosaic.core.trace import EXPERT_STAGE, RequestRecord, TraceWriter
from mosaic.core.types import Cluster
from mosaic.envs.policies import heuristic, rollout
from mosaic.envs.reschedule import RescheduleEnv
from mosaic.runtime.sim import SimBackend

MODES = {  # algorithm, env arguments: a maskable model from a plan, a plain one (invalid actions: fallback) alone
    "plan": ("maskable-ppo", {"start": "plan", "plan_scheduler": "greedy-lpt"}),
    "empty": ("ppo", {"start": "empty"}),
}


@pytest.fixture(scope="module", params=sorted(MODES))
def model(request, tmp_path_factory: pytest.TempPathFactory, noisy_instances) -> tuple[Path, dict]:
    """An untrained SB3 model (a fixed random policy: deterministic, and it takes all kinds of actions), saved
    with its metadata as ``mosaic train`` does."""
    import importlib

    from mosaic.agents.rl import ALGO_CLASSES

    algo, env_kw = MODES[request.param]
    env = RescheduleEnv(noisy_instances, **env_kw)
    module, cls = ALGO_CLASSES[algo]
    sb3 = getattr(importlib.import_module(module), cls)("MlpPolicy", env, seed=3, device="cpu")
    path = tmp_path_factory.mktemp(request.param) / "model.zip"
    sb3.save(str(path))
    meta = {"n_slots": env.n_slots, "buckets": list(env.buckets), "quantum_frac": env.quantum_frac,
            "n_workers": env.n_workers, **env_kw}  # fmt: skip
    save_meta(path, {"task": "reschedule", "algo": algo, "env": meta})
    return path, env_kw


def _live(path: Path, inst) -> tuple[dict[int, list[int]], float, ReschedulePolicy]:
    """The agent as a scheduler on the runtime loop: its plan, its policy, the schedule the engines ran."""
    sched = RLRescheduleScheduler(path, max_batch=inst.max_batch)
    plan = sched.plan(inst.workload, inst.costs, inst.cluster, np.random.default_rng(0), dict(inst.resident) or None)
    policy = sched.runtime_policy(plan)
    backend = SimBackend(inst.responses, inst.costs, inst.max_batch)
    with TraceWriter(None) as trace:
        stage = backend.run_policy(EXPERT_STAGE, policy, inst.workload, inst.costs, inst.cluster, trace, 0.0,
                                   inst.resident)  # fmt: skip
    order: dict[int, list[int]] = {w: [] for w in inst.cluster.ids}
    for rec in sorted((r for r in trace.records if isinstance(r, RequestRecord)), key=lambda r: r.start):
        order[rec.worker].append(rec.request_id)
    return order, stage.makespan, policy


def test_the_live_agent_acts_as_in_the_env(model, noisy_instances) -> None:
    path, env_kw = model
    agent = load_agent(path, task="reschedule")
    env = RescheduleEnv(noisy_instances, **env_kw)
    moved = 0
    for i, inst in enumerate(noisy_instances):
        ep = rollout(env, agent.act, {"instance": i})
        order, makespan, policy = _live(path, inst)
        assert order == {w: list(r) for w, r in ep.order.items()}
        assert makespan == ep.makespan
        assert policy.decisions == ep.steps or (policy.decisions == 0 and ep.steps == 1)
        state = policy.state
        assert state is not None and (state.steals, state.takes, state.waits) == (
            ep.info["steals"], ep.info["takes"], ep.info["waits"])  # fmt: skip
        moved += state.steals + state.takes
    assert moved > 0  # the agent did move work


def test_the_live_agent_is_a_scheduler(model, noisy_instances) -> None:
    path, env_kw = model
    sched = RLRescheduleScheduler(path)
    inst = noisy_instances[0]
    plan = sched.plan(inst.workload, inst.costs, inst.cluster, np.random.default_rng(0))
    assert sched.plans_ahead is (env_kw["start"] == "plan") and plan.stats["rl_start"] == env_kw["start"]
    if sched.plans_ahead:
        plan.validate(inst.workload, inst.cluster)
        assert plan.scheduler == "rl-reschedule" and plan.stats["rl_base"] == "greedy-lpt"
    else:
        assert not plan.order and plan.lower_bound > 0
    with pytest.raises(ConfigError, match="observations"):
        sched.plan(inst.workload, inst.costs, Cluster.homogeneous(2, "A100-80GB", 80.0), np.random.default_rng(0))
    with pytest.raises(ConfigError, match="start"):
        RLRescheduleScheduler(path, start="later")


class _Greedy:
    """The greedy heuristic's rule (most waiting work, else steal, else wait) on its policy's own state."""

    policy: ReschedulePolicy | None = None

    def __call__(self, _obs: np.ndarray, mask: np.ndarray) -> int:
        r = self.policy.state if self.policy is not None else None
        assert r is not None
        pooled = [sum(r.pwork[e]) if mask[e] and r.pcount[e] > 0 else -1.0 for e in range(r.t.n_slots)]
        if max(pooled) >= 0:
            return pooled.index(max(pooled))
        return r.steal_action if mask[r.steal_action] else r.wait_action


def test_a_heuristic_acts_alike_through_the_policy(noisy_instances) -> None:
    """Any chooser (here the greedy heuristic's rule) runs the same through the loop as a policy and in the env."""
    env = RescheduleEnv(noisy_instances, start="plan", plan_scheduler="round-robin")
    for i, inst in enumerate(noisy_instances):
        ep = rollout(env, heuristic("greedy", env), {"instance": i})
        choose = _Greedy()
        policy = choose.policy = ReschedulePolicy(choose, env.plan_of(i), max_batch=inst.max_batch)
        backend = SimBackend(inst.responses, inst.costs, inst.max_batch)
        with TraceWriter(None) as trace:
            stage = backend.run_policy(EXPERT_STAGE, policy, inst.workload, inst.costs, inst.cluster, trace, 0.0,
                                       inst.resident)  # fmt: skip
        assert policy.state is not None
        assert (stage.makespan, policy.state.steals) == (ep.makespan, ep.info["steals"]) and ep.info["steals"]
