"""Registry of length predictors (mean, linear, lightgbm)."""

from __future__ import annotations

from typing import Any

from mosaic.core.registry import Registry

LENGTH_PREDICTORS: Registry[Any] = Registry("length predictor")  # name -> factory
