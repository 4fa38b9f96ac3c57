"""A recipe's run folder: one run per folder.

A fresh run into a folder that holds an earlier run would write beside it, leave that run's other
files where a reader takes them for the new run's, and a later resume could splice the two runs. The
recipes (``recipes/adaptive.py``, ``recipes/prune_pretrained.py``) therefore refuse such a run
unless told ``--overwrite``, delete with ``--overwrite`` only the earlier run's own files (each
recipe names them), and hold an exclusive lock on the folder while they run, so that a second run
into it is refused instead of interleaving its files with the first one's.
"""
from __future__ import annotations

import itertools
import os
import re
import shutil
import stat
import time
from pathlib import Path
from typing import Callable, Collection, Iterable, List, Optional, Sequence

# what `python -m graphs` and `recipes/diagnostics.py progress` write into a run folder by default
DERIVED_DIRS = ("graph_report",)
DERIVED_FILES = DERIVED_DIRS + tuple(f"connectome_{lv}.{fmt}" for lv in ("synapse", "unit", "layer")
                                     for fmt in ("graphml", "gexf", "json", "pt")) + (
    "compact_model.pt", "progress.png", "progress.svg")
# what `python -m graphs` writes into a run folder for one of its checkpoints (RUN/checkpoints/step_N):
# the names above, with the checkpoint's step (graphs.run_files)
_STEP_DERIVED = re.compile(r"(graph_report|connectome_(synapse|unit|layer))_step_\d+(\.(graphml|gexf|json|pt))?"
                           r"|compact_model_step_\d+\.pt")


def checkpoint_exports(output_dir: Path) -> List[str]:
    """The exports of the run's checkpoints that ``output_dir`` holds, as names in it, named by their
    step (``connectome_unit_step_00000040.graphml``, ``graph_report_step_00000040``,
    ``compact_model_step_00000040.pt``): derived from the run as :data:`DERIVED_FILES` are, and
    deleted with it by --overwrite, so that a rerun's folder holds no graph of another run's step."""
    try:
        return sorted(p.name for p in Path(output_dir).iterdir() if _STEP_DERIVED.fullmatch(p.name))
    except OSError:  # no folder (yet): nothing derived
        return []


class RunFolderError(RuntimeError):
    """A run folder this run may not write into (an earlier run is there, or another run holds it)."""


def broadcast_str(accelerator, value: str) -> str:
    """The main process's ``value`` on every process."""
    if accelerator.num_processes == 1:
        return value
    from accelerate.utils import broadcast_object_list

    box = [value]
    broadcast_object_list(box, from_process=0)
    return box[0]


def not_a_folder(output_dir, option: str = "--output_dir") -> Optional[str]:
    """Why ``output_dir`` cannot be made a folder (it, or a folder above it, is a file), naming
    ``option`` and the fix; None when it can. Recipes check it before any data is loaded."""
    path = Path(os.path.abspath(output_dir))
    for p in (path, *path.parents):
        if p.exists():
            if p.is_dir():
                return None
            what = "is a file" if p == path else f"lies under {p}, which is a file"
            return f"{option} {output_dir} {what}, not a folder: give a folder path"
    return None


def existing(output_dir: Path, names: Iterable[str]) -> List[str]:
    """Those of ``names`` that exist in ``output_dir``, in order."""
    return [n for n in names if (Path(output_dir) / n).exists()]


def refuse_earlier_run(output_dir: Path, earlier: Sequence[str], *, overwrite: bool, weights: Optional[str],
                       doomed: Iterable[Path], resume_hint: str = "", error: type = RunFolderError) -> None:
    """Refuse a fresh run into ``output_dir`` when it holds an earlier run (``earlier``: the files
    found, empty when none) unless ``overwrite``; with ``overwrite``, refuse when the ``weights``
    file is among the ``doomed`` files that --overwrite deletes. ``resume_hint`` ("continue it with
    ..., ") is said first when the earlier run can be continued."""
    output_dir = Path(output_dir)
    if overwrite:
        doomed = {Path(p).resolve() for p in doomed}
        if weights and Path(weights).resolve() in doomed:
            raise error(f"--weights {weights} is one of the files --overwrite deletes in {output_dir}: "
                        "copy it elsewhere first, or give another --output_dir")
    if not earlier or overwrite:
        return
    raise error(
        f"{output_dir} holds an earlier run ({', '.join(earlier[:4])}{' ...' if len(earlier) > 4 else ''}): "
        + resume_hint
        + "start afresh in another --output_dir, or add --overwrite to delete that run and start afresh there")


