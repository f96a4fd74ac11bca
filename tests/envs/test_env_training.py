"""Tiny-budget training through the CLI, trained agents as a Scheduler and a skip policy, ``mosaic eval-agents``."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mosaic.agents import SCHEDULERS, make_scheduler
from mosaic.agents.rl import RLRescheduleScheduler, load_agent, rl_threshold_policy
from mosaic.aggregation.thresholds import LearnedThresholdPolicy
from mosaic.core.config import TrackingCfg, load_config
from mosaic.core.errors import ConfigError
from mosaic.core.types import Cluster
from mosaic.envs.commands import main
from mosaic.envs.training import TrainOptions, train
from mosaic.pipeline import prepare, run_scheduler, skip_context


@pytest.fixture(scope="module")
def reschedule_model(tmp_path_factory: pytest.TempPathFactory, small_config_file: Path) -> Path:
    """MaskablePPO, 256 steps, trained from the command line (start from a greedy-LPT plan)."""
    out = tmp_path_factory.mktemp("resched")
    rc = main(
        [
            "train",
            "reschedule",
            "--algo",
            "maskable-ppo",
            "--timesteps",
            "256",
            "--seed",
            "1",
            "--config",
            str(small_config_file),
            "--out",
            str(out),
            "--eval-freq",
            "128",
            "--n-eval",
            "2",
            "--n-instances",
            "2",
            "--start",
            "plan",
            "--plan-scheduler",
            "greedy-lpt",
            "--noise",
            "0.3",
            "--wandb",
            "disabled",
        ]
    )
    assert rc == 0
    return out / "model.zip"


@pytest.fixture(scope="module")
def threshold_model(tmp_path_factory: pytest.TempPathFactory, small_cfg) -> Path:
    out = tmp_path_factory.mktemp("thresh")
    opts = TrainOptions("threshold", "ppo", 512, 0, out, TrackingCfg(mode="disabled"), eval_freq=256, n_eval=2,
                        env={"lam": 4.0, "episode_len": 8})  # fmt: skip
    result = train(small_cfg, opts)
    assert result.seconds < 30
    return result.model_path


def test_train_command_writes_model_metadata_and_evaluation(reschedule_model: Path) -> None:
    out = reschedule_model.parent
    meta = json.loads((out / "model.json").read_text())
    assert meta["task"] == "reschedule" and meta["algo"] == "maskable-ppo" and meta["timesteps"] == 256
    assert meta["env"]["start"] == "plan" and meta["env"]["n_workers"] == 4
    assert (out / "progress.csv").is_file() and (out / "best_model.zip").is_file()
    assert (out / "eval" / "evaluations.npz").is_file()
    held = json.loads((out / "heldout.json").read_text())
    names = [r["name"] for r in held["makespans"]]
    assert "greedy-lpt + RL rescheduling" in names
    rl = next(r for r in held["makespans"] if r["name"] == "greedy-lpt + RL rescheduling")
    assert len(rl["makespans"]) == 2 and all(m > 0 for m in rl["makespans"])


def test_reschedule_agent_is_a_scheduler(reschedule_model: Path, small_instances) -> None:
    assert "rl-reschedule" in SCHEDULERS
    inst = small_instances[0]
    sched = make_scheduler("rl-reschedule", model_path=reschedule_model)
    plan = sched.plan(inst.workload, inst.costs, inst.cluster, np.random.default_rng(0))
    plan.validate(inst.workload, inst.cluster)
    assert plan.scheduler == "rl-reschedule" and plan.stats["rl_start"] == "plan"
    again = RLRescheduleScheduler(reschedule_model).plan(inst.workload, inst.costs, inst.cluster,
                                                         np.random.default_rng(5))  # fmt: skip
    assert dict(again.order) == dict(plan.order)  # deterministic
    other = Cluster.homogeneous(2, "A100-80GB", 80.0)
    with pytest.raises(ConfigError, match="observations"):
        sched.plan(inst.workload, inst.costs, other, np.random.default_rng(0))


def test_rl_scheduler_needs_a_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MOSAIC_RL_RESCHEDULE_MODEL", raising=False)
    with pytest.raises(ConfigError, match="model"):
        make_scheduler("rl-reschedule")
    with pytest.raises(ConfigError, match="does not exist"):
        load_agent(tmp_path / "missing.zip")


def test_threshold_agent_is_a_learned_policy(threshold_model: Path, small_instances) -> None:
    policy = rl_threshold_policy(threshold_model)
    assert isinstance(policy, LearnedThresholdPolicy)
    inst = small_instances[0]
    q = inst.workload.queries[0]
    answers = [inst.responses.get(q.id, e).answer for e in inst.workload.routes[0]]
    # the decision is the trained model's deterministic action on the features the env computes, for every query
    for conf in (1 / 3, 2 / 3, 1.0):
        obs = np.clip(policy.features(q, answers, conf).astype(np.float32), 0.0, policy.model.high)
        action, _ = policy.model.agent.model.predict(obs, deterministic=True)
        assert policy.decide(q, answers, conf) is bool(int(np.asarray(action).ravel()[0]) == 1)
    with pytest.raises(ConfigError, match="task"):
        load_agent(threshold_model, task="reschedule")


def test_threshold_agent_drives_the_aggregation_stage_of_a_run(threshold_model: Path, small_config_file: Path) -> None:
    """``aggregation.mode: learned`` (``mosaic compare --aggregation-model PATH``): the trained agent decides every
    query's skip in a pipeline run, with the features its env computed (expert kinds, aggregator seconds)."""
    cfg = load_config(small_config_file, [f"aggregation.model={threshold_model}", "aggregation.mode=learned"])
    exp = prepare(cfg)
    run = run_scheduler(exp, "greedy-lpt")
    decisions = run.result.decisions
    assert len(decisions) == len(exp.workload.queries)
    kinds, seconds = skip_context(exp)(exp.workload.queries[0])
    assert len(kinds) == len(exp.workload.routes[0]) and seconds > 0
    policy = rl_threshold_policy(threshold_model, skip_context(exp))
    expected = [policy.decide(q, [exp.responses.get(q.id, e).answer for e in route], d.confidence)
                for q, route, d in zip(exp.workload.queries, exp.workload.routes, decisions, strict=True)]  # fmt: skip
    assert [d.skipped for d in decisions] == expected
    with pytest.raises(ConfigError, match=r"config field 'aggregation'.*needs model"):
        load_config(small_config_file, ["aggregation.mode=learned"])


