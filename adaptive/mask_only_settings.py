"""The settings of :func:`adaptive.mask_only.optimize_connectome`, checked before any work
(:func:`check_settings`: the first refusal a bad setting meets, in the order the arguments come but
for the model-only checks (ensemble, targets and ladder), which come before any loader is read) and
made plain numbers (numpy scalars and one-element tensors included), so that the run rounds them and a
checkpoint's fingerprint compares them with a resume's."""
from __future__ import annotations

import math
import numbers
import os
from dataclasses import dataclass
from typing import Callable, Iterable, List, Optional, Union

import torch
from torch import nn

from .counts import whole_number
from .distributed import agreed_call, is_distributed, refuse_differing, refuse_differing_settings
from .ensemble_rules import parse_rules
from .mask_only_data import _check_loader, _model_device, refuse_repeated_verify_batches, verify_pass_length
from .mask_only_targets import Target, _is_real, check_targets, listed_targets
from .metrics import AccuracyFn


def stage_batches(passes: float, n_train: int, window: int) -> int:
    """The training batches one stage of :func:`~adaptive.mask_only.optimize_connectome` reads: ``passes`` over a loader
    of ``n_train`` batches, rounded up to whole update windows of ``window`` batches (at least one),
    so a stage can read a few batches more than ``passes`` say."""
    return max(window, int(math.ceil(passes * n_train / window - 1e-9)) * window)


def checked_passes(passes) -> Union[int, float]:
    """``passes`` (passes over the train loader per stage) as a plain number, refused unless finite and > 0."""
    if isinstance(passes, torch.Tensor) and passes.numel() == 1 and not passes.dtype.is_complex:
        passes = passes.item()  # a one-element tensor: its number
    if isinstance(passes, bool) or not isinstance(passes, numbers.Real) or not (0 < passes < math.inf):
        raise ValueError(f"passes must be a finite number > 0 (passes over the train loader per stage; fractional "
                         f"allowed), got {passes!r}")
    return whole_number(passes) if whole_number(passes) is not None else float(passes)  # numpy scalars: plain


def _precision(model: nn.Module) -> str:
    """The autocast dtype the optimisation runs under (the recipes' --mixed-precision), or the
    weights' dtype: a resume under another precision would choose other masks."""
    dev = _model_device(model)
    kind = dev.type if dev is not None else "cpu"
    if torch.is_autocast_enabled(kind):
        return f"autocast {str(torch.get_autocast_dtype(kind)).replace('torch.', '')}"
    p = next(model.parameters(), None)
    return str(p.dtype).replace("torch.", "") if p is not None else "float32"


# what a loader refused on some processes says of the processes whose loaders passed
_OWN_LOADERS = ("each process was given loaders of its own (its shard of the training data): give every process "
                "loaders that yield batches")
# what to do where the processes' train loaders differ in length
_EVEN_SHARDS = ("the steps of each stage come from len(train_loader) and every step meets the other processes (its "
                "statistics are averaged over them), so a process with fewer batches would leave the others waiting: "
                "give every process a shard of the same number of batches (a DistributedSampler, which pads the shards "
                "to one length, or trims them with drop_last=True; accelerator.prepare(loader), which evens them)")


def _train_batches(train_loader) -> int:
    """The batches of ``train_loader`` (:func:`~adaptive.mask_only_data._check_loader`), refused without a length."""
    n = _check_loader(train_loader, "train")
    if n == 0:
        raise ValueError("the train loader needs a length (len(loader)) to schedule passes")
    return n


def check_loaders(train_loader, holdout_loader) -> int:
    """The batches of ``train_loader``, both loaders checked (ValueError on a missing or empty loader, a
    train loader with no length, a one-shot holdout). Under a process group of several processes every
    refusal is agreed (:func:`adaptive.distributed.agreed_call`: a loader refused on one process stops
    every process with one error naming it), and so are the train loaders' lengths, which set the steps
    (collectives) of every stage: lengths that differ are refused on every process, naming each one's
    (:func:`adaptive.distributed.refuse_differing`). Three gathers of a few words; none on one process."""
    n_train = agreed_call(lambda: _train_batches(train_loader), passed_why=_OWN_LOADERS)
    refuse_differing(f"{n_train} batch{'es' if n_train != 1 else ''}", "train loader lengths", fix=_EVEN_SHARDS)
    # the holdout's length drives no collective (every evaluation reads it whole, then averages once)
    agreed_call(lambda: _check_loader(holdout_loader, "holdout"), passed_why=_OWN_LOADERS)
    return n_train


