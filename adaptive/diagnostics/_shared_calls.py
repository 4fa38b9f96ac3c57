"""Layers called more than once in one forward (weight sharing), for the gradient-by-depth
diagnostic and the band scaler.

Each call of a shared layer reads a signal of its own depth (the traced graph has a layer per call,
``NAME#k``), and the weight's gradient is the sum of each call's part: :class:`CallRecorder` splits a
gradient into the calls' parts, and tells the calls that took no part in autograd (run under
``torch.no_grad()``), whose part is no measurement.
"""
from __future__ import annotations

import contextlib
from typing import List

import torch
from torch import nn


class CallRecorder:
    """Records each call of ``module`` in a forward: its inputs, whether its output requires grad
    (``call["no_grad"]``: True where it ran under ``torch.no_grad()`` or ``torch.inference_mode()``,
    or returned a detached output; such a call's inputs are not kept), the autocast it ran under, and,
    once a backward pass has run through it, the gradient of the loss with respect to its output as
    the call returned it (a tensor hook: an in-place edit of the output afterwards does not change it).
    :meth:`gradient_parts` then gives the part of the weight's gradient that each call contributes
    (they add up to the weight's gradient). ``keep_inputs=False``: only whether each call requires
    grad is kept (no parts). A call made while a backward pass runs is not recorded: it is gradient
    checkpointing (``torch.utils.checkpoint``) recomputing a call of the forward, already recorded.
    :meth:`clear` before each forward; :meth:`remove` at the end."""

    def __init__(self, module: nn.Module, keep_inputs: bool = True):
        self.module, self.calls, self.keep_inputs = module, [], keep_inputs
        self.handle = module.register_forward_hook(self._record, with_kwargs=True)

    def _record(self, module, args, kwargs, out):
        if torch._C._current_graph_task_id() != -1:  # a checkpoint's recomputation, inside the backward
            return
        live = out.requires_grad if isinstance(out, torch.Tensor) else torch.is_grad_enabled()
        keep = live and self.keep_inputs
        cast = [(d, torch.get_autocast_dtype(d)) for d in ("cpu", "cuda") if keep and torch.is_autocast_enabled(d)]
        call = {"args": args if keep else None, "kwargs": kwargs if keep else None, "grad": None, "no_grad": not live,
                "autocast": cast}
        if keep and isinstance(out, torch.Tensor):
            out.register_hook(lambda g: call.__setitem__("grad", g))
        self.calls.append(call)

    def clear(self) -> None:
        self.calls = []

    def remove(self) -> None:
        self.handle.remove()
        self.calls = []

    def gradient_parts(self, weight: torch.Tensor) -> List[torch.Tensor]:
        """Per call, the gradient of the loss with respect to ``weight`` through that call alone: the
        call's output gradient pulled back through the call's own operation, its inputs held fixed
        (the calls before it reach the loss through its input, and are counted in their own part).
        Zero for a call whose output no gradient reached (run under ``torch.no_grad()``, or off the
        loss's path). Runs with grad enabled and under the autocast the call ran under (its output
        gradient has the dtype autocast gave the output), so it works inside a backward pass (a
        gradient hook); hooks on ``weight`` run for the parts too."""
        parts = []
        for call in self.calls:
            g = None
            if call["grad"] is not None:
                args = [a.detach() if isinstance(a, torch.Tensor) else a for a in call["args"]]
                kwargs = {k: v.detach() if isinstance(v, torch.Tensor) else v for k, v in call["kwargs"].items()}
                with torch.enable_grad(), contextlib.ExitStack() as cast:
                    for device, dtype in call["autocast"]:
                        cast.enter_context(torch.autocast(device, dtype=dtype))
                    out = self.module.forward(*args, **kwargs)
                    (g,) = torch.autograd.grad(out, [weight], call["grad"], allow_unused=True)
            parts.append(torch.zeros_like(weight) if g is None else g)
        return parts


def parts_adding_up(who: str, name: str, parts: List[torch.Tensor], g: torch.Tensor, fix: str) -> List[torch.Tensor]:
    """``parts``, the calls' parts of the gradient ``g`` of layer ``name``, once checked to add up to
    it (to 1% of its largest entry: the sums run in another order); else a ValueError from ``who``
    ending in ``fix``. They miss what an op reading the weight outside the module's calls contributes."""
    gap = float((torch.stack(parts).sum(0) - g).abs().max())
    if gap > 1e-2 * float(g.abs().max()):
        raise ValueError(f"{who}: the parts of the gradient of {name!r} that its {len(parts)} calls contribute do not add "
                         f"up to the gradient (off by up to {gap:.3g}): the weight is also read outside the module's calls "
                         f"(F.linear(x, layer.weight), a tied weight), whose part no call carries; {fix}")
    return parts
