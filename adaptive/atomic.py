"""Atomic file writes: a reader (or a run killed mid-write) sees the old file or the new one, never
half of one.

    with atomic_path(out / "results.md") as tmp:
        tmp.write_text(table)
"""
from __future__ import annotations

import os
import secrets
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Union


_UMASK = os.umask(0)  # read once (os.umask can only be read by setting it)
os.umask(_UMASK)


@contextmanager
def atomic_path(path: Union[str, os.PathLike]) -> Iterator[Path]:
    """A temporary path beside ``path`` (same folder, same suffix, so writers that infer the format
    from it still do): renamed onto ``path`` when the block ends, removed if it raises. The folder
    is created if needed; the file gets the usual permissions (umask), not a private temp file's."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp{path.suffix}")
    try:
        yield tmp
        if tmp.exists():  # some writers (safetensors) create private 0600 files: the usual permissions instead
            os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_text(path: Union[str, os.PathLike], text: str) -> Path:
    """Write ``text`` to ``path`` atomically (its folder created if needed); returns the path."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)
