"""OBD with the gradient judged by its consistency across batches.

The window's mean gradient g is an average of n batch gradients with batch-to-batch variance v.
Its signal-to-noise ratio t^2 = g^2 / (v/n) says how well the batches agree in sign and size. The
first-order term uses the positive-part James-Stein shrinkage g * max(0, 1 - 1/t^2): a gradient
that one batch's noise could produce counts for nothing, one that holds across batches counts in
full. The curvature term is OBD's.
"""
import torch

from .base import register_estimator
from .obd import OBD


@register_estimator("consistency")
class Consistency(OBD):
    def gradient(self, ctx):
        s = ctx.stats
        g = s.mean(ctx.name)
        if s.n(ctx.name) < 2:
            return g
        noise = s.batch_variance(ctx.name) / s.n(ctx.name)
        t2 = g * g / noise.clamp_min(1e-30)
        return g * torch.clamp(1.0 - 1.0 / t2.clamp_min(1e-30), min=0.0)
