"""Cost profiles, length predictors and the cost model."""

from mosaic.predictors.interface import CostModel, LengthPredictor, ModelCost

__all__ = ["CostModel", "LengthPredictor", "ModelCost"]
