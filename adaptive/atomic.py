"""Atomic file writes: a reader (or a run killed mid-write) sees the old file or the new one, never
half of one.

    with atomic_path(out / "results.md") as tmp:
        tmp.write_text(table)

:func:`atomic_torch_save` is ``torch.save`` made atomic (and its bytes independent of the temporary
file's name).
"""
from __future__ import annotations

import errno
import os
import re
import secrets
import stat
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, List, Optional, Union


_UMASK = os.umask(0)  # read once (os.umask can only be read by setting it)
os.umask(_UMASK)


NAME_MAX = 255  # bytes in one file name on the common file systems (ext4, xfs, btrfs, tmpfs, APFS)


def temp_name(name: str, pid: int, token: str, limit: int = NAME_MAX) -> str:
    """The name of :func:`atomic_path`'s temporary file for the file ``name``, written by process
    ``pid`` (``token``: 8 random hex digits): ``.NAME.PID-TOKEN.tmpSUFFIX``. Where that would exceed
    ``limit`` bytes, NAME's stem is cut short (its suffix kept): a name the file system takes still gets
    a temporary file it takes (its 30-odd extra bytes failed names of 225 to 255 bytes), and one still
    recognised as a temporary (:func:`temp_writer`): a cut that would give the shortened name a suffix
    its own lacks (``a.bcd.`` cut to ``a.bc``) is cut further."""
    suffix = Path(name).suffix
    tail = f".{pid}-{token}.tmp{suffix}"
    whole = stem = name[:len(name) - len(suffix)] if suffix else name

    def fits(stem: str) -> bool:
        return len(os.fsencode(f".{stem}{suffix}{tail}")) <= limit and (
            stem == whole or Path(stem + suffix).suffix == suffix)

    while len(stem) > 1 and not fits(stem):
        stem = stem[:-1]
    return f".{stem}{suffix}{tail}"


_TEMP_NAME = re.compile(r"\.(?P<name>.+)\.(?P<pid>[0-9]+)-[0-9a-f]{8}\.tmp(?P<suffix>.*)", re.DOTALL)


def temp_writer(name: str) -> Optional[int]:
    """The process id that wrote ``name`` when it is a temporary file of :func:`atomic_path`
    (exactly its pattern, :func:`temp_name`), else None."""
    m = _TEMP_NAME.fullmatch(name)
    if m is None or Path(m["name"]).suffix != m["suffix"]:
        return None
    return int(m["pid"])


def temp_target(name: str) -> Optional[str]:
    """The name of the file a temporary file ``name`` of :func:`atomic_path` was written for (its
    final name, in the same folder), else None: an error raised while writing names the temporary
    file, which a reader has never seen."""
    m = _TEMP_NAME.fullmatch(name)
    return m["name"] if m is not None and temp_writer(name) is not None else None


def _alive(pid: int) -> bool:
    """Whether a process ``pid`` runs on this machine (this process counts; so does one of another
    user). A pid taken over by a new process since reads as alive: its file stays (the safe side)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except (OSError, OverflowError):
        return True  # it exists (another user's), or we cannot tell: left alone
    return True


def sweep_stale_temps(folder: Union[str, os.PathLike]) -> List[Path]:
    """Remove the temporary files that :func:`atomic_path` left in ``folder`` (not its subfolders)
    when its process was killed between writing and renaming (SIGKILL, a power cut): only files of
    exactly that name pattern whose writer is no longer running. Call it where nothing else writes
    there: a run that has just taken the folder's lock, before it writes. Returns what it removed."""
    removed = []
    try:
        entries = list(os.scandir(folder))
    except OSError:  # no such folder, or one we cannot read: nothing to do
        return removed
    for e in entries:
        pid = temp_writer(e.name)
        if pid is None or not e.is_file(follow_symlinks=False) or _alive(pid):
            continue
        try:
            os.unlink(e.path)
        except OSError:  # gone meanwhile, or not ours to remove: left
            continue
        removed.append(Path(e.path))
    return removed


