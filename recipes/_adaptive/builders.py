"""What a run is built from, as its config describes it: the data loaders, the model (its
weights loaded), the optimizer, the connectome, the controller and --line_search's held-out check."""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional

import torch

from adaptive import Connectome, Controller
from adaptive.config import ConfigError
from adaptive.data import check_dataset_kw, dataset_fingerprint, get_dataloaders as _get_dataloaders
from adaptive.models import build_model_kw

from .checks import _estimator, _refuse_train_only, _uses_estimator
from .config import RunConfig, _target
from .derived_keys import _refuse_derived_keys


def get_dataloaders(cfg: RunConfig):
    """Train, holdout (a stratified part of TRAIN) and test loaders for ``cfg`` (not yet prepared)."""
    check_dataset_kw(cfg.dataset, cfg.dataset_kw)  # progress=, data_dir=: options of their own, named
    return _get_dataloaders(cfg.dataset, batch_size=cfg.batch_size, data_dir=cfg.data_dir, holdout=cfg.holdout,
                            seed=cfg.seed, download=cfg.download, subset=cfg.subset, test_subset=cfg.test_subset,
                            num_workers=cfg.num_workers, eval_batch_size=cfg.eval_batch_size, augment=cfg.augment,
                            progress=cfg.progress, holdout_required=cfg.mode == "mask_only",  # its choices read the held-out part
                            option_names={"subset": "--subset", "test_subset": "--test_subset", "holdout": "--holdout"},
                            **cfg.dataset_kw)


def _refuse_differing_splits(cfg: RunConfig, loaders, **batches) -> None:
    """Refuse, on every process alike, data whose split sizes or contents differ between the
    processes: each loads its own copy (a --data_dir that is another folder, or holds other files, on
    each machine). One of other size runs another number of steps, evaluations and reductions, so the
    processes' collectives stop matching (masks that differ, a hang); one of the same size but other
    contents (another version of the data) trains each process on other examples, silently or until
    the masks differ. ``batches``: each split's loader as this process reads it (``train=``,
    ``holdout=``, ``test=``; sharded by ``accelerator.prepare`` or whole), its examples read from
    ``loaders.datasets``. Give ``test=`` only where the test split is read anyway (the final report):
    its size builds the lazy split. The sizes and each split's content fingerprint (every label, an
    in-memory split's stored data whole, an image folder's file sizes and a few of its files:
    :func:`adaptive.data.dataset_fingerprint`) are found under
    :func:`adaptive.distributed.agreed_call` (a split that fails to build on one process stops every
    process, where that process alone raising left the others waiting in the gather), then compared
    (:func:`adaptive.distributed.refuse_differing`), the sizes first: three gathers; none on one process."""
    from adaptive.distributed import agreed_call, is_distributed, refuse_differing

    if not is_distributed():
        return

    def found():
        splits = {name: getattr(loaders.datasets, name) for name in batches}
        sizes = ", ".join(f"{name} {len(splits[name]):,} examples in {len(dl):,} batch(es)" for name, dl in batches.items())
        return sizes, ", ".join(f"{name} fingerprint {dataset_fingerprint(ds)}" for name, ds in splits.items())

    sizes, contents = agreed_call(found)
    folder = ("--data_dir" if cfg.data_dir is not None else
              "data folder (--data_dir, else $ADAPTIVE_DATA or the default one, adaptive.paths.resolve_data_dir)")
    fix = (f"every process must read the same data: the same {folder} contents on every machine (a folder they all "
           "see, given as an absolute --data_dir, or the same copy, of the same version, on each; a relative "
           "--data_dir is read from each process's working directory)")
    refuse_differing(sizes + " per process", f"sizes of the {cfg.dataset} data", fix=fix)
    data_dir = None if cfg.data_dir is None else Path(cfg.data_dir).expanduser()
    where = (None if data_dir is None else f"--data_dir {cfg.data_dir}" if data_dir.is_absolute() else
             f"--data_dir {cfg.data_dir}, here {data_dir.absolute()}")  # (a relative one: each process's own)
    refuse_differing(contents, f"contents of the {cfg.dataset} data", fix=fix, detail=where)


def build_model_for(cfg: RunConfig, num_classes: int, in_shape) -> torch.nn.Module:
    """``cfg``'s model (its --weights loaded) for data of ``num_classes`` classes and inputs
    ``in_shape``; in mask_only mode its target is checked against the model's synapses."""
    from adaptive.mask_only import check_targets

    model = build_model_kw(cfg.model, cfg.model_kw, num_classes=num_classes, in_shape=in_shape, weights=cfg.weights)
    if cfg.mode == "mask_only":
        check_targets(model, _target(cfg), include=cfg.include, exclude=cfg.exclude, ensemble=cfg.ensemble)
    return model


def build_optimizer(cfg: RunConfig, model):
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                               nesterov=cfg.momentum > 0)
    # --momentum is beta1 (its default 0.9 is AdamW's own); beta2 stays AdamW's 0.999
    return torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=(cfg.momentum, 0.999), weight_decay=cfg.weight_decay)


