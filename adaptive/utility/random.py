"""Random scores (SET's growth): drawn from a generator folded from (seed, step, layer)."""
import torch

from .base import Estimator, register_estimator


@register_estimator("random")
class RandomScore(Estimator):
    def _draw(self, ctx):
        return torch.rand(ctx.weight.shape, generator=ctx.generator).to(ctx.weight.device)

    def removal_cost(self, ctx):
        return self._draw(ctx)

    def restoration_gain(self, ctx):
        return self._draw(ctx)