def _make_folder(path: Path) -> None:
    """Create ``path``'s folder. A file where a folder of it should be raised a bare "File exists" naming
    that file (or "Not a directory"), which read as if ``path`` were in the way: it is named as the file it is."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        blocker = next((p for p in (path.parent, *path.parent.parents) if p.exists() and not p.is_dir()), None)
        if blocker is None:
            raise
        raise NotADirectoryError(errno.ENOTDIR, f"cannot write {str(path)!r} inside a file, not a folder (choose "
                                 "another path, or move that file)", str(blocker)) from None


def _destination(path: Path) -> Path:
    """The file a write to ``path`` replaces. A symbolic link is followed to the file it points to
    (through chains), which is written, the link kept: renaming onto the link itself made a file of it
    and left the file it pointed to as it was, where every ordinary write (``open(path, "w")``) writes
    through it. A link to a file whose folder does not exist (an unmounted disk) is refused, naming both,
    rather than creating that folder. A path that is not a regular file (a device such as
    ``/dev/stdout`` or ``/dev/null``, a FIFO, a socket) is refused: the rename would replace the device
    with a file (as root, for every program on the machine)."""
    if os.path.islink(path):
        target = Path(os.path.realpath(path))
        if not target.parent.is_dir():
            raise FileNotFoundError(errno.ENOENT, f"cannot write {str(path)!r}: it is a symbolic link to "
                                    f"{str(target)!r}, whose folder does not exist (mount or create it, or remove "
                                    "the link to write a file in its place)", str(path))
        path = target
    try:
        mode = os.stat(path).st_mode
    except OSError:  # no file there yet (or none that can be read): the write says what is wrong
        return path
    if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):  # (a folder: os.replace's own IsADirectoryError names it)
        kind = "a FIFO" if stat.S_ISFIFO(mode) else "a socket" if stat.S_ISSOCK(mode) else "a device"
        raise OSError(errno.EINVAL, f"cannot write {str(path)!r} atomically: it is {kind}, not a regular file, and "
                      "an atomic write renames a new file onto its path, which would replace it: give the path of a "
                      "file", str(path))
    return path


@contextmanager
def atomic_path(path: Union[str, os.PathLike]) -> Iterator[Path]:
    """A temporary path beside ``path`` (same folder, same suffix, so writers that infer the format
    from it still do): renamed onto ``path`` when the block ends, removed if it raises. The folder
    is created if needed; the file gets the usual permissions (umask), not a private temp file's.
    An OSError naming the temporary file (a folder that takes no files, a full disk) names ``path``
    instead: the file the caller asked for, not one it never sees (also where a writer writes through
    an atomic_path of its own, whose temporary file is named after this one's). A symbolic link is
    written through (the file it points to is replaced, the link kept); a device, FIFO or socket is
    refused (:func:`_destination`).

    Durable, as checkpoints are (:func:`~adaptive.training.save_checkpoint`, :func:`sync_tree`): the new
    file is flushed to disk (fsync) before the rename and the folder after it, so after a power cut or a
    crash of the machine ``path`` holds the old file or the whole new one, never an empty or cut-short one,
    and the rename itself is on disk (an export or a summary the run reported written is there). The cost
    is the disk write the kernel would otherwise do later, and a wait for the disk on each file (a few
    milliseconds): the recipes write at an evaluation or a checkpoint (metrics.csv), never per batch."""
    path = _destination(Path(path))
    _make_folder(path)
    tmp = path.with_name(temp_name(path.name, os.getpid(), secrets.token_hex(4)))
    try:
        yield tmp
        if os.path.exists(tmp):  # some writers (safetensors) create private 0600 files: the usual permissions instead
            os.chmod(tmp, 0o666 & ~_UMASK)
            _fsync(tmp)
        os.replace(tmp, path)
        _fsync_folder(path.parent)
    except OSError as e:
        _name_target(e, path)
        raise
    finally:
        # os.path, not Path.exists, which raises for a name too long and hid the error that named the file
        if os.path.lexists(tmp):
            tmp.unlink()


def _fsync(path: Path) -> None:
    """Flush the file ``path`` (its data and size) to disk; a file that is not a regular one (a writer's
    folder, which the rename then refuses) is left to that. Through a handle open for writing where the
    file allows one: Windows flushes no other (``os.fsync`` of a read-only descriptor there is
    ``[Errno 9] Bad file descriptor``, which failed every write, checkpoints' included, whose own flush
    had gone through the writer's handle); POSIX flushes either."""
    if not os.path.isfile(path):
        return
    try:
        fd = os.open(path, os.O_RDWR)  # (opening for writing neither truncates nor changes the file)
    except PermissionError:  # a file its writer left read-only to us (a umask without the owner's w): POSIX flushes it so
        fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_folder(folder: Path) -> None:
    """Flush ``folder``'s entries (a rename into it) to disk. Where the system cannot open or sync a folder
    (Windows; some network file systems answer EINVAL) the rename is left to the system, as before."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError as e:
        if e.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF, errno.EACCES):
            raise
    finally:
        os.close(fd)


def sync_tree(folder: Union[str, os.PathLike]) -> None:
    """Flush every file under ``folder`` and each of its folders (``folder`` last) to disk: a folder then
    renamed into place (a checkpoint, :func:`~adaptive.training.save_checkpoint`) is whole on disk before
    its rename is, as :func:`atomic_path` does for one file. (Call :func:`sync_folder` on the folder it is
    renamed in after the rename.)"""
    for dirpath, _, names in os.walk(folder, topdown=False):
        for n in names:
            _fsync(Path(dirpath) / n)
        _fsync_folder(Path(dirpath))


def sync_folder(folder: Union[str, os.PathLike]) -> None:
    """Flush ``folder``'s entries (a rename into it, a removal) to disk, where the system can sync a folder."""
    _fsync_folder(Path(folder))


def _name_target(e: OSError, path: Path) -> None:
    """Make ``e`` name ``path`` where it names a temporary file of :func:`atomic_path` (os.replace's
    error names both: then ``path`` once)."""
    def temporary(name) -> bool:
        return name is not None and temp_target(Path(os.fsdecode(name)).name) is not None

    if temporary(e.filename):
        e.filename = str(path)
        if e.filename2 is not None and os.fsdecode(e.filename2) == str(path):
            del e.filename2  # unset (reads None): set to None, the message would end "-> None"
    elif temporary(e.filename2):
        e.filename2 = str(path)


def atomic_torch_save(obj: Any, path: Union[str, os.PathLike]) -> Path:
    """``torch.save(obj, path)`` atomically (as :func:`atomic_path`: a failed or interrupted save
    leaves the old file or none, never half of one); returns the path.

    The same ``obj`` gives the same bytes in every run: torch names the archive inside a file after
    the path it is given, here the temporary file's random name, so it is handed an open file instead
    (its archive is then named ``archive``, whatever the file's name). An OSError the writer raises
    without a file name (a full disk) names ``path``, not the temporary file a reader never sees.
    The file is flushed to disk before the rename, and the folder after it (:func:`atomic_path`): after a
    power cut or a crash of the machine, ``path`` holds the old file or the whole new one, never an empty
    or cut-short one (checkpoints are what a run resumes from)."""
    import torch

    try:
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            torch.save(obj, f)
    except OSError as e:
        if e.filename is None:  # one naming the temporary file names path already (atomic_path)
            e.filename = str(path)
        raise
    return Path(path)


def write_text(path: Union[str, os.PathLike], text: str) -> Path:
    """Write ``text`` to ``path`` atomically (its folder created if needed); returns the path."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)
