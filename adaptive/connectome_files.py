"""A connectome's file: :meth:`save` writes it as safetensors (masks bit-packed, a checksum in its
metadata, written atomically) and :meth:`load` rebuilds the connectome from one on a model,
refusing a damaged file or one of another model before anything is built. As
:class:`ConnectomeFilesMixin`, which :class:`~adaptive.connectome.Connectome` inherits.
"""
from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING, Optional

import torch
from torch import nn

from . import bitpack
from .atomic import atomic_path
from .connectome_state import FORMAT, _empty_saved, check_originals
from .discovery import PRUNABLE_LIST, holds_synapses, prunable_names
from .name_patterns import escape
from .warn import warn_user
from .wrappers import _plain_module, _plain_names

if TYPE_CHECKING:
    from .connectome import Connectome


def _sort_metadata(path: os.PathLike) -> None:
    """Rewrite a safetensors file's header with its metadata keys in sorted order, so that equal
    connectomes give byte-identical files (safetensors writes them in a random, per-call order).

    Only the JSON header changes; the tensors' offsets are relative to the data after it. The header
    is rewritten in place, padded with spaces as safetensors pads it: the sorted header has the same
    keys and values, so it has the same length (were it ever longer, the file is left as written: valid,
    only unsorted)."""
    import struct

    with open(path, "r+b") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n).decode("utf-8"))
        if "__metadata__" in header:
            header["__metadata__"] = dict(sorted(header["__metadata__"].items()))
        text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
        if len(text) <= n:
            f.seek(8)
            f.write(text + b" " * (n - len(text)))


