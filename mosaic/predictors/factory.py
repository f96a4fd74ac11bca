"""Build the run's :class:`CostModel` from the config: ``costs.profile`` + ``costs.predictor``."""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any

from mosaic.core.config import RunConfig
from mosaic.core.errors import ConfigError
from mosaic.core.types import Responses, Workload
from mosaic.predictors.costmodel import ProfiledCostModel
from mosaic.predictors.interface import LengthPredictor
from mosaic.predictors.profile import CostProfile
from mosaic.predictors.registry import LENGTH_PREDICTORS
from mosaic.predictors.roofline import roofline_profile

ROOFLINE = "roofline"
# Modules that register length predictors; imported when a name is not registered yet (absent ones skipped).
PREDICTOR_MODULES = ("mosaic.predictors.lengths", "mosaic.predictors.linear", "mosaic.predictors.lgbm")


def load_predictor_modules() -> None:
    """Import every module of :data:`PREDICTOR_MODULES` that exists (each registers its predictors)."""
    for mod in PREDICTOR_MODULES:
        try:
            importlib.import_module(mod)
        except ModuleNotFoundError as err:
            if err.name != mod:
                raise


def build_length_predictor(spec: str, **context: Any) -> LengthPredictor:
    """``NAME[:ARG]`` -> the registered predictor ``NAME`` built with ``ARG`` and ``context`` (``means``,
    ``responses``, ``workload``); an unknown name raises the registry's error listing the valid ones."""
    name, _, arg = spec.partition(":")
    name = name.strip()
    if not name:
        raise ConfigError(f"costs.predictor must name a length predictor (e.g. mean), got {spec!r}")
    if name not in LENGTH_PREDICTORS:
        load_predictor_modules()
    return LENGTH_PREDICTORS.get(name)(arg.strip() or None, **context)


def build_profile(cfg: RunConfig, workload: Workload) -> CostProfile:
    """``costs.profile``: ``roofline`` (analytic, for ``cluster.gpu_type``, priced by ``costs.step_model``, default
    ``max``) or a profile file, with every engine's max batch capped at ``runtime.max_batch`` and its KV memory mode
    set to ``costs.memory_mode``; it must cover the workload's experts and aggregator."""
    experts = (*workload.experts, workload.aggregator)
    gpu = cfg.cluster.gpu_type
    source = cfg.costs.profile.strip()
    if source == ROOFLINE:
        profile = roofline_profile(experts, [gpu], cfg.runtime.max_batch, step_model=cfg.costs.step_model or "max")
    elif cfg.costs.step_model == "max":
        raise ConfigError(f"costs.step_model={cfg.costs.step_model} applies to the roofline profile; profile file "
                          f"{source} prices its steps itself (its step_compute_* fields)")  # fmt: skip
    else:
        profile = CostProfile.from_file(source).with_max_batch(cfg.runtime.max_batch, cap=True)
        profile.require([e.name for e in experts], [gpu])
    return profile.with_memory_mode(cfg.costs.memory_mode)


def build_cost_model(
    cfg: RunConfig,
    workload: Workload,
    means: Mapping[str, float],
    responses: Responses | None = None,
) -> ProfiledCostModel:
    """The run's cost model, bound to ``workload`` (``bind`` it again for another stage's workload).

    ``means``: expert name -> mean output tokens (the experts' ``mean_output_tokens``, aggregator included);
    ``responses``: ground truth, needed only by the ``oracle`` predictor.
    """
    profile = build_profile(cfg, workload)
    predictor = build_length_predictor(
        cfg.costs.predictor, means=means, responses=responses, workload=workload, seed=cfg.seed
    )
    missing = predictor.missing([e.name for e in (*workload.experts, workload.aggregator)])
    if missing:
        raise ConfigError(f"costs.predictor {cfg.costs.predictor!r} has no lengths for expert(s) {missing} "
                          f"(a trace to fit on needs records of every expert and the aggregator)")  # fmt: skip
    return ProfiledCostModel(profile, predictor, workload, expected=cfg.costs.expected)
