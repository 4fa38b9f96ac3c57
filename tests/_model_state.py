"""What a refused call must leave of a model exactly as it was: every parameter and buffer bit for bit,
each parameter's ``requires_grad`` and ``.grad``, each module's train/eval mode, its hooks (forward,
pre-forward, backward, state-dict), the parameters' tensor hooks, its parametrizations, and the global
random generators (:mod:`_global_rng`). Written independently of the library's own save/restore."""
import torch
from torch import nn
from torch.nn.utils import parametrize

from _global_rng import global_rng_states, moved_generators


def _bits(t: torch.Tensor) -> torch.Tensor:
    t = t.detach().reshape(-1).clone()
    return t if t.dtype == torch.bool else t.view(torch.uint8)


def _hooks(m: nn.Module) -> dict:
    return {a: list(v.keys()) for a, v in vars(m).items() if "hook" in a and isinstance(v, dict)}


def _tensor_hooks(p: torch.Tensor) -> tuple:
    return tuple(list(h.keys()) if isinstance(h, dict) else h
                 for h in (p._backward_hooks, getattr(p, "_post_accumulate_grad_hooks", None)))


def model_state(model: nn.Module) -> dict:
    """A copy of everything of ``model`` (and the global generators) a refusal must leave alone."""
    return {
        "tensors": {k: _bits(v) for k, v in model.state_dict(keep_vars=True).items()},
        "requires_grad": {n: p.requires_grad for n, p in model.named_parameters()},
        "grad": {n: None if p.grad is None else _bits(p.grad) for n, p in model.named_parameters()},
        "training": {n: m.training for n, m in model.named_modules()},
        "hooks": {n: _hooks(m) for n, m in model.named_modules()},
        "tensor_hooks": {n: _tensor_hooks(p) for n, p in model.named_parameters()},
        "parametrized": {n for n, m in model.named_modules() if parametrize.is_parametrized(m)},
        "modules": {n: type(m) for n, m in model.named_modules()},
        "rng": global_rng_states(),
    }


def changed_state(model: nn.Module, before: dict) -> list:
    """What differs between ``before`` (a :func:`model_state`) and ``model`` now: [] when nothing."""
    after = model_state(model)
    changed = [f"global generator {g}" for g in moved_generators(before["rng"], after["rng"])]
    for what in ("tensors", "grad"):
        if before[what].keys() != after[what].keys():
            changed.append(f"{what}: names {sorted(before[what])} -> {sorted(after[what])}")
            continue
        for n, a in before[what].items():
            b = after[what][n]
            if (a is None) != (b is None) or (a is not None and (a.shape != b.shape or not torch.equal(a, b))):
                changed.append(f"{what} of {n}")
    changed += [f"{what}: {before[what]} -> {after[what]}"
                for what in ("requires_grad", "training", "hooks", "tensor_hooks", "parametrized", "modules")
                if before[what] != after[what]]
    return changed
