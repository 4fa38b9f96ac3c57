"""adaptive: the network as a connectome of synapse ensembles, edited during training from
measured utility."""
import importlib

from .budgets import get_budget, register_budget
from .connectome import Connectome
from .controller import Controller
from .discovery import SynapseLayer, discover
from .optim_state import register_zero_preserving
from .ensembles import Granularity, get_granularity, register_granularity, unregister_granularity
from .policies import Policy, get_policy, register_policy
from .utility import Estimator, get_estimator, register_estimator

__version__ = "0.1.0"

_LAZY_MODULES = ("data", "models", "diagnostics", "baselines", "config", "paths", "training", "plots", "mask_only", "clipping")
_LAZY_ATTRS = {
    "optimize_connectome": "mask_only",
    "MaskOnlyResult": "mask_only",
    "Snapshot": "mask_only",
    "build_model": "models",
    "register_model": "models",
    "load_weights": "models",
    "get_datasets": "data",
    "get_dataloaders": "data",
    "clip_gradients": "clipping",
}


def __getattr__(name):
    """Submodules with heavier imports (matplotlib, torchvision datasets) load on first use."""
    if name in _LAZY_MODULES:
        return importlib.import_module(f".{name}", __name__)
    if name in _LAZY_ATTRS:
        return getattr(importlib.import_module(f".{_LAZY_ATTRS[name]}", __name__), name)
    raise AttributeError(f"module 'adaptive' has no attribute {name!r}")


__all__ = [
    "Connectome",
    "Controller",
    "SynapseLayer",
    "discover",
    "Granularity",
    "get_granularity",
    "register_granularity",
    "unregister_granularity",
    "Policy",
    "get_policy",
    "register_policy",
    "Estimator",
    "get_estimator",
    "register_estimator",
    "get_budget",
    "register_budget",
    "register_zero_preserving",
    "optimize_connectome",
    "MaskOnlyResult",
    "Snapshot",
    "build_model",
    "register_model",
    "load_weights",
    "get_datasets",
    "get_dataloaders",
    "clip_gradients",
]
