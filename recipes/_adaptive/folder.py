"""The run folder: its default name, what a run writes there (and an --overwrite run deletes
first), its lock, config.yaml, and what Ctrl-C's message says about continuing the run."""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional, TypeVar

from adaptive import run_folder
from adaptive.config import save_config
from adaptive.training import CHECKPOINT_DIR, list_checkpoints, resume_option

if TYPE_CHECKING:
    from .config import RunConfig


def default_output_dir() -> str:
    """``runs/<date>-<time>``; ``-2``, ``-3``, ... when an earlier run started in the same second."""
    base = os.path.join("runs", time.strftime("%Y%m%d-%H%M%S"))
    path, k = base, 1
    while os.path.exists(path):
        k += 1
        path = f"{base}-{k}"
    return path


MASK_ONLY_CHECKPOINT = "mask_only_checkpoint.pt"

CONFIG_COPY = "config.yaml"  # each checkpoint folder's copy of the run's config.yaml (the settings it was made with)

_INTERRUPT: Dict[str, Any] = {}  # the run folder, once known: what Ctrl-C's message can point to


def _on_interrupt() -> str:
    """How an interrupted run continues: from the checkpoint it left, if it left one."""
    out = _INTERRUPT.get("output_dir")
    if out is None:
        return ""
    if not _INTERRUPT.get("wrote"):  # (config.yaml is its first write; --overwrite deletes only then)
        if _INTERRUPT.get("overwrite") and _earlier_run(Path(out)):
            return (f"the run wrote nothing, and the earlier run in {out} is kept as it was; the same command (with "
                    "--overwrite) starts afresh")
        if not _INTERRUPT.get("resume"):
            return "the run wrote nothing (its lock and any folder it made are gone again); the same command starts it afresh"
    cks = list_checkpoints(Path(out) / CHECKPOINT_DIR)
    # this run's checkpoint: the one it resumed from, then each it saved (None: a fresh run, whose are all its own)
    own = _INTERRUPT.get("checkpoint")
    if cks and own is not None and Path(own).is_dir():
        option = resume_option(Path(out) / CHECKPOINT_DIR, out, Path(own))
        if not option.startswith("--resume latest"):  # a later checkpoint of the attempt this run abandoned is newest
            return (f"give {option} (in place of the command's --resume) to continue from {Path(own).name}: the run "
                    f"wrote no checkpoint of its own, and --resume latest would take {cks[-1].name}, left by the "
                    "attempt it resumed before")
    if cks or _mask_only_resumable(Path(out)):
        what = cks[-1].name if cks else f"{MASK_ONLY_CHECKPOINT} (the last finished target)"
        same = "the same command without --overwrite" if _INTERRUPT.get("overwrite") else "the same command"
        return f"add --resume latest --output_dir {out} to {same} to continue from {what}"
    if _INTERRUPT.get("resume_from") is not None:
        return (f"the run wrote no checkpoint of its own; the same command continues from {_INTERRUPT['resume_from']} "
                "again")
    every, total = _INTERRUPT.get("checkpoint_every"), _INTERRUPT.get("total_steps")
    if every and total is not None and every >= total:  # (the last step writes the outputs, not a checkpoint)
        return (f"the run wrote no checkpoint (--checkpoint_every {every} is not shorter than its {total} steps, so "
                "it writes none), so it cannot be continued; rerun it with --overwrite (or into another "
                f"--output_dir) and --checkpoint_every {max(1, total - 1)} or fewer to make it resumable")
    why = (f"the run stopped before its first checkpoint (--checkpoint_every {every}: step {every})" if every else
           "the run wrote no checkpoint")
    return (f"{why}, so it cannot be continued; rerun it with --overwrite (or into another --output_dir)"
            + ("" if every else ", and --checkpoint_every N makes a train-mode run resumable"))


# what a run writes into its folder: an --overwrite run deletes these (and nothing else) first
_RUN_FILES = ("config.yaml", "metrics.csv", "events.jsonl", "connectome.safetensors", "dense_state_dict.pt",
              "summary.json", "loss_accuracy.png", "density.png", "edits.png", "grad_norm.png", MASK_ONLY_CHECKPOINT)

# what `python -m graphs` and `recipes/diagnostics.py progress` write into a run folder by default
_DERIVED_DIRS = run_folder.DERIVED_DIRS

_DERIVED_FILES = run_folder.DERIVED_FILES + (MASK_ONLY_CHECKPOINT + ".earlier",)


class CheckpointError(RuntimeError):
    """A checkpoint that cannot continue this run (unreadable, or written with other settings)."""


class RunWriteError(RuntimeError):
    """A file of the run folder (metrics.csv, the final outputs, summary.json) that the main process
    could not write (a full disk, no permission): every process stops with it. Recipes print it as
    one line."""


T = TypeVar("T")


