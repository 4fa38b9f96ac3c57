"""Loading weights files strictly, whatever wrapper they were saved in."""
from __future__ import annotations

import copy
import os
import re
from collections import OrderedDict
from typing import Dict, Optional

import torch
from torch import nn

_WRAPPER_KEYS = ("state_dict", "model_state_dict", "model_state", "model", "net", "module")
_STRIP_PREFIXES = ("module.", "_orig_mod.")


class WeightsMismatchError(RuntimeError):
    """A weights file does not fit the model it is loaded into.

    ``keys_differ`` is True where the file's keys or shapes are not the model's (another model's file, or the
    model built with other arguments: :func:`load_weights`), False where the file cannot be loaded for another
    reason (a damaged file, a tensor the model cannot take). Where True, ``found`` says what differs (the
    message less its advice) and ``fits`` names the networks the file fits ("" where none is known), so that
    a caller can give its own advice without reading the message's text."""

    keys_differ = False
    found = ""
    fits = ""


def read_state_dict(path: str, mmap: bool = False, strip: bool = True) -> Dict[str, torch.Tensor]:
    """Read a state_dict from ``path`` (``.pt``/``.pth``/``.th`` or ``.safetensors``).

    Unwraps ``{"state_dict": ...}``-style wrappers and strips ``module.`` (DataParallel) and
    ``_orig_mod.`` (torch.compile) prefixes. Loads tensors only (``weights_only=True``). ``mmap``: a
    zip-format torch file's tensors are memory-mapped (``torch.load(mmap=True)``: read from the file as
    they are used, no copy of the whole file in memory; a safetensors file's are already), for a
    second read of a file a model holds already; a legacy-format file, which cannot be, is read whole.
    ``strip=False``: the keys as the file names them (for a model whose own names carry such a prefix).
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        raise FileNotFoundError(f"weights path {path!r} is a folder; pass the weights file inside it")
    if not os.path.isfile(path):
        from .tv import weights_name_hint

        named = "" if os.path.exists(path) else weights_name_hint(path)  # a torchvision weights enum's name
        if named:
            raise FileNotFoundError(named)
        raise FileNotFoundError(
            f"weights file {path!r} does not exist; pass the path of a saved state_dict "
            f"(this project never downloads weights)"
        )
    try:
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file

            sd = load_file(path, device="cpu")
        else:
            _check_integrity(path)
            sd = _load_tensors(path, mmap)
    except WeightsMismatchError:
        raise
    except Exception as e:  # truncated, not a torch file, or pickled objects weights_only refuses
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else ""
        raise WeightsMismatchError(
            f"weights file {path!r} cannot be read ({type(e).__name__}: {first}): it is truncated, not a saved "
            "state_dict, or holds Python objects that tensors-only loading refuses; copy it again, or re-save it "
            "with torch.save(model.state_dict(), path)"
        ) from e
    while isinstance(sd, dict):
        inner = next((sd[k] for k in _WRAPPER_KEYS if k in sd and isinstance(sd[k], dict)), None)
        if inner is None or all(isinstance(v, torch.Tensor) for v in sd.values()):
            break
        sd = inner
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise WeightsMismatchError(f"{path!r} does not hold a state_dict of tensors")
    return _stripped(sd, path) if strip else sd


def _stripped(sd: Dict[str, torch.Tensor], path: str) -> Dict[str, torch.Tensor]:
    """``sd`` with the wrappers' prefixes stripped from its keys (:func:`_strip`), its ``_metadata`` too."""
    out, came_from = OrderedDict(), {}
    for k, v in sd.items():
        key = _strip(k)
        if key in out:  # 'module.k' and 'k' both: one would silently overwrite the other
            raise WeightsMismatchError(f"{path!r} holds both {came_from[key]!r} and {k!r}, which name the same "
                                       f"parameter {key!r} once prefixes are stripped: keep one copy of each")
        out[key], came_from[key] = v, k
    meta = getattr(sd, "_metadata", None)
    if meta is not None:  # the modules' versions, which some loaders need (torchvision's MNASNet)
        out._metadata = OrderedDict((_strip(k + ".")[:-1] if k else k, v) for k, v in meta.items())
    return out


