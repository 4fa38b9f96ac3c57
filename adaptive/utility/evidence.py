"""Evidence: a synapse's value of presence, accumulated over many windows of batches.

For every synapse (present or absent: gradients are dense) the presence derivative is
d = dL/dm = g * w0, the first-order loss change of switching it on (w0 is its original value in
mask_only mode). Each window of n batches gives d's mean and its batch-to-batch spread; their
ratio t = mean / (spread / sqrt(n)) says how consistently the batches agree, independent of the
weight's scale. Evidence accumulates as E <- decay * E - step * clip(t, -clip, clip), so a synapse's
value is judged by what held across many windows, not by one window's noise. A window of one batch
has no spread and adds nothing (the Controller warns of such windows): give it two or more batches. A
window of several batches that agree exactly (a full-batch or one-batch dataset) counts as the clip's
agreement, in the mean's direction (nothing with an infinite clip). Its
value of presence is

    v = |w0| + rms(w0 of its layer) * E

(the magnitude prior, so that the start is global magnitude pruning, plus the evidence, scaled to
the layer's weights so that one step size suits every layer). The removal cost
of a present synapse and the restoration gain of an absent one are both v: pruning the lowest and
restoring the highest values swaps a synapse only when the evidence says the absent one is worth
more. First-order loss estimates themselves are not used to remove many synapses at once: summed
over thousands of synapses they are known to collapse a pretrained network (OBD's own warning).

Stateful: the controller must call ``removal_cost`` once per layer and update (the ``crawl``
policy does), and ``restoration_gain`` after it in the same update; share one instance for both
sides (``adaptive.optimize_connectome`` does).
"""
from __future__ import annotations

import torch

from .base import Estimator, near_unit, register_estimator
from ..registry import number_option


@register_estimator("evidence")
class Evidence(Estimator):
    needs_gradients = True
    needs_second_moment = True
    needs_spread = True  # a window of one batch has no spread: no evidence, the magnitude prior alone (warned of)
    scores_by_w0 = True  # d = g * w0: an absent synapse learns only where w0 is its original value

    def __init__(self, step: float = 0.003, clip: float = 3.0, decay: float = 1.0):
        owner = f"utility estimator {self.name!r}"
        self.step = number_option(owner, "step", step, low=0, why="the evidence one window adds; 0: magnitude alone")
        self.clip = number_option(owner, "clip", clip, low=0, low_open=True, finite=False,
                                  why="the largest t-statistic one window counts; inf: no clipping")
        self.decay = number_option(owner, "decay", decay, low=0, high=1,
                                   why="the share of earlier evidence kept at each window; 1: all of it")
        self.evidence = {}
        self._value = {}

    def _prior(self, ctx):
        w0 = ctx.w0
        return w0.abs(), w0, _rms(w0)

    def removal_cost(self, ctx):
        prior, w0, rms = self._prior(ctx)
        s = ctx.stats
        e = self.evidence.get(ctx.name)
        if e is None:
            e = torch.zeros_like(prior)
        elif e.device != prior.device:  # a state loaded on the CPU follows the weights to their device
            e = e.to(prior.device)
        if s.n(ctx.name) >= 2:
            g = s.mean(ctx.name)
            se = (s.batch_variance(ctx.name) / s.n(ctx.name)).sqrt()
            # t-statistic of d = g * w0 (scale-free: the floor is float's smallest normal, not 1e-20, which cut the
            # t of a layer of weights near 1e21, its gradients near 1e-21)
            t = g * torch.sign(w0) / se.clamp_min(torch.finfo(se.dtype).tiny)
            # no spread: batches that agree exactly (a full-batch or one-batch dataset) are the clip's agreement
            # in the mean's direction, as a spread of one ulp already gave; they added nothing, silently
            # (an infinite clip: still nothing, the t-statistic being infinite)
            agree = torch.sign(g * torch.sign(w0)) * (self.clip if self.clip < float("inf") else 0.0)
            t = torch.where(se > 0, t, agree)
            e = self.decay * e - self.step * t.clamp(-self.clip, self.clip)
        self.evidence[ctx.name] = e
        self._value[ctx.name] = prior + rms * e
        return self._value[ctx.name]

    def state_dict(self) -> dict:
        return {"evidence": {n: e.to("cpu", copy=True) for n, e in self.evidence.items()},
                "value": {n: v.to("cpu", copy=True) for n, v in self._value.items()}}

    def load_state_dict(self, sd: dict) -> None:
        self._check_state_keys(sd, ("evidence", "value"))
        self.evidence = {n: e.clone() for n, e in sd.get("evidence", {}).items()}
        self._value = {n: v.clone() for n, v in sd.get("value", {}).items()}

    def restoration_gain(self, ctx):
        v = self._value.get(ctx.name)
        if v is None:
            prior, _, rms = self._prior(ctx)
            e = self.evidence.get(ctx.name)
            v = prior + rms * (torch.zeros_like(prior) if e is None else e.to(prior.device))
        elif v.device != ctx.w0.device:
            v = self._value[ctx.name] = v.to(ctx.w0.device)
        return v


def _rms(w: torch.Tensor) -> torch.Tensor:
    """The root mean square of ``w``, its squares taken near unit scale (:func:`~adaptive.utility.base.near_unit`):
    unscaled, float32 squares overflowed for weights near 1e20 (evidence's values became +-inf) and underflowed near
    1e-20 (its evidence was lost), as presence's are guarded too."""
    scaled, e = near_unit(w)
    return torch.ldexp(scaled.pow(2).mean().sqrt(), e)
