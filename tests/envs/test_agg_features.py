"""``AggThreshold-v0`` with ``features="reliability"``: hand-checked observation, train-only reliability, errors."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from mosaic.core.errors import ConfigError
from mosaic.core.types import Cluster, Query, Response, Responses
from mosaic.envs.agg_features import feature_names, fit_reliability, observation_rows, table_questions
from mosaic.envs.agg_threshold import AggThresholdEnv
from mosaic.envs.bandit import LinUCBOptions, train_linucb
from mosaic.envs.skip_tables import routerbench_instance, skip_table

EXPERTS = ("org/a-7b", "org/b-7b", "org/c-7b")
AGG = "org/agg-8b"
CHOICES = ("w", "x", "y", "z")  # four options: one-coin weights log(3 acc / (1 - acc))
# question -> (gold, answers of a, b, c). Train rows 0-1: a right twice, b once, c never; row 2 is held out.
ROWS = (("A", "A", "A", "B"), ("C", "C", "D", "D"), ("A", "A", "B", "B"))


@pytest.fixture(scope="module")
def table():
    queries, resp = [], {}
    for i, (gold, *answers) in enumerate(ROWS):
        queries.append(Query(i, f"question {i}?", "hand", CHOICES, gold, 0.0, 4))
        for m, a in zip((*EXPERTS, AGG), (*answers, gold), strict=True):
            resp[(i, m)] = Response(1, a, a == gold, a)
    task = SimpleNamespace(name="hand", queries=tuple(queries), responses=Responses(resp))
    inst = routerbench_instance([task], EXPERTS, AGG, Cluster.homogeneous(1, "A100-80GB", 80.0))
    return skip_table(inst)


def test_reliability_is_fitted_on_the_train_rows_only(table) -> None:
    rel = fit_reliability(table.subset([0, 1]))
    assert rel.experts == EXPERTS and rel.n_options == 4
    assert rel.accuracy == pytest.approx((3 / 4, 2 / 4, 1 / 4))  # (right + 1) / (2 + 2): row 2 never counted
    assert fit_reliability(table).accuracy != rel.accuracy  # the held-out row would change it


def test_observation_width_and_hand_values(table) -> None:
    rel = fit_reliability(table.subset([0, 1]))
    heldout = table.subset([2])
    obs = observation_rows(heldout, "reliability", rel)
    names = feature_names("reliability", 3)
    assert obs.shape == (1, 9 + 11 + 3) == (1, len(names)) and obs.dtype == np.float32
    np.testing.assert_allclose(obs[0, :9], observation_rows(heldout)[0])  # the 9 agreement features first
    # answers A, B, B; weights log 9, log 3, 0: score A = log 9, B = log 3; two unvoted options at 0.
    # z = 1 + 1/3 + 2/9 = 14/9: posterior(A) = 9/14, runner-up B = 3/14. The weighted answer differs from the vote.
    # "question 2?" has 11 characters, each answer 1.
    want = {"vote_share": 2 / 3, "posterior": 9 / 14, "posterior_margin": 6 / 14, "log_odds": math.log(9 / 5),
            "backers_mean_accuracy": 0.75, "dissenters_max_accuracy": 0.5, "rel_no_answer_share": 0.0,
            "log_answer_chars": math.log(2.0), "length_spread": 0.0, "log_question_chars": math.log1p(11),
            "rel_n_choices": 4.0, "backs_0": 1.0, "backs_1": 0.0, "backs_2": 0.0}  # fmt: skip
    got = dict(zip(names, obs[0].tolist(), strict=True))
    assert {n: got[n] for n in want} == pytest.approx(want, abs=1e-6)


def test_env_serves_the_rows_and_passes_the_checker(table) -> None:
    rel = fit_reliability(table.subset([0, 1]))
    env = AggThresholdEnv(table, features="reliability", reliability=rel, episode_len=3)
    assert env.observation_space.shape == (23,)
    obs, info = env.reset(seed=0)
    row = int(np.flatnonzero(table.query_ids == info["query"])[0])
    np.testing.assert_array_equal(obs, observation_rows(table, "reliability", rel)[row])
    assert env.observation_space.contains(obs)
    check_env(AggThresholdEnv(table, features="reliability", reliability=rel), skip_render_check=True)
    assert AggThresholdEnv(table).observation_space.shape == (9,)  # the default is unchanged


def test_bad_options_raise_clear_errors(table) -> None:
    rel = fit_reliability(table)
    with pytest.raises(ConfigError, match="features must be one of"):
        AggThresholdEnv(table, features="votes")
    with pytest.raises(ConfigError, match="needs reliability"):
        AggThresholdEnv(table, features="reliability")
    with pytest.raises(ConfigError, match="only used with"):
        AggThresholdEnv(table, reliability=rel)
    other = type(rel)(("x", "y", "z"), rel.accuracy, rel.n_options)
    with pytest.raises(ConfigError, match="reliability of"):
        AggThresholdEnv(table, features="reliability", reliability=other)


def test_questions_match_the_table(table) -> None:
    q = table_questions(table)
    assert q.votes == (("A", "A", "B"), ("C", "D", "D"), ("A", "B", "B"))
    assert q.expert_correct.tolist() == [[True, True, False], [True, False, False], [True, False, False]]
    assert q.majority_correct.tolist() == table.majority_correct.tolist() == [True, False, False]


def test_linucb_learns_which_rows_to_skip(table) -> None:
    """Row 0's majority is right (skip earns the saved time); rows 1-2 lose a right answer (1 - 10 < 0)."""
    rel = fit_reliability(table.subset([0, 1]))
    env = AggThresholdEnv(table, lam=10.0, episode_len=3, features="reliability", reliability=rel)
    bandit = train_linucb(env, LinUCBOptions(timesteps=600, seed=0))
    obs = observation_rows(table, "reliability", rel)
    assert bandit.skip_batch(obs).tolist() == [True, False, False]
    assert bandit == train_linucb(env, LinUCBOptions(timesteps=600, seed=0))  # same seed, same model
    with pytest.raises(ConfigError, match="linucb"):
        train_linucb(env, LinUCBOptions(timesteps=0))


def test_routerbench_observations_stay_in_the_box(shared_data: Path) -> None:
    from mosaic.envs.skip_tables import routerbench_table

    train, heldout = routerbench_table(limit=60).split(0.5, np.random.default_rng(0))
    env = AggThresholdEnv(heldout, features="reliability", reliability=fit_reliability(train))
    obs = observation_rows(heldout, "reliability", env.reliability)
    assert all(env.observation_space.contains(o) for o in obs) and obs.shape == (len(heldout), 23)


def test_script_runs_with_reliability_features(shared_data: Path, tmp_path: Path) -> None:
    root = Path(__file__).resolve().parents[2]
    cmd = [sys.executable, str(root / "experiments/rl_thresholds.py"), "--features", "reliability", "--lams", "8",
           "--timesteps", "256", "--boot", "50", "--wandb", "disabled", "--out", str(tmp_path)]  # fmt: skip
    subprocess.run(cmd, check=True, capture_output=True, timeout=300, cwd=root)
    text = (tmp_path / "reliability.csv").read_text(encoding="utf-8")
    assert "PPO reliability lam=8" in text and "PPO agreement lam=8" in text and "SkipModel" in text
    assert "LinUCB reliability lam=8" in text
