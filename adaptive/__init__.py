"""adaptive: the network as a connectome of synapse ensembles, edited during training from
measured utility."""
from .connectome import Connectome
from .discovery import SynapseLayer, discover
from .ensembles import Granularity, get_granularity, register_granularity

__version__ = "0.1.0"

__all__ = ["Connectome", "SynapseLayer", "discover", "Granularity", "get_granularity", "register_granularity"]