def test_dqn_and_ppo_train_on_the_reschedule_env(tmp_path: Path, small_cfg) -> None:
    for algo in ("dqn", "ppo"):
        opts = TrainOptions("reschedule", algo, 128, 0, tmp_path / algo, TrackingCfg(mode="disabled"), eval_freq=128,
                            n_eval=1, env={"n_instances": 1})  # fmt: skip
        result = train(small_cfg, opts)
        assert result.model_path.is_file() and load_agent(result.model_path).algo == algo


def test_eval_agents_command(reschedule_model: Path, threshold_model: Path, small_config_file: Path,
                             tmp_path: Path) -> None:  # fmt: skip
    rc = main(
        [
            "eval-agents",
            str(small_config_file),
            "--seeds",
            "2",
            "--reschedule-model",
            str(reschedule_model),
            "--threshold-model",
            str(threshold_model),
            "--plan-scheduler",
            "greedy-lpt",
            "--out",
            str(tmp_path),
            "--wandb",
            "disabled",
        ]
    )
    assert rc == 0
    results = json.loads((tmp_path / "results.json").read_text())
    rows = {r["name"]: r for r in results["makespans"]}
    for name in ("round-robin", "greedy-lpt", "greedy-lpt + RL rescheduling", "RL alone (no plan)"):
        assert len(rows[name]["makespans"]) == 2, name
    policies = {r["name"]: r for r in results["thresholds"]}
    assert policies["always aggregate"]["skip_rate"] == 0.0 and policies["skip all"]["time_s"] == 0.0
    assert 0.0 <= policies["learned (RL)"]["skip_rate"] <= 1.0
    assert (tmp_path / "pareto.png").stat().st_size > 1000 and (tmp_path / "makespans.csv").is_file()


