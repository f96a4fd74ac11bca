"""Shared env fixtures: small synthetic instances (built once per session) and a tiny config file."""

from __future__ import annotations

from pathlib import Path

import pytest

from mosaic.core.config import RunConfig, load_config
from mosaic.envs.instances import EVAL_STREAM, config_instances
from mosaic.envs.problem import InstanceSet

# 24 synthetic GPQA-like questions, 6 experts, k = 3, 4 workers: episodes of a few milliseconds.
SMALL = ("workload.preset=gpqa", "workload.num_queries=24", "workload.questions=synthetic", "tracking.mode=disabled")


@pytest.fixture(scope="session")
def small_cfg() -> RunConfig:
    return load_config(None, SMALL)


@pytest.fixture(scope="session")
def small_instances(small_cfg: RunConfig) -> InstanceSet:
    """Three instances with the config's predictor (per-expert mean: real prediction error)."""
    return config_instances(small_cfg, 3, seed=0)


@pytest.fixture(scope="session")
def noisy_instances(small_cfg: RunConfig) -> InstanceSet:
    """Three held-out instances whose predictions are the true lengths times a 30% log-normal error."""
    return config_instances(small_cfg, 3, seed=0, noise=0.3, stream=EVAL_STREAM)


@pytest.fixture(scope="session")
def small_config_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("cfg") / "small.yaml"
    path.write_text(
        "name: small\nseed: 0\nworkload: {preset: gpqa, num_queries: 24, questions: synthetic}\n"
        "tracking: {mode: disabled}\nout_dir: runs\n",
        encoding="utf-8",
    )
    return path
