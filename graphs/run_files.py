"""Where the command line finds a run's connectome: the run folder's ``connectome.safetensors``, a
training checkpoint of ``recipes/adaptive.py`` (``RUN/checkpoints/step_N``, whose connectome is the
state Accelerate saved in ``custom_checkpoint_0.pkl`` and whose weights are ``model.safetensors``), or
the one result folder of a ``prune_pretrained.py`` run (``remove_<target>``).

A folder with no connectome of its own is taken for the one candidate it holds (a checkpoint, a
target's folder), with a note saying which; several are refused, listing them, since which one the
user means is theirs to say.

A command looks at its connectome file several times (:func:`locate` finds it, the command line checks
it, guesses the class count from its layers, then loads it): within :func:`read_once` each file is
read from disk once.
"""
from __future__ import annotations

import glob
import os
import re
import sys
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional

CONNECTOME_FILE = "connectome.safetensors"
CHECKPOINT_WEIGHTS = ("model.safetensors", "pytorch_model.bin")  # what Accelerate's save_state writes
# a mask-only run's checkpoint, and the command that continues its run (in the run folder ``{run}``)
STAGE_CHECKPOINTS = {
    "checkpoint.pt": "python recipes/prune_pretrained.py --config {config} --resume --output_dir {run}",
    "mask_only_checkpoint.pt": "python recipes/adaptive.py --config {config} --resume latest --output_dir {run}",
}


# what :func:`read_once` has read: (what, absolute path) -> the result
_READ: ContextVar[Optional[dict]] = ContextVar("graphs_run_files_read", default=None)


@contextmanager
def read_once():
    """Within it, :func:`connectome_state` (and :func:`remembered` reads) read each file once: a later
    call for the same file returns what the first one read (the same object: callers only read it).
    Nested uses share the outer one's reads; leaving the outermost forgets them, so a file rewritten
    between two commands is read afresh."""
    if _READ.get() is not None:
        yield
        return
    token = _READ.set({})
    try:
        yield
    finally:
        _READ.reset(token)


def remembered(what: str, path: str, read):
    """``read(path)``, read once per file within :func:`read_once` (``what`` names the kind of read);
    outside it, read on every call."""
    memo = _READ.get()
    if memo is None:
        return read(path)
    key = (what, os.path.abspath(path))
    if key not in memo:
        memo[key] = read(path)
    return memo[key]


@dataclass
class RunFiles:
    """What :func:`locate` found: the ``connectome`` file (a safetensors file, or a connectome state
    saved with torch.save), the ``source`` folder whose config.yaml and weights go with it, the
    folder ``out_dir`` that default outputs go into and the ``suffix`` their names take
    (``_step_00000040`` for a checkpoint, whose own folder Accelerate rotates away); ``weights``: the weights file
    read into the model, once :func:`graphs.cli.load_run` has chosen it (None: none)."""

    connectome: str
    source: str
    out_dir: str
    suffix: str = ""
    checkpoint: bool = False
    weights: Optional[str] = None


def is_checkpoint(folder: str) -> bool:
    """Whether ``folder`` is an Accelerate checkpoint (model weights and registered objects)."""
    return (any(os.path.isfile(os.path.join(folder, w)) for w in CHECKPOINT_WEIGHTS)
            and bool(glob.glob(os.path.join(glob.escape(folder), "custom_checkpoint_*.pkl"))))


def connectome_state(path: str) -> Optional[dict]:
    """The connectome state_dict a torch.save file holds (``conn.state_dict()``, as Accelerate saves it
    in a checkpoint), read with ``weights_only=True``; None when the file holds anything else. Read
    once per file within :func:`read_once`."""
    return remembered("connectome_state", path, _read_connectome_state)


def _read_connectome_state(path: str) -> Optional[dict]:
    import torch

    from adaptive.connectome import FORMAT

    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - not a torch file, or one holding more than tensors: no connectome
        return None
    return sd if isinstance(sd, dict) and sd.get("format") == FORMAT and isinstance(sd.get("masks"), dict) else None


