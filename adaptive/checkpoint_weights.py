"""A checkpoint's weights read against its masks: in train mode (and prune mode) a pruned synapse's
weight is exactly 0.0 in the dense parameter after every step (ARCHITECTURE.md, invariant 1), so a
checkpoint whose model file holds a non-zero weight where its connectome prunes was not written as
one: a model file of another run of the same shapes, or of another step, beside this one's masks.
Accelerate loads it without a word, and the connectome's load then zeroes the pruned weights, so
the run would go on from the weights of one run under the masks of another. The model file is read
again, layer by layer, after :func:`~adaptive.training.load_checkpoint` loaded it.

A mask_only connectome is not read so: its frozen originals (in the connectome's own file) give the
weights, and the recipe's mask-only runs resume from their stage checkpoint, which has its digest.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional, Tuple

import torch


def _connectomes(accelerator) -> List[Tuple[int, object]]:
    """The train-mode connectomes registered for checkpointing, with their index (custom_checkpoint_i)."""
    from .connectome import Connectome

    return [(i, o) for i, o in enumerate(getattr(accelerator, "_custom_objects", ()))
            if isinstance(o, Connectome) and o.mode != "mask_only"]


def nonzero_pruned_weights(accelerator, path) -> Optional[str]:
    """Why the checkpoint folder ``path`` just loaded into ``accelerator`` mixes two runs (its model
    file holds non-zero weights at synapses its connectome prunes: how many, in which file and first
    layer), or None where every pruned synapse's saved weight is 0 (-0.0 counts as 0). Only
    ``model*.safetensors`` files are read (a ``.bin`` or sharded state is left unchecked); a layer
    stored under none of its parameter's names (a tied weight saved once) is skipped."""
    from safetensors import safe_open

    conns = _connectomes(accelerator)
    if not conns:
        return None
    path = Path(path)
    for i, model in enumerate(getattr(accelerator, "_models", ())):
        f = path / (f"model_{i}.safetensors" if i else "model.safetensors")
        if not f.is_file():
            continue
        names: Dict[int, List[str]] = {}
        for n, p in model.named_parameters(remove_duplicate=False):
            names.setdefault(id(p), []).append(n)
        counts = {}  # (custom object index, layer) -> 0-d count: one host read at the end
        with safe_open(str(f), framework="pt", device="cpu") as sf:
            keys = set(sf.keys())
            for at, conn in conns:
                for n, m in conn.masks.items():
                    key = next((k for k in names.get(id(conn.params[n]), ()) if k in keys), None)
                    if key is None:
                        continue
                    w = sf.get_tensor(key)
                    if w.shape != m.shape:
                        continue  # (the load refuses another shape)
                    counts[at, n] = torch.count_nonzero((w != 0) & ~m.cpu())
        if not counts:
            continue
        got = torch.stack(list(counts.values())).tolist()
        bad = [(k, c) for k, c in zip(counts, got) if c]
        if bad:
            (at, first), _ = bad[0]
            total = sum(c for _, c in bad)
            return (f"{f.name} holds {total:,} non-zero weight(s) at synapses the connectome "
                    f"(custom_checkpoint_{at}.pkl) prunes, in {len(bad)} layer(s), first {first!r}: a pruned "
                    "synapse's weight is saved as exactly 0, so the two files come from different runs (or steps)")
    return None
