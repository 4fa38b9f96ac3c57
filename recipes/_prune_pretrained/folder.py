"""The run folder (:mod:`adaptive.run_folder`): what a run writes there (and an --overwrite run
deletes), the refusal of a folder that holds an earlier run or another recipe's, config.yaml, and
what Ctrl-C's message says about continuing the run (:data:`_STARTED`, :func:`_on_interrupt`)."""
from __future__ import annotations

from pathlib import Path
from typing import List

from adaptive import run_folder
from adaptive.atomic import atomic_path

from .parse import parse_args


CHECKPOINT = "checkpoint.pt"  # OUTPUT_DIR/checkpoint.pt: the run after each finished target or ladder rung
# what a run writes into its folder (the checkpoint first: an --overwrite stopped half-way leaves
# nothing to resume; config.yaml last), and into each target's folder remove_<target> when there
# are several targets (at the top with one)
RUN_FILES = (CHECKPOINT, CHECKPOINT + ".earlier", "results.md", "summary.json", "history.jsonl", "events.jsonl",
             "curves.png", "pruned_state_dict.pt", "connectome.safetensors", "config.yaml")
TARGET_FILES = ("pruned_state_dict.pt", "connectome.safetensors")


# what a refused --resume says to do: the checkpoint is always OUTPUT_DIR/checkpoint.pt
RESUME_FIX = ("To continue it, give that run's settings again with --resume; to start afresh, run without --resume "
              "and with --overwrite (which deletes that run's files), or give another --output_dir")
AFRESH = "start afresh with --overwrite (which deletes that run's files) and no --resume, or give another --output_dir"


def _target_folders(out: Path) -> List[Path]:
    """The per-target folders (remove_<target>) in ``out`` that hold a result of the recipe's; never
    a symbolic link (it may lead anywhere: --overwrite must not delete through it)."""
    return sorted(d for d in out.glob("remove_*")
                  if d.is_dir() and not d.is_symlink() and run_folder.existing(d, TARGET_FILES))


def _earlier_run(out: Path) -> List[str]:
    """The files and result folders of an earlier run in ``out`` (empty: none)."""
    return run_folder.existing(out, RUN_FILES) + [f"{d.name}/" for d in _target_folders(out)]


def _doomed(out: Path) -> List[Path]:
    """What --overwrite deletes in ``out``: the run's files, and the graph exports and progress
    figures derived from them, at the top and in its result folders."""
    names = RUN_FILES + run_folder.DERIVED_FILES
    return [out / n for n in names] + [d / n for d in _target_folders(out) for n in TARGET_FILES + run_folder.DERIVED_FILES]


# what only a recipes/adaptive.py run leaves in its folder: --overwrite here would delete half of it
OTHER_RECIPE_FILES = ("checkpoints", "metrics.csv", "dense_state_dict.pt", "mask_only_checkpoint.pt")


def _refuse_earlier_run(args, out: Path) -> None:
    """A run without --resume into a folder that holds an earlier run would leave that run's files
    (its other targets' folders above all) beside the new ones, where they read as this run's:
    refused unless --overwrite; a folder of a recipes/adaptive.py run is refused even then."""
    run_folder.refuse_other_recipe(out, OTHER_RECIPE_FILES, "recipes/adaptive.py")
    run_folder.refuse_result_folder(out, RUN_FILES, "recipes/prune_pretrained.py")
    resumable = run_folder.existing(out, (CHECKPOINT, CHECKPOINT + ".earlier"))
    run_folder.refuse_earlier_run(out, _earlier_run(out), overwrite=args.overwrite, weights=args.weights,
                                  doomed=_doomed(out),
                                  resume_hint="continue it with the same command and --resume, " if resumable else "")


def _delete_run(out: Path, keep=()) -> None:
    """--overwrite: the earlier run's files (the checkpoint first, config.yaml last; none of
    ``keep``) and result folders go; a result folder that holds a file of someone else's keeps it,
    and stays."""
    if not _earlier_run(out) and not run_folder.existing(out, [n for n in RUN_FILES[:2] if n not in keep]):
        return  # no earlier run: the graph exports and figures here are not one's, whoever made them
    checkpoints = [n for n in RUN_FILES[:2] if n not in keep]
    run_folder.delete_files(out, checkpoints)
    for d in _target_folders(out):
        run_folder.delete_files(d, TARGET_FILES + run_folder.DERIVED_FILES, trees=run_folder.DERIVED_DIRS)
        if not any(d.iterdir()):
            d.rmdir()
    run_folder.delete_files(out, run_folder.DERIVED_FILES + RUN_FILES[2:], trees=run_folder.DERIVED_DIRS)


def _kept_earlier_note(out: Path) -> str:
    """What an --overwrite run that stopped before its settings were accepted says of the earlier run."""
    resumable = run_folder.existing(out, (CHECKPOINT, CHECKPOINT + ".earlier"))
    return (f"--overwrite: this run stopped before its settings were accepted, so the earlier run in {out} is "
            f"untouched{f' (its {CHECKPOINT} put back)' if resumable else ''}: run the command again, with what "
            "stopped it mended, to replace it" + (", or continue it with --resume in place of --overwrite"
                                                   if resumable else ""))


def _settings(args) -> dict:
    """The resolved options as config.yaml records them."""
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(args).items()}


def _write_config(args, dl, out: Path) -> None:
    """config.yaml: the resolved options, every key one that --config takes (so the file reruns the
    job), and what `python -m graphs` reads to rebuild the model."""
    import yaml

    resolved = _settings(args)
    resolved["num_classes"] = args.num_classes or dl.num_classes
    resolved["resume"] = False  # a rerun from this file is a new run (a resumed one says --resume again)
    resolved["overwrite"] = False  # and never deletes a run it was not told to
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / "config.yaml") as tmp:
        tmp.write_text(yaml.safe_dump(resolved, sort_keys=True))


_STARTED = {"replaced_earlier": False}  # an --overwrite run that deleted the earlier run (its settings accepted)


def _on_interrupt(argv=None) -> str:
    """How an interrupted run continues: from its checkpoint, once it finished a target or rung."""
    try:
        args = parse_args(argv)
    except SystemExit:
        return ""
    out = Path(args.output_dir)
    if args.overwrite and not _STARTED["replaced_earlier"]:
        return f"the earlier run in {out} is untouched; run the same command again to start afresh"
    if (out / CHECKPOINT).is_file():
        how = "--resume in place of --overwrite" if args.overwrite else "--resume"
        return f"the same command with {how} continues after the last finished target ({out / CHECKPOINT})"
    return ("it had not finished a target, so there is nothing to continue: run the same command again "
            "(with --overwrite if the folder holds its outputs)")
