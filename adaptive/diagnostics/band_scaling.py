"""Per-band gradient scaling: the optimizer sees each depth band's gradients rescaled to a common
typical magnitude.

Weights that read signals of different depth can have gradients orders of magnitude apart (see
:mod:`adaptive.diagnostics.gradient_depth`), so one learning rate is too large for some bands and
too small for others. :class:`BandGradientScaler` places a gradient hook on each chosen weight that
multiplies every band by ``common / typical_band``, where ``typical_band`` is a running geometric
mean of the band's ``|grad|`` and ``common`` the geometric mean of the bands' typical magnitudes
(so the layer's overall scale is kept).
"""
from __future__ import annotations

from typing import Dict, Iterable, Optional

import torch
from torch import nn

from ._common import find_weight, scaler_suspended
from .gradient_depth import resolve_depths, weight_depths


class BandGradientScaler:
    """Rescale the gradients of ``layers`` band by band (bands = source depths of their inputs).

    Args:
        model: the network; depths come from ``depths[layer]`` or ``model.input_depths(layer)``.
        layers: module names; default every layer the model reports depths for (``model.depth_layers``
            if it has that attribute, else all Linear/Conv layers for which ``input_depths`` works).
        momentum: of the running log-magnitude per band (0 uses the current batch only).
    The hook acts on ``param.grad`` as autograd produces it, so any optimizer sees scaled gradients.
    While a diagnostic takes gradients of the model (inside
    :func:`~adaptive.diagnostics._common.scalers_suspended` ``(model)``) the hooks on its weights do
    nothing: no scaling, no state update; a scaler on another model's weights keeps working. A NaN or
    inf gradient entry takes no part in the running state (it passes through, scaled). Call
    :meth:`remove` to take the hooks off.
    """

    def __init__(self, model: nn.Module, layers: Optional[Iterable[str]] = None,
                 depths: Optional[Dict[str, torch.Tensor]] = None, momentum: float = 0.9):
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {momentum}")
        depths = depths or {}
        if layers is None:
            layers = list(getattr(model, "depth_layers", None) or self._layers_with_depths(model, depths))
        if not layers:
            raise ValueError("no layer to scale: pass layers=[...] and depths={layer: tensor} for a model without input_depths")
        self.momentum = momentum
        self.state: Dict[str, dict] = {}
        self._handles = []
        for layer in layers:
            name, mod, w = find_weight(model, layer)
            d = resolve_depths(model, name, depths.get(name))
            wd = weight_depths(w.shape, d, int(getattr(mod, "groups", 1)), bool(getattr(mod, "transposed", False)))
            uniq, idx = torch.unique(wd, return_inverse=True)
            st = {"index": idx.to(w.device), "bands": uniq, "log_typical": None, "scale": None}
            self.state[name] = st
            self._handles.append(w.register_hook(self._hook(st, id(w))))

    @staticmethod
    def _layers_with_depths(model, depths):
        names = []
        for n, m in model.named_modules():
            if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)):
                if n in depths:
                    names.append(n)
                    continue
                if hasattr(model, "input_depths"):
                    try:
                        model.input_depths(n)
                    except (KeyError, ValueError):
                        continue
                    names.append(n)
        return names

    def _hook(self, st, weight_id: int):
        def scale(grad: torch.Tensor) -> Optional[torch.Tensor]:
            if scaler_suspended(weight_id):  # a diagnostic is measuring this model's raw gradient
                return None
            idx = st["index"]
            nb = len(st["bands"])
            a = grad.detach().abs().reshape(-1)
            nz = (a > 0) & torch.isfinite(a)  # an inf made the running state inf and every later scale NaN
            logs = torch.zeros(nb, dtype=torch.float64, device=a.device).index_add_(0, idx.reshape(-1)[nz], a[nz].double().log())
            cnt = torch.bincount(idx.reshape(-1)[nz], minlength=nb).double()
            have = cnt > 0
            cur = torch.where(have, logs / cnt.clamp_min(1), torch.zeros_like(logs))
            prev, seen = st["log_typical"], st.get("seen")
            if prev is None:
                prev, seen = torch.zeros_like(cur), torch.zeros_like(have)
            # a band's first nonzero gradient sets its typical size; later ones move it by the
            # momentum; a band never seen with one (dead, pruned) takes no part in the common size
            new = torch.where(have & seen, self.momentum * prev + (1 - self.momentum) * cur, torch.where(have, cur, prev))
            seen = seen | have
            st["log_typical"], st["seen"] = new, seen
            known = new[seen]
            common = known.mean() if known.numel() else torch.zeros((), dtype=new.dtype, device=new.device)
            st["scale"] = torch.where(seen, (common - new).exp(), torch.ones_like(new))
            return grad * st["scale"].to(grad.dtype)[idx]

        return scale

    def scales(self) -> Dict[str, Dict[int, float]]:
        """Current multiplier per band of each layer (empty before the first backward pass)."""
        return {
            n: ({} if st["scale"] is None else {int(b): float(s) for b, s in zip(st["bands"], st["scale"].cpu())})
            for n, st in self.state.items()
        }

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()