def build_connectome(cfg: RunConfig, model) -> Connectome:
    return Connectome(model, ensemble=cfg.ensemble, include=cfg.include, exclude=cfg.exclude,
                      mode="mask_only" if cfg.mode == "mask_only" else "train")


def build_controller(cfg: RunConfig, conn: Connectome, optimizer=None, total_steps: int = 1000,
                     num_processes: int = 1, holdout_loss: Optional[Callable[[], float]] = None) -> Controller:
    """The controller that ``cfg`` describes. Train mode: attached to ``optimizer``; edits stop at
    ``end_fraction`` of ``total_steps`` (optimizer steps); each gradient it observes averages
    batch_size x gradient_accumulation_steps x ``num_processes`` samples; with --line_search N,
    ``holdout_loss`` (a callable: the loss on N held-out batches, :class:`adaptive.holdout_check.HeldOutLoss`)
    checks each update, with --line_search_tolerance and --line_search_tries; it is required then,
    and refused otherwise (it would check nothing the config records). Mask-only mode: the crawl policy driven explicitly (this
    is the controller :func:`adaptive.optimize_connectome` builds, which takes no --controller_kw).
    A ``cfg`` changed after its checks (``cfg.controller_kw = ...``) is checked again here: a key
    the recipe sets itself, ``edit_decay`` in mask_only mode among them, is refused naming the option
    that sets it, as while parsing (it was Python's "got multiple values for keyword argument")."""
    if cfg.mode == "mask_only":
        _refuse_train_only(cfg)
    _refuse_derived_keys(cfg)
    if cfg.mode == "mask_only":
        return Controller(conn, policy="crawl", estimator=_estimator(cfg), update_every=cfg.update_every,
                          edit_decay="constant", seed=cfg.seed, verify=True)
    if (holdout_loss is None) != (not cfg.line_search):
        raise ValueError(f"build_controller: --line_search {cfg.line_search} " + (
            "needs holdout_loss= (the loss on that many held-out batches: adaptive.holdout_check.HeldOutLoss)"
            if holdout_loss is None else "is off, so holdout_loss= would check updates no config records: give "
                                         "cfg.line_search > 0, or leave holdout_loss out"))
    # (off, the Controller is built exactly as before the option: a run without it is unchanged)
    search = {} if holdout_loss is None else dict(holdout_loss=holdout_loss, line_search_tries=cfg.line_search_tries,
                                                  line_search_tolerance=cfg.line_search_tolerance)
    nm = conn.fixed_density  # (the Controller's own advice, "or leave it out", fails here: --density has a default)
    if nm is not None and cfg.density is not None and abs(cfg.density - nm) > 1e-9:
        from .config import _DEFAULT_DENSITY

        default = f" ({_DEFAULT_DENSITY:g} is the default where --density is left out)" if cfg.density == _DEFAULT_DENSITY else ""
        raise ConfigError(f"--ensemble {cfg.ensemble} fixes the density at {nm:g} (n of every m kept), so --density "
                          f"{cfg.density:g}{default} cannot be met: give --density {nm:g}")
    end_step = max(1, int(round(cfg.end_fraction * total_steps)))
    try:
        return Controller(conn, optimizer, policy=cfg.policy, density=cfg.density, budget=cfg.budget,
                          update_every=cfg.update_every, end_step=end_step, edit_fraction=cfg.edit_fraction,
                          estimator=_estimator(cfg) if _uses_estimator(cfg.policy) else None,
                          min_density=cfg.min_density, protect=cfg.protect,
                          batch_size=cfg.batch_size * cfg.gradient_accumulation_steps * num_processes,
                          seed=cfg.seed, verify=True, **search, **cfg.controller_kw)
    except ValueError as e:
        # a misspelt key of --controller_kw (or of a --config file's controller_kw: a nested key) was refused
        # as "unknown argument(s) [...] for policy ...", naming neither the option nor where it was given
        named = [k for k in cfg.controller_kw if f"'{k}'" in str(e)]
        if type(e) is not ValueError or not named or not str(e).startswith("unknown argument"):
            raise
        from adaptive.cli import with_notes_of

        raise with_notes_of(ValueError(f"--controller_kw {', '.join(named)} (on the command line or in a --config "
                                       f"file's controller_kw): {e}"), e) from None


def _holdout_check(cfg: RunConfig, accelerator, model, loaders):
    """--line_search N: the held-out loss each update is checked on (N batches of the held-out part
    per process, :class:`adaptive.holdout_check.HeldOutLoss`) through the prepared ``model`` (its
    mixed precision); None when the option is off (0)."""
    if not cfg.line_search:
        return None
    from adaptive.holdout_check import HeldOutLoss

    check = HeldOutLoss(model, loaders.datasets.holdout, cfg.line_search, loaders.holdout.batch_size,
                        device=accelerator.device, seed=cfg.seed, rank=accelerator.process_index,
                        processes=accelerator.num_processes)
    if check.batches < cfg.line_search:
        accelerator.print(f"note: --line_search {cfg.line_search} asks for more held-out batches than the held-out part "
                          f"holds ({len(loaders.datasets.holdout)} examples, batches of {check.batch_size} for "
                          f"{accelerator.num_processes} process(es)): each check scores {check.batches} per process")
    return check