class ConnectomeFilesMixin:
    """Connectome files for :class:`~adaptive.connectome.Connectome`."""

    def save(self, path: str | os.PathLike, with_original: bool = False) -> None:
        """Write the connectome to a safetensors file, masks bit-packed (1 bit per synapse).

        The write is atomic (temporary file, then rename). ``path`` is a file named ``*.safetensors``:
        another extension (``x.pt``, which ``torch.load`` could not read) and an existing folder are
        refused, before anything is written. ``with_original`` also stores the
        original weights of a mask_only connectome; without it, :meth:`load` takes them from the
        model it is given, which must then hold the unpruned weights.
        """
        from safetensors.torch import save_file

        if os.path.isdir(path):  # as load refuses one: a run folder holds its connectome.safetensors
            raise ValueError(f"{path} is a folder, not a connectome file: give a file path, e.g. "
                             f"{os.path.join(path, 'connectome.safetensors')}")
        stem, ext = os.path.splitext(os.fspath(path))
        if ext.lower() != ".safetensors":
            raise ValueError(f"{os.fspath(path)} {f'has the extension {ext!r}' if ext else 'has no extension'}, but "
                             f"Connectome.save writes a safetensors file (masks bit-packed), which torch.load cannot "
                             f"read: name it "
                             f"{stem + '.safetensors'!r} (Connectome.load reads it back); for a torch.save checkpoint, "
                             "torch.save(conn.state_dict(), path) instead")
        self._check_params()
        tensors = {f"mask/{n}": bitpack.pack(m) for n, m in self.masks.items()}
        if with_original:
            if not self.original:
                raise ValueError("with_original=True needs original weights (mode='mask_only' or keep_original())")
            tensors.update({f"original/{n}": o.detach().cpu().contiguous() for n, o in self.original.items()})
        meta = {
            "format": FORMAT,
            "ensemble": self.ensemble,
            "mode": self.mode,
            "layers": json.dumps({n: list(l.shape) for n, l in self.layers.items()}),
            # the model's prunable layers left out (exclude=): load warns about any other layer it leaves dense
            "outside": json.dumps([n for n in prunable_names(self.model) if n not in self.masks]),
        }
        if self._mixed():
            meta["ensembles"] = json.dumps(self.ensemble_specs())
        from .integrity import tensors_digest

        meta["sha256"] = tensors_digest(tensors, meta)  # load verifies it: a damaged file is refused
        with atomic_path(path) as tmp:
            save_file(tensors, str(tmp), metadata=meta)
            _sort_metadata(tmp)

    @classmethod
    @torch.inference_mode(False)  # built inside torch.inference_mode(), its masks must still track edits
    def load(cls, path: str | os.PathLike, model: nn.Module, mode: Optional[str] = None) -> "Connectome":
        """Rebuild a connectome saved by :meth:`save` on ``model`` (a wrapper: as one built on it, its
        patterns, a Controller's ``protect=``, may name layers as the wrapper does). Raises a clear error
        naming the parameter if the model's layers or shapes differ from the saved ones."""
        from safetensors import SafetensorError, safe_open

        if isinstance(path, nn.Module) and not isinstance(model, nn.Module):
            raise TypeError("Connectome.load takes the file first and the model second: "
                            "Connectome.load(path, model)")
        if not isinstance(model, nn.Module):
            raise TypeError(f"Connectome.load needs the nn.Module to rebuild the connectome on, got "
                            f"{type(model).__name__}: Connectome.load(path, model)")
        if os.path.isdir(path):
            raise ValueError(f"{path} is a folder, not a connectome file: give the connectome.safetensors in it")
        try:
            opened = safe_open(os.fspath(path), framework="pt")
        except SafetensorError as e:
            raise ValueError(f"{path} is not a readable connectome file ({e}); give the connectome.safetensors "
                             "a run or Connectome.save wrote") from None
        with opened as f:
            meta = f.metadata() or {}
            if "sha256" not in meta:  # files saved before checksums (2026-12-02) load unverified, said so
                warn_user(f"{path} carries no sha256 (written before connectome files had one, or its metadata "
                          "altered), so its content cannot be verified: it is loaded as it reads; save it again "
                          "(Connectome.save) to store one")
            else:
                from .integrity import tensors_digest

                try:
                    every = {k: f.get_tensor(k) for k in f.keys()}
                except SafetensorError as e:
                    raise ValueError(f"{path} is damaged: its tensors cannot be read ({e}); use an intact copy, or "
                                     "rerun what wrote it") from None
                rest = {k: v for k, v in meta.items() if k != "sha256"}
                if tensors_digest(every, rest) != meta["sha256"]:
                    raise ValueError(f"{path} is damaged: its content does not match the sha256 stored in it when it "
                                     "was saved; use an intact copy, or rerun what wrote it")
            if meta.get("format") != FORMAT:
                raise ValueError(f"{path} is not an adaptive connectome file (format {meta.get('format')!r})")
            keys = set(f.keys())
            try:
                shapes = {n: tuple(int(d) for d in s) for n, s in json.loads(meta["layers"]).items()}
                for k in ("mode", "ensemble"):
                    meta[k]
                if "ensembles" in meta and not isinstance(json.loads(meta["ensembles"]), dict):
                    raise TypeError("'ensembles' is not a mapping of layer names to granularities")
            except (KeyError, ValueError, TypeError, AttributeError) as e:
                raise ValueError(f"{path}: the connectome file's metadata is missing or malformed ({type(e).__name__}: "
                                 f"{e}); the file is corrupt or was not written by Connectome.save") from None
            unlisted = sorted(k[len("mask/"):] for k in keys if k.startswith("mask/") and k[len("mask/"):] not in shapes)
            missing = sorted(n for n in shapes if f"mask/{n}" not in keys)
            if unlisted or missing:
                raise ValueError(f"{path}: the connectome file's layer list does not match its masks (masks not listed: "
                                 f"{unlisted[:5]}, listed without a mask: {missing[:5]}); the file is corrupt")
            packed = {n: f.get_tensor(f"mask/{n}") for n in shapes}
            original = {n: f.get_tensor(f"original/{n}") for n in shapes if f"original/{n}" in keys}
        wrapped, model = model, _plain_module(model)
        params = dict(model.named_parameters(remove_duplicate=False))  # a tied weight under every name
        saved = list(shapes)  # every layer: one wrapper prefix taken off all of them (see _wrapper_prefix)
        shapes, packed, original = (_plain_names(d, params, saved) for d in (shapes, packed, original))
        # per-layer granularities as a compiled model's layers were once named (checked to be a dict above)
        per_layer = json.loads(meta["ensembles"]) if "ensembles" in meta else None
        if per_layer is not None:
            meta["ensembles"] = json.dumps(_plain_names(per_layer, params, saved + list(per_layer)))
        absent = [n for n in shapes if n not in params]
        if absent:
            ours = prunable_names(model)
            raise KeyError(f"{path} has masks for {absent[:5]}{'...' if len(absent) > 5 else ''}, which the model does "
                           f"not have (its prunable weights: {ours[:5]}{'...' if len(ours) > 5 else ''}): it was saved "
                           "from another model, and nothing was loaded; load it into the model it was saved from, or "
                           "one whose layers match")
        for n, s in shapes.items():
            mname, _, attr = n.rpartition(".")
            module = model.get_submodule(mname)
            if not holds_synapses(module, attr):
                raise ValueError(
                    f"the saved connectome has synapses in {n!r}, but in this model {mname or 'the model'!r} is of type "
                    f"{type(module).__name__}, whose {attr!r} holds no synapses (a Connectome prunes the weights of "
                    f"{PRUNABLE_LIST}): load the file into a model of the "
                    "architecture it was saved from, or build a new Connectome on this model")
            if tuple(params[n].shape) != s:
                raise ValueError(f"shape mismatch for {n!r}: saved {s}, model has {tuple(params[n].shape)}: {path} was "
                                 "saved from a model of other layer sizes, and nothing was loaded; load it into the "
                                 "model it was saved from (its architecture and sizes)")
        empty = _empty_saved({n: torch.Size(v).numel() for n, v in shapes.items()}, params)
        if empty:
            shapes, packed, original = ({n: v for n, v in d.items() if n not in empty} for d in (shapes, packed, original))
            if per_layer is not None:
                meta["ensembles"] = json.dumps({n: v for n, v in json.loads(meta["ensembles"]).items() if n not in empty})
        if original:  # before the connectome is built: nothing is loaded from a file whose originals do not fit
            check_originals(original, {n: params[n] for n in shapes}, str(path), "(save(path, with_original=True) does)")
        mode = mode or meta["mode"]
        if mode == "mask_only" and not original:
            original = None  # taken from the model below
        # exact names: a ModuleDict key may hold a pattern character ('fc[1]' as a pattern matches 'fc1')
        modules = [escape(n[: -len(".weight")] if n.endswith(".weight") else n) for n in shapes]
        conn = cls(model, ensemble=meta["ensemble"], include=modules, mode=mode)
        # loaded into a wrapper: a Controller's protect= reads module.fc as fc, as on one built on it
        conn._built_wrapped = wrapped is not model
        # the layers first: a file of another model is told so, not that its granularities differ
        extra = [n for n in conn.masks if n not in shapes]
        if extra:
            saved = list(shapes)
            raise KeyError(f"the model has prunable layer(s) {extra[:5]}{'...' if len(extra) > 5 else ''} that {path} "
                           f"has no mask for (its layers: {saved[:5]}{'...' if len(saved) > 5 else ''}): it was saved "
                           "from another model, and nothing was loaded; load it into the model it was saved from, or "
                           "one whose layers match")
        if "ensembles" in meta:
            conn._check_same_ensembles(meta["ensemble"], json.loads(meta["ensembles"]), str(path))
        _warn_left_dense(model, conn, meta.get("outside"), path)
        if original:
            for n, o in original.items():  # in their own dtype, as saved (load_state_dict says why)
                conn.original[n] = o.to(conn.params[n].device)
        masks = {n: bitpack.unpack(packed[n], shapes[n]) for n in shapes}
        conn.set_masks(masks)
        conn.apply()
        return conn


def _warn_left_dense(model: nn.Module, conn: "Connectome", outside: Optional[str], path) -> None:
    """Warn, naming them, about the prunable layers of ``model`` that the connectome loaded from
    ``path`` leaves dense: layers the file has no mask for, other than those its connectome had left
    out on purpose (``outside``, the JSON list save records; a file saved before it was recorded
    cannot tell them apart, and says so)."""
    try:
        known = set(json.loads(outside)) if outside is not None else set()
    except (ValueError, TypeError):  # unreadable: every layer without a mask is named
        known = set()
    extra = [n for n in prunable_names(model) if n not in conn.masks and n not in known]
    if not extra:
        return
    why = ("" if outside is not None else "; this file, saved before a connectome recorded the layers it left out, "
           "cannot tell whether exclude= left them out when it was saved")
    warn_user(f"{len(extra)} prunable layer(s) of this model have no mask in {path} and stay dense, outside the "
              f"connectome (no controller edits them): {', '.join(extra[:4])}{', ...' if len(extra) > 4 else ''}"
              f"{why}. Load the file into the model it was saved from; to prune them too, build adaptive.Connectome("
              "model) and pass it the loaded connectome's masks with conn.set_masks(loaded.masks)")
