"""Where data and caches live.

Data is looked for, in order: an explicit ``data_dir`` (``--data-dir``), the ``ADAPTIVE_DATA``
environment variable, ``<repo root>/../shared/data`` (repo root = the folder holding the
``adaptive`` package; a source or editable checkout only: an installed package's folder is
site-packages, with no repository beside it), and ``~/.cache/adaptive/data``. Caches (decoded image tensors) go to
``ADAPTIVE_CACHE`` or ``~/.cache/adaptive``, never inside the repository.
"""
from __future__ import annotations

import os
import socket
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, List, Optional, Sequence, Union

PathLike = Union[str, os.PathLike]
# seconds a download waits on the network at a time (a firewall that drops packets would otherwise hang it)
DOWNLOAD_TIMEOUT_S = 30.0

REPO_ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"
# a source or editable checkout (not site-packages): only then is there a repository to look beside
IN_CHECKOUT = (REPO_ROOT / "pyproject.toml").is_file()


class DatasetNotFoundError(FileNotFoundError):
    """A dataset is not on disk where the project looks for it."""


def absolute_if_exists(value):
    """``value`` as an absolute path when it names an existing file or folder (so a saved
    configuration reruns from any working directory), else unchanged."""
    if isinstance(value, str) and value and os.path.exists(value):
        return os.path.abspath(value)
    return value


def empty_path_problem(value, option: str, fix: str) -> Optional[str]:
    """Why the path option ``option``, given as ``value``, names no path: empty or only whitespace (``--out
    "$DIR"`` with DIR unset, a stray quote), which must not quietly mean the default or a folder named by a
    space; the message names ``fix`` (what to give instead). None where ``value`` is None (left out) or
    names a path."""
    if isinstance(value, str) and not value.strip():
        return f"{option} is empty ({value!r}): give {fix}"
    return None


def home_expanded(value):
    """``value`` with a leading ``~`` read as the home folder, as the shell would have read it (the shell
    leaves ``--out=~/x`` and a config file's ``~/x`` alone: a folder called ``~`` was made in the working
    directory, or the path was 'does not exist'); any other value unchanged. Expanded before any other
    reading of the path, so a literal ``./~`` folder is never the one meant."""
    return os.path.expanduser(value) if isinstance(value, str) and value.startswith("~") else value


def repo_relative(path: PathLike) -> str:
    """``path`` as a committed table prints it: relative to the repository root when inside it (the
    same on every machine), else as given."""
    p, root = Path(path).resolve(), Path(REPO_ROOT).resolve()
    return p.relative_to(root).as_posix() if p.is_relative_to(root) else str(path)