def delete_files(output_dir: Path, names: Sequence[str], trees: Collection[str] = ()) -> None:
    """Delete ``output_dir/NAME`` for each of ``names``, in order: a file, or a whole folder when
    NAME is one of ``trees``; nothing else (a folder not in ``trees`` stays, and a symbolic link
    to a folder is never followed)."""
    for n in names:
        f = Path(output_dir) / n
        if f.is_file() or (f.is_symlink() and not f.is_dir()):
            f.unlink()
        elif f.is_dir() and not f.is_symlink() and n in trees:
            shutil.rmtree(f)


def refuse_other_recipe(output_dir: Path, markers: Sequence[str], recipe: str, error: type = None) -> None:
    """Refuse ``output_dir`` when it holds a run of another recipe (any of ``markers``): neither a
    fresh run beside it nor --overwrite (which knows only its own recipe's files) may touch it."""
    found = existing(Path(output_dir), markers)
    if found:
        raise (error or RunFolderError)(
            f"{output_dir} holds a run of {recipe} ({', '.join(found[:4])}): give this run another --output_dir "
            "(--overwrite deletes only this recipe's own runs)")


def _busy_message(folder: Path, who: str) -> str:
    """The refusal of a run into ``folder``, whose lock another run (process ``who``, "" unknown) holds."""
    return (f"another run is writing into {folder}{f' (process {who})' if who else ''}: "
            "wait for it to finish, or give this one another --output_dir")


def busy(output_dir) -> str:
    """Why a run may not use ``output_dir`` now: another run holds its lock (:class:`RunLock`), said
    as its refusal; "" when none does (no folder, no lock file, or a lock file that a killed run left,
    whose lock the system let go of with the process). Takes nothing: a --resume asks it before it
    reads the run's checkpoints and settings, which a live run is rewriting (it rotates its
    checkpoints: one read half-deleted was called damaged), instead of only at :meth:`RunLock.acquire`
    after minutes of data loading. It holds the lock shared for an instant (a run taking it meanwhile
    tries again, :meth:`RunLock._lock`). A ``.lock`` that is no plain file (a folder, a link, a pipe)
    is refused here too (:func:`_lock_file_problem`); a pipe is not opened (a reader waited on it forever)."""
    import fcntl

    path = Path(output_dir) / ".lock"
    problem = _lock_file_problem(path)
    if problem:
        return problem
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:  # no lock file (no run holds the folder), or none we can read: RunLock.acquire says
        return ""
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            return _busy_message(Path(output_dir), _holder(fd))
        return ""
    finally:
        os.close(fd)  # (closing lets go of the shared lock)


def _holder(fd: int) -> str:
    """The process a lock file names (its first bytes, as text; "" for none)."""
    try:
        return os.pread(fd, 64, 0).decode("utf-8", "replace").strip()
    except OSError:
        return ""


def _lock_file_problem(path: Path) -> str:
    """Why ``path`` cannot be a run folder's lock file as it is: a folder, a link (a run wrote its
    process id into the file it pointed to, then removed the link), a pipe or device; "" for a plain
    file or none."""
    try:
        mode = os.lstat(path).st_mode
    except OSError:
        return ""
    if stat.S_ISREG(mode):
        return ""
    if stat.S_ISLNK(mode):
        what = f"a link (to {os.readlink(path)})"
    else:
        what = "a folder" if stat.S_ISDIR(mode) else "no plain file"
    return (f"{path} is {what}, where a run keeps the lock file of --output_dir {path.parent}: remove it, or "
            "give another --output_dir")


def busy_at_start(output_dir) -> str:
    """:func:`busy`, asked before a multi-process launch's process group exists, on the process that
    will take the lock (:class:`RunLock`: the main process, ``RANK`` 0); "" on every other. The others
    asked too, each at its own moment: one found busy what the main process had not (a run that ended
    between the two) and stopped alone, or found its own launch's lock, which the main process took
    before this one started, and refused the launch it belongs to."""
    if os.environ.get("RANK", "0") not in ("0", ""):
        return ""
    return busy(output_dir)


def _same_file(fd, path: Path) -> bool:
    """Whether the open file ``fd`` is still the one at ``path`` (not unlinked or replaced)."""
    try:
        return os.fstat(fd.fileno()).st_ino == os.stat(path).st_ino
    except FileNotFoundError:
        return False


