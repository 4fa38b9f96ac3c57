"""A checkpoint's weights read against its masks. In train mode a pruned synapse's weight is exactly
0.0 after every attached optimizer's step (ARCHITECTURE.md, invariant 1), but not at every moment: a
weight written in place between steps (``model.load_state_dict``, an ``nn.init`` re-init) is
re-masked only at the next step's pre-hook, and a detached connectome's weights train plain. So
:func:`~adaptive.training.save_checkpoint` records in ``pruned_weights.json`` which train-mode
connectomes held exactly 0 at every pruned synapse when it saved (:func:`zero_where_pruned`), and
only those are read against the model file on load. A model file that holds a non-zero weight where
such a connectome prunes was not written beside those masks: a model file of another run of the same
shapes, or of another step. Accelerate loads it without a word, and the connectome's load then zeroes
the pruned weights, so the run would go on from the weights of one run under the masks of another.
The model file is read layer by layer against the masks in the connectome's file
(``custom_checkpoint_i.pkl``) before :func:`~adaptive.training.load_checkpoint` loads anything, so a
refusal leaves the model, optimizer and connectome as they were. A checkpoint without the record
(written before it existed) is not read so.

A mask_only connectome is not read so: its frozen originals (in the connectome's own file) give the
weights, and the recipe's mask-only runs resume from their stage checkpoint, which has its digest.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import torch

RECORD = "pruned_weights.json"  # {"zero_at_pruned": [i, ...]}: the custom_checkpoint_i whose pruned weights were 0


def _connectomes(accelerator) -> List[Tuple[int, object]]:
    """The train-mode connectomes registered for checkpointing, with their index (custom_checkpoint_i)."""
    from .connectome import Connectome

    return [(i, o) for i, o in enumerate(getattr(accelerator, "_custom_objects", ()))
            if isinstance(o, Connectome) and o.mode != "mask_only"]


def zero_where_pruned(accelerator) -> List[int]:
    """The indices (``custom_checkpoint_i``) of the train-mode connectomes registered with
    ``accelerator`` whose weights now hold exactly 0 (-0.0 counts) at every pruned synapse: on device,
    layer by layer, one host read. A connectome with a weight of another shape than its mask (a
    sharded parameter) is left out, as is one with a non-zero weight where it prunes (written in
    place since the last step, or trained while detached)."""
    counts, shaped = {}, set()
    for at, conn in _connectomes(accelerator):
        if all(conn.params[n].shape == m.shape for n, m in conn.masks.items()):
            shaped.add(at)
            counts[at] = [torch.count_nonzero((conn.params[n].detach() != 0) & ~m.to(conn.params[n].device))
                          for n, m in conn.masks.items()]
    flat = [(at, c) for at, cs in counts.items() for c in cs]
    got = torch.stack([c.to(flat[0][1].device) for _, c in flat]).tolist() if flat else []
    bad = {at for (at, _), c in zip(flat, got) if c}
    return sorted(shaped - bad)


def write_record(folder, zero: List[int]) -> None:
    """Write :data:`RECORD` into the checkpoint folder ``folder``: ``zero`` from :func:`zero_where_pruned`."""
    (Path(folder) / RECORD).write_text(json.dumps({"zero_at_pruned": list(zero)}))


def _recorded(path: Path) -> Optional[set]:
    """The connectome indices the checkpoint's record lists, or None where it has none (one written
    before the record; its MANIFEST.json guards a record that is there)."""
    f = path / RECORD
    if not f.is_file():
        return None
    try:
        return {int(i) for i in json.loads(f.read_text())["zero_at_pruned"]}
    except (ValueError, KeyError, TypeError):
        return None


def _saved_masks(path: Path, at: int, conn) -> Dict[str, torch.Tensor]:
    """The bool masks the connectome file ``custom_checkpoint_<at>.pkl`` in ``path`` holds, under
    ``conn``'s parameter names (a wrapper's prefix taken off, as its load does); empty where the file
    cannot be read or is not a connectome state_dict (its load refuses it, naming what is wrong)."""
    from .wrappers import _plain_names

    try:
        sd = torch.load(path / f"custom_checkpoint_{at}.pkl", map_location="cpu", weights_only=False)  # (as Accelerate)
    except Exception:  # noqa: BLE001 - a damaged or missing file: Accelerate's load says so
        return {}
    if not isinstance(sd, dict) or not isinstance(sd.get("masks"), dict):
        return {}
    model_params = dict(conn.model.named_parameters(remove_duplicate=False))
    saved = [n for k in ("masks", "original", "ensembles") if isinstance(sd.get(k), dict) for n in sd[k]]
    return {n: m for n, m in _plain_names(sd["masks"], model_params, saved).items()
            if n in conn.params and torch.is_tensor(m) and m.dtype == torch.bool}


def nonzero_pruned_weights(accelerator, path) -> Optional[str]:
    """Why the checkpoint folder ``path`` mixes two runs (its model file holds non-zero weights at
    synapses that a connectome file, recorded as holding 0 there when the checkpoint was saved, prunes:
    how many, in which file and first layer), or None where every such pruned synapse's saved weight
    is 0 (-0.0 counts as 0). Read from the files before anything loads into ``accelerator``'s objects.
    Only the connectomes :data:`RECORD` lists are read (none where the checkpoint has no record), only
    ``model*.safetensors`` files (a ``.bin`` or sharded state is left unchecked); a layer stored under
    none of its parameter's names (a tied weight saved once), or whose saved mask has another shape
    than its saved weight (the load refuses it), is skipped."""
    from safetensors import safe_open

    path = Path(path)
    listed = _recorded(path)
    conns = [(at, c) for at, c in _connectomes(accelerator) if listed is not None and at in listed]
    if not conns:
        return None
    masks = {at: _saved_masks(path, at, conn) for at, conn in conns}
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
                for n, m in masks[at].items():
                    key = next((k for k in names.get(id(conn.params[n]), ()) if k in keys), None)
                    if key is None:
                        continue
                    w = sf.get_tensor(key)
                    if w.shape != m.shape:
                        continue  # (the load refuses another shape)
                    counts[at, n] = torch.count_nonzero((w != 0) & ~m)
        if not counts:
            continue
        got = torch.stack(list(counts.values())).tolist()
        bad = [(k, c) for k, c in zip(counts, got) if c]
        if bad:
            (at, first), _ = bad[0]
            total = sum(c for _, c in bad)
            return (f"{f.name} holds {total:,} non-zero weight(s) at synapses the connectome "
                    f"(custom_checkpoint_{at}.pkl) prunes, in {len(bad)} layer(s), first {first!r}: its pruned "
                    f"weights were exactly 0 when the checkpoint was saved ({RECORD}), so the two files come from "
                    "different runs (or steps)")
    return None