def cache_dir(path: Optional[PathLike] = None) -> Path:
    """Folder for derived caches: ``path``, else $ADAPTIVE_CACHE, else ``~/.cache/adaptive``."""
    if path is not None:
        return Path(path).expanduser()
    env = os.environ.get("ADAPTIVE_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "adaptive"


def candidate_data_dirs(data_dir: Optional[PathLike] = None) -> List[Path]:
    """The data folders searched, in order. An explicit ``data_dir`` is the only candidate."""
    if data_dir is not None and str(data_dir) != "":
        return [Path(data_dir).expanduser()]
    dirs = []
    env = os.environ.get("ADAPTIVE_DATA")
    if env:
        dirs.append(Path(env).expanduser())
    dirs += [SHARED_DATA] if IN_CHECKOUT else []
    dirs += [cache_dir() / "data"]
    return dirs


def resolve_data_dir(data_dir: Optional[PathLike] = None) -> Path:
    """The data folder to use: explicit arg, else $ADAPTIVE_DATA, else ``../shared/data`` from the
    repo root if it exists (a checkout), else ``~/.cache/adaptive/data`` (also the place downloads go)."""
    if data_dir is not None and str(data_dir) != "":
        return Path(data_dir).expanduser()
    if os.environ.get("ADAPTIVE_DATA"):
        return Path(os.environ["ADAPTIVE_DATA"]).expanduser()
    return SHARED_DATA if IN_CHECKOUT and SHARED_DATA.is_dir() else cache_dir() / "data"


def find_data(name: str, relpaths: Sequence[str], data_dir: Optional[PathLike] = None,
              how: str = "") -> Path:
    """First existing ``<dir>/<relpath>`` over the candidate dirs and ``relpaths``.

    Raises :class:`DatasetNotFoundError` with one line naming every path tried and how to get
    the data (``how`` adds dataset-specific advice).
    """
    tried = []
    dirs = candidate_data_dirs(data_dir)
    for d in dirs:
        for rel in relpaths:
            p = d / rel
            if p.exists():
                if not (data_dir is not None and str(data_dir) != ""):  # (--data-dir given: ADAPTIVE_DATA unread)
                    _warn_env_passed_over(name, d, relpaths)
                return p
            tried.append(str(p))
    raise DatasetNotFoundError(
        f"dataset {name!r} not found; looked in: {', '.join(tried)}. Point --data-dir (data_dir= in Python, or the "
        f"ADAPTIVE_DATA environment variable) at a folder holding it"
        + _found_above(dirs, relpaths) + (f", {how}" if how else "") + "."
    )


# (ADAPTIVE_DATA, dataset, folder used) already warned of: once a process, though a dataset's facts and its
# builder both look for it
_ENV_WARNED: set = set()


def _warn_env_passed_over(name: str, used: Path, relpaths: Sequence[str] = ()) -> None:
    """Warn where ``ADAPTIVE_DATA`` is set but dataset ``name`` was read from ``used``, a later default folder:
    ``ADAPTIVE_DATA`` names no folder (a typo, a file), or a folder that holds the dataset in no layout looked
    for (the dataset's own folder itself, torchvision's ``MNIST/raw``), which ``--data-dir`` may read: said
    (once a process), not passed over silently, for the same folder must not give other data as one or the other."""
    from .warn import warn_user

    env = os.environ.get("ADAPTIVE_DATA")
    if not env or used == Path(env).expanduser() or (env, name, used) in _ENV_WARNED:
        return
    _ENV_WARNED.add((env, name, used))
    if Path(env).expanduser().is_dir():
        looked = ", ".join(str(Path(env).expanduser() / rel) for rel in relpaths[:4])
        warn_user(f"ADAPTIVE_DATA={env} holds no dataset {name!r} where it is looked for ({looked}): it was read from "
                  f"{used} instead; lay it out so under ADAPTIVE_DATA, or give its folder as --data-dir (data_dir= in "
                  "Python), which also reads a dataset's own folder")
        return
    what = "a file, not a folder" if os.path.exists(os.path.expanduser(env)) else "no such folder"
    warn_user(f"ADAPTIVE_DATA={env} is {what}: dataset {name!r} was read from {used} instead; point ADAPTIVE_DATA "
              "at the folder holding the data (or unset it)")


def _found_above(dirs: Sequence[Path], relpaths: Sequence[str]) -> str:
    """Where a data folder one or two levels up holds the dataset (a --data-dir given as another
    dataset's folder, or as the dataset's own train/): `` (--data-dir PARENT holds it: FOUND)``, else ""."""
    for d in dirs:
        for up in list(Path(os.path.abspath(d)).parents)[:2]:
            for rel in relpaths:
                if (up / rel).exists():
                    return f" (--data-dir {up} holds it: {up / rel})"
    return ""


@contextmanager
def downloading(name: str, root: PathLike) -> Iterator[None]:
    """Around a torchvision download of dataset ``name`` into ``root``: the network waited on for at
    most :data:`DOWNLOAD_TIMEOUT_S` at a time (unless a socket timeout is set already), and a failed
    download (no internet, a server down, a file that fails its checksum) raised as a
    :class:`DatasetNotFoundError` that says so and names the fix, not as torchvision's bare URL error.
    Any other error (a full disk or a folder it may not write, a read error after the download) is
    raised as it is, an OS error without a file named then naming ``root``: it is no matter of internet.
    A failed download takes away the folders it made that it left empty (:func:`_new_folders`), never a
    folder that was there before, nor any file.

    The processes of one launch that download into the same ``root`` take turns (:func:`_download_lock`):
    one downloads, the others then find its files (torchvision checks them and downloads nothing), so
    that none writes a file another is writing, and none takes away, after its own download failed, an
    empty folder another has just made for its files.

    The timeout is Python's process-wide socket default (torchvision's downloaders take no timeout):
    it reaches only sockets made while the download runs (a socket takes it when made), at dataset
    construction, before any DataLoader worker starts."""
    with _download_lock(name, root):
        before = socket.getdefaulttimeout()
        socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S if before is None else before)
        remove_new = _new_folders(Path(root))  # (taken in turn: the folders the process ahead made are there)
        try:
            with _download_errors(name, root):
                yield
        except BaseException:  # (Ctrl-C too)
            remove_new()
            raise
        finally:
            socket.setdefaulttimeout(before)