# objects a training checkpoint holds beside its weights that unpickle to plain data (their fields are
# whatever tensors-only loading allows): the command line's options, which torchvision's reference
# training scripts (and timm's) save as ``"args": argparse.Namespace``, and NumPy numbers (a best accuracy
# saved as np.float64: a scalar, its dtype and dtype class), as torch.load's documentation allows them
_PLAIN_GLOBALS = ("argparse.Namespace", "numpy.core.multiarray.scalar", "numpy._core.multiarray.scalar", "numpy.dtype")


def _plain(name: str) -> bool:
    """Whether the global ``name`` (``module.attribute``) is plain data to unpickle (:data:`_PLAIN_GLOBALS`, a
    NumPy dtype class)."""
    return name in _PLAIN_GLOBALS or re.fullmatch(r"numpy\.dtypes\.[A-Za-z0-9]+DType", name) is not None


def _load_tensors(path: str, mmap: bool = False):
    """``torch.load(path, weights_only=True)``, a training checkpoint's options and NumPy numbers allowed
    (:func:`_plain`: torchvision's reference scripts save ``{"model": ..., "optimizer": ..., "args": Namespace(...)}``,
    others a best accuracy as ``np.float64``); a file that
    holds other Python objects is refused naming them, and how to save its weights alone. ``mmap``: a
    zip-format file memory-mapped (:func:`read_state_dict`)."""
    import importlib
    import pickle
    import warnings
    import zipfile

    mapped = {"mmap": True} if mmap and zipfile.is_zipfile(path) else {}  # (the legacy format cannot be)

    try:
        return torch.load(path, map_location="cpu", weights_only=True, **mapped)
    except pickle.UnpicklingError:
        try:
            unsafe = list(torch.serialization.get_unsafe_globals_in_checkpoint(path))
        except Exception:  # not a zip checkpoint (the legacy format): the first error says what it can
            unsafe = []
        if not unsafe:
            raise
    others = [g for g in unsafe if not _plain(g)]
    if others:
        raise WeightsMismatchError(
            f"weights file {path!r} holds Python objects besides tensors ({', '.join(others[:5])}), which tensors-only "
            "loading refuses (loading them could run code): it is a training checkpoint, or a pickled model. If you "
            "trust the file, load it with torch.load(path, weights_only=False), torch.save the state_dict it holds "
            "(model.state_dict() of a pickled model) to a new file, and pass that")
    with warnings.catch_warnings():  # (numpy.core, as NumPy 1 saved it, is deprecated in NumPy 2)
        warnings.simplefilter("ignore", DeprecationWarning)
        # (each under the name the file gives it: NumPy 2's numpy._core.multiarray.scalar is NumPy 1's numpy.core...)
        allowed = [(getattr(importlib.import_module(m), n), g) for g in unsafe for m, n in [g.rsplit(".", 1)]]
        if "numpy.dtype" in unsafe:  # a dtype is built as np.dtype(...), then given its state as an instance of its
            import numpy as np  # class (numpy.dtypes.Float64DType), which the file does not name

            if hasattr(np, "dtypes"):
                allowed += [c for c in vars(np.dtypes).values() if isinstance(c, type) and issubclass(c, np.dtype)]
            else:  # NumPy before 1.25 names no module of them: the class of each scalar type's dtype
                allowed += list({type(np.dtype(t)) for t in np.sctypeDict.values()})
    # for this load alone; what the process allowed already (torch.serialization.add_safe_globals: the user's, another
    # library's) is left out, as safe_globals' exit removes what it was given, and stays allowed after
    before = set(torch.serialization.get_safe_globals())
    with torch.serialization.safe_globals([g for g in allowed if g not in before]):
        return torch.load(path, map_location="cpu", weights_only=True, **mapped)


def _names_every_key(sd, own) -> bool:
    """Whether the file's keys are the model's own, as they are (``num_batches_tracked`` may be missing)."""
    return set(sd) <= set(own) and all(k in sd for k in own if not k.endswith("num_batches_tracked"))


