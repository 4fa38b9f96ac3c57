"""A checkpoint's optimizer state read against this run's optimizers, before anything is loaded.
torch's ``Optimizer.load_state_dict`` checks only the parameter counts of the groups, and loads the
moments of another model (of other shapes) silently: the first step then failed deep inside it with
a traceback of mismatched tensor sizes. :func:`saved_optimizer_problem` reads the checkpoint's
``optimizer*.bin`` as Accelerate will (memory-mapped where it can: only the shapes are read) and
names the first misfit (a moment of another shape than its parameter; Adafactor's factored
``row_var``/``col_var`` of another row or column count; L-BFGS's history vectors of another length
than all its parameters together), so :func:`~adaptive.training.load_checkpoint` refuses the checkpoint with the
model, optimizer and connectome untouched. Under FSDP, DeepSpeed or Megatron-LM Accelerate writes the
optimizer in its own layout: there :func:`optimizer_state_problem` checks the state after the load.

An optimizer with a ``load_state_dict`` pre-hook (torch's way to adapt a state saved over other
parameters or groups) loads what its hooks make of the file, not the file: its state is checked as
loaded, after the load (:func:`optimizer_state_problem` with ``adapted_only``).

Only torch's own optimizers are read so, whose moments of these names have their parameter's shape:
another's (a low-rank one keeping ``exp_avg`` of the projected gradient's shape, or a subclass) may
keep state of another shape by design.
"""
from __future__ import annotations

import zipfile
from itertools import chain
from pathlib import Path
from typing import Optional

import torch

# the per-parameter state of torch's optimizers that has its parameter's shape
_PARAM_SHAPED_STATE = ("momentum_buffer", "exp_avg", "exp_avg_sq", "max_exp_avg_sq", "square_avg", "acc_delta", "sum",
                       "grad_avg", "ax", "exp_inf", "prev", "step_size", "variance")
# L-BFGS's state, kept under its first parameter: vectors over all its parameters at once
_LBFGS_FLAT = ("d", "prev_flat_grad")
_LBFGS_FLAT_LISTS = ("old_dirs", "old_stps")


def _expected_shapes(shape) -> dict:
    """``{key: shape}``: the shape each state entry of torch's optimizers should have for a parameter of
    ``shape``: its own for the moments, and for Adafactor's factored second moments that of a row's
    (``row_var``: the last dimension 1) and a column's (``col_var``: the one before it 1)."""
    out = {k: tuple(shape) for k in _PARAM_SHAPED_STATE}
    if len(shape) >= 2:
        out["row_var"] = tuple(shape[:-1]) + (1,)
        out["col_var"] = tuple(shape[:-2]) + (1, shape[-1])
    return out


def _shape_misfit(st: dict, p):
    """``(key, saved shape)`` of the first state entry in ``st`` that does not fit parameter ``p``, else None."""
    for key, want in _expected_shapes(p.shape).items():
        v = st.get(key)
        if torch.is_tensor(v) and tuple(v.shape) != want:
            return key, v.shape
    return None


def _lbfgs_misfit(opt, state: dict):
    """``(key, saved length, length here)`` where an L-BFGS state (``state``: the one of its first
    parameter) holds a history vector of another length than all its parameters together (complex ones
    counted as pairs of reals), else None: another model's history, which its next step fails on."""
    if not isinstance(opt, torch.optim.LBFGS) or not isinstance(state, dict):
        return None
    n = sum(2 * p.numel() if torch.is_complex(p) else p.numel() for g in opt.param_groups for p in g["params"])
    vs = [(k, state.get(k)) for k in _LBFGS_FLAT] + [(k, v) for k in _LBFGS_FLAT_LISTS for v in (state.get(k) or [])]
    for k, v in vs:
        if torch.is_tensor(v) and v.numel() != n:
            return k, v.numel(), n
    return None


def _lbfgs_message(bad, where: str = "") -> str:
    key, saved, here = bad
    return (f"{where}L-BFGS state {key} has {saved} entries, but its parameters hold {here} here: was it saved from "
            "another model? Load a checkpoint of this model (its run's --resume), or build the model it was saved from")


def _torch_optimizers(accelerator):
    """``(i, optimizer)``: the registered optimizers that are torch's own (unwrapped), with their index."""
    for i, opt in enumerate(accelerator._optimizers):
        opt = getattr(opt, "optimizer", opt)
        if type(opt).__module__.split(".")[:2] == ["torch", "optim"]:
            yield i, opt


def _adapted_on_load(opt) -> bool:
    """Whether ``opt`` has ``load_state_dict`` pre-hooks, which may rewrite the state it is given."""
    return bool(getattr(opt, "_optimizer_load_state_dict_pre_hooks", None))


def _param_names(accelerator) -> dict:
    return {id(p): n for m in accelerator._models for n, p in accelerator.unwrap_model(m).named_parameters()}


def _misfit(key: str, name: str, saved, here, where: str = "") -> str:
    return (f"{where}optimizer state {key} of {name!r} has shape {tuple(saved)}, but the parameter is {tuple(here)} here: "
            "was it saved from another model? Load a checkpoint of this model (its run's --resume), or build the "
            "model it was saved from")


