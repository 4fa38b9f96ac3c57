"""Run a model's forward for graphs (the input guesses, the trace) and leave the model as it was found, bit for
bit: :class:`_unchanged`."""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from adaptive.global_rng import global_states, set_global_states
from adaptive.warn import warn_user


class _unchanged:
    """Run forwards of ``model`` (the input guesses, the trace) in eval mode and leave it as they found
    it, bit for bit: the modules' modes, every buffer (BatchNorm statistics, a step a forward counts; put
    back where reassigned) and the weights that a lookup with ``max_norm`` (``nn.Embedding``,
    ``nn.EmbeddingBag``) renormalises in place on every forward, in eval mode too (the rows above
    ``max_norm``, the only ones it changes, are copied: other parameters would cost a model's worth of
    memory), the modules' other attributes a forward reassigns (a cache's length next to the cache
    buffer; a lazy module's aside) and the items of those that are a list, dict or set, which a forward
    may fill (features appended to ``self.feats``: by a symbolic trace, a Proxy), and the global random
    generators (a forward that draws noise, in eval mode too: see :mod:`adaptive.global_rng`); a parameter
    a forward changed in place anyway is warned about, by name. (A class, not a generator: the warning
    points at the user's call.)"""

    def __init__(self, model: nn.Module):
        self.model = model

    def __enter__(self):
        model = self.model
        self.modes = {m: m.training for m in model.modules()}
        self.bufs = [(m, k, b) for m in model.modules() for k, b in m._buffers.items() if isinstance(b, torch.Tensor)]
        # the other attributes a forward may set (a cache's length next to the cache buffer), those of a lazy
        # module aside: its first forward turns it into the module it stands for (no change to undo)
        self.attrs = [(m, {k: v for k, v in vars(m).items() if k not in _MODULE_STATE})
                      for m in model.modules() if not isinstance(m, nn.modules.lazy.LazyModuleMixin)]
        # and what a list, dict or set among them holds (a forward appending its features to self.feats: a
        # symbolic trace left a Proxy there)
        self.contents = [(v, type(v)(v)) for _, attrs in self.attrs for v in attrs.values()
                         if type(v) in (list, dict, set)]
        # a lazy module's uninitialised tensors have no values to copy (its first forward gives them a shape)
        self.saved = {id(b): (b, b.detach().clone()) for _, _, b in self.bufs if not nn.parameter.is_lazy(b)}
        # a max_norm lookup rescales only the rows it reads whose norm is above max_norm: those are copied
        self.renormed = {}
        for m in model.modules():
            w = getattr(m, "weight", None)
            if getattr(m, "max_norm", None) is not None and isinstance(w, torch.Tensor) and not nn.parameter.is_lazy(w):
                rows = (w.detach().norm(p=m.norm_type, dim=-1) > m.max_norm * 0.99).nonzero().squeeze(1)
                self.renormed[id(w)] = (w, rows, w.detach()[rows].clone())
        self.versions = {id(p): _version(p) for p in model.parameters() if not nn.parameter.is_lazy(p)}
        self.rng = global_states()
        model.eval()

    def __exit__(self, *exc):
        set_global_states(self.rng)
        for m, t in self.modes.items():
            m.training = t
        for m, k, b in self.bufs:
            if m._buffers.get(k) is not b:
                m._buffers[k] = b
        for m, attrs in self.attrs:
            for k, v in attrs.items():
                if k in vars(m) and vars(m)[k] is not v:
                    vars(m)[k] = v
        for v, held in self.contents:
            if type(v) is list:
                v[:] = held
            else:
                v.clear()
                v.update(held)
        with torch.no_grad():
            for t, copy in self.saved.values():
                if not torch.equal(t, copy):
                    t.copy_(copy)
            for w, rows, copy in self.renormed.values():
                if not torch.equal(w[rows], copy):
                    w[rows] = copy
        changed = [n for n, p in self.model.named_parameters()
                   if id(p) not in self.renormed and self.versions.get(id(p), _version(p)) != _version(p)]
        if changed:
            warn_user(f"graphs: running {type(self.model).__name__} to trace it changed parameter(s) {changed[:5]} in "
                      "place (in eval mode, without gradients); they are left changed")
        return False


def _version(t: torch.Tensor) -> Optional[int]:
    """How many times ``t`` was changed in place; None for an inference tensor (made under
    ``torch.inference_mode()``), which has no count and cannot be changed outside it."""
    return None if t.is_inference() else t._version


# a module's own tables (its parameters, buffers, submodules and hooks), which _unchanged does not put back
_MODULE_STATE = frozenset(vars(nn.Module()))