def _strip(key: str) -> str:
    """``key`` without the wrappers' prefixes (DataParallel's ``module.``, ...)."""
    stripped = True
    while stripped:  # nested wrappers: torch.compile of a DataParallel model saves _orig_mod.module.<key>
        stripped = False
        for p in _STRIP_PREFIXES:
            if key.startswith(p):
                key, stripped = key[len(p):], True
    return key


def _check_integrity(path: str) -> None:
    """A damaged file must not load as other numbers: the zip format's CRCs are checked, and a file
    named with the hash of its content (``name-<hex>.pth``, torch.hub's convention) is checked
    against that hash (a name of digits alone, which may be a date, warns where it is not the hash)."""
    import hashlib
    import zipfile

    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as z:
            try:
                bad = z.testzip()
            except zipfile.BadZipFile as e:
                bad = str(e)
        if bad is not None:
            raise WeightsMismatchError(f"weights file {path!r} is damaged (entry {bad} fails its checksum): copy it again")
        return
    m = re.search(r"-([0-9a-f]{8,64})\.[A-Za-z]+$", os.path.basename(path))
    if m:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        if not h.hexdigest().startswith(m.group(1)):
            found = (f"weights file {path!r} is named with the hash {m.group(1)} of its content, but its content hashes "
                     f"to {h.hexdigest()[:len(m.group(1))]}")
            if m.group(1).isdigit():  # digits alone are as likely a date or a count (net-20261207.pth) as a hash
                import warnings

                warnings.warn(f"{found}: if {m.group(1)} is a hash, the file is damaged (copy it again); if it is a "
                              "date or a number, ignore this", stacklevel=3)
                return
            raise WeightsMismatchError(f"{found}: it is damaged (copy it again) or was renamed (rename it)")


def _check_copyable(path: str, key: str, t: torch.Tensor, own: torch.Tensor) -> None:
    """Refuse, before anything is copied, a tensor of the right name and shape that the model's
    own cannot take: PyTorch would raise (meta, sparse) or drop part of each value (complex into
    real, floating point into integers) midway through the copy, after the keys before it."""
    where = f"weights file {path!r} holds {key!r}"
    if t.device.type == "meta":
        raise WeightsMismatchError(f"{where} as a meta tensor, which has a shape but no values (a model built on the "
                                   "meta device, saved before its weights were loaded or initialized): save the "
                                   "state_dict of a model whose weights are materialized")
    if t.layout != torch.strided:
        raise WeightsMismatchError(f"{where} as a {t.layout} tensor, and the model keeps it dense: re-save the file with "
                                   f"dense tensors (sd[{key!r}] = sd[{key!r}].to_dense())")
    if t.is_quantized:
        raise WeightsMismatchError(f"{where} as a quantized tensor ({t.dtype}), and the model's is {own.dtype}: re-save "
                                   f"it dequantized (sd[{key!r}] = sd[{key!r}].dequantize())")
    lossy = None
    if t.is_complex() and not own.is_complex():
        lossy = "the imaginary parts would be dropped"
    elif (t.is_floating_point() or t.is_complex()) and not (own.is_floating_point() or own.is_complex()):
        lossy = "the fractional parts would be dropped"
    elif t.dtype == torch.bool and (own.is_floating_point() or own.is_complex()):
        lossy = "true/false values are a mask, not weights"
    if lossy:
        raise WeightsMismatchError(f"{where} as {t.dtype}, and the model's is {own.dtype}: {lossy}. Check that the file "
                                   "holds this model's weights, or convert that tensor to "
                                   f"{own.dtype} yourself and re-save it")


# torchvision's DenseNet layers were once named ``norm.1``, ``relu.1``, ``conv.1``, ... (before dots left module
# names): its own weights files (densenet121-a639ec97.pth, ...) still are, and torchvision renames their keys on load
_LEGACY_DENSENET = re.compile(r"^(.*denselayer\d+\.(?:norm|relu|conv))\.([12])((?:\.(?:weight|bias|running_mean|running_var"
                              r"|num_batches_tracked))?)$")


