"""A checkpoint folder's files read against this run's objects before Accelerate's ``load_state``
touches any of them. ``load_state`` loads the models, then the optimizers, schedulers, samplers, the
grad scaler, the random states and the registered objects, each from its own file, and stops at the
first that fails: a model file of other keys or shapes (torch's ``load_state_dict`` copies every tensor
that fits before it raises), a file cut short or unreadable, or one more or fewer registered-object
file than objects left what loaded before it loaded, so a Python caller who caught the error went on
with a half-loaded run. :func:`checkpoint_files_problem` reads what each of those steps will read
(the model files' headers only: keys and shapes; the other files memory-mapped where they can be) and
names the first misfit, so :func:`~adaptive.training.load_checkpoint` refuses the checkpoint with the
model, optimizer, connectome and controller untouched. A registered object that can say what it would
refuse without loading it (a ``check_state_dict(sd)`` method: :class:`~adaptive.connectome.Connectome`,
:class:`~adaptive.controller.Controller`, whose estimators and policy load their entries on trial and are
put back, :class:`~adaptive.training.TrainState`) is asked too; an LR scheduler (prepared, or registered as
the recipe registers its schedule) loads its file into a copy of itself (:func:`_trial_problem`: a few
numbers, its optimizer shared, not copied); a sampler file must hold a sampler of the dataloader's
sampler's class and a stateful dataloader's ``dl_state_dict`` file a dict. What is left to the load
itself: the refusal of a registered object of yours with no ``check_state_dict`` (give it one, raising
what its ``load_state_dict`` would, to have it asked first; a generic trial on a copy could copy a model
the object holds, or write into one it shares), a scheduler that cannot be copied, a stateful
dataloader's own ``load_state_dict`` refusing a dict, and a load pre-hook's error; each still leaves
what loaded before it.

A tensor of another dtype than its parameter's loads converted, as torch's ``load_state_dict`` does
(no failure, so no half-load); under FSDP, DeepSpeed or Megatron-LM the files are theirs, unread here, and
so are the model files where a ``register_load_state_pre_hook`` hook is registered (it may load the models
from files of its own: Accelerate then loads none of them).
"""
from __future__ import annotations

import os
import re
import zipfile
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Tuple

import torch

_EXTRA_STATE = "_extra_state"  # (torch's key for what a module's get_extra_state returns)
_CUSTOM = re.compile(r"^custom_checkpoint_\d+\.pkl$")  # (Accelerate's pattern for registered objects' files)


def one_line(e: BaseException) -> str:
    """An error's text on one line (torch's load_state_dict puts the cause on its second; a KeyError's
    without the quotes its str adds)."""
    text = str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e)
    return " ".join(line.strip() for line in text.splitlines() if line.strip())[:400]


def _cannot_read(f: Path, e: BaseException) -> Tuple[bool, str]:
    return True, f"{f.name} cannot be read ({type(e).__name__}: {one_line(e)})"


def _saved_shapes(f: Path) -> Dict[str, Optional[Tuple[int, ...]]]:
    """The entry names and tensor shapes of a model file as Accelerate will load it: a ``.safetensors``
    file's header alone (its length is checked against the file's: one cut short raises), or a
    ``.bin`` state_dict memory-mapped (an entry that is not a tensor, a module's ``_extra_state``, None)."""
    if f.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(f), framework="pt", device="cpu") as sf:
            return {k: tuple(sf.get_slice(k).get_shape()) for k in sf.keys()}
    from accelerate.utils import load

    sd = load(f, map_location="cpu", mmap=zipfile.is_zipfile(f))
    if not isinstance(sd, dict):
        raise TypeError(f"a {type(sd).__name__}, not a state_dict")
    return {k: tuple(v.shape) if torch.is_tensor(v) else None for k, v in sd.items()}


