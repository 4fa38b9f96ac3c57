"""Integrity of what a run saves: checksums written with a checkpoint and verified when it loads,
so that a damaged file (a flipped bit, a truncated copy, a file gone) is refused, naming it,
instead of being loaded silently into a run that then finishes with other masks and weights.

- a checkpoint folder holds ``MANIFEST.json``: the size and sha256 of every file in it;
- a single-file state (the mask-only stage checkpoint) carries :func:`digest` of its content;
- a connectome file carries the sha256 of its tensors and metadata in its metadata.

Hashing is one pass over the bytes (sha256 runs at several hundred MB/s on a CPU).
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import torch

MANIFEST = "MANIFEST.json"
MANIFEST_FORMAT = 1
_CHUNK = 1 << 20


class CheckpointRefusedError(ValueError):
    """A checkpoint that this run cannot continue from (damaged, or written by another process count)."""


class CheckpointDamagedError(CheckpointRefusedError):
    """A saved file or folder that does not match the checksums recorded when it was written."""


def file_sha256(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _files(folder: Path) -> List[str]:
    """Every file under ``folder`` (relative, '/'-separated, sorted), the manifest excepted."""
    out = []
    for dirpath, _, names in os.walk(folder):
        for n in names:
            rel = (Path(dirpath) / n).relative_to(folder).as_posix()
            if rel != MANIFEST:
                out.append(rel)
    return sorted(out)


def write_manifest(folder) -> Path:
    """Record the size and sha256 of every file in ``folder`` in ``folder/MANIFEST.json``."""
    folder = Path(folder)
    files = {rel: {"size": (folder / rel).stat().st_size, "sha256": file_sha256(folder / rel)}
             for rel in _files(folder)}
    path = folder / MANIFEST
    with open(path, "w") as f:
        json.dump({"format": MANIFEST_FORMAT, "files": files}, f, indent=1, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    return path


def check_manifest(folder) -> Optional[str]:
    """What is wrong with ``folder`` against its manifest (one phrase naming the file), "" when it
    matches, None when it has no manifest (written before manifests were)."""
    folder = Path(folder)
    path = folder / MANIFEST
    if not path.is_file():
        return None
    try:
        with open(path, "rb") as f:
            doc = json.loads(f.read().decode("utf-8"))
        files = doc["files"]
        if not isinstance(files, dict) or not all(
                isinstance(v, dict) and isinstance(v.get("size"), int) and isinstance(v.get("sha256"), str)
                for v in files.values()):
            raise TypeError("malformed entries")
    except (OSError, ValueError, KeyError, TypeError) as e:
        return f"its {MANIFEST} cannot be read ({type(e).__name__})"
    if doc.get("format", MANIFEST_FORMAT) != MANIFEST_FORMAT:  # (a newer version's layout: its checks unknown here)
        return (f"its {MANIFEST} is of format {doc.get('format')!r}, which this version of adaptive does not know (it "
                f"writes format {MANIFEST_FORMAT}; a newer version's checkpoint is read by that version)")
    present = set(_files(folder))
    missing = sorted(set(files) - present)
    if missing:
        return f"{missing[0]} is missing" + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else "")
    # files added since (a desktop's .DS_Store, an editor's swap file) are not the checkpoint's and are
    # never read: see unlisted_files
    for rel, want in sorted(files.items()):
        p = folder / rel
        size = p.stat().st_size
        if size != want["size"]:
            return f"{rel} has {size} bytes, {want['size']} were written"
        if file_sha256(p) != want["sha256"]:
            return f"{rel} does not match the sha256 recorded in {MANIFEST}"
    return ""


def manifest_files(folder) -> Optional[List[str]]:
    """The files ``folder``'s manifest lists (None: no readable manifest)."""
    try:
        with open(Path(folder) / MANIFEST, "rb") as f:
            files = json.loads(f.read().decode("utf-8"))["files"]
        return sorted(files) if isinstance(files, dict) else None
    except (OSError, ValueError, KeyError, TypeError):
        return None


