"""Silent units: units of a network's weighted layers that no gradient reaches while it trains.

A unit is an output feature of a Linear, an output channel of a convolution, a row of any weight
whose units lie on axis 0 (an attention's packed projection, an RNN's gate matrix). It is *silent*
over an interval of training when no gradient reached its weights or its bias at any step: the
gradient of the loss with respect to its output was zero on every example, so nothing it computes
can change and nothing can teach it. The usual cause is a ReLU that no longer fires on any input (a
"dead" unit: a learning rate too high for the batch size pushes its bias and weights where every
pre-activation is negative); another is a unit whose every outgoing synapse is pruned, so the loss
no longer reads it (or, without a bias, every incoming one: it outputs a constant). Either way the
network trains without it, and a run whose hidden layers fall silent can collapse to chance with no
other sign than its loss.

:class:`SilentUnits` reads the gradients the optimizer is about to use: :meth:`SilentUnits.observe`,
once per optimizer step (after the last backward of the step, before the gradients are zeroed),
keeps per unit the largest |gradient| of its weights and bias since the last
:meth:`SilentUnits.reset` (an ``amax`` and an ``amin`` over each weight's gradient: tensor code, one small
vector per layer; it puts no hook on the model). A weight row's gradient is zero for every example
exactly when the unit's output gradient is (short of inputs that are all zero). A bias-free layer of
a connectome is read on its live synapses only, whether the step's gradients are masked or dense: a
unit with no live input, which outputs a constant 0, or whose live inputs were all 0, counts as silent
(a dense gradient is masked for this first, a temporary of its size). Under DDP every process
holds the same averaged gradients. A layer whose weight had no gradient at any observed step
(unused) is not measured and left out.

Given as ``TrainState.silent_units``, :func:`adaptive.training.train_one_epoch` observes every step
(and takes back one the optimizer skips: a GradScaler's, whose gradients held inf or NaN)
and puts the share on every train row of metrics.csv (``silent_units``: over the row's
``log_every`` steps, so over ``log_every`` x batch size examples; a unit that fires rarely may be
silent over a short row) and saves the interval with the state, so a resumed run reports what the
uninterrupted one did. The recipe (``recipes/adaptive.py``) watches every train-mode run and warns
when most of a layer's units are silent.
"""
from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Callable, Dict, List, Mapping, Optional

import torch
from torch import nn

