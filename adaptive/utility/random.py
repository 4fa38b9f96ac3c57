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

    def ensemble_scores(self, ctx, gran):
        """One uniform value per synapse of each ensemble, times its size: ranked per synapse (as
        budgets rank ensembles of different sizes), every ensemble has the same chance whatever its
        size. A sum of per-synapse draws would not: it concentrates near the mean for large ones.
        Single-synapse ensembles get exactly :meth:`removal_cost`'s draw."""
        shape = torch.Size(ctx.weight.shape)
        if tuple(gran.ensemble_shape(shape)) == tuple(shape):
            return self._draw(ctx)
        from ..policies.base import ensemble_size  # (policies import the estimators)

        r = torch.rand(gran.ensemble_shape(shape), generator=ctx.generator)
        size = ensemble_size(gran, shape)  # pooled once per layer shape, not at every update
        return (r * (size if isinstance(size, float) else size.view(r.shape))).to(ctx.weight.device)