def reads_optimizer_files(accelerator) -> bool:
    """Whether Accelerate writes the optimizers as ``optimizer*.bin`` state_dicts (no FSDP, DeepSpeed or
    Megatron-LM, which keep their own layouts), which :func:`saved_optimizer_problem` reads."""
    from accelerate.utils import DistributedType

    return accelerator.distributed_type not in (DistributedType.FSDP, DistributedType.DEEPSPEED,
                                                DistributedType.MEGATRON_LM)


def saved_optimizer_problem(accelerator, path) -> Optional[str]:
    """Why the optimizer state in the checkpoint folder ``path`` does not fit ``accelerator``'s torch
    optimizers (another optimizer's state, groups of other sizes, or a moment of another shape than its
    parameter, named), read
    from the files before anything is loaded; None when it fits. Each misfit names its file. A file that
    cannot be read is :func:`adaptive.checkpoint_files.checkpoint_files_problem`'s to name."""
    from accelerate.utils import load

    names = _param_names(accelerator)
    for i, opt in _torch_optimizers(accelerator):
        if _adapted_on_load(opt):  # (its hooks adapt the file's state: checked as loaded)
            continue
        f = Path(path) / (f"optimizer_{i}.bin" if i else "optimizer.bin")
        try:
            sd = load(f, map_location="cpu", mmap=zipfile.is_zipfile(f))  # (Accelerate's load, weights_only)
        except Exception:  # noqa: BLE001 - a damaged or missing file: checkpoint_files_problem names it
            continue
        if not (isinstance(sd, dict) and isinstance(sd.get("state"), dict) and isinstance(sd.get("param_groups"), list)
                and all(isinstance(g, dict) and isinstance(g.get("params"), list) for g in sd["param_groups"])):
            return f"{f.name} is not an optimizer state_dict (one of 'state' and 'param_groups'): was it replaced?"
        other = _other_optimizer(sd["param_groups"], opt)
        if other:
            return f"{f.name}: {other}"
        saved = [g["params"] for g in sd["param_groups"]]
        here = [g["params"] for g in opt.param_groups]
        if [len(g) for g in saved] != [len(g) for g in here]:
            return (f"{f.name} holds the state of parameter groups of {[len(g) for g in saved]} parameter(s), but "
                    f"the optimizer's groups have {[len(g) for g in here]} here: was it saved from another model? "
                    "Load a checkpoint of this model (its run's --resume), or build the model it was saved from")
        params = dict(zip(chain.from_iterable(saved), chain.from_iterable(here)))  # as torch's load maps them
        for k, st in sd["state"].items():
            p = params.get(k)
            if p is None or not isinstance(st, dict):
                continue
            bad = _shape_misfit(st, p)
            if bad:
                return _misfit(bad[0], names.get(id(p), "a parameter"), bad[1], p.shape, f"{f.name}: ")
            bad = _lbfgs_misfit(opt, st)
            if bad:
                return _lbfgs_message(bad, f"{f.name}: ")
    return None


def _other_optimizer(saved_groups, opt) -> Optional[str]:
    """Why optimizer state saved with the parameter groups ``saved_groups`` is another optimizer's than ``opt``
    (its groups lack a number ``opt``'s class takes: an SGD's momentum, an Adam's betas), naming both; None where
    they hold every such number. Flags (booleans, None: torch adds some across versions) and keys the file holds
    beyond them (a learning-rate scheduler's initial_lr) are not compared: torch's load takes both."""
    numbers = [k for k, v in opt.defaults.items() if k != "params" and not isinstance(v, (bool, type(None)))]
    lacking = sorted({k for g in saved_groups for k in numbers if k not in g})
    if not lacking:
        return None
    held = sorted({k for g in saved_groups for k in g if k != "params" and not isinstance(g[k], (bool, type(None)))})
    return (f"the optimizer state was saved by another optimizer than {type(opt).__name__}: its groups hold "
            f"{', '.join(held) or 'no hyper-parameter'} but not {', '.join(lacking)}, which {type(opt).__name__} takes "
            "(its first step would fail inside torch). Resume with the optimizer the checkpoint was saved with")


def optimizer_state_problem(accelerator, adapted_only: bool = False) -> Optional[str]:
    """Why the state that ``accelerator``'s optimizers loaded does not fit their parameters (a moment
    of another shape: a checkpoint of another model's optimizer, its MANIFEST.json rewritten), naming
    the parameter; None when it fits. For the layouts :func:`saved_optimizer_problem` cannot read
    (FSDP, DeepSpeed, Megatron-LM), after the load; with ``adapted_only``, only the optimizers with
    ``load_state_dict`` pre-hooks, which it leaves to this check."""
    names = _param_names(accelerator)
    for _, opt in _torch_optimizers(accelerator):
        if adapted_only and not _adapted_on_load(opt):
            continue
        for p, st in opt.state.items():
            bad = _shape_misfit(st, p)
            if bad:
                return _misfit(bad[0], names.get(id(p), "a parameter"), bad[1], p.shape)
            bad = _lbfgs_misfit(opt, st)
            if bad:
                return _lbfgs_message(bad)
    return None
