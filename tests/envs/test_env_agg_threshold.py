"""``mosaic/AggThreshold-v0`` and its skip tables: rewards, determinism, observations, simulator times."""

from __future__ import annotations

import numpy as np
import pytest

from mosaic.aggregation.thresholds import FixedThreshold
from mosaic.core.errors import ConfigError, WorkloadError
from mosaic.core.trace import TraceWriter
from mosaic.envs.agg_threshold import AGGREGATE, SKIP, AggThresholdEnv
from mosaic.envs.skip_tables import observations, skip_table, stage_time
from mosaic.runtime.executor import Executor
from mosaic.runtime.sim import SimBackend


@pytest.fixture(scope="module")
def table(small_instances):
    return skip_table(small_instances[0])


def test_table_matches_the_executor(small_instances, table) -> None:
    """Confidence and majority correctness per query are what the Executor computes on the same answers."""
    inst = small_instances[0]
    from mosaic.agents import make_scheduler

    backend = SimBackend(inst.responses, inst.costs, inst.max_batch)
    with TraceWriter(None) as trace:
        result = Executor(backend).run(inst.workload, make_scheduler("greedy-lpt"), inst.costs, inst.cluster,
                                       np.random.default_rng(0), trace)  # fmt: skip
    votes = Executor(backend).votes(inst.workload, result.expert.responses)
    assert len(table) == len(inst.workload.queries)
    np.testing.assert_allclose(table.confidence, [v.confidence for v in votes])
    assert table.majority_correct.tolist() == [bool(v.majority_correct) for v in votes]
    agg = [d.correct for d in result.decisions]  # always aggregate: the aggregator's correctness
    assert table.aggregator_correct.tolist() == [bool(c) for c in agg]
    assert table.accuracy(np.zeros(len(table), dtype=bool)) == pytest.approx(result.accuracy)
    assert (table.saved_s > 0).all()


def test_rewards_follow_the_formula(table) -> None:
    env = AggThresholdEnv(table, lam=3.0, episode_len=len(table))
    obs, _ = env.reset(seed=1)
    mean_saved = table.saved_s.mean()
    total, done, seen = 0.0, False, set()
    while not done:
        assert env.observation_space.contains(obs)
        obs, reward, done, trunc, info = env.step(SKIP)
        row = int(np.flatnonzero(table.query_ids == info["query"])[0])
        loss = float(table.aggregator_correct[row]) - float(table.majority_correct[row])
        assert reward == pytest.approx(table.saved_s[row] / mean_saved - 3.0 * loss)
        assert env.reward(row, False) == 0.0 and info["correct"] == bool(table.majority_correct[row])
        total += reward
        seen.add(row)
    assert not trunc and len(seen) == len(table)  # every row exactly once
    loss_all = table.aggregator_correct.mean() - table.majority_correct.mean()
    assert total == pytest.approx(len(table) * (1.0 - 3.0 * loss_all))  # saved time sums to len(table) units


def test_same_seed_same_episode_and_distinct_rows(table) -> None:
    env = AggThresholdEnv(table, episode_len=10)

    def run(seed: int) -> list:
        obs, info = env.reset(seed=seed)
        out = [info["query"]]
        for a in [SKIP, AGGREGATE] * 5:
            obs, r, done, _, step_info = env.step(a)
            out.append((obs.tobytes(), r, step_info["correct"]))
        assert done
        return out

    assert run(3) == run(3)
    assert run(3) != run(4)
    env.reset(seed=0)
    assert len(set(env._rows.tolist())) == 10


def test_stage_time_from_the_simulator(table) -> None:
    n = len(table)
    none, all_rows = np.zeros(n, dtype=bool), np.ones(n, dtype=bool)
    assert stage_time(table, all_rows) == 0.0
    full = stage_time(table, none)
    unanimous = stage_time(table, table.confidence >= 1.0 - 1e-9)
    assert 0 < unanimous <= full
    assert full >= table.saved_s.max() - 1e-9  # the stage cannot end before its longest call


def test_observations_match_fixed_threshold_policy(table, small_instances) -> None:
    obs = observations(table)
    assert obs.dtype == np.float32 and obs.shape == (len(table), 9)
    policy = FixedThreshold(2 / 3)
    wl = small_instances[0].workload
    for row, q in enumerate(table.query_ids):
        answers = [table.instance.responses.get(int(q), e).answer for e in wl.routes[q]]
        assert policy.decide(wl.queries[q], answers, float(obs[row, 0])) == (table.confidence[row] >= 2 / 3 - 1e-6)


def test_split_and_bad_arguments(table) -> None:
    train, test = table.split(0.25, np.random.default_rng(0))
    assert len(train) + len(test) == len(table) and len(test) == round(0.25 * len(table))
    assert not set(train.query_ids) & set(test.query_ids)
    with pytest.raises(WorkloadError):
        table.split(1.5, np.random.default_rng(0))
    with pytest.raises(ConfigError, match="lam"):
        AggThresholdEnv(table, lam=-1)
    with pytest.raises(ConfigError, match="episode_len"):
        AggThresholdEnv(table, episode_len=0)
    assert "queries" in repr(table)


def test_routerbench_table_real_answers(shared_data) -> None:
    from mosaic.envs.skip_tables import routerbench_table

    rb = routerbench_table(limit=60)
    assert len(rb) == 120  # 60 ARC + 60 Winogrande questions, 3 experts each
    assert set(np.round(rb.confidence, 2)) <= {0.33, 0.67, 1.0}
    assert 0.5 < rb.aggregator_correct.mean() <= 1.0
    env = AggThresholdEnv(rb, episode_len=16)
    obs, _ = env.reset(seed=0)
    assert env.observation_space.contains(obs)
