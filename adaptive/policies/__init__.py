"""Controller policies (a registry): which ensembles to prune and to grow at an update."""
from . import balanced, crawl, gmp, oneshot, swap, threshold  # noqa: F401  (registration)
from .base import EditPlan, Policy, get_policy, policy_names, register_policy

__all__ = ["EditPlan", "Policy", "get_policy", "policy_names", "register_policy"]

# the policies' modules, imported to register them (named here so a linter sees them used; out of
# __all__, so a star import binds no module)
_REGISTERED = (balanced, crawl, gmp, oneshot, swap, threshold)