def renamed_legacy_keys(sd: Dict[str, torch.Tensor], own) -> Dict[str, torch.Tensor]:
    """``sd`` with the old names of torchvision's DenseNet layers (``denselayer1.norm.1.weight``) as the model
    ``own`` (its state_dict) names them (``denselayer1.norm1.weight``), as torchvision's DenseNet builders rename
    them for its own weights files; only keys ``own`` lacks, and its ``_metadata`` (the modules' versions) too.
    ``sd`` itself (not copied) where no key is renamed."""
    renamed = {k: _LEGACY_DENSENET.sub(r"\1\2\3", k) for k in sd if k not in own and _LEGACY_DENSENET.match(k)}
    if not renamed:
        return sd
    out = OrderedDict((renamed.get(k, k), v) for k, v in sd.items())
    meta = getattr(sd, "_metadata", None)
    if meta is not None:
        out._metadata = OrderedDict((_LEGACY_DENSENET.sub(r"\1\2\3", k), v) for k, v in meta.items())
    return out


def as_model_keys(sd: Dict[str, torch.Tensor], own, skipped=()) -> Dict[str, torch.Tensor]:
    """``sd`` (a weights file's state_dict) under the names :func:`load_weights` loads it by into the model whose
    state_dict is ``own``: old DenseNet layer names renamed (:func:`renamed_legacy_keys`), then a prefix every key
    carries stripped (:func:`strip_model_prefix`, ``skipped`` its skipped prefixes)."""
    return strip_model_prefix(renamed_legacy_keys(sd, own), own, skipped)


def strip_model_prefix(sd: Dict[str, torch.Tensor], own, skipped=()) -> Dict[str, torch.Tensor]:
    """``sd`` with the prefix every one of its keys carries removed (one to three dotted parts: ``model.``,
    ``net.backbone.``), where the keys without it are exactly the keys of ``own`` (a model's state_dict; less
    its ``num_batches_tracked``, which old files lack, and the file's keys under the ``skipped`` prefixes):
    the weights of a model saved as an attribute of another (a PyTorch Lightning module's ``self.model``, an
    EMA or distillation wrapper), whose keys are otherwise all unexpected. ``sd`` itself (not copied) where no
    prefix makes the keys the model's."""
    keys = list(sd)
    if not keys or any(k in own for k in keys):
        return sd
    needed = {k for k in own if not k.endswith("num_batches_tracked")}
    parts = keys[0].split(".")
    for depth in range(1, min(3, len(parts) - 1) + 1):
        prefix = ".".join(parts[:depth]) + "."
        if not all(k.startswith(prefix) for k in keys):
            break
        stripped = [k[len(prefix):] for k in keys]
        kept = {k for k in stripped if k in own or not k.startswith(tuple(skipped))}
        if kept <= set(own) and needed <= kept:
            out = OrderedDict(zip(stripped, sd.values()))
            meta = getattr(sd, "_metadata", None)
            if meta is not None:  # the modules' versions, under their names in the model
                out._metadata = OrderedDict((k[len(prefix):], v) for k, v in meta.items() if k.startswith(prefix))
                if prefix[:-1] in meta:
                    out._metadata[""] = meta[prefix[:-1]]
            return out
    return sd


def _is_connectome_file(path: str) -> bool:
    """Whether ``path`` is a file :meth:`adaptive.Connectome.save` wrote (its safetensors metadata says so)."""
    from safetensors import safe_open

    from ..connectome_state import FORMAT

    try:
        with safe_open(path, framework="pt") as f:
            return (f.metadata() or {}).get("format") == FORMAT
    except Exception:  # not a safetensors file: a .pt, a folder, unreadable
        return False


