"""First-order Taylor estimate of the loss change.

Removing w changes the loss by about -g*w; restoring w_orig by about +g*w_orig, so the gain is
-g*w_orig. In train mode a grown synapse starts at 0 and is then trained: the first-order loss
decrease of a gradient step on it is proportional to g^2, which is the gain used there.
"""
from .base import Estimator, register_estimator


@register_estimator("taylor")
class Taylor(Estimator):
    signed_cost = True  # -g*w: removal is estimated to lower the loss for about half of the synapses
    needs_gradients = True

    def loss_units(self, mode: str) -> bool:
        return True  # -g*w: the first-order loss change of a removal, in every mode

    def gain_loss_units(self, restores: bool) -> bool:
        return restores  # -g*w_orig is; the train-mode gain g^2 is a loss decrease only up to a step size

    def removal_cost(self, ctx):
        return -ctx.stats.mean(ctx.name) * ctx.weight.detach().float()

    def restoration_gain(self, ctx):
        g = ctx.stats.mean(ctx.name)
        if ctx.restore is not None:
            return -g * ctx.restore.float()
        return g * g