def _model_problem(model, f: Path) -> Optional[Tuple[bool, str]]:
    """``(damaged, why)``: the model file ``f`` does not load into ``model`` (keys missing or not the
    model's, a tensor of another shape, named), as Accelerate's load (safetensors' ``load_model``, strict:
    a tensor saved once under one of the names sharing it counts for all of them) would refuse it; None
    where it fits."""
    try:
        saved = _saved_shapes(f)
    except Exception as e:  # noqa: BLE001 - a damaged, cut-short or foreign file, named
        return _cannot_read(f, e)
    here = model.state_dict(keep_vars=True)
    missing = [k for k in here if k not in saved]
    unexpected = [k for k in saved if k not in here]
    if f.suffix == ".safetensors":  # load_model's own reckoning: of the names sharing one tensor (tied weights)
        for removed in _tied_names(here, saved).values():  # the file holds one; another there is unexpected
            missing = [k for k in missing if k not in removed]
            unexpected += [k for k in removed if k in saved]
    fix = "was it saved from another model? Load a checkpoint of this model, or build the model it was saved from"
    if missing or unexpected:
        what = "; ".join(part for part in (
            f"missing {len(missing)} of the model's tensor(s), first {missing[:3]}" if missing else "",
            f"{len(unexpected)} tensor(s) the model does not have, first {unexpected[:3]}" if unexpected else "") if part)
        return False, f"{f.name} does not hold this model's tensors ({what}): {fix}"
    for k, shape in saved.items():
        v = here[k]
        if k.rpartition(".")[2] == _EXTRA_STATE:  # a module's get_extra_state(): its set_extra_state takes any object
            continue
        if shape is None:
            return False, f"{f.name} holds {k!r} as a {type(v).__name__}, not a tensor: {fix}"
        if torch.nn.parameter.is_lazy(v) or shape == tuple(v.shape) or (v.dim() == 0 and shape == (1,)):
            continue  # (torch's load takes a one-element tensor for a 0-d one)
        return False, f"{f.name} holds {k!r} of shape {shape}, but the model's is {tuple(v.shape)} here: {fix}"
    return None


def _tied_names(here: Dict[str, torch.Tensor], saved: Iterable[str]) -> Dict[str, List[str]]:
    """The model's names that share one tensor, as safetensors' ``load_model`` reckons them: for each
    group, the name it keeps (one the file holds where it can) -> the others. safetensors' own
    ``_remove_duplicate_names`` (private) where this version has it, else :func:`_duplicate_names`,
    the same reckoning (safetensors 0.8's)."""
    tensors = {k: v for k, v in here.items() if torch.is_tensor(v)}
    try:
        from safetensors.torch import _remove_duplicate_names
    except ImportError:  # (a safetensors without it: the load's reckoning is ours)
        return _duplicate_names(tensors, saved)
    try:
        return _remove_duplicate_names(tensors, preferred_names=list(saved))
    except TypeError:  # (its signature changed)
        return _duplicate_names(tensors, saved)


def _duplicate_names(here: Dict[str, torch.Tensor], saved: Iterable[str]) -> Dict[str, List[str]]:
    """safetensors' ``_remove_duplicate_names(here, preferred_names=saved)`` (0.8), for a version that
    lacks it: tensors on one storage whose bytes overlap share a name group; each group keeps its
    alphabetically first name among those covering the whole storage, preferring one in ``saved`` (a group
    none of whose names covers it is refused, as safetensors refuses it)."""
    by_storage: Dict[tuple, List[str]] = {}
    for k, v in here.items():
        storage = v.untyped_storage()
        if v.device.type != "meta" and storage.data_ptr() != 0 and storage.nbytes() != 0:
            by_storage.setdefault((v.device, storage.data_ptr(), storage.nbytes()), []).append(k)

    def end(t: torch.Tensor) -> int:  # one past its last byte (as safetensors reckons it: a non-contiguous one raises)
        return t.view(-1)[-1].data_ptr() + t.element_size() if t.numel() else t.data_ptr()

    preferred, to_remove = set(saved), {}
    for names in by_storage.values():
        groups: List[set] = []
        last_stop = None
        for start, stop, name in sorted((here[n].data_ptr(), end(here[n]), n) for n in names):
            if last_stop is None or start >= last_stop:
                groups.append({name})
            else:
                groups[-1].add(name)
            last_stop = stop
        for group in groups:
            complete = {n for n in group if here[n].data_ptr() == here[n].untyped_storage().data_ptr()
                        and here[n].numel() * here[n].element_size() == here[n].untyped_storage().nbytes()}
            if not complete:
                raise RuntimeError(f"no name among {sorted(group)} covers the whole storage they share: safetensors "
                                   "refuses to load such a model")
            keep = sorted(preferred & complete or complete)[0]
            if len(group) > 1:
                to_remove.setdefault(keep, []).extend(sorted(n for n in group if n != keep))
    return to_remove


def _read(f: Path, weights_only: bool = True) -> Optional[Tuple[bool, str]]:
    """``(True, why)``: why ``f`` cannot be read as Accelerate's load will read it (None: it can), memory-mapped where it can be."""
    from accelerate.utils import load

    try:
        load(f, map_location="cpu", weights_only=weights_only, mmap=zipfile.is_zipfile(f))
    except Exception as e:  # noqa: BLE001 - a missing, damaged or foreign file, named
        return _cannot_read(f, e)
    return None