@dataclass
class Settings:
    """What :func:`adaptive.mask_only.optimize_connectome` was asked to do, checked: its arguments of
    the same names (the numbers as plain ints and floats, ``ladder`` a list of floats), ``targets`` the
    target(s) as a list, and ``n_train`` the batches of the train loader."""

    targets: List[Target]
    passes: Union[int, float]
    ensemble: object
    include: object
    exclude: object
    estimator: object
    window: int
    edit_fraction: float
    approach: float
    margin: float
    ladder: List[float]
    patience: int
    verify_batches: int
    line_search_tries: int
    eval_every: int
    loss_fn: Callable
    accuracy_fn: Optional[AccuracyFn]
    seed: int
    progress: Optional[bool]
    callback: Optional[Callable[[dict], None]]
    checkpoint: Optional[Union[str, "os.PathLike"]]
    n_train: int


# what a setting refused on some processes says of the processes that passed, and what settings that differ between
# processes say to do
_SAME_SETTINGS = ("every process must be given the same settings (the same arguments to optimize_connectome, not "
                  "computed from the process's rank)")
_SAME_SETTINGS_FIX = (_SAME_SETTINGS + ": they set the stages and steps every process takes together (one that takes a "
                      "step the others do not waits for them until the process group's timeout) and the masks every "
                      "process must agree on")
# the settings every process must be given alike (progress, callback and checkpoint are each process's own: the
# checkpoint's reading is agreed as it is read)
_SHARED = ("targets", "passes", "ensemble", "include", "exclude", "estimator", "window", "edit_fraction", "approach",
           "margin", "ladder", "patience", "verify_batches", "line_search_tries", "eval_every", "loss_fn",
           "accuracy_fn", "seed")


def check_settings(model: nn.Module, train_loader, holdout_loader, target, **settings) -> Settings:
    """The :class:`Settings` of an :func:`adaptive.mask_only.optimize_connectome` call (its arguments
    of the same names), each checked: ValueError (TypeError for a ``model`` that is no module) naming
    the fix on the first bad one, before any work and before anything changes. The ``train_loader``
    and ``holdout_loader`` must yield batches (a holdout with no length is asked for its first batch;
    a one-shot iterator as holdout is refused; under several processes, refused on every process alike,
    and the train loaders of the same length: :func:`check_loaders`), and ``ensemble`` must leave the
    density free. Under a process group of several processes a setting refused on some processes only is
    refused by every process alike (:func:`adaptive.distributed.agreed_call`), and settings that differ
    between processes (targets computed from the rank, say) are refused on every process, naming each
    one that differs (:func:`adaptive.distributed.refuse_differing_settings`), before any loader is
    read: two gathers of a few words more; none on one process."""
    s = agreed_call(lambda: _own_settings(model, target, **settings), passed_why=_SAME_SETTINGS)
    refuse_differing_settings({k: _said(getattr(s, k)) for k in _SHARED}, fix=_SAME_SETTINGS_FIX)
    _check_targets(model, s)
    s.n_train = check_loaders(train_loader, holdout_loader)
    agreed_call(lambda: _refuse_window_beyond_a_pass(s))  # (each process's checkpoint is its own: agreed)
    if s.verify_batches:  # (the holdout is read whole by every process: agreed all the same)
        agreed_call(lambda: refuse_repeated_verify_batches(s.verify_batches, verify_pass_length(holdout_loader, s.seed)))
    return s