@contextmanager
def _download_lock(name: str, root: PathLike) -> Iterator[None]:
    """Held while dataset ``name`` is downloaded (into ``root``): an exclusive lock on a file in the cache folder
    (:func:`cache_dir`, ``.download-<name>.lock``; never in the data folder, which a failed download may take
    away), so the processes of one launch (or any two on this machine) download into one folder one after
    another. One file a dataset, whatever the folder (downloads of it into two folders at once take turns too),
    so that the files left behind stay as few as the datasets, not one for every folder ever downloaded into.
    Where no lock can be taken (no fcntl, a cache folder that takes no file, a file system without locks) it
    holds none, as before, and an error of the download says nothing of the lock."""
    try:
        import fcntl

        folder = cache_dir()
        folder.mkdir(parents=True, exist_ok=True)
        fd = open(folder / f".download-{name}.lock", "a")
    except (ImportError, OSError):
        fd = None
    if fd is None:  # (yielded outside the except: the download's own error is not chained to the lock's)
        yield
        return
    with fd:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError:  # a file system without locks: each process downloads, as before
            pass
        yield  # (closing the file releases the lock)


def _new_folders(root: Path):
    """A function that removes the folders made under ``root`` (``root`` and those of its parents made
    too) since this call, where they are empty (a failed download's leftovers), bottom-up: a folder
    that was there, or holds a file, stays."""
    top = Path(os.path.abspath(root))
    while not top.parent.exists() and top.parent != top:
        top = top.parent  # the first folder the download will make, or root itself where it exists
    there = {Path(d) for d, _, _ in os.walk(top)} if top.exists() else set()

    def remove() -> None:
        for d, _, _ in sorted(os.walk(top), key=lambda w: -len(Path(w[0]).parts)):
            if Path(d) not in there:
                try:
                    os.rmdir(d)  # only an empty folder goes
                except OSError:
                    pass
    return remove


@contextmanager
def _download_errors(name: str, root: PathLike) -> Iterator[None]:
    """:func:`downloading`'s errors: a network failure as a :class:`DatasetNotFoundError` naming the fix,
    an OS error without a file named naming ``root``, any other as it is."""
    try:
        yield
    except Exception as e:  # noqa: BLE001 - told apart below; the rest raised as they are
        if not _network_failure(e):
            if isinstance(e, OSError) and e.errno is not None and e.filename is None:  # (ENOSPC on a write)
                raise OSError(e.errno, f"{e.strerror or e} while writing dataset {name!r} into its folder",
                              str(root)) from e
            raise
        said = " ".join(str(e).split())  # (torchvision's for MNIST spans lines)
        raise DatasetNotFoundError(
            f"dataset {name!r} could not be downloaded into {root} ({type(e).__name__}: {said}); "
            f"without internet, put a copy of it in a folder and point --data-dir (or the ADAPTIVE_DATA "
            f"environment variable) at that folder (docs/data.md), or retry --download where there is internet"
        ) from e


# torchvision's RuntimeErrors of a failed download: MNIST's after every mirror failed, and a downloaded file
# that fails its checksum (a download cut short)
_DOWNLOAD_RUNTIME_ERRORS = ("Error downloading", "File not found or corrupted")


def _network_failure(e: BaseException) -> bool:
    """Whether ``e`` is a download that failed on the network: urllib's URLError (HTTPError included), a
    timeout, a refused or reset connection, a name that does not resolve, a broken HTTP reply, or
    torchvision's RuntimeError saying a download failed."""
    import http.client
    import urllib.error

    if isinstance(e, (urllib.error.URLError, TimeoutError, socket.timeout, ConnectionError, socket.gaierror,
                      socket.herror, http.client.HTTPException)):
        return True
    return isinstance(e, RuntimeError) and str(e).lstrip().startswith(_DOWNLOAD_RUNTIME_ERRORS)
