"""--resume: where it continues (a checkpoint, a mask_only run's folder), and the refusal to
continue a run with settings other than the ones it was made with."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, List, Optional

from adaptive import run_folder
from adaptive.config import ConfigError
from adaptive.training import STEP_GAMMA, STEP_MILESTONES, run_dir_of

from .accumulation import _ACCUM_ENV
from .checks import _FORMER_DEFAULTS, _uses_estimator
from .derived_keys import _cadence, _kw_as_options, _train_mask_only_kw_error
from .folder import CONFIG_COPY, MASK_ONLY_CHECKPOINT, CheckpointError, _earlier_run, _mask_only_resumable

if TYPE_CHECKING:
    from .config import RunConfig


# options that may differ between a run and its resumption: where and how it is shown, not what it computes
_RESUME_MAY_CHANGE = {"resume", "output_dir", "data_dir", "plugins", "progress", "figures", "threads", "num_workers",
                      "log_every", "keep_checkpoints", "checkpoint_every", "overwrite", "download"}

# mask_only: what the stage checkpoint's own fingerprint compares (and names) when it is loaded
_MASK_ONLY_FINGERPRINTED = {"target", "density", "epochs", "estimator", "update_every", "ensemble", "include",
                            "exclude", "seed", "mask_only_kw", "edit_fraction"}


def _check_resumed_config(cfg: RunConfig, output_dir: Path, resume_from: Optional[Path] = None,
                          no_fp16: bool = False) -> List[dict]:
    """Refuse, before any work, to resume a run with settings other than the ones it was made with:
    the copy of config.yaml inside the checkpoint (checked against the checkpoint's manifest first),
    else the run folder's config.yaml; and than the ones of the folder it writes into, when that is
    another run's. The checkpoint's controller, schedule and weights would silently override them.
    ``no_fp16``: this device runs fp16 as float32, so a recorded fp16 reads as what ran, 'no'.
    Returns the settings recorded (as compared), checkpoint's first."""
    folders = [Path(output_dir)]
    recorded = []
    if resume_from is not None:
        from adaptive.distributed import agreed_error, rank, world_size
        from adaptive.training import verify_checkpoint

        # a damaged checkpoint (or config copy), or one of another process count, is refused here,
        # naming the file, by every process together (every error caught: no process skips the
        # gather); the main process alone hashes the files
        own = None
        try:
            verify_checkpoint(resume_from, rank(), warn=rank() == 0, num_processes=world_size(), hash_files=rank() == 0)
        except Exception as e:  # noqa: BLE001 - damage stays a CheckpointDamagedError on every process
            own = e
        error = agreed_error(own, some_alone=True)
        if error is not None:
            raise error
        run = run_dir_of(resume_from)
        own = Path(resume_from) / CONFIG_COPY
        if own.is_file():  # the settings the checkpoint was made with, whatever its run folder holds now
            recorded.append(_check_against(cfg, own, run_dir=run, resume=resume_from, no_fp16=no_fp16))
            folders = [f for f in folders if f.resolve() != run.resolve()]
        elif run.resolve() != Path(output_dir).resolve():
            folders.append(run)
    for folder in folders:
        recorded.append(_check_against(cfg, folder / "config.yaml", no_fp16=no_fp16))
    return [r for r in recorded if r is not None]


def _spelt_alike(saved: dict, now: dict) -> None:
    """Write settings that make the same run alike in both (in place), so that a resume changing only how
    it is spelt is not refused: an empty include/exclude is none (every layer), an eval_batch_size left
    out is the batch_size, and a train run's epochs are unread where both give max_steps (its length)."""
    for d in (saved, now):
        for key in ("include", "exclude"):
            if d.get(key) in ([], (), ""):
                d[key] = None
        if "eval_batch_size" in d and d["eval_batch_size"] is None:
            d["eval_batch_size"] = d.get("batch_size")
    if (now.get("mode", "train") != "mask_only" and saved.get("max_steps") is not None
            and now.get("max_steps") is not None and "epochs" in saved):
        now["epochs"] = saved["epochs"]  # (a max_steps that differs is refused for itself)


def _check_against(cfg: RunConfig, path: Path, run_dir: Optional[Path] = None, resume: Optional[Path] = None,
                   no_fp16: bool = False) -> Optional[dict]:
    """Compare the settings of ``cfg`` with the ones recorded in ``path`` (a run folder's config.yaml,
    or a checkpoint's copy of it: then ``run_dir`` is the checkpoint's run and ``resume`` the checkpoint).
    Runs recorded before the recipe refused them compare as they ran: fp16 where ``no_fp16`` (this
    device ran it as float32) as 'no', a mask_only_kw key the recipe now sets as its option, and a
    train-mode mask_only_kw (read by nothing) not at all. Returns the settings recorded (None: no file)."""
    from adaptive.config import to_dict
    from adaptive.utility.base import comparable_estimator_kw

    fix = ("put the run's config.yaml back, or run without --resume into another --output_dir to start afresh"
           if resume is None else f"delete {resume} and resume from an earlier checkpoint, or start afresh")
    saved = run_folder.read_settings(path, fix, error=CheckpointError)
    if saved is None:
        return None  # a run folder without its config (copied checkpoints): nothing to compare
    if saved.get("mode") == "mask_only":
        saved.update(_kw_as_options(saved))
    now = to_dict(cfg)
    if "mixed_precision" in saved and saved["mixed_precision"] is None:  # recorded before the precision that ran was
        saved["mixed_precision"] = _unrecorded_precision(path, run_dir or path.parent, now["mixed_precision"])
    if no_fp16 and saved.get("mixed_precision") == "fp16":  # it ran float32: fp16 or no continue it
        saved["mixed_precision"] = "no"
        now["mixed_precision"] = "no" if now.get("mixed_precision") == "fp16" else now.get("mixed_precision")
    saved.setdefault("gradient_accumulation_steps", 1)  # recorded before the option: one batch per step
    saved.setdefault("max_grad_norm", None)  # recorded before the option: no clipping
    saved.setdefault("label_smoothing", 0.0)  # recorded before the option: none
    saved.setdefault("estimator_kw", {})  # recorded before the option: the estimator's defaults
    saved.setdefault("lr_milestones", list(STEP_MILESTONES))  # recorded before the step schedule: unused
    saved.setdefault("lr_gamma", STEP_GAMMA)
    for key in ("line_search", "line_search_tolerance", "line_search_tries"):  # recorded before the options: no check
        saved.setdefault(key, type(cfg).__dataclass_fields__[key].default)  # (RunConfig's)
    _former_defaults_as_run(cfg, now, saved, path)
    saved = run_folder.normalised_settings(saved)
    now = run_folder.normalised_settings(now)
    _spelt_alike(saved, now)
    comparable_estimator_kw(saved, now)  # the estimator's defaults spelt out on one side are the other's
    from adaptive.paths import absolute_if_exists

    for key in ("weights", "data_dir"):  # recorded '' before it was refused: it ran without weights, default data
        if isinstance(saved.get(key), str) and not saved[key].strip():
            saved[key] = None
    if "weights" in saved:  # runs recorded before paths were stored absolute
        saved["weights"] = absolute_if_exists(saved["weights"])
    free = _RESUME_MAY_CHANGE | (_MASK_ONLY_FINGERPRINTED if cfg.mode == "mask_only" else {"mask_only_kw"})
    if cfg.mode != "mask_only" and not _uses_estimator(cfg.policy):
        free = free | {"estimator"}  # runs recorded before the recipe dropped it for such policies name one
    elif cfg.mode != "mask_only" and cfg.estimator is None and saved.get("estimator") == "curvature":
        # a magnitude/gmp run recorded when curvature was every policy's default ran with it: it
        # continues with it
        cfg.estimator = "curvature"
        now["estimator"] = "curvature"
    diff = run_folder.changed_settings(saved, now, free)
    if cfg.mode == "mask_only":  # the held-out cadence, which the stage checkpoint does not compare, as each runs it
        run, this = _cadence(saved), _cadence(now)
        diff += [f"{k}: run {run[k]!r}, now {this[k]!r}" for k in run if run[k] != this[k] and f"{k}: run" not in
                 " ".join(diff)]
    if saved.get("threads") != now.get("threads") and not diff:  # (free: a machine of fewer cores may resume)
        from adaptive.warn import warn_user

        def given(t):  # (None: --threads left out, torch's own count: OMP_NUM_THREADS or the cores)
            return "without --threads" if t is None else f"with --threads {t}"

        fix = ("leave out --threads (under the OMP_NUM_THREADS the run had)" if saved.get("threads") is None
               else f"give --threads {saved.get('threads')}")
        warn_user(f"--resume: the run ran {given(saved.get('threads'))}, this resume {given(now.get('threads'))}: it "
                  "continues, but another thread count sums in another order, so the masks, weights and metrics may "
                  f"differ from an uninterrupted run's in their last bits (and then more): {fix} for a bit-exact "
                  "continuation")
    if diff:
        run_dir = run_dir or path.parent
        mp = give = ""
        if any(d.startswith("mixed_precision: run") for d in diff):  # what accelerate launch gave, or the option
            mp = (f" (mixed_precision is the precision each ran: relaunch with accelerate launch --mixed_precision "
                  f"{saved['mixed_precision']}, or give --mixed_precision {saved['mixed_precision']})")
            give = f" --mixed_precision {saved['mixed_precision']}"  # a file recorded before it was (null) lacks it
        if any(d.startswith("gradient_accumulation_steps: run") for d in diff):  # a file recorded before it lacks it
            k = saved["gradient_accumulation_steps"]
            mp += (f" (gradient_accumulation_steps is what Accelerate ran: give --gradient_accumulation_steps {k}"
                   + (f" and unset {_ACCUM_ENV}" if os.environ.get(_ACCUM_ENV) else "") + ")")
            give += f" --gradient_accumulation_steps {k}"
        for key in _FORMER_DEFAULTS:  # (a config built in code, or one that gives the new default: its value)
            if any(d.startswith(f"{key}: run") for d in diff):
                give += f" --{key} {saved[key]:g}"
        raise CheckpointError(f"--resume: {path} records other settings ({'; '.join(diff)}){mp}; resume with the "
                              f"run's settings (--config {path}{give} --output_dir {run_dir} --resume "
                              f"{resume or 'latest'} gives them all), or run without --resume into another "
                              "--output_dir to start afresh")
    return saved


def _former_defaults_as_run(cfg: RunConfig, now: dict, saved: dict, path: Path) -> None:
    """A run recorded with an option's former default (:data:`recipes._adaptive.checks._FORMER_DEFAULTS`: a
    --line_search_tolerance 0 run recorded before the default became inf), resumed by a command line
    that leaves the option out, continues with it, as it ran (its own command then still resumes it);
    one that gives the option is compared as given. Where no line search ran nor runs, the run's
    recorded tolerance stays whatever ``cfg`` holds (0.0 or inf: it shapes nothing). Sets it in ``cfg``
    and ``now``."""
    from adaptive.distributed import rank

    key, default = "line_search_tolerance", type(cfg).__dataclass_fields__["line_search_tolerance"].default
    if not cfg.line_search and not saved.get("line_search") and saved.get(key) in (_FORMER_DEFAULTS[key], default):
        # no line search ran nor runs (--line_search 0, every mask_only run): the tolerance, 0.0 in every older
        # config.yaml and inf since, shapes nothing; the run's stays, also for a config built in code
        setattr(cfg, key, saved[key])
        now[key] = saved[key]
    for key, former in _FORMER_DEFAULTS.items():
        if key in cfg._left_out and saved.get(key) == former and now[key] != former:
            setattr(cfg, key, former)
            now[key] = former
            if cfg.line_search and rank() == 0:  # (without --line_search it shapes nothing: no note)
                print(f"note: {path} records {key} {former:g}, its default before it became "
                      f"{type(cfg).__dataclass_fields__[key].default:g}: the run continues with --{key} {former:g}, "
                      "as it ran", flush=True)


def _stage_precision_fix(problem: str) -> str:
    """For a stage checkpoint that ran under another precision: the option that gives it (a config.yaml
    recorded before the recipe recorded the precision accelerate launch gave holds none)."""
    import re

    m = re.search(r"precision: checkpoint '([^']*)'", problem)
    ran = m and {"autocast bfloat16": "bf16", "autocast float16": "fp16", "float32": "no"}.get(m.group(1))
    if not ran:  # none, or weights of another dtype: no option of the recipe gives that
        return ""
    return (f"; the precision it ran, {m.group(1)!r}, is --mixed_precision {ran}, or accelerate launch "
            f"--mixed_precision {ran}")


def _unrecorded_precision(path: Path, run_dir: Path, now: str) -> str:
    """The precision a run ran that recorded ``mixed_precision: null`` (before the recipe recorded the one
    accelerate launch gave it): its summary.json's, when it has one; else unknown, and it continues
    under this launch's, as such runs always did, with a note."""
    from adaptive.distributed import rank

    try:
        ran = json.loads((run_dir / "summary.json").read_text()).get("mixed_precision")
    except (OSError, ValueError, AttributeError):
        ran = None
    if isinstance(ran, str) and ran:
        return ran
    if rank() == 0:
        print(f"note: {path} records no mixed precision (runs before the recipe recorded the one accelerate launch "
              f"gave), and no summary.json says which ran: the run continues under {now}, this launch's; if it "
              "ran another, relaunch with accelerate launch --mixed_precision X or give --mixed_precision X",
              flush=True)
    return now


def _resume_path_exists(resume: str, mode: str) -> bool:
    """Whether --resume names something there: a folder or file, or, in mask_only mode, a run's
    checkpoint file whose run folder is there (its checkpoint may be the '.earlier' copy an
    --overwrite run killed before its first target left aside, which _mask_only_run_dir takes)."""
    p = Path(resume)
    return p.exists() or (mode == "mask_only" and p.name == MASK_ONLY_CHECKPOINT and p.parent.is_dir())


def _mask_only_run_dir(resume: str, output_dir) -> Path:
    """The run folder whose mask-only stage checkpoint ``--resume`` names (``latest``: --output_dir)."""
    if resume == "latest":
        if output_dir is None:
            raise FileNotFoundError("--resume latest needs --output_dir (the run folder to continue)")
        run = Path(output_dir)
    else:
        run = Path(resume)
        run = run.parent if run.name == MASK_ONLY_CHECKPOINT else run
        if output_dir is not None and Path(output_dir).resolve() != run.resolve():
            raise FileNotFoundError(f"--resume {resume} continues the mask-only run in {run}, where it writes; "
                                    f"drop --output_dir {output_dir} (or give --output_dir {run})")
    if not _mask_only_resumable(run):
        earlier = _earlier_run(run) if run.is_dir() else []
        start = (f"it holds an earlier run ({', '.join(earlier[:3])}{' ...' if len(earlier) > 3 else ''}) with no "
                 "target recorded to continue from (stopped before its first one, say): start afresh there with "
                 "--overwrite instead of --resume, or give another --output_dir" if earlier else
                 "run without --resume to start")
        raise FileNotFoundError(f"--resume: no {MASK_ONLY_CHECKPOINT} in {run} (a mask_only run writes one after "
                                f"every target); {start}")
    return run


def _train_mode_mask_only_kw(cfg: RunConfig, recorded: List[dict], accelerator) -> None:
    """A train-mode run recorded with --mask_only_kw before it was refused there (read by nothing):
    resumed with or without it, it keeps the recorded one (so its own command resumes it again),
    with a note. A resumed run that recorded none is refused one, as a new run is."""
    kw = next((r["mask_only_kw"] for r in recorded if r.get("mask_only_kw")), None)
    if kw:
        accelerator.print(f"note: the run records --mask_only_kw {kw!r}, which train mode never read (runs started "
                          "before it was refused there): the run continues without it, as it ran")
        cfg.mask_only_kw = kw
    elif cfg.mask_only_kw:
        raise ConfigError(_train_mask_only_kw_error(cfg.mask_only_kw))
