"""|w|: the data-free baseline."""
import torch

from .base import Estimator, register_estimator


@register_estimator("magnitude")
class Magnitude(Estimator):
    def removal_cost(self, ctx):
        return ctx.weight.detach().abs().float()

    def restoration_gain(self, ctx):
        if ctx.restore is not None:
            return ctx.restore.abs().float()
        return torch.zeros_like(ctx.weight, dtype=torch.float32)