def load_weights(model: nn.Module, path: str, state_dict: Optional[Dict[str, torch.Tensor]] = None) -> nn.Module:
    """Load the weights file ``path`` into ``model`` with ``strict=True``; returns ``model``.
    ``state_dict``: what :func:`read_state_dict` read from ``path`` already (it is not read again, nor
    changed); ``path`` then only names the file in errors.

    A file whose every key carries one prefix, the model's keys without it (a Lightning module's ``model.``),
    loads without it (:func:`strip_model_prefix`), and torchvision's own DenseNet files, whose layers have their old
    names (``norm.1``), load as torchvision loads them (:func:`renamed_legacy_keys`). Where it does not fit, a model's ``weights_mismatch_hint(state_dict)`` (a torchvision classifier's,
    :func:`adaptive.models.tv.fitting_relatives`) names the models the file fits.

    Keys under the prefixes a model lists in ``model.skipped_weight_prefixes`` (parts of the network
    it deliberately lacks, as torchvision's GoogLeNet built without its auxiliary heads) are skipped.
    Raises :class:`WeightsMismatchError` naming the missing, unexpected and wrongly shaped keys,
    or a tensor the model cannot take (a meta or sparse tensor, complex values into real weights,
    floating point into integers, booleans into weights), before anything is copied, so a failed
    load leaves the model untouched.
    """
    path = os.fspath(path)
    # a copy (keeping the _metadata attribute some modules' loaders read): keys are dropped and filled below
    own = model.state_dict()
    if state_dict is None:
        sd = read_state_dict(path, strip=False)
        # a model whose own names carry a wrapper's prefix (an AveragedModel's or DataParallel's "module.") loads
        # its own file as it names it: stripped, its keys named no parameter of it
        if not (any(k != _strip(k) for k in own) and _names_every_key(sd, own)):
            sd = _stripped(sd, path)
    else:
        sd = copy.copy(state_dict)
    # parts of the network the model deliberately lacks (torchvision's GoogLeNet and Inception-v3 without
    # their auxiliary heads, which torchvision's own files hold): the file's keys under them are skipped
    skipped = tuple(getattr(model, "skipped_weight_prefixes", ()))
    # (torchvision's DenseNet files' old layer names; a Lightning module's "model.": every key under the model's name)
    sd = as_model_keys(sd, own, skipped)
    for k in [k for k in sd if k not in own and k.startswith(skipped)]:
        del sd[k]  # (in place: the file's _metadata, which some modules' loaders read, stays)
    # Checkpoints older than BatchNorm's ``num_batches_tracked`` lack it; PyTorch's own strict
    # loading fills it in for such files, so it is not a mismatch.
    missing = [k for k in own if k not in sd and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in sd if k not in own]
    shapes = [f"{k}: file {tuple(sd[k].shape)} vs model {tuple(own[k].shape)}"
              for k in own if k in sd and sd[k].shape != own[k].shape]
    if not (missing or unexpected or shapes):
        for k in own:  # what fits by name and shape but cannot be copied, or not without losing values
            if k in sd:
                _check_copyable(path, k, sd[k], own[k])
    if missing or unexpected or shapes:
        def fmt(xs):
            return ", ".join(xs[:8]) + (f" ... (+{len(xs) - 8} more)" if len(xs) > 8 else "")

        parts = []
        if missing:
            parts.append(f"missing keys [{fmt(missing)}]")
        if unexpected:
            parts.append(f"unexpected keys [{fmt(unexpected)}]")
        if shapes:
            parts.append(f"shape mismatches [{fmt(shapes)}]")
        hint = getattr(model, "weights_mismatch_hint", None)  # (a torchvision model: the network of its family
        fits = hint(sd) if callable(hint) else ""  # the file fits, if one does)
        found = f"weights file {path!r} does not match model {type(model).__name__}: " + "; ".join(parts)
        if state_dict is None and _is_connectome_file(path):
            found += (" (it is a connectome file, Connectome.save's masks and not a network's weights: give the "
                      "weights file beside it, a run's pruned_state_dict.pt or the weights it started from; "
                      "the connectome loads with adaptive.Connectome.load, or --connectome where a command takes it)")
        error = WeightsMismatchError(
            found + (f". The file holds the weights of {fits}: give that --model (its --model-kw, its number of classes)"
                     if fits else ". Check --model and num_classes against the file."))
        error.keys_differ, error.found, error.fits = True, found, fits
        raise error
    for k in own:  # filled as PyTorch fills it for an unversioned file (a versioned one is refused)
        if k.endswith("num_batches_tracked") and k not in sd:
            sd[k] = own[k].detach().clone()
    if getattr(sd, "_metadata", None) is None and getattr(own, "_metadata", None) is not None:
        # a file that records no module versions (a safetensors file, a dict built by hand) is of the versions the
        # model has: torchvision's MNASNet refused it with "version should be set to 1 or 2 instead of None"
        sd = OrderedDict(sd)
        sd._metadata = own._metadata
    model.load_state_dict(sd, strict=True)
    return model
