"""Presence: a per-synapse value of presence learned batch by batch from the presence derivative.

For every synapse (present or absent: gradients are dense) the presence derivative is
d = dL/dm = g * w0, the first-order loss change of switching it on (w0 is its original value in
mask_only mode). Each update folds the window's mean d into Adam-style moving moments and moves
the synapse's value against the normalised mean:

    m <- b1 m + (1 - b1) d,   v <- b2 v + (1 - b2) d^2,   value <- value - step * m^ / (sqrt(v^) + eps)

starting from the layer-normalised magnitude |w0| / rms(w0 of its layer) (so that the start is
magnitude pruning and one step size suits every layer, at any weight scale float32 holds). The
normalisation makes each move a signal-to-noise ratio: a synapse moves as fast as its batches
agree, whatever its scale. The removal cost of a present synapse and the restoration gain of an
absent one are both its value, so keeping the highest values is a top-k over evidence accumulated
since the start.

With a window of one batch this is the update rule of edge-popup's scores (Ramanujan et al.,
2020) written as a utility estimator; with longer windows the moments see window means. Measured
on pretrained CIFAR ResNets (recipes/benchmarks/mask_only.py) it learned masks about as fast per
training example as edge-popup, and faster than the windowed t-statistic of ``evidence``.

The driver may scale the step over time (``step_scale``, e.g. a cosine decay per stage) and
restart the moments (``begin_stage()``) when the goal changes. Stateful: the controller calls
``removal_cost`` once per layer per update; ``restoration_gain`` reads the same values.
Its state travels in ``state_dict()``.
"""
from __future__ import annotations

from typing import Dict

import torch

from .base import Estimator, near_unit, register_estimator
from ..registry import number_option


@register_estimator("presence")
class Presence(Estimator):
    needs_gradients = True
    needs_second_moment = False
    scores_by_w0 = True  # d = g * w0: an absent synapse learns only where w0 is its original value

    def __init__(self, step: float = 0.01, beta1: float = 0.9, beta2: float = 0.999, eps: float = 1e-8):
        owner = f"utility estimator {self.name!r}"
        self.step = number_option(owner, "step", step, low=0, low_open=True, why="the move of a value at each update")
        self.beta1, self.beta2 = (number_option(owner, k, b, low=0, high=1, high_open=True, why="a moment's decay")
                                  for k, b in (("beta1", beta1), ("beta2", beta2)))
        # (0: a synapse whose presence derivative was 0 at every update got 0/0, a NaN value)
        self.eps = number_option(owner, "eps", eps, low=0, low_open=True, why="added to the moments' root")
        self.step_scale = 1.0
        self.value: Dict[str, torch.Tensor] = {}
        self.m: Dict[str, torch.Tensor] = {}
        self.v: Dict[str, torch.Tensor] = {}
        self.t: Dict[str, int] = {}

    def begin_stage(self) -> None:
        """Restart the moving moments (not the values): a new goal starts a fresh optimiser."""
        self.m.clear()
        self.v.clear()
        self.t.clear()

    def _init_value(self, ctx) -> torch.Tensor:
        a = ctx.w0.abs()
        # |w0| / rms(w0) of a layer first brought near unit scale by a power of two: exact, so the
        # values are the same bits as unscaled, but the squares neither overflow float32 (weights
        # near 1e20) nor underflow (near 1e-20), which lost the layer's order or its scale
        a, _ = near_unit(a)  # a layer of zeros: its values stay 0
        return a / a.pow(2).mean().sqrt().clamp_min(1e-12)

    def _follow(self, n: str, device) -> None:
        """Move layer ``n``'s state to ``device`` (a state loaded on the CPU follows the weights)."""
        for d in (self.value, self.m, self.v):
            t = d.get(n)
            if t is not None and t.device != device:
                d[n] = t.to(device)

    def removal_cost(self, ctx):
        n = ctx.name
        if n not in self.value:
            self.value[n] = self._init_value(ctx)
        self._follow(n, ctx.w0.device)
        s = ctx.stats
        if s is not None and s.n(n) >= 1:
            w0 = ctx.w0
            d = s.mean(n) * w0
            if n not in self.m:
                self.m[n], self.v[n], self.t[n] = torch.zeros_like(d), torch.zeros_like(d), 0
            m, v = self.m[n], self.v[n]
            self.t[n] += 1
            t = self.t[n]
            m.mul_(self.beta1).add_(d, alpha=1 - self.beta1)
            v.mul_(self.beta2).addcmul_(d, d, value=1 - self.beta2)
            denom = (v / (1 - self.beta2 ** t)).sqrt_().add_(self.eps)
            self.value[n].addcdiv_(m, denom, value=-self.step * self.step_scale / (1 - self.beta1 ** t))
        return self.value[n].clone()  # a copy: the state moves in place at the next update

    def restoration_gain(self, ctx):
        if ctx.name not in self.value:
            self.value[ctx.name] = self._init_value(ctx)
        self._follow(ctx.name, ctx.w0.device)
        return self.value[ctx.name].clone()

    def state_dict(self) -> dict:
        return {"step_scale": self.step_scale, "t": dict(self.t),
                "value": {n: v.to("cpu", copy=True) for n, v in self.value.items()},
                "m": {n: v.to("cpu", copy=True) for n, v in self.m.items()},
                "v": {n: v.to("cpu", copy=True) for n, v in self.v.items()}}

    def load_state_dict(self, sd: dict) -> None:
        self._check_state_keys(sd, ("step_scale", "t", "value", "m", "v"))
        self.step_scale = float(sd.get("step_scale", 1.0))
        self.t = {n: int(k) for n, k in sd.get("t", {}).items()}
        for key in ("value", "m", "v"):
            setattr(self, key, {n: t.clone() for n, t in sd.get(key, {}).items()})

    def __repr__(self) -> str:
        # eps where it is not the default: checkpoints fingerprint the estimator by this text, and
        # the ones written before it was shown (every one with the default) match it still
        eps = f", eps={self.eps}" if self.eps != 1e-8 else ""
        return f"Presence(step={self.step}, beta1={self.beta1}, beta2={self.beta2}{eps})"
