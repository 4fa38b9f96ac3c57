"""Diagnostics that let a researcher see inside a network, one file per diagnostic.

- :func:`gradient_by_depth` (gradient_depth.py): weight gradients of a layer grouped by the depth of
  the signal each weight reads; :class:`BandGradientScaler` (band_scaling.py) equalises the bands.
- :func:`collinearity` (collinearity.py): per-weight agreement of batch gradients with the full
  gradient, streamed in bounded memory.
- :func:`knowledge_distribution` (knowledge.py): accuracy of what remains against weights removed
  in utility order (removal_order.py), with an exponential fit.
- :func:`progress` (progress.py): a run's controller events and metrics drawn against removal.
- :class:`SilentUnits` (silent_units.py): the units of a training network that no gradient reaches
  (dead ReLUs, units cut off by pruning); the recipe reports their share in metrics.csv.

Every diagnostic returns its numbers as a :class:`Table` and draws PNG figures (SVG on request).
"""
from .band_scaling import BandGradientScaler
from .collinearity import Collinearity, collinearity
from .gradient_depth import GradientByDepth, gradient_by_depth, resolve_depths, weight_depths
from .knowledge import KnowledgeCurve, evaluate, fit_exponential, knowledge_distribution
from .progress import Progress, progress, read_events, read_metrics
from .removal_order import global_order, removal_scores
from .silent_units import LayerSilence, SilentUnits
from .table import Table, save_figure

__all__ = [
    "BandGradientScaler", "Collinearity", "collinearity", "GradientByDepth", "gradient_by_depth",
    "resolve_depths", "weight_depths", "KnowledgeCurve", "evaluate", "fit_exponential",
    "knowledge_distribution", "Progress", "progress", "read_events", "read_metrics",
    "global_order", "removal_scores", "LayerSilence", "SilentUnits", "Table", "save_figure",
]
