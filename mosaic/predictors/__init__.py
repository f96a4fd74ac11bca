"""Cost profiles, length predictors and the cost model.

Importing this package registers the ``'mean'`` and ``'oracle'`` length predictors.
"""

from mosaic.predictors.costmodel import ProfiledCostModel
from mosaic.predictors.factory import build_cost_model, build_length_predictor, build_profile
from mosaic.predictors.interface import CostModel, LengthPredictor, ModelCost
from mosaic.predictors.lengths import MeanLengthPredictor, OracleLengthPredictor
from mosaic.predictors.profile import CostProfile
from mosaic.predictors.roofline import GPU_SPECS, GpuSpec, RooflineAssumptions, roofline_profile

__all__ = [
    "GPU_SPECS",
    "CostModel",
    "CostProfile",
    "GpuSpec",
    "LengthPredictor",
    "MeanLengthPredictor",
    "ModelCost",
    "OracleLengthPredictor",
    "ProfiledCostModel",
    "RooflineAssumptions",
    "build_cost_model",
    "build_length_predictor",
    "build_profile",
    "roofline_profile",
]