def _checkpoint_connectome(folder: str) -> str:
    """The file of a checkpoint folder that holds the connectome (``custom_checkpoint_0.pkl`` in the
    recipe's registration order; the others are tried where that is not it)."""
    files = sorted(glob.glob(os.path.join(glob.escape(folder), "custom_checkpoint_*.pkl")),
                   key=lambda p: [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", os.path.basename(p))])
    for f in files:
        if connectome_state(f) is not None:
            return f
    raise FileNotFoundError(f"checkpoint {folder} holds no connectome state (none of {', '.join(os.path.basename(f) for f in files)} "
                            "is one): it was not written by recipes/adaptive.py; pass --connectome PATH")


def _checkpoints(folder: str) -> List[str]:
    """The complete checkpoints (``step_N``) in ``folder`` or its ``checkpoints`` folder, oldest first."""
    from adaptive.training import CHECKPOINT_DIR, list_checkpoints

    found = list_checkpoints(os.path.join(folder, CHECKPOINT_DIR)) or list_checkpoints(folder)
    return [str(p) for p in found if is_checkpoint(str(p))]


def _targets(folder: str) -> List[str]:
    """The ``remove_<target>`` folders of a prune_pretrained.py run that hold a connectome."""
    return sorted(d for d in glob.glob(os.path.join(glob.escape(folder), "remove_*"))
                  if os.path.isfile(os.path.join(d, CONNECTOME_FILE)))


def _checkpoint_files(folder: str, connectome: Optional[str] = None) -> RunFiles:
    """A checkpoint folder: its connectome state (or ``connectome``), its config.yaml and weights;
    outputs go to the run folder."""
    from adaptive.integrity import check_manifest

    problem = check_manifest(folder)
    if problem:
        raise ValueError(f"checkpoint {folder} is damaged: {problem}; pass another checkpoint of the run")
    from adaptive.training import run_dir_of

    return RunFiles(connectome or _checkpoint_connectome(folder), folder, str(run_dir_of(Path(folder))),
                    f"_{os.path.basename(os.path.normpath(folder))}", checkpoint=True)


def locate(run: str, connectome: Optional[str] = None) -> RunFiles:
    """The connectome that ``run`` (a run folder, a checkpoint folder, a run's ``checkpoints`` folder,
    or a connectome file) names, or ``connectome`` where given. Raises FileNotFoundError naming what
    to pass where there is none, or several to choose from."""
    if not os.path.exists(run):
        raise FileNotFoundError(f"no run folder or connectome file at {run!r}: pass a run folder holding "
                                f"{CONNECTOME_FILE} (or the .safetensors file itself)")
    if not os.path.isdir(run):
        folder = os.path.dirname(os.path.abspath(run))
        if connectome is None and is_checkpoint(folder) and connectome_state(run) is not None:
            return _checkpoint_files(folder, run)  # a checkpoint's custom_checkpoint_0.pkl: the checkpoint's files
        return RunFiles(connectome or run, folder, folder)
    if connectome is not None:  # a checkpoint's outputs go into its run folder all the same (it is rotated away)
        return _checkpoint_files(run, connectome) if is_checkpoint(run) else RunFiles(connectome, run, run)
    own = os.path.join(run, CONNECTOME_FILE)
    if os.path.isfile(own):
        return RunFiles(own, run, run)
    if is_checkpoint(run):
        return _checkpoint_files(run)
    targets, checkpoints = _targets(run), _checkpoints(run)
    if len(targets) + len(checkpoints) == 1:
        chosen = (targets + checkpoints)[0]
        what = "target folder" if targets else "checkpoint"
        print(f"note: {run} holds no {CONNECTOME_FILE}; reading its only {what}, {chosen}", file=sys.stderr)
        return _checkpoint_files(chosen) if checkpoints else RunFiles(os.path.join(chosen, CONNECTOME_FILE), chosen, chosen)
    if targets and not checkpoints:  # a prune_pretrained.py run of several targets: one folder each
        raise FileNotFoundError(f"no connectome at {own!r}: {run} is a run of several targets, one folder "
                                f"each; pass one of them: {', '.join(targets)}")
    if checkpoints:
        from adaptive.training import CHECKPOINT_DIR

        every = targets + checkpoints
        final = os.path.join(os.path.dirname(os.path.abspath(run)), CONNECTOME_FILE)
        listed = f"{', '.join(every)}; the checkpoints oldest first"
        if os.path.basename(os.path.normpath(run)) == CHECKPOINT_DIR and os.path.isfile(final):
            raise FileNotFoundError(f"{run} holds {len(checkpoints)} checkpoints and no {CONNECTOME_FILE}: pass one of "
                                    f"them in its place ({listed}), or the run folder {os.path.dirname(final)} for the "
                                    "run's final connectome")
        raise FileNotFoundError(
            f"{run} holds no {CONNECTOME_FILE} (its run has not finished, or was stopped) but {len(checkpoints)} "
            f"checkpoints{f' and {len(targets)} target folders' if targets else ''}: pass one of them in its place "
            f"({listed})")
    stage = [n for n in STAGE_CHECKPOINTS if os.path.isfile(os.path.join(run, n))]
    if stage:  # a mask-only run's stage checkpoint: its targets' connectomes are written when they finish
        resume = STAGE_CHECKPOINTS[stage[0]].format(config=os.path.join(run, "config.yaml"), run=run)
        raise FileNotFoundError(f"no connectome at {own!r}: {run} holds {stage[0]}, the checkpoint of a mask-only run "
                                "that has not finished, which graphs does not read; continue the run to write its "
                                f"connectome(s) ({resume}), or pass --connectome PATH")
    raise FileNotFoundError(f"no connectome at {own!r}: pass a run folder holding {CONNECTOME_FILE} or --connectome PATH")
