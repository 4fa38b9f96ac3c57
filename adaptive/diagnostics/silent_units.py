"""Silent units: units of a network's weighted layers that no gradient reaches while it trains.

A unit is an output feature of a Linear or an output channel of a convolution. It is *silent* over
an interval of training when the gradient of the loss with respect to its output was exactly zero
for every example of every step: nothing it computes can change, and nothing can teach it. The usual
cause is a ReLU that no longer fires on any input (a "dead" unit: a learning rate too high for the
batch size pushes its bias and weights where every pre-activation is negative); another is a unit
whose every outgoing synapse is pruned, so the loss no longer reads it. Either way the network
trains without it, and a run whose hidden layers fall silent can collapse to chance with no other
sign than its loss.

:class:`SilentUnits` watches the layers with forward hooks that put a gradient hook on each output:
per unit it keeps the largest |gradient| seen since the last :meth:`SilentUnits.reset` (an ``amax``
over the batch and positions: tensor code, one small vector per layer). A module called several
times per step (shared weights) counts every call. Layers whose module never ran in training mode
with gradients (a weight read by ``F.linear`` inside another module's forward, as
``nn.MultiheadAttention`` reads its ``out_proj``) are not measured and left out of the counts.

Given as ``TrainState.silent_units``, :func:`adaptive.training.train_one_epoch` puts the share on
every train row of metrics.csv (``silent_units``: over the row's ``log_every`` steps, so over
``log_every`` x batch size examples; a unit that fires rarely may be silent over a short row) and
saves the interval with the state, so a resumed run reports what the uninterrupted one did. The
recipe (``recipes/adaptive.py``) watches every train-mode run and warns when most of a layer's
units are silent.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Mapping, Optional

import torch
from torch import nn

WARN_SHARE = 0.5  # a layer with at least this share of silent units is warned about
WARN_MIN_UNITS = 4  # ... if it has at least this many units (a 2-unit layer says little)


@dataclass(frozen=True)
class LayerSilence:
    """One measured layer over an interval: ``silent`` of its ``units`` received no gradient."""

    name: str
    silent: int
    units: int

    @property
    def share(self) -> float:
        return self.silent / self.units if self.units else 0.0


class SilentUnits:
    """Track, per unit of the given layers, whether any gradient reached its output.

    Args:
        layers: ``name -> module`` (an ``nn.Linear`` or ``nn.Conv1d/2d/3d``, or any module whose
            output holds the units on axis 1, or on the last axis for a Linear).
    Use :meth:`from_connectome` for a :class:`~adaptive.Connectome`'s synapse layers. Call
    :meth:`remove` to take the hooks off.
    """

    def __init__(self, layers: Mapping[str, nn.Module]):
        if not layers:
            raise ValueError("SilentUnits: no layers to watch: pass name -> module of the Linear/Conv layers")
        self.names: List[str] = list(layers)
        self.units: Dict[str, int] = {}
        for n, m in layers.items():
            units = getattr(m, "out_features", None) or getattr(m, "out_channels", None)
            if not units:
                raise TypeError(f"SilentUnits: {n} is a {type(m).__name__}, which has neither out_features nor "
                                "out_channels: pass Linear or Conv layers")
            self.units[n] = int(units)
        self._linear = {n: isinstance(m, nn.Linear) for n, m in layers.items()}
        self._peak: Dict[str, Optional[torch.Tensor]] = {n: None for n in self.names}
        self._handles = [m.register_forward_hook(self._forward_hook(n)) for n, m in layers.items()]

    @classmethod
    def from_connectome(cls, conn) -> "SilentUnits":
        """The modules of ``conn``'s synapse layers, by parameter name (:meth:`connectome_layers`)."""
        return cls(cls.connectome_layers(conn))

    @staticmethod
    def connectome_layers(conn) -> Dict[str, nn.Module]:
        """``name -> module`` of ``conn``'s synapse layers that are a module of their own (a Linear or
        convolution). A weight its module reads as a plain tensor (``nn.MultiheadAttention``'s input
        projections, an RNN's gate matrices) has no output of its own to watch and is left out; empty
        where every layer is such a weight."""
        mods = dict(conn.model.named_modules())
        out = {}
        for n, layer in conn.layers.items():
            m = mods[layer.module_name]
            if getattr(m, "out_features", None) or getattr(m, "out_channels", None):
                out[n] = m
        return out

    # ------------------------------------------------------------------------------ hooks
    def _forward_hook(self, name: str):
        def hook(module, inputs, out):
            if not (module.training and torch.is_tensor(out) and out.requires_grad):
                return
            axis = out.dim() - 1 if self._linear[name] or out.dim() < 2 else 1
            if out.shape[axis] != self.units[name]:  # not a layout this class understands: do not guess
                return
            out.register_hook(lambda g: self._record(name, g, axis))
        return hook

    @torch.no_grad()
    def _record(self, name: str, g: torch.Tensor, axis: int) -> None:
        dims = tuple(d for d in range(g.dim()) if d != axis)
        peak = (g.abs().amax(dim=dims) if dims else g.abs()).float()
        held = self._peak[name]
        # NaN/inf count as reached: a diverged step is not a silent unit
        # (an interval resumed from a checkpoint is held on the CPU until the first gradient arrives)
        self._peak[name] = peak if held is None else torch.maximum(held.to(peak.device), peak)

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    # ------------------------------------------------------------------------------ state
    def reset(self) -> None:
        """Start a new interval: forget every gradient seen."""
        self._peak = {n: None for n in self.names}

    def vector(self, device=None) -> torch.Tensor:
        """This process's interval as one float32 vector: per layer, its units' peak |gradient|
        (0 where none arrived), then one entry per layer, 1 if it was measured, on ``device`` (default:
        the CPU). Its sum over processes is the whole job's state (zero exactly where no process saw a
        gradient)."""
        device = torch.device("cpu") if device is None else device
        parts = []
        for n in self.names:
            p = self._peak[n]
            parts.append(torch.zeros(self.units[n], device=device) if p is None
                         else torch.nan_to_num(p, nan=1.0, posinf=1.0).to(device))
        parts.append(torch.tensor([float(self._peak[n] is not None) for n in self.names], device=device))
        return torch.cat(parts) if parts else torch.zeros(0, device=device)

    def load_vector(self, v: torch.Tensor) -> None:
        """Continue an interval from :meth:`vector` (summed over the processes that wrote it)."""
        expected = sum(self.units.values()) + len(self.names)
        v = torch.as_tensor(v, dtype=torch.float32).flatten()
        if v.numel() != expected:
            raise ValueError(f"SilentUnits: a saved state of {v.numel()} entries does not fit these layers "
                             f"({expected}: {sum(self.units.values())} units of {len(self.names)} layers)")
        measured = v[-len(self.names):]
        at = 0
        for i, n in enumerate(self.names):
            k = self.units[n]
            self._peak[n] = v[at:at + k].clone() if measured[i] > 0 else None
            at += k

    def layers(self, accelerator=None) -> List[LayerSilence]:
        """The measured layers of the interval so far; with ``accelerator``, over all its processes
        (a collective call: every process must make it)."""
        v = self.vector(accelerator.device if accelerator is not None else None)
        if accelerator is not None and accelerator.num_processes > 1:
            v = accelerator.reduce(v, reduction="sum")
        v = v.cpu()
        measured = v[-len(self.names):]
        out, at = [], 0
        for i, n in enumerate(self.names):
            k = self.units[n]
            if measured[i] > 0:
                out.append(LayerSilence(n, int((v[at:at + k] == 0).sum()), k))
            at += k
        return out

    @staticmethod
    def share(layers: List[LayerSilence]) -> Optional[float]:
        """Silent units over all units of the measured layers (None if none was measured)."""
        units = sum(l.units for l in layers)
        return sum(l.silent for l in layers) / units if units else None

    @staticmethod
    def alarming(layers: List[LayerSilence]) -> List[LayerSilence]:
        """The layers most of whose units are silent (at least :data:`WARN_SHARE` of at least
        :data:`WARN_MIN_UNITS`)."""
        return [l for l in layers if l.units >= WARN_MIN_UNITS and l.share >= WARN_SHARE]
