"""|g| for growth (RigL), |w| for removal: the gradient is averaged over the observation window."""
from .base import Estimator, register_estimator


@register_estimator("gradient")
class GradientMagnitude(Estimator):
    needs_gradients = True
    sign_free = True  # |g|

    def removal_cost(self, ctx):
        return ctx.weight.detach().abs().float()

    def restoration_gain(self, ctx):
        return ctx.stats.mean(ctx.name).abs()
