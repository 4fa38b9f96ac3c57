"""Utility measurement: gradient statistics and the estimators that turn them into scores."""
from . import consistency, curvature, evidence, gradient, magnitude, obd, presence, random, taylor  # noqa: F401  (registration)
from .base import Estimator, UtilityContext, configured_estimator, estimator_names, get_estimator, register_estimator
from .stats import GradientStats

__all__ = ["Estimator", "UtilityContext", "GradientStats", "get_estimator", "register_estimator", "estimator_names",
           "configured_estimator"]

# the estimators' modules, imported to register them (named here so a linter sees them used; out of
# __all__, so a star import binds no module: ``random`` would replace the importer's stdlib one)
_REGISTERED = (consistency, curvature, evidence, gradient, magnitude, obd, presence, random, taylor)