def _refuse_window_beyond_a_pass(s: Settings) -> None:
    """Refuse ``window`` above the batches of one pass of the train loader, as the recipes refuse their
    --window: an update's window would read some batches twice (a stage is rounded up to whole windows, so
    ``window=100`` over 8 batches a pass read 12.5 passes for ``passes=1.0``, in silence), and a huge one
    runs for ever. Every process holds as many batches (agreed before), so all refuse alike. A run resumed
    from its ``checkpoint`` goes on with the window it recorded (its checkpoint refuses another, and it may
    have been started before this check), as the recipes' --resume does."""
    from .cli_checks import one_pass_problem

    problem = one_pass_problem("window", s.window, s.n_train, "one pass of the train loader",
                               "give the train loader more batches (more data or a smaller batch size)",
                               reader="an update's window", sep="=")
    if problem and not (s.checkpoint is not None and os.path.isfile(s.checkpoint)):
        raise ValueError(problem)


def _check_targets(model: nn.Module, s: Settings) -> None:
    """Refuse the targets the model cannot meet (and, for "best", a sparse start that already removes more than
    every rung) before a loader is asked for a batch: a fixed target beyond the model's synapses was refused only
    after the holdout's first batch had been read and run through the model, and an empty loader was named
    first. Under several processes, weights whose zeros differ between them are refused first, by name
    (:func:`adaptive.mask_only_start.check_start_agrees`: each process would judge the targets by its own
    count), and a target refused on some processes is refused on every one."""
    if is_distributed():
        import warnings

        from .connectome import Connectome
        from .mask_only_start import check_start_agrees, sparse_start

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # discovery's warnings are the run's connectome's to give, once
            conn = Connectome(model, ensemble=s.ensemble, include=s.include, exclude=s.exclude)
        start = sparse_start(conn)
        del conn
        check_start_agrees(start, model)
    agreed_call(lambda: check_targets(model, s.targets, include=s.include, exclude=s.exclude, ensemble=s.ensemble,
                                      ladder=s.ladder), passed_why=_SAME_SETTINGS)
    agreed_call(lambda: _refuse_renormalised_synapses(model, s), passed_why=_SAME_SETTINGS)


def _refuse_renormalised_synapses(model: nn.Module, s: Settings) -> None:
    """Refuse a synapse weight that an ``nn.Embedding(max_norm=...)`` (or EmbeddingBag) also holds (a head tied to
    it): the lookup renormalises the rows it reads in place at every forward, so surviving synapses would change,
    which mask-only optimisation promises they never do (a review's run changed 105 of them, silently)."""
    import warnings

    from .discovery import discover

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # (discovery's warnings are the run's connectome's to give, once)
        held = {id(w): n for n, (_, w) in discover(model, s.include, s.exclude).items()}
    for mname, m in model.named_modules():
        if isinstance(m, (nn.Embedding, nn.EmbeddingBag)) and m.max_norm is not None and id(m.weight) in held:
            name = held[id(m.weight)]
            raise ValueError(
                f"the synapse weight {name!r} is also the weight of {mname!r}, an {type(m).__name__} with max_norm="
                f"{m.max_norm:g}, which renormalises the rows it looks up in place at every forward: surviving synapses "
                f"would change, which mask-only optimisation never lets happen. Leave the weight out (exclude="
                f"[{name.rsplit('.', 1)[0]!r}]), or build the embedding with max_norm=None")


def _said(v):
    """``v`` (a checked setting) as every process given the same one says it: an estimator's registered name as
    it is, a function or object by :func:`adaptive.mask_only_checkpoint.value_identity` (never its address)."""
    from .mask_only_checkpoint import value_identity

    return value_identity(v)


