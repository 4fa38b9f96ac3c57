"""adaptive: the network as a connectome of synapse ensembles, edited during training from
measured utility."""
from .budgets import get_budget, register_budget
from .connectome import Connectome
from .controller import Controller
from .discovery import SynapseLayer, discover
from .ensembles import Granularity, get_granularity, register_granularity
from .policies import Policy, get_policy, register_policy
from .utility import Estimator, get_estimator, register_estimator

__version__ = "0.1.0"

__all__ = [
    "Connectome",
    "Controller",
    "SynapseLayer",
    "discover",
    "Granularity",
    "get_granularity",
    "register_granularity",
    "Policy",
    "get_policy",
    "register_policy",
    "Estimator",
    "get_estimator",
    "register_estimator",
    "get_budget",
    "register_budget",
]
