"""OBD's curvature term alone for removal, the consistency estimator's gain for growth.

Removing a weight is a step of its whole size, far beyond where the first-order term ``-g*w`` of
OBD holds. On a vit_tiny trained sparse with AdamW, removing 10% of every layer's live synapses by
OBD's or the consistency estimator's cost took held-out accuracy from 58.4% to 14.2% and 14.3%
(chance: 10%); by ``F*w^2/2`` alone, to 58.5% (``recipes/benchmarks/removal_orders_vit.py``), and dynamic sparse
training with this estimator reached 58.34% held-out where the consistency estimator reached 45.56%
(``recipes/benchmarks/dst_vit.py``). Removal cost: ``F*w^2/2`` (diagonal Fisher, as OBD).
Restoration gain: as :class:`~adaptive.utility.consistency.Consistency` (in train mode the
Newton-step gain ``g^2/(2F)`` of the consistency-shrunk gradient).
"""
from .base import register_estimator
from .consistency import Consistency


@register_estimator("curvature")
class Curvature(Consistency):
    signed_cost = False  # F*w^2/2 alone: never negative

    def reads_gradient_sign(self, restores: bool) -> bool:
        """Only through restore values (``-(g*w0 + F*w0^2/2)``): ``F*w^2/2`` and ``g^2/(2F)`` are sign-free."""
        return restores

    def removal_cost(self, ctx):
        w = ctx.weight.detach().float()
        return 0.5 * ctx.stats.fisher(ctx.name, ctx.batch_size) * w * w