WRITABLE_FIX = "give an --output_dir this user can write into (or make that folder writable)"


def unwritable_problem(out) -> Optional[str]:
    """Why no run can write into the output folder ``out`` (None: it can): checked before a recipe reads its
    data, which an unwritable folder met only when its lock was taken, after minutes of data loading (an
    ImageNet folder scan, CIFAR-10's decoding). A temporary file is made and removed in ``out``, or in the
    nearest folder above it that exists (the run makes the rest); nothing is left."""
    import tempfile

    folder = Path(out)
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        return None  # (a file on the way: the options' own check names it)
    try:
        tempfile.TemporaryFile(dir=folder).close()
    except OSError as e:
        where = "" if folder == Path(out) else f" (its nearest existing folder {folder})"
        return f"cannot write into --output_dir {out}{where}: {e.strerror or e}: {WRITABLE_FIX}"
    return None


class RunLock:
    """An exclusive lock on the run folder (main process), taken just before the run first writes
    there and held to its end: a second run into the same folder is refused instead of
    interleaving its files and checkpoints with this one's. A command refused earlier creates
    nothing. Raises ``error`` (every process) when the folder is held or cannot be written.
    ``release()`` removes the lock file (a finished run leaves none); ``release(refused=True)`` (a
    run stopped by an error or Ctrl-C) also takes back the folders taking the lock made (parents
    too) where the run wrote nothing. A killed run's lock file stays, but the system let go of its
    lock with the process: the next run, or a --resume, takes it as its own."""

    made_folders: List[Path] = []

    def __init__(self, accelerator, output_dir: Path, error: type = RunFolderError):
        self.accelerator, self.path, self.fd, self.error = accelerator, Path(output_dir) / ".lock", None, error

    def acquire(self, recheck: Optional[Callable[[], None]] = None) -> None:
        """Take the lock; then ``recheck()`` (raising ``error``) sees whether a run that ended while
        this one was starting left an earlier run in the folder."""
        busy = ""
        if self.accelerator.is_main_process and self.fd is None:
            # the folders the lock is about to make, innermost first (a refused run takes them back)
            self.made_folders = list(itertools.takewhile(lambda p: not p.exists(), self.path.parents))
            busy = self._lock()
            if not busy and recheck is not None:  # a run that ended while this one was starting
                try:
                    recheck()
                except self.error as e:
                    busy = str(e)
            if not busy:  # held, before anything is written: what a killed run's writes left goes
                self.sweep()
        busy = broadcast_str(self.accelerator, busy)
        if busy:
            self.release()
            raise self.error(busy)

    def sweep(self) -> None:
        """(main process, once the lock is held, before the run writes) Remove the temporary files
        that a run killed mid-write left (:func:`adaptive.atomic.sweep_stale_temps`: only files of
        the atomic writes' own name pattern whose writer is gone) in the folder and the folders in
        it (a prune_pretrained run's ``remove_*``); a folder reached through a link is left alone.
        The lock excludes every other run, so nothing of a live run is here; with --overwrite too."""
        from .atomic import sweep_stale_temps

        folder = self.path.parent
        sweep_stale_temps(folder)
        try:
            inside = [d for d in folder.iterdir() if d.is_dir() and not d.is_symlink()]
        except OSError:  # housekeeping: never a reason to stop the run (or hang its other processes)
            inside = []
        for d in inside:
            sweep_stale_temps(d)

    def _lock(self) -> str:
        """Lock the file at ``self.path`` (main process): "" once held, else why not."""
        import fcntl

        tries = 10
        while True:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                # never through a link (its target was truncated to our process id) nor into a pipe
                fd = os.fdopen(os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW | os.O_NONBLOCK,
                                       0o666), "a+")
            except OSError as e:  # a folder that is a file, no permission: every process hears it
                problem = _lock_file_problem(self.path)  # ("Is a directory" was said of --output_dir)
                if problem:
                    return problem
                if os.path.lexists(self.path):  # (the folder may well be writable: the file is not)
                    return (f"cannot open the lock file {self.path} of --output_dir {self.path.parent}: "
                            f"{e.strerror or e}: remove it (no run holds it: a run holding it is named), or "
                            "give another --output_dir")
                return (f"cannot write into --output_dir {self.path.parent}: {e.strerror or e}: {WRITABLE_FIX}")
            if not stat.S_ISREG(os.fstat(fd.fileno()).st_mode):  # a pipe or device: no lock file to write
                fd.close()
                return _lock_file_problem(self.path) or f"{self.path} is no plain file: remove it"
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                if tries > 0:  # (a --resume's :func:`busy` holds it shared for an instant: try again)
                    fd.close()
                    tries -= 1
                    time.sleep(0.05)
                    continue
                who = _holder(fd.fileno())
                fd.close()
                return _busy_message(self.path.parent, who)
            if _same_file(fd, self.path):
                break
            fd.close()  # a run that wrote nothing took its lock file away between our open and flock: again
        fd.seek(0)
        fd.truncate()
        fd.write(str(os.getpid()))
        fd.flush()
        self.fd = fd
        return ""

    def release(self, refused: bool = False) -> None:
        """Release the lock, taking its lock file away (a run leaves no ``.lock`` behind);
        ``refused``: the run stopped on an error or Ctrl-C, and where it wrote nothing the folders
        it made go too, while they hold nothing. The file goes while the lock is still held: a run
        that opened it meanwhile finds it unlinked once it gets the lock, and takes a new one."""
        if self.fd is None:
            return
        folder = self.path.parent
        wrote_nothing = refused and [p.name for p in folder.iterdir()] == [".lock"]
        if _same_file(self.fd, self.path):
            self.path.unlink()  # a folder that was there stays (empty when this run wrote nothing)
        if wrote_nothing:
            for made in self.made_folders:
                if not made.is_dir() or any(made.iterdir()):
                    break  # something else was written there meanwhile: it stays, and so do its parents
                made.rmdir()
        self.fd.close()  # closing releases the lock
        self.fd = None


