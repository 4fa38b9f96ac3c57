"""Second-order estimate with a diagonal Fisher F (Optimal Brain Damage, LeCun et al. 1990).

Removal:      dL ~ -g*w + F*w^2/2
Restoration:  dL ~ +g*w0 + F*w0^2/2, gain = -dL
Train mode (grown at 0 then trained): the best a single synapse can do on the quadratic model is
a Newton step, gain = g^2 / (2F) (with F the layer's mean when the window holds one batch: a
per-synapse F from that same gradient would make every gain 1/2). This is the loss saved once the
synapse has trained; right after the edit it is still 0.0 and saves nothing.
First-order alone is known to collapse a pretrained network when many weights move at once; the
curvature term keeps large weights from looking free to remove.
"""
import torch

from .base import Estimator, register_estimator
from ..registry import number_option


def _holds(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether ``a`` has the shape and dtype of ``a`` op ``b``: an in-place op on it gives the same values."""
    return a.shape == torch.broadcast_shapes(a.shape, b.shape) and a.dtype == torch.result_type(a, b)


def _times(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a * b``, written into ``a`` (a tensor of the caller's own) where it holds the product."""
    return a.mul_(b) if _holds(a, b) else a * b


@register_estimator("obd")
class OBD(Estimator):
    signed_cost = True  # -g*w (+ F*w^2/2): negative wherever the first-order term outweighs
    needs_gradients = True
    needs_fisher = True  # the per-sample Fisher comes from the spread of a window's batch gradients
    needs_second_moment = True

    def loss_units(self, mode: str) -> bool:
        return True  # and so are its gains: restoring, immediate; growing, once trained (est_growth_gain)

    def __init__(self, damping: float = 1e-12):
        # (-1 made g^2/(2(F-1)) negative, or infinite where F = 1: growth chose at random or by sign)
        number_option(f"utility estimator {self.name!r}", "damping", damping, low=0,
                      why="added to the curvature a growth gain divides by")
        self.damping = damping  # as given: checkpoints fingerprint the estimator by its repr

    def gradient(self, ctx):
        return ctx.stats.mean(ctx.name)

    def removal_cost(self, ctx):
        g, w = self.gradient(ctx), ctx.weight.detach().float()
        f = ctx.stats.fisher(ctx.name, ctx.batch_size)
        # -g*w + 0.5*f*w*w bit for bit (negation is exact, and y + (-x) is y - x) in fewer passes and copies;
        # only a NaN may differ, in its sign bit (a NaN score is refused either way)
        curv = torch.mul(f, 0.5)
        curv = _times(_times(curv, w), w)
        gw = g * w
        return curv.sub_(gw) if _holds(curv, gw) else curv - gw

    def restoration_gain(self, ctx):
        g = self.gradient(ctx)
        f = ctx.stats.fisher(ctx.name, ctx.batch_size)
        if ctx.restore is not None:
            w0 = ctx.restore.float()
            return -(g * w0 + 0.5 * f * w0 * w0)
        if ctx.stats.n(ctx.name) < 2:
            # one batch: F estimated from the very gradient it divides makes g^2/(2F) the same 1/2
            # for every synapse (growth would go by index); the layer's mean curvature keeps the
            # gain ranking by |g|
            f = f.mean()
        gain = g * g
        # no gradient, no gain: with damping 0 a synapse no gradient reached (an input that is always 0,
        # MNIST's border pixels) is 0/0, a NaN the controller refuses, ending the run at its first update
        scale = 2.0 * (f + self.damping)
        # one divisor, positive in the gain's dtype (which the division casts it to): 0 / it is 0
        if scale.dim() == 0 and _holds(gain, scale) and float(scale.to(gain.dtype)) > 0:
            return gain.div_(scale)
        return torch.where(gain == 0, gain, gain / scale)