def unlisted_files(folder) -> List[str]:
    """Files in ``folder`` that its manifest does not list, hidden ones (``.DS_Store``, ``._*``,
    ``.nfs*``) left out: added after the checkpoint was written, and never read by a resume."""
    listed = manifest_files(folder)
    if listed is None:
        return []
    return [f for f in _files(Path(folder)) if f not in set(listed) and not Path(f).name.startswith(".")]


# ----------------------------------------------------------------------------- nested state

def _tensor_bytes(t: torch.Tensor) -> memoryview:
    t = t.detach().cpu().contiguous().reshape(-1)
    if t.numel() == 0:
        return memoryview(b"")
    return memoryview(t.view(torch.uint8).numpy())


def _walk(obj, h) -> None:
    if isinstance(obj, torch.Tensor):
        h.update(f"T{obj.dtype}{tuple(obj.shape)}:".encode())
        h.update(_tensor_bytes(obj))
    elif isinstance(obj, dict):
        h.update(f"D{len(obj)}:{type(obj).__name__}:".encode())
        for k, v in obj.items():
            _walk(k, h)
            _walk(v, h)
    elif isinstance(obj, (list, tuple)):
        h.update(f"{'L' if isinstance(obj, list) else 'U'}{len(obj)}:".encode())
        for v in obj:
            _walk(v, h)
    elif obj is None or isinstance(obj, (bool, int, float, str, bytes)):
        h.update(f"P{type(obj).__name__}:{obj!r};".encode())
    else:  # what weights_only loading admits besides (torch.Size is a tuple, OrderedDict a dict)
        h.update(f"O{type(obj).__name__}:{obj!r};".encode())


def digest(obj) -> str:
    """sha256 of a nested state (dicts with their keys in order, lists, tuples, tensors with dtype,
    shape and bytes, numbers, strings): equal exactly when what :func:`torch.load` gives back is
    what was saved."""
    h = hashlib.sha256()
    _walk(obj, h)
    return h.hexdigest()


def tensors_digest(tensors: Dict[str, torch.Tensor], metadata: Dict[str, str]) -> str:
    """sha256 of a safetensors file's content: its metadata and its tensors, in name order."""
    h = hashlib.sha256()
    for k in sorted(metadata):
        h.update(f"M{k!r}={metadata[k]!r};".encode())
    for k in sorted(tensors):
        t = tensors[k]
        h.update(f"T{k!r}{t.dtype}{tuple(t.shape)}:".encode())
        h.update(_tensor_bytes(t))
    return h.hexdigest()


# ----------------------------------------------------------------------------- failed writes

class CheckpointWriteError(RuntimeError):
    """A checkpoint that could not be written (a full disk, a file-size limit, an I/O error); the
    partial write was removed and the earlier checkpoint is intact. Recipes print it as one line."""


def write_failure(e: BaseException) -> str:
    """The operating system's reason for a failed write, in a few words."""
    if isinstance(e, OSError):
        return f"{e.strerror or e}" + (f" [errno {e.errno}]" if e.errno else "")
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"


def is_write_failure(e: BaseException) -> bool:
    """Whether ``e`` (one of :func:`write_errors`) is a failed write: the operating system's,
    safetensors', or torch.save's writer's (a RuntimeError of its inline_container), not another
    RuntimeError raised while making what is written (a figure's tick locator, an object's
    ``state_dict()``, a tensor on a failed device), whose fix is not disk space."""
    return not isinstance(e, RuntimeError) or any(s in str(e) for s in ("inline_container", "PytorchStreamWriter"))


def write_errors() -> Tuple[type, ...]:
    """The exceptions a failed checkpoint write raises (OSError, torch's writer, safetensors)."""
    from safetensors import SafetensorError

    return (OSError, RuntimeError, SafetensorError)
