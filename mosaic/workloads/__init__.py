"""mosaic.workloads: question loaders, skill routing, response models and the paper's three workloads.

:func:`build_workload` turns a config into a :class:`~mosaic.core.types.Workload` and its ground-truth
:class:`~mosaic.core.types.Responses` (synthetic, calibrated to the paper, or recorded from a trace).
"""

from mosaic.workloads.build import (
    AGGREGATOR_SUFFIX,
    aggregator_name,
    build_workload,
    expert_cfgs,
    expert_means,
    recorded_responses,
)
from mosaic.workloads.presets import PAPER_EXPERTS, PRESETS, Preset, get_preset
from mosaic.workloads.questions import load_questions, shared_data_dir, split_options, synthetic_questions
from mosaic.workloads.registry import WORKLOADS
from mosaic.workloads.router import SkillRouter, demand_ratio
from mosaic.workloads.synthetic import ResponseModel, difficulty, synthesize

__all__ = [
    "AGGREGATOR_SUFFIX",
    "PAPER_EXPERTS",
    "PRESETS",
    "WORKLOADS",
    "Preset",
    "ResponseModel",
    "SkillRouter",
    "aggregator_name",
    "build_workload",
    "demand_ratio",
    "difficulty",
    "expert_cfgs",
    "expert_means",
    "get_preset",
    "load_questions",
    "recorded_responses",
    "shared_data_dir",
    "split_options",
    "synthesize",
    "synthetic_questions",
]