def refuse_result_folder(output_dir: Path, markers: Sequence[str], recipe: str, error: type = None) -> None:
    """Refuse an ``output_dir`` that is a result folder (``remove_*``) of a run in its parent folder
    (any of ``markers`` there): that run's lock does not cover it, and it writes there at its end."""
    out = Path(output_dir).resolve()
    if out.name.startswith("remove_") and existing(out.parent, markers):
        raise (error or RunFolderError)(
            f"{output_dir} is a result folder of the {recipe} run in {out.parent}: give this run another --output_dir")


def read_settings(path: Path, fix: str, error: type = RunFolderError) -> Optional[dict]:
    """The settings a run recorded in ``path`` (its config.yaml), read before a resume does any work;
    None when there is no such file. A damaged file raises ``error`` naming it, with ``fix``."""
    import yaml

    from .yaml_read import DuplicateKeyError, load_yaml

    path = Path(path)
    if not path.is_file():
        return None
    try:
        with open(path, "rb") as f:
            saved = load_yaml(f.read().decode("utf-8"))
    except DuplicateKeyError as e:  # (the recipe writes each key once: an edited file, whose settings are ambiguous)
        raise error(f"--resume: {path} is damaged ({e}), so the settings of the run cannot be checked; {fix}") from None
    except yaml.YAMLError as e:
        where = getattr(e, "problem_mark", None)
        raise error(f"--resume: {path} is damaged (not valid YAML{f' at line {where.line + 1}' if where else ''}), "
                    f"so the settings of the run cannot be checked; {fix}") from None
    except UnicodeDecodeError:
        raise error(f"--resume: {path} is damaged (not UTF-8 text), so the settings of the run cannot be "
                    f"checked; {fix}") from None
    if not isinstance(saved, dict) or not saved:
        raise error(f"--resume: {path} is damaged ({'empty' if saved in (None, {}) else 'not a mapping of settings'}), "
                    f"so the settings of the run cannot be checked; {fix}")
    return saved


def normalised_settings(d: dict) -> dict:
    """Settings that mean the same run written alike: no mixed precision, the CPU without a GPU."""
    d = dict(d)
    if d.get("mixed_precision") in (None, "no"):
        d["mixed_precision"] = "no"
    if "cpu" in d:
        import torch

        if not torch.cuda.is_available():
            d["cpu"] = True
    return d


def changed_settings(saved: dict, now: dict, may_change: Collection[str]) -> List[str]:
    """Each setting of ``now`` that the run recorded (``saved``) with another value, as
    ``"KEY: run OLD, now NEW"``; the keys in ``may_change`` (a resume may change them) aside."""
    return [f"{k}: run {saved[k]!r}, now {now[k]!r}" for k in now
            if k in saved and k not in may_change and saved[k] != now[k]]