def main_writes(accelerator, what: str, write: Callable[[], T]) -> Optional[T]:
    """``write()``'s result on the main process (None elsewhere), which alone writes ``what`` into
    the run folder; its failure stops every process together with one error: a failed write
    (:func:`adaptive.integrity.write_errors`) as a :class:`RunWriteError` naming the file, the reason
    and how to continue, any other error as it is (:func:`adaptive.distributed.agreed_call`). Every
    process must call it at the same point; under several processes it makes one gather of a few
    words (the barrier the write needs anyway): call it where the run writes, not per step. Without
    it a full disk on the main process ended the run there, and the others died in their next
    collective with gloo's "Connection closed by peer" traceback (or, on a GPU, waited for NCCL's
    timeout) beside it."""
    from adaptive.atomic import temp_target
    from adaptive.distributed import agreed_call
    from adaptive.integrity import is_write_failure, write_errors, write_failure

    def write_on_main():
        if not accelerator.is_main_process:
            return None
        try:
            return write()
        except write_errors() as e:
            if not is_write_failure(e):  # (an error making what is written: a figure's, a tensor's) as it is
                raise
            name = getattr(e, "filename", None)
            if isinstance(name, str) and temp_target(os.path.basename(name)):  # (an atomic write's temporary file)
                name = os.path.join(os.path.dirname(name), temp_target(os.path.basename(name)))
            how = _on_interrupt()
            raise RunWriteError(
                f"writing {what} failed ({write_failure(e)}{f': {name}' if name else ''}): free disk space (or make "
                f"the run folder writable){'; ' + how if how else ''}") from e

    return agreed_call(write_on_main, some_alone=True)


def _save_config(accelerator, cfg: RunConfig, output_dir: Path) -> Optional[bytes]:
    """config.yaml, written once the settings have been accepted (data, model, controller built);
    with --overwrite, the earlier run's files go only now, so a refused command leaves them. Returns
    what was written (None but on the main process, which writes it alone). Every process calls it:
    the write is agreed (:func:`main_writes`), so a full disk stops every process with one error."""
    _INTERRUPT["wrote"] = True  # (every process: what Ctrl-C's message says of the earlier run)

    def write() -> bytes:
        if cfg.overwrite and not cfg.resume:
            # (a mask-only run has not recorded a stage yet: its earlier run's checkpoint, set aside
            # to be put back if this run stops early, goes too, so an interrupted run leaves no mix)
            _delete_run(output_dir)
        output_dir.mkdir(parents=True, exist_ok=True)
        # --config FILE reruns the job afresh, and never deletes a run it was not told to
        save_config(cfg, output_dir / "config.yaml", resume=None, overwrite=False, extra=_resolved_estimator(cfg))
        return (output_dir / "config.yaml").read_bytes()

    return main_writes(accelerator, f"config.yaml into {output_dir}", write)


def _resolved_estimator(cfg: RunConfig) -> dict:
    """config.yaml's ``estimator_resolved``: the estimator that ran and every argument it was built
    with, its constructor's defaults included (--estimator_kw over them), so a reader knows exactly
    what ran; {} (no key) where the run's policy ranks without one. Read back by nothing: --estimator
    and --estimator_kw set it, and a resume compares those."""
    from adaptive.utility.base import estimator_arguments

    if cfg.estimator is None:
        return {}
    arguments = estimator_arguments(cfg.estimator, dict(cfg.estimator_kw))
    return {"estimator_resolved": {"name": cfg.estimator, "arguments": {k: _yaml_value(v) for k, v in arguments.items()}}}


def _yaml_value(value):
    """``value`` where YAML writes it (after :func:`adaptive.config.to_dict`'s conversions: a tuple as
    a list), else as text, a function or class by its dotted name, anything else by its ``repr``: a
    plugin estimator's constructor default (a dtype, a function) is recorded for the reader, never a
    crash of the run that writes config.yaml."""
    import yaml

    from adaptive.config import to_dict

    try:
        yaml.safe_dump(to_dict({"v": value}))
    except yaml.YAMLError:
        name = getattr(value, "__qualname__", None)  # a function or class by its name, not by its address
        module = getattr(value, "__module__", None)
        return repr(value) if not isinstance(name, str) else f"{module}.{name}" if isinstance(module, str) else name
    return value