def test_eval_tables_name_routerbench_when_the_agent_was_trained_on_it(shared_data: Path) -> None:
    from types import SimpleNamespace

    from mosaic.envs.commands import skip_tables_for

    agent = SimpleNamespace(meta={"env": {"source": "routerbench", "split_seed": 0, "test_share": 0.5}})
    tables, data, source = skip_tables_for([], agent)  # the pareto plot is titled with `data`, not the config
    assert data == "RouterBench" and source.startswith("RouterBench held-out") and len(tables) == 1
    assert skip_tables_for([], None)[1:] == (None, "0 instances")


def test_bad_cli_input_is_one_clear_error(small_config_file: Path, tmp_path: Path) -> None:
    assert main(["eval-agents", str(small_config_file), "--seeds", "0", "--out", str(tmp_path)]) == 2
    assert main(["eval-agents", str(tmp_path / "nope.yaml")]) == 2


def test_rl_modules_import_without_rl_libraries() -> None:
    """``mosaic.agents.rl`` and ``mosaic.envs.commands`` import with torch, gymnasium and SB3 unavailable."""
    code = (
        "import sys\n"
        "for m in ('torch', 'gymnasium', 'stable_baselines3', 'sb3_contrib'): sys.modules[m] = None\n"
        "import mosaic.agents.rl, mosaic.envs.commands\n"
        "from mosaic.agents import SCHEDULERS\n"
        "assert 'rl-reschedule' in SCHEDULERS\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_commands_plug_into_the_mosaic_cli(small_config_file: Path, tmp_path: Path) -> None:
    from mosaic import cli

    assert "mosaic.envs.commands" in cli.EXTENSIONS
    args = cli.build_parser().parse_args(["train", "threshold", "--algo", "dqn", "--timesteps", "64"])
    assert (args.task, args.algo, args.timesteps, args.lam) == ("threshold", "dqn", 64, 4.0)
    rc = cli.main(["eval-agents", str(small_config_file), "--seeds", "1", "--plan-scheduler", "round-robin",
                   "--out", str(tmp_path), "--wandb", "disabled"])  # fmt: skip
    assert rc == 0 and (tmp_path / "results.json").is_file()


def test_training_logs_every_sb3_record_to_the_tracker(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                       small_cfg) -> None:  # fmt: skip
    """The tracking callback forwards SB3's log dumps (train/, rollout/, eval/) to the W&B run."""
    logged: list[tuple[dict, int]] = []

    class FakeRun:
        def log(self, values: dict, step: int = 0) -> None:
            logged.append((values, step))

    class FakeTracker:
        def __init__(self, cfg, name, config, out) -> None:
            assert cfg.mode == "offline" and "reschedule" in name
            self.run = FakeRun()

        def log_metrics(self, metrics: dict) -> None:
            logged.append((dict(metrics), -1))

        def finish(self) -> None:
            self.run = None

    monkeypatch.setattr("mosaic.report.tracking.Tracker", FakeTracker)
    opts = TrainOptions("reschedule", "ppo", 512, 0, tmp_path, TrackingCfg(mode="offline"), eval_freq=256, n_eval=1,
                        env={"n_instances": 1})  # fmt: skip
    train(small_cfg, opts)
    keys = {k for values, _ in logged for k in values}
    assert {"train/policy_gradient_loss", "eval/mean_reward", "time/fps", "train_seconds"} <= keys
    assert {"mosaic/makespan_over_lb", "rollout/ep_rew_mean"} <= keys