def checkpoint_files_problem(accelerator, path) -> Optional[Tuple[bool, str]]:
    """``(damaged, why)``: why ``accelerator.load_state(path)`` would stop part-way (a model file of other keys or shapes or
    cut short, or an optimizer, scheduler, sampler, scaler or registered-object file that cannot be read,
    or another number of registered-object files than objects), read from the files before anything
    loads (``damaged``: a file cannot be read, rather than holding what does not fit this run); None where
    each step's file is there and fits. Only for the layouts Accelerate writes itself
    (no FSDP, DeepSpeed or Megatron-LM: :func:`~adaptive.checkpoint_optimizer.reads_optimizer_files`); the
    model files are left to the load where a load_state pre-hook is registered (it may load the models itself).
    The optimizer files' contents are :func:`~adaptive.checkpoint_optimizer.saved_optimizer_problem`'s."""
    from .checkpoint_optimizer import reads_optimizer_files

    if not reads_optimizer_files(accelerator):
        return None
    path = Path(path)
    # a load_state pre-hook (accelerator.register_load_state_pre_hook) is handed the models before they load and
    # may load them itself, from files of its own, taking them out of the list: the model files are then its own
    models = [] if getattr(accelerator, "_load_model_state_pre_hook", None) else accelerator._models
    for i, model in enumerate(models):
        end = f"_{i}" if i else ""
        f = path / f"model{end}.safetensors"
        problem = _model_problem(model, f if f.exists() else path / f"pytorch_model{end}.bin")
        if problem:
            return problem
    files = [f"optimizer{f'_{i}' if i else ''}.bin" for i in range(len(accelerator._optimizers))]
    files += [f"scheduler{f'_{i}' if i else ''}.bin" for i in range(len(accelerator._schedulers))]
    files += ["scaler.pt"] if accelerator.scaler is not None else []
    files += [_sampler_file(i, dl) for i, dl in enumerate(accelerator._dataloaders) if _sampler_file(i, dl)]
    files += [n for n in (_dataloader_state_file(i, dl) for i, dl in enumerate(accelerator._dataloaders))
              if n and (path / n).exists()]  # (Accelerate loads one where it is there)
    for name in files:
        problem = _read(path / name)
        if problem:
            return problem
    for i, sched in enumerate(accelerator._schedulers):
        problem = _trial_problem(accelerator, sched, path / f"scheduler{f'_{i}' if i else ''}.bin", "scheduler")
        if problem:
            return problem
    for i, dl in enumerate(accelerator._dataloaders):
        problem = _dataloader_problem(i, dl, path)
        if problem:
            return problem
    found = sorted(f for f in os.listdir(path) if _CUSTOM.match(f))
    objects = len(accelerator._custom_objects)
    if len(found) != objects:
        return False, (f"it holds {len(found)} registered-object file(s) (custom_checkpoint_N.pkl), but {objects} object(s) "
                "are registered with accelerator.register_for_checkpointing here: register the same objects, in the "
                "same order, as the run that saved it")
    for i, obj in enumerate(accelerator._custom_objects):
        problem = _object_problem(accelerator, obj, path / f"custom_checkpoint_{i}.pkl")
        if problem:
            return problem
    return None


def _object_problem(accelerator, obj, f: Path) -> Optional[Tuple[bool, str]]:
    """``(damaged, why)``: why the registered object ``obj`` would not load its file ``f``: it cannot be
    read (as Accelerate reads it, memory-mapped where it can be), or ``obj``'s ``check_state_dict``
    (where it has one: :class:`~adaptive.connectome.Connectome`, :class:`~adaptive.controller.Controller`,
    :class:`~adaptive.training.TrainState`) refuses what it holds, or, for an LR scheduler, a copy of it
    refuses it (:func:`_trial_problem`); None where it loads, as far as can be known before the load."""
    from accelerate.utils import load

    try:
        sd = load(f, map_location="cpu", weights_only=False, mmap=zipfile.is_zipfile(f))
    except Exception as e:  # noqa: BLE001 - a missing, damaged or foreign file, named
        return _cannot_read(f, e)
    check = getattr(obj, "check_state_dict", None)
    if callable(check):
        try:
            check(sd)
        except Exception as e:  # noqa: BLE001 - its refusal, with its type and cause
            return False, (f"{f.name} does not load into the registered {type(obj).__name__} ({type(e).__name__}: "
                           f"{one_line(e)})")
    elif _is_scheduler(obj):  # (the recipe registers its LR schedule, unprepared)
        return _trial_problem(accelerator, obj, f, "registered")
    return None