def _refuse_earlier_run(cfg: RunConfig, output_dir: Path) -> None:
    """A fresh run into a folder that holds an earlier run would write beside it, leave that run's
    other files there, and a later --resume would splice the two runs: refused unless --overwrite."""
    other = run_folder.existing(output_dir, ("checkpoint.pt", "results.md", "history.jsonl", "curves.png")) + sorted(
        d.name + "/" for d in output_dir.glob("remove_*") if d.is_dir())
    if other:  # a recipes/prune_pretrained.py run: --overwrite knows only this recipe's files
        raise CheckpointError(f"{output_dir} holds a run of recipes/prune_pretrained.py ({', '.join(other[:4])}): "
                              "give this run another --output_dir (--overwrite deletes only this recipe's own runs)")
    run_folder.refuse_result_folder(output_dir, ("checkpoint.pt", "results.md", "history.jsonl", "summary.json"),
                                    "recipes/prune_pretrained.py", error=CheckpointError)
    resumable = list_checkpoints(output_dir / CHECKPOINT_DIR) or _mask_only_resumable(output_dir)
    run_folder.refuse_earlier_run(
        output_dir, _earlier_run(output_dir), overwrite=cfg.overwrite, weights=cfg.weights,
        doomed=[output_dir / n for n in _RUN_FILES + _DERIVED_FILES + tuple(run_folder.checkpoint_exports(output_dir))],
        resume_hint=f"continue it with --resume latest --output_dir {output_dir}, " if resumable else "",
        error=CheckpointError)


def _earlier_run(output_dir: Path) -> List[str]:
    """The files and checkpoints of an earlier run in ``output_dir`` (empty: none)."""
    found = run_folder.existing(output_dir, _RUN_FILES)
    cks = list_checkpoints(output_dir / CHECKPOINT_DIR)
    return [f"{CHECKPOINT_DIR}/{c.name}" for c in cks[::-1]] + found


def _delete_run(output_dir: Path) -> None:
    """--overwrite: the earlier run's outputs, checkpoints and what the project's tools derived from
    them (graph exports and reports, a compacted model, the progress figure) go; no other file."""
    import shutil

    # what could be resumed goes first and config.yaml last: an --overwrite killed half-way leaves
    # no checkpoint without the settings it was made with (a later --resume would take new ones)
    if not _earlier_run(output_dir) and not (output_dir / (MASK_ONLY_CHECKPOINT + ".earlier")).exists():
        return  # no earlier run: the graph exports and figures here are not one's, whoever made them
    ck = output_dir / CHECKPOINT_DIR
    for c in list_checkpoints(ck) + list(ck.glob(".tmp-step_*")):
        shutil.rmtree(c)
    first = (MASK_ONLY_CHECKPOINT, MASK_ONLY_CHECKPOINT + ".earlier")
    exports = run_folder.checkpoint_exports(output_dir)  # graphs on its checkpoints: named by their step
    rest = [n for n in _RUN_FILES + _DERIVED_FILES + tuple(exports) if n not in first and n != "config.yaml"]
    run_folder.delete_files(output_dir, [*first, *rest, "config.yaml"], trees=[*_DERIVED_DIRS, *exports])


def _refuse_busy(accelerator, output_dir) -> None:
    """Refuse (CheckpointError, on the main process: call it through
    :func:`adaptive.distributed.agreed_call` with ``some_alone``) a run into ``output_dir`` while
    another run holds its lock (:func:`adaptive.run_folder.busy`), before this one reads the folder:
    a --resume read the checkpoints the live run was rotating and called one damaged, and a fresh run
    was told to resume a run that was still running."""
    if output_dir is not None and accelerator.is_main_process:
        why = run_folder.busy(output_dir)
        if why:
            raise CheckpointError(why)


class _RunLock(run_folder.RunLock):
    """The run folder's lock (:class:`adaptive.run_folder.RunLock`); a fresh run checks again, once
    it holds the lock, that no earlier run is there."""

    def __init__(self, accelerator, output_dir: Path):
        super().__init__(accelerator, output_dir, error=CheckpointError)

    def acquire(self, cfg: RunConfig) -> None:
        """Take the lock (and recheck the folder for an earlier run); a refusal is the main process's,
        raised by every process alike (:func:`adaptive.distributed.raised_alike`)."""
        from adaptive.distributed import mark_raised_alike

        try:
            super().acquire(None if cfg.resume else (lambda: _refuse_earlier_run(cfg, self.path.parent)))
        except CheckpointError as e:  # (broadcast from the main process)
            raise mark_raised_alike(e)

    def sweep(self) -> None:
        """Also the checkpoint folder a run stopped while saving left (``checkpoints/.tmp-step_N``),
        now rather than at the run's next save (save_checkpoint sweeps them too)."""
        import shutil

        super().sweep()
        for stale in (self.path.parent / CHECKPOINT_DIR).glob(".tmp-step_*"):
            if stale.is_dir() and not stale.is_symlink():
                shutil.rmtree(stale, ignore_errors=True)


def _mask_only_resumable(run: Path) -> bool:
    """Whether ``run`` holds a mask_only checkpoint --resume continues: its own, or one an --overwrite
    run killed before its first target left set aside (``.earlier``; stage_checkpoint.begin puts it back)."""
    return (run / MASK_ONLY_CHECKPOINT).is_file() or (run / (MASK_ONLY_CHECKPOINT + ".earlier")).is_file()


_broadcast_str = run_folder.broadcast_str  # the main process's value on every process
