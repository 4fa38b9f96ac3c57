"""What a connectome holds, read without changing it: its layers' names and granularities, synapse
counts and densities, the ensemble masks (pooled once and cached while a layer's mask is unchanged),
a hash of the masks, the summary table and the bytes it keeps. As :class:`ConnectomeQueriesMixin`,
which :class:`~adaptive.connectome.Connectome` inherits.
"""
from __future__ import annotations

import hashlib
import weakref
from typing import Dict, List, Optional

import torch

from . import bitpack
from .ensembles import Granularity, unwrapped
from .metrics import fmt_unsaturated


def _percent(part: int, whole: int) -> str:
    """``part`` of ``whole`` as a percentage of 2 decimals, with the digits it needs where it is not all or none
    (:func:`adaptive.metrics.fmt_unsaturated`): 1 synapse pruned of a million is "99.9999%", not "100.00%"."""
    return fmt_unsaturated(100 * part / whole, ".2f") + "%"


class ConnectomeQueriesMixin:
    """Counts, queries and reports of :class:`~adaptive.connectome.Connectome` (it reads the
    connectome's masks, granularities, layers and caches)."""

    @property
    def names(self) -> List[str]:
        return list(self.params)

    @property
    def ensemble(self) -> str:
        """The granularity spec, or the rules string when layers use different granularities."""
        return self._ensemble

    @property
    def granularity(self) -> Granularity:
        """The granularity shared by every layer: one object that applies to every layer's weight.
        There is none when layers use different granularities, nor when a transposed convolution's
        granularity sees its weight laid out ``(out, in/groups, *kernel)`` (under any granularity but
        ``synapse``): applied to its stored ``(in, out/groups, *kernel)`` weight, a convolution's
        granularity would pool the wrong synapses, silently where in == out. Both raise, naming
        :meth:`granularity_of`, which gives each layer's own; :attr:`ensemble` gives the spec."""
        if self._mixed():
            raise AttributeError(f"this connectome's layers use different granularities ({self.ensemble!r}): "
                                 "use conn.granularity_of(name) or conn.granularities[name]")
        laid_out = [n for n, g in self.granularities.items() if g is not unwrapped(g)]
        if laid_out:
            raise AttributeError(
                f"no one granularity applies to every layer of this connectome: the transposed convolution(s) "
                f"{laid_out[:5]}{'...' if len(laid_out) > 5 else ''} store their weight (in, out/groups, *kernel), and "
                f"their '{self.ensemble}' ensembles are found in the layout (out, in/groups, *kernel): use "
                "conn.granularity_of(name), each layer's own (conn.ensemble gives the spec)")
        return next(iter(self.granularities.values()))

    def granularity_of(self, name: str) -> Granularity:
        """The ensemble granularity of layer ``name``."""
        self._known("granularity_of", name)
        return self.granularities[name]

    def _known(self, what: str, name) -> None:
        """KeyError naming the fix where ``name`` is no prunable weight of this connectome (``what``: the call)."""
        if name not in self.granularities:
            hint = f"did you mean {name + '.weight'!r}? " if f"{name}.weight" in self.granularities else ""
            raise KeyError(f"{what}: {name!r} is not a prunable weight of this connectome: {hint}give a "
                           f"parameter name, one of {self.names[:5]}{'...' if len(self.names) > 5 else ''} "
                           "(all in conn.names)")

    @property
    def fixed_density(self) -> Optional[float]:
        """n/m when the layers use an n:m granularity (which fixes their density), else None."""
        return next((g.density for g in self.granularities.values() if hasattr(g, "density")), None)

    def num_synapses(self) -> int:
        return sum(m.numel() for m in self.masks.values())

    def num_live(self) -> int:
        return int(sum(int(torch.count_nonzero(m)) for m in self.masks.values()))

    def density(self) -> float:
        """Fraction of synapses alive over all prunable layers."""
        return self.num_live() / max(1, self.num_synapses())

    def layer_density(self) -> Dict[str, float]:
        return {n: int(torch.count_nonzero(m)) / max(1, m.numel()) for n, m in self.masks.items()}

    def ensemble_masks(self) -> Dict[str, torch.Tensor]:
        """Masks at ensemble level (an ensemble is alive when any of its synapses is): copies, free
        to edit and pass back."""
        return {n: self._ensemble_mask(n).clone() for n in self.masks}

    def ensemble_mask(self, name: str) -> torch.Tensor:
        """Layer ``name``'s mask at ensemble level (see :meth:`ensemble_masks`): a copy."""
        self._known("ensemble_mask", name)
        return self._ensemble_mask(name).clone()

    def _ensemble_mask(self, n: str) -> torch.Tensor:
        """Layer ``n``'s ensemble mask, shared with a cache (or the mask itself where each ensemble
        is one synapse): read it, never edit it. Pooling every layer of resnet50 takes a tenth of a
        second and a controller update reads the masks several times, so the pooled mask is kept
        while the layer's mask is the same tensor, with the same version (an in-place edit bumps it),
        at the same address; set_ensemble_masks stores the ensemble masks it was given."""
        m, g = self.masks[n], self.granularities[n]
        if tuple(g.ensemble_shape(m.shape)) == tuple(m.shape):
            return m
        if m.is_inference():  # tracks no version: an in-place edit could not be told
            return self._pool_ensemble_mask(g, m)
        hit = self._ens_cache.get(n)
        if hit is not None and hit[0]() is m and hit[1] == m._version and hit[2] == m.data_ptr() and hit[3] is g:
            return hit[4]
        e = self._pool_ensemble_mask(g, m)
        self._ens_cache[n] = (weakref.ref(m), m._version, m.data_ptr(), g, e)
        return e

    @staticmethod
    def _pool_ensemble_mask(g: Granularity, m: torch.Tensor) -> torch.Tensor:
        return g.pool(m.float(), "max") > 0

    def mask_hash(self) -> str:
        """SHA-256 of all masks (bit-packed, in layer order): equal on every process that agrees."""
        h = hashlib.sha256()
        for n, m in self.masks.items():
            h.update(n.encode())
            h.update(bitpack.pack(m).numpy().tobytes())
        return h.hexdigest()

    def summary(self) -> str:
        """A per-layer table: name, shape, synapses, live, density, ensemble. The shape is the weight's as
        stored: a transposed convolution's is ``(in, out/groups, *kernel)``, marked "(transposed)"."""
        self._check_params()
        rows = [("layer", "shape", "synapses", "live", "density", "ensemble")]
        for n, l in self.layers.items():
            m = self.masks[n]
            live = int(torch.count_nonzero(m))
            shape = "x".join(map(str, l.shape)) + (" (transposed)" if l.transposed else "")
            rows.append((n, shape, f"{m.numel():,}", f"{live:,}", _percent(live, m.numel()), self.granularities[n].spec))
        total, live = self.num_synapses(), self.num_live()
        rows.append(("total", "", f"{total:,}", f"{live:,}", _percent(live, max(total, 1)), f"mode={self.mode}"))
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        lines = []
        for i, r in enumerate(rows):
            lines.append("  ".join(c.ljust(w) if j < 2 or j == 5 else c.rjust(w) for j, (c, w) in enumerate(zip(r, widths))))
            if i == 0 or i == len(rows) - 2:
                lines.append("  ".join("-" * w for w in widths))
        return "\n".join(lines)

    def __repr__(self) -> str:
        return (
            f"Connectome({type(self.model).__name__}, layers={len(self.layers)}, synapses={self.num_synapses():,}, "
            f"density={fmt_unsaturated(self.density(), '.4f', (0.0, 1.0))}, ensemble={self.ensemble!r}, mode={self.mode!r})"
        )

    def _mixed(self) -> bool:
        return len({g.spec for g in self.granularities.values()}) > 1

    def ensemble_specs(self) -> Dict[str, str]:
        """Every layer's granularity spec."""
        return {n: g.spec for n, g in self.granularities.items()}

    def resident_bytes(self) -> int:
        """Bytes the connectome holds besides the model: masks, hot-path caches and originals."""
        total = sum(m.numel() * m.element_size() for m in self.masks.values())
        total += sum(m.numel() * m.element_size() for m in self._last_set.values())  # the masks as last set
        total += sum(o.numel() * o.element_size() for o in self.original.values())
        if self._hot is not None:
            total += sum(f.numel() * f.element_size() for f in self._hot[2])
        total += sum(e[4].numel() for e in self._ens_cache.values())  # pooled ensemble masks, a byte per ensemble
        return total
