"""Masking gradients inside backward, as autograd accumulates each one.

A connectome's pruned weights stay exactly 0.0 through a zero-preserving optimizer's step as long
as their gradients are 0.0 there (exactly, even where backward produced inf or NaN: the gradient's
bits are multiplied by the 0/1 mask, see :mod:`adaptive.exact_masking`). The plain way masks every gradient in one pass just before the
step; this module instead masks each gradient the moment backward has accumulated it (a
``register_post_accumulate_grad_hook`` per weight), while it is still in cache. On small networks,
where the masking is a visible part of a step, that is cheaper.

The hooks are armed once per step (the first hook of a backward pass decides for all): they stay
idle in mask_only mode, across several processes (DDP may still reduce into a gradient after the
hook), while an observer reads dense gradients at the coming step, or when the user turned it off.
Each masked gradient is recorded with its version counter; the step trusts it only if it is the
same tensor and nothing wrote to it since (a clip, a scaler, a user edit), and masks it otherwise.
A write that bypasses autograd's version counter (through ``grad.data``, a NumPy view or a C
extension) is not seen: code that edits gradients that way needs ``conn.mask_in_backward = False``.

The per-gradient hook runs on the backward hot path, so it does as little Python as possible.
"""
from __future__ import annotations

import functools
import weakref
from typing import Dict, Optional

import torch

from .exact_masking import mask_
from .optim_state import preserves_zeros


_DIST = torch.distributed if torch.distributed.is_available() else None


# the hook handles of connectomes collected while attached (dropped without detach(), their model kept): removed at
# the next register(), a safe point, not when the connectome goes (that may be inside backward, while autograd walks a
# weight's hooks); their masks are dropped at once (BackwardMasker's weak-reference callback)
_ORPHANED: list = []


def _forget(masker_ref, _conn_ref, orphaned=_ORPHANED) -> None:
    masker = masker_ref()
    if masker is not None:
        masker.forget(orphaned)


def distributed() -> bool:
    """Whether this process is one of several (a DDP reducer may write gradients after the hooks)."""
    return _DIST is not None and _DIST.is_initialized() and _DIST.get_world_size() > 1


class BackwardMasker:
    """The per-weight gradient hooks of one connectome and what they did in the current step."""

    def __init__(self, conn):
        # its connectome dropped without detach() while its model lives on (a notebook cell run again, a sweep over
        # one model): the hooks stay on the weights, so what they hold is let go (see forget)
        self.ref = weakref.ref(conn, functools.partial(_forget, weakref.ref(self)))
        self.gen = -1  # the connectome's generation (one per step and edit) when the hooks were last armed
        self.static_gen = -1  # the connectome's generation of edits only, and what it decided
        self.static_on = False
        self.on = False
        # the mask list of the connectome's hot-path cache the hooks' masks came from: that list alone, never the
        # cache whole, whose parameters would close a cycle through their hooks (parameter -> its C++-held hook ->
        # this masker -> the parameter) that Python's collector cannot see, keeping a dropped model's weights and
        # gradients alive for good (a sweep building a model per run); held, so its id is never another list's
        self.hot = None
        self.hooks: Dict[str, _GradHook] = {}
        self.handles: list = []
        self.done: Dict[str, tuple] = {}  # name -> (weakref to the gradient, its version after masking)

    def register(self, params: Dict[str, torch.nn.Parameter]) -> list:
        while _ORPHANED:  # the hooks of connectomes collected while attached: no-ops, which piled up on the weights
            for h in _ORPHANED.pop():
                h.remove()
        for n, p in params.items():
            if not p.requires_grad:  # frozen now: if unfrozen later, the step masks its gradient
                continue
            h = self.hooks[n] = _GradHook(self, n)
            self.handles.append(p.register_post_accumulate_grad_hook(h))
        return self.handles

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles.clear()
        self.hooks.clear()
        self.done.clear()
        self.on = False

    def forget(self, orphaned: list) -> None:
        """The connectome was collected while attached: drop the masks its hooks hold (one tensor the size of each
        pruned weight), which its model, still alive, kept for good; the hooks, no-ops now, are handed to
        ``orphaned`` to be removed at the next :meth:`register`."""
        for h in self.hooks.values():
            h.mask = None
        if self.handles:  # (none where it was never attached, or detached: nothing to remove, nothing kept; an
            orphaned.append(self.handles)  # empty list a connectome piled up until the next register)
        self.handles = []
        self.hooks = {}
        self.done.clear()
        self.hot = None
        self.on = False

    def arm(self, conn) -> None:
        """Decide, once per step, whether this backward masks, and hand each hook its mask. What
        changes only with edits (``conn._static_gen``) is worked out again only then."""
        self.gen = conn._gen
        if self.static_gen != conn._static_gen:
            self.static_gen = conn._static_gen
            opts = [r() for r in conn._optimizers]
            self.static_on = bool(
                conn.mask_in_backward and conn.mode == "train" and opts
                # other optimizers are re-masked at the step anyway
                and all(o is not None and preserves_zeros(o) for o in opts)
            )
            self.hot = None
        on = self.static_on and not distributed()
        if on and conn._observer_active:
            on = not conn._wants_dense_gradients()
        if on:
            names, _, imasks = conn._hot_lists()  # rebuilt after an edit or a move of the model
            if imasks is not self.hot:
                self.hot = imasks
                masks = dict(zip(names, imasks))
                for n, h in self.hooks.items():
                    h.mask = masks.get(n)
        self.on = on

    def all_masked(self, names, params) -> bool:
        """Every given weight's gradient is absent or the tensor a hook masked, unwritten since."""
        done = self.done
        if not done:
            return False
        for n, p in zip(names, params):
            g = p.grad
            if g is None:
                continue
            r = done.get(n)
            if r is None or r[0]() is not g or g._version != r[1]:
                return False
        return True


class _GradHook:
    __slots__ = ("masker", "name", "mask")

    def __init__(self, masker: BackwardMasker, name: str):
        self.masker, self.name = masker, name
        self.mask: Optional[torch.Tensor] = None  # 0/1 integers of the weight's width; None for a dense layer

    def __call__(self, param: torch.Tensor) -> None:
        m = self.masker
        conn = m.ref()
        if conn is None:
            return
        if m.gen != conn._gen:
            m.arm(conn)
        f = self.mask
        g = param.grad
        if not m.on or f is None or g is None:
            return
        try:
            mask_(g, f)  # exactly +0.0 where pruned, even over inf or NaN (adaptive.exact_masking)
        except RuntimeError:  # the weight moved device since the masks were cached: the step masks it
            m.hot = self.mask = None
            return
        m.done[self.name] = (weakref.ref(g), g._version)