from ..discovery import to_out_in
from ..exact_masking import mask_dtype, masked as masked_by

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
    """Track, per unit of the given layers, whether any gradient reached its weights or bias.

    Args:
        layers: ``name -> module`` with a ``weight`` whose units lie on axis 0 (``nn.Linear``,
            ``nn.Conv1d/2d/3d``; on axis 1, group by group, for ``nn.ConvTranspose1d/2d/3d``, whose
            weight is ``(in, out/groups, *kernel)``) and an optional ``bias`` (one entry per unit).
    Use :meth:`from_connectome` for a :class:`~adaptive.Connectome`'s synapse layers. Call
    :meth:`observe` once per optimizer step.
    """

    def __init__(self, layers: Mapping[str, nn.Module]):
        weights, biases, transposed = {}, {}, {}
        for n, m in layers.items():
            w = getattr(m, "weight", None)
            if not isinstance(w, torch.Tensor) or w.dim() < 1:
                raise TypeError(f"SilentUnits: {n} is a {type(m).__name__} without a weight tensor: pass layers "
                                "such as Linear or Conv modules")
            weights[n], biases[n] = w, getattr(m, "bias", None)
            if getattr(m, "transposed", False):  # a ConvTranspose: its units (output channels) lie on axis 1
                transposed[n] = int(getattr(m, "groups", 1))
        self._setup(weights, biases, None)
        self._transposed = transposed
        self.units.update({n: int(weights[n].shape[1]) * g for n, g in transposed.items()})

    @classmethod
    def from_connectome(cls, conn) -> "SilentUnits":
        """Every synapse layer of ``conn``, by parameter name: its units (the layer's ``out_units``: a
        weight's rows, a transposed convolution's output channels on axis 1), its bias where the module holds one of matching size (``x.bias`` beside
        ``x.weight``, ``in_proj_bias`` beside ``in_proj_weight``, ``bias_ih_l0`` beside
        ``weight_ih_l0``); a bias-free layer is read on its live synapses (``conn.masks``) only, so a
        unit of it with no live synapse counts as silent."""
        params = dict(conn.model.named_parameters())
        weights, biases = {}, {}
        for n, layer in conn.layers.items():
            weights[n] = conn.params[n]
            prefix, dot, last = n.rpartition(".")
            b = params.get(f"{prefix}{dot}{last.replace('weight', 'bias', 1)}") if "weight" in last else None
            biases[n] = b if b is not None and tuple(b.shape) == (layer.out_units,) else None
        out = cls.__new__(cls)
        transposed = {n: layer.groups for n, layer in conn.layers.items() if layer.transposed}
        out._setup(weights, biases, lambda name: conn.masks[name],
                   # the gradient holds only live synapses' (no pruned one, or masked in backward
                   # and unwritten since): else the step masks it after the observers
                   lambda name: conn._dense[name] or conn._masker.all_masked([name], [conn.params[name]]),
                   # the connectome's cached 0/1 integer masks: a multiply of the gradient's bits by one
                   # (adaptive.exact_masking) is faster on a CPU than torch.where with the bool mask
                   lambda: dict(zip(*conn._hot_lists()[::2])))
        out._transposed = transposed  # a ConvTranspose's units lie on axis 1, group by group
        out.units.update({n: conn.layers[n].out_units for n in transposed})
        return out

    def _setup(self, weights: Dict[str, torch.Tensor], biases: Dict[str, Optional[torch.Tensor]],
               mask_of: Optional[Callable[[str], torch.Tensor]],
               masked: Optional[Callable[[str], bool]] = None,
               int_masks: Optional[Callable[[], Dict[str, torch.Tensor]]] = None) -> None:
        if not weights:
            raise ValueError("SilentUnits: no layers to watch: pass name -> module of the Linear/Conv layers")
        self.names: List[str] = list(weights)
        self.units: Dict[str, int] = {n: int(w.shape[0]) for n, w in weights.items()}
        self._weights, self._biases, self._mask_of, self._masked = weights, biases, mask_of, masked
        self._int_masks = int_masks
        self._transposed: Dict[str, int] = {}  # ConvTranspose layer -> its groups
        self._inputs: Dict[str, tuple] = {}  # layer -> (weakref to the mask, its version, units with a live input)
        self._peak: Dict[str, Optional[torch.Tensor]] = {n: None for n in self.names}

    # ------------------------------------------------------------------------------ observing
    @torch.no_grad()
    def observe(self) -> None:
        """Take in this step's gradients: call after the step's last backward, before they are
        zeroed. A layer whose weight holds no gradient (unused this step) is skipped.
        :meth:`discard_last` takes it back."""
        self._before = dict(self._peak)  # (observing replaces the peak tensors, never writes them)
        imasks = None  # the 0/1 integer masks, fetched once per step where a layer needs one
        for n in self.names:
            g = self._weights[n].grad
            if g is None:
                continue
            k = self.units[n]
            b = self._biases[n]
            biased = b is not None and b.grad is not None
            g = g.detach()
            if not biased and self._mask_of is not None and not (self._masked is not None and self._masked(n)):
                # no bias: only the live synapses' gradients say whether the unit is reached. A dense
                # gradient of pruned weights also reads inputs the live ones do not (a unit whose live
                # inputs are all 0 would count as reached at a dense step and silent at a masked one)
                if imasks is None:
                    imasks = self._int_masks() if self._int_masks is not None else {}
                im = imasks.get(n)
                if im is not None and im.device == g.device and im.dtype == mask_dtype(g) and im.shape == g.shape:
                    g = masked_by(g, im)  # exactly 0.0 where pruned, even over an inf or NaN there
                else:
                    mask = self._mask_of(n)
                    g = torch.where(mask if mask.device == g.device else mask.to(g.device), g,
                                    torch.zeros((), dtype=g.dtype, device=g.device))
            # a row is 0 where its max and min are: two reductions, no temporary of the gradient's size
            # (torch.aminmax was slower on a CPU; a 2-norm underflows to 0 below 1e-23 in float32)
            if n in self._transposed:  # (in, out/groups, *kernel): reduce over each group's inputs and the kernel
                groups = self._transposed[n]
                rows = g.reshape(groups, g.shape[0] // groups, g.shape[1], -1)
                peak = torch.maximum(rows.amax(dim=(1, 3)), -rows.amin(dim=(1, 3))).reshape(k)
            else:
                rows = g.reshape(k, -1)
                peak = torch.maximum(rows.amax(dim=1), -rows.amin(dim=1))
            if biased:
                peak = torch.maximum(peak, b.grad.detach().abs().to(peak.dtype))
            elif self._mask_of is not None:
                # no bias: a unit with no live input outputs a constant 0, whatever the dense
                # gradient of its absent weights says (a controller may read dense gradients)
                peak = torch.where(self._has_input(n, peak.device), peak, torch.zeros((), dtype=peak.dtype,
                                                                                        device=peak.device))
            # kept as float32 (the interval all processes add up): a float64 peak under float32's range (1e-60)
            # rounded to 0 and its unit read silent; it is kept as float32's least normal number, reached
            wide = peak
            peak = peak.float()
            if wide.dtype == torch.float64:
                peak = torch.where((peak == 0) & (wide != 0), torch.finfo(torch.float32).tiny, peak)
            held = self._peak[n]
            # NaN/inf count as reached: a diverged step is not a silent unit
            # (an interval resumed from a checkpoint is held on the CPU until the first gradient arrives)
            self._peak[n] = peak if held is None else torch.maximum(held.to(peak.device), peak)

    def discard_last(self) -> None:
        """Forget the last :meth:`observe` (a step the optimizer then skipped: a GradScaler found
        inf or NaN among its scaled gradients, which taught nothing)."""
        before = self.__dict__.pop("_before", None)
        if before is not None:
            self._peak = before

    def _has_input(self, n: str, device) -> torch.Tensor:
        """Per unit of layer ``n``: whether any of its synapses is live (cached per mask version)."""
        mask = self._mask_of(n)
        hit = self._inputs.get(n)
        # by identity through a weak reference, not id(): set_masks puts a new tensor in conn.masks,
        # which can take a freed one's address (and its version, 0)
        if hit is None or hit[0]() is not mask or hit[1] != mask._version:
            rows = to_out_in(mask, self._transposed[n]) if n in self._transposed else mask  # (units, ...)
            hit = (weakref.ref(mask), mask._version, rows.reshape(self.units[n], -1).any(dim=1).to(device))
            self._inputs[n] = hit
        return hit[2]

    # ------------------------------------------------------------------------------ state
    def reset(self) -> None:
        """Start a new interval: forget every gradient seen."""
        self._peak = {n: None for n in self.names}
        self.__dict__.pop("_before", None)

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

    def check_vector(self, v) -> torch.Tensor:
        """``v`` (a saved :meth:`vector`) as the float32 vector :meth:`load_vector` takes, or the
        ValueError naming both sizes where it does not fit these layers; nothing changed."""
        expected = sum(self.units.values()) + len(self.names)
        v = torch.as_tensor(v, dtype=torch.float32).flatten()
        if v.numel() != expected:
            raise ValueError(f"SilentUnits: a saved state of {v.numel()} entries does not fit these layers "
                             f"({expected}: {sum(self.units.values())} units of {len(self.names)} layers)")
        return v

    def load_vector(self, v: torch.Tensor) -> None:
        """Continue an interval from :meth:`vector` (summed over the processes that wrote it)."""
        v = self.check_vector(v)
        measured = v[-len(self.names):]
        self.__dict__.pop("_before", None)
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
