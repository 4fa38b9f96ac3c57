"""--resume: the settings a resumed run must share with the run its config.yaml records
(:data:`RESUME_MAY_CHANGE` lists those it may give otherwise), checked before any data is read."""
from __future__ import annotations

from pathlib import Path

from adaptive import run_folder

from .folder import AFRESH, _settings


# what a --resume may give otherwise than the run recorded: where things are and how the run shows
# and spends its resources, none of what it computes (as recipes/adaptive.py's, _RESUME_MAY_CHANGE in
# recipes/_adaptive/resume.py)
RESUME_MAY_CHANGE = {"resume", "overwrite", "output_dir", "data_dir", "download", "plugins", "progress", "threads",
                     "num_workers"}


def _check_resumed_settings(args, out: Path, found_wnids=None) -> None:
    """Refuse, before any data is read, to resume the run in ``out`` with settings other than the
    ones its config.yaml records (other data through --dataset-kw, another --eval-every: the stage
    checkpoint's fingerprint knows the data only by its counts, and not the evaluation cadence).
    ``found_wnids``: the list of ImageNet's wnids found in the data's folders this time (not given), which
    a config.yaml written before such a list was recorded leaves out: the run found it too. A list of wnids
    in another place than the one recorded is the same setting where it labels the folders alike
    (:func:`_same_wnids`: the data moved, --data_dir being free, with the list found in it)."""
    from adaptive.paths import absolute_if_exists
    from adaptive.utility.base import comparable_estimator_kw

    path = out / "config.yaml"
    saved = run_folder.read_settings(path, f"put the run's config.yaml back, or {AFRESH}")
    if saved is None:
        return  # a run recorded before config.yaml was written at its start: its checkpoint is still checked
    if "weights" in saved:
        saved["weights"] = absolute_if_exists(saved["weights"])
    saved.setdefault("model_kw", {})  # a run recorded before --model-kw was built without one
    saved.setdefault("estimator_kw", {})  # ... and one before --estimator-kw with the estimator's defaults
    saved.setdefault("margin", 0.0)  # ... and one before --margin and --line-search-tries with the API's defaults
    saved.setdefault("line_search_tries", 2)
    now = _settings(args)
    recorded = saved.get("dataset_kw") if isinstance(saved.get("dataset_kw"), dict) else {}
    if found_wnids is not None and "wnids" not in recorded:
        now["dataset_kw"] = {k: v for k, v in now["dataset_kw"].items() if k != "wnids"}
    elif _same_wnids(recorded.get("wnids"), (now.get("dataset_kw") or {}).get("wnids")):
        now["dataset_kw"] = {**now["dataset_kw"], "wnids": recorded["wnids"]}  # (the list's place alone differs)
    comparable_estimator_kw(saved, now)  # the estimator's defaults spelt out on one side are the other's
    free = RESUME_MAY_CHANGE | ({"num_classes"} if now.get("num_classes") is None else set())  # (the data's)
    if "best" not in args.remove:  # unused by fixed targets (a config.yaml recorded before a file's were refused)
        free |= {"ladder", "patience"}
    diff = run_folder.changed_settings(run_folder.normalised_settings(saved), run_folder.normalised_settings(now),
                                       free)
    if diff:
        raise run_folder.RunFolderError(
            f"--resume: {path} records other settings ({'; '.join(diff)}): resume with the run's settings "
            f"(--config {path} --resume gives them all), or {AFRESH}")


def _same_wnids(recorded, now) -> bool:
    """Whether ``now``, the list of ImageNet's wnids a --resume reads (found in the data's folders or given),
    is the list config.yaml ``recorded`` in another place: both files list the same wnids, or the recorded
    one is gone (the data moved: the list read now passed :func:`adaptive.data.wnids.read_wnids`'s checks of
    ImageNet-1k's 1000). A list of the data moved had been refused as other settings, naming a fix that read
    the list no longer there. False where either is no file name, or they are the same name (compared as
    ever), or the list read now is refused (reading the data says why)."""
    from adaptive.data.wnids import name_problem, read_wnids

    if recorded is None or now is None or recorded == now or name_problem(recorded) or name_problem(now):
        return False
    try:
        listed = read_wnids(now)
    except (OSError, ValueError):
        return False
    if not Path(str(recorded)).expanduser().is_file():
        return True
    try:
        return read_wnids(recorded) == listed
    except (OSError, ValueError):
        return False
