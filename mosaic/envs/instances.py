"""Env instances from a run config: workloads, true responses and (optionally noisy) predictions.

``noise`` models length-prediction error: the cost model predicts each request's true output length times
``exp(noise * z)``, ``z ~ N(0, 1)`` drawn once per (query, expert) (a log-normal error: noise 0.3 is about 30%).
``noise=None`` keeps the config's own predictor (``costs.predictor``, e.g. the paper's per-expert mean).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from mosaic.core.config import RunConfig, load_config
from mosaic.core.errors import ConfigError, WorkloadError
from mosaic.core.types import Cluster
from mosaic.envs.problem import Instance, InstanceSet
from mosaic.predictors.interface import CostModel
from mosaic.predictors.lengths import NoisyOracleLengthPredictor

# A small paper-like scenario (6 experts, k = 3, 4 workers) that keeps episodes fast on 2 cores.
DEFAULT_ENV_OVERRIDES = ("workload.preset=gpqa", "workload.num_queries=40")
TRAIN_STREAM, EVAL_STREAM, TEST_STREAM = 1, 2, 3  # seed streams: training, evaluation (held-out), final test


def resolve_config(config: RunConfig | str | Path | None) -> RunConfig:
    """A RunConfig as given, read from a YAML path, or the small default scenario (None)."""
    if isinstance(config, RunConfig):
        return config
    if config is None:
        return load_config(None, DEFAULT_ENV_OVERRIDES)
    if isinstance(config, str | Path):
        return load_config(config)
    raise ConfigError(f"env config must be a RunConfig, a YAML path or None, got {type(config).__name__}")


def build_instance(cfg: RunConfig, rng: np.random.Generator, noise: float | None = None, name: str = "") -> Instance:
    """One instance of ``cfg``'s scenario: workload and responses drawn with ``rng``; predictions from the config's
    predictor (``noise=None``) or the noisy oracle."""
    from mosaic.predictors.costmodel import ProfiledCostModel
    from mosaic.predictors.factory import build_cost_model, build_profile
    from mosaic.workloads import build_workload, expert_means

    wl_rng, noise_rng = rng.spawn(2)
    workload, responses = build_workload(cfg, wl_rng)
    if noise is None:
        costs: CostModel = build_cost_model(cfg, workload, expert_means(cfg, workload), responses)
    else:
        predictor = NoisyOracleLengthPredictor(responses, noise, noise_rng)
        costs = ProfiledCostModel(build_profile(cfg, workload), predictor, workload)
    cluster = Cluster.homogeneous(cfg.cluster.workers, cfg.cluster.gpu_type, cfg.cluster.memory_gb)
    bound = costs.bind(workload)
    return Instance(workload, responses, bound, cluster, cfg.runtime.max_batch, name=name or workload.name)


def config_instances(
    config: Any, n: int, seed: int = 0, noise: float | None = None, stream: int = TRAIN_STREAM
) -> InstanceSet:
    """``n`` instances of the config's scenario; instance ``i`` is drawn from ``SeedSequence([seed, stream, i])``
    (streams keep training, evaluation and held-out instances apart for the same seed)."""
    if n < 1:
        raise ConfigError(f"env instances: n_instances must be >= 1, got {n}")
    cfg = resolve_config(config)
    out = []
    for i in range(n):
        rng = np.random.default_rng(np.random.SeedSequence([seed, stream, i]))
        out.append(build_instance(cfg, rng, noise, name=f"{cfg.name}#{seed}.{stream}.{i}"))
    return InstanceSet(out)


def config_skip_table(config: Any, seed: int | None = None, stream: int = TRAIN_STREAM) -> Any:
    """The skip table of one instance of the config's scenario (seed: the config's unless given)."""
    from mosaic.envs.skip_tables import skip_table

    cfg = resolve_config(config)
    rng = np.random.default_rng(np.random.SeedSequence([cfg.seed if seed is None else seed, stream, 0]))
    table = skip_table(build_instance(cfg, rng))
    if len(table) == 0:
        raise WorkloadError(f"config {cfg.name!r}: no query has expert answers to agree on")
    return table