def _own_settings(model: nn.Module, target, *, passes, ensemble, include, exclude, estimator, window, edit_fraction,
                  approach, margin, ladder, patience, verify_batches, line_search_tries, eval_every, loss_fn,
                  accuracy_fn, seed, progress, callback, checkpoint) -> Settings:
    """:func:`check_settings`' checks of the settings but the loaders, as one process makes them (``n_train`` 0)."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    targets = listed_targets(target)
    passes = checked_passes(passes)
    if whole_number(window) is None or window < 1:
        raise ValueError(f"window must be an integer >= 1, got {window!r}")
    window = whole_number(window)
    if not _is_real(approach) or not 0.0 <= approach <= 1.0:  # NaN fails the range too
        raise ValueError(f"approach must be in [0, 1], got {approach!r}")
    if not _is_real(edit_fraction) or not 0.0 <= edit_fraction <= 1.0:
        raise ValueError(f"edit_fraction must be in [0, 1] (the most swaps per update, as a fraction of the live "
                         f"ensembles), got {edit_fraction!r}")
    if not _is_real(margin) or not math.isfinite(margin):
        raise ValueError(f"margin must be a finite number (the estimated improvement a swap must promise, in the "
                         f"estimator's units; 0: any improvement), got {margin!r}")
    # numpy scalars and one-element tensors as plain floats: the run rounds them (a tensor has no
    # __round__) and the checkpoint's fingerprint compares them with the plain number of a resume
    approach, edit_fraction, margin = float(approach), float(edit_fraction), float(margin)
    if whole_number(seed, floats=True) is None:
        raise ValueError(f"seed must be an integer (a Python, numpy or torch integer), got {seed!r}: pass a whole "
                         f"number such as seed=0")
    seed = whole_number(seed, floats=True)
    bad_ladder = (f"ladder must be a list of increasing removal fractions in (0, 1) such as [0.1, 0.2, 0.3] "
                  f"(or [] for threshold editing), got {ladder!r}")
    if ladder is None or isinstance(ladder, (str, bytes)) or not isinstance(ladder, Iterable):
        raise ValueError(bad_ladder)
    try:
        ladder = [float(f) for f in ladder]
    except (TypeError, ValueError):
        raise ValueError(bad_ladder) from None
    if any(not 0.0 < f < 1.0 for f in ladder) or any(b <= a for a, b in zip(ladder, ladder[1:])):
        raise ValueError(f"ladder must be increasing removal fractions in (0, 1), got {ladder}")
    if whole_number(patience) is None or patience < 1:
        raise ValueError(f"patience must be an integer >= 1, got {patience!r}")
    patience = whole_number(patience)
    if whole_number(verify_batches) is None or verify_batches < 0:
        raise ValueError(f"verify_batches must be an integer >= 0 (0: no line search), got {verify_batches!r}")
    verify_batches = whole_number(verify_batches)
    if whole_number(line_search_tries) is None or line_search_tries < 0:
        raise ValueError(f"line_search_tries must be an integer >= 0 (the halvings a verified update may try before "
                         f"it is rolled back; 0: all or nothing), got {line_search_tries!r}")
    line_search_tries = whole_number(line_search_tries)
    if whole_number(eval_every) is None or eval_every < 0:
        raise ValueError(f"eval_every must be an integer >= 0 (updates between held-out evaluations; 0: at stage "
                         f"ends only), got {eval_every!r}")
    eval_every = whole_number(eval_every)
    for what, fn, none_ok in (("loss_fn", loss_fn, False), ("accuracy_fn", accuracy_fn, True),
                              ("callback", callback, True)):
        if not (callable(fn) or (none_ok and fn is None)):
            raise ValueError(f"{what} must be a callable{' or None' if none_ok else ''}, got {fn!r}"
                             + (" (a loss: F.cross_entropy or nn.CrossEntropyLoss())" if what == "loss_fn" else ""))
    nm = next((g.density for _, g in parse_rules(ensemble) if hasattr(g, "density")), None)
    if nm is not None:
        raise ValueError(
            f"ensemble {ensemble!r} fixes the density at {nm:g} in every group, so no removal target can be "
            "reached by removing and restoring synapses: use 'synapse', 'kernel', 'neuron' or 'block:RxC'"
        )
    return Settings(targets=targets, passes=passes, ensemble=ensemble, include=include, exclude=exclude,
                    estimator=estimator, window=window, edit_fraction=edit_fraction, approach=approach, margin=margin,
                    ladder=ladder, patience=patience, verify_batches=verify_batches,
                    line_search_tries=line_search_tries, eval_every=eval_every, loss_fn=loss_fn,
                    accuracy_fn=accuracy_fn, seed=seed, progress=progress, callback=callback, checkpoint=checkpoint,
                    n_train=0)