def _is_scheduler(obj) -> bool:
    from accelerate.scheduler import AcceleratedScheduler

    return isinstance(obj, (torch.optim.lr_scheduler.LRScheduler, AcceleratedScheduler))


def _trial_problem(accelerator, sched, f: Path, what: str) -> Optional[Tuple[bool, str]]:
    """``(False, why)``: why the LR scheduler ``sched`` refuses its file ``f`` (a readable file of another kind:
    a LambdaLR given a StepLR's state, which lacks its 'lr_lambdas'), found by loading the file into a copy of
    it, which shares its optimizer (the copy's load reads and writes only the scheduler's own entries): a copy
    of a few numbers and functions, where the load itself would refuse it after the model and optimizer loaded.
    None where the copy takes it, or where the scheduler cannot be copied (left to the load)."""
    import copy

    from accelerate.utils import load

    keep = {}
    # shared, not copied: the scheduler's load leaves its optimizer alone. Its own optimizer too, where
    # Accelerate has not prepared it (a schedule of an optimizer registered for checkpointing itself: its
    # parameters and moments were copied), the other registered objects and the gradient state (which may
    # hold the dataloaders)
    own = [getattr(sched, "optimizer", None), *getattr(sched, "optimizers", ()),
           getattr(getattr(sched, "scheduler", None), "optimizer", None)]
    for o in [*accelerator._optimizers, *own]:
        if o is None:
            continue
        keep[id(o)] = o
        inner = getattr(o, "optimizer", None)
        if inner is not None:
            keep[id(inner)] = inner
    for o in [*accelerator._models, *accelerator._custom_objects, getattr(sched, "gradient_state", None)]:
        if o is not None and not _is_scheduler(o):  # (a scheduler, this one or the one it wraps, is copied)
            keep[id(o)] = o
    try:
        trial = copy.deepcopy(sched, keep)
    except Exception:  # noqa: BLE001 - a scheduler that cannot be copied: what its load says is left to the load
        return None
    try:
        trial.load_state_dict(load(f, map_location="cpu", weights_only=False, mmap=zipfile.is_zipfile(f)))
    except Exception as e:  # noqa: BLE001 - its refusal, with its type and cause
        return False, (f"{f.name} does not load into the {what} {type(sched).__name__} ({type(e).__name__}: "
                       f"{one_line(e)}): was it saved with another learning-rate schedule? Build the schedule "
                       "the run was saved with")
    return None


def _dataloader_state_file(i: int, dataloader) -> Optional[str]:
    """The ``dl_state_dict`` file Accelerate's load reads for the ``i``-th prepared dataloader of a stateful
    one (``use_stateful_dataloader``), or None."""
    if getattr(dataloader, "use_stateful_dataloader", False):
        return "dl_state_dict.bin" if i == 0 else f"dl_state_dict_{i}.bin"
    return None


def _dataloader_problem(i: int, dataloader, path: Path) -> Optional[Tuple[bool, str]]:
    """``(False, why)``: the ``i``-th dataloader's files in ``path`` hold what its load would refuse or take
    wrongly: a sampler file holding another object than a sampler of the dataloader's own sampler's class (Accelerate
    sets whatever it holds as the sampler), or a ``dl_state_dict`` file holding no dict (a stateful dataloader's
    state is one); None where they fit, as far as can be told before the load."""
    from accelerate.utils import load

    name = _sampler_file(i, dataloader)
    if name:
        saved, own = load(path / name), dataloader.get_sampler()
        if not isinstance(saved, type(own)):
            return False, (f"{name} holds a {type(saved).__name__}, not a {type(own).__name__} as dataloader {i}'s "
                           "sampler is: was it saved from another data pipeline? Load a checkpoint of this one")
    name = _dataloader_state_file(i, dataloader)
    if name and (path / name).exists():
        saved = load(path / name, weights_only=False)
        if not isinstance(saved, dict):
            return False, (f"{name} holds a {type(saved).__name__}, not the state dict of dataloader {i} (a stateful "
                           "dataloader's state_dict()): was it saved from another data pipeline? Load a checkpoint "
                           "of this one")
    return None


def _sampler_file(i: int, dataloader) -> Optional[str]:
    """The sampler file Accelerate's load reads for the ``i``-th prepared dataloader, or None where it reads none."""
    from accelerate.data_loader import IterableDatasetShard, SeedableRandomSampler

    if isinstance(getattr(dataloader, "dataset", None), IterableDatasetShard) and \
            isinstance(dataloader.get_sampler(), SeedableRandomSampler):
        return f"sampler{f'_{i}' if i else ''}.bin"
    return None
