"""Optimizer-state repair: moments at pruned and regrown positions are reset, so momentum,
weight decay and Adam's averages can neither revive a pruned synapse nor push a regrown one with
stale history. Works for any optimizer whose per-parameter state holds tensors shaped like the
parameter (SGD momentum buffers, Adam/AdamW moments, RMSprop, Adagrad, ...): no isinstance chain.
L-BFGS is the exception: it keeps its history as vectors over all its parameters at once, whose
curvature pairs cannot be repaired position by position, so an edit that leaves any of it at a
pruned position restarts that history (as a fresh L-BFGS would start). State of another shape that
holds more than one number (Adafactor's factored second moments ``row_var``/``col_var``: averages of
squared gradients shared by a row's or a column's synapses) cannot be reset for one synapse: it is
left as it is, which keeps pruned weights at exactly 0.0 (their masked gradient is 0, so is their
step), and :func:`unresettable_state_warning` says once per optimizer what it means for a regrown
synapse."""
from __future__ import annotations

import math
import weakref

import torch


def unwrap_optimizer(optimizer):
    """The torch optimizer inside Accelerate's ``AcceleratedOptimizer`` or torch's
    ``ZeroRedundancyOptimizer`` (or the optimizer itself): the one that keeps the per-parameter state
    and whose step moves the weights. Another wrapper keeping an optimizer in ``.optimizer`` (a
    Lookahead, whose step moves the weights after its optimizer's; a learning-rate scheduler) is
    refused, naming the fix: the connectome hooks the inner optimizer's step, and would not see the
    wrapper's own writes, which revive pruned synapses."""
    import sys

    inner = optimizer
    # AcceleratedOptimizer subclasses torch.optim.Optimizer but keeps the real one in .optimizer (its step is
    # that one's, scaled); ZeroRedundancyOptimizer keeps this process's shard in a local optimizer, .optim, whose
    # state holds the moments (its own .state stays empty) and whose step it calls inside its own
    for _ in range(4):
        nxt = getattr(inner, "optimizer", None)
        if nxt is None and _is_zero_redundancy(inner):
            nxt = inner.optim
        if nxt is None or nxt is inner:
            break
        accelerated = getattr(sys.modules.get("accelerate.optimizer"), "AcceleratedOptimizer", ())
        if not (isinstance(inner, accelerated) or _is_zero_redundancy(inner)):
            raise TypeError(_unknown_wrapper(optimizer, inner))
        inner = nxt
    if not isinstance(inner, torch.optim.Optimizer):
        raise TypeError(f"expected a torch.optim.Optimizer (or Accelerate's wrapper of one), got {type(optimizer).__name__}")
    return inner


def _unknown_wrapper(given, wrapper) -> str:
    """Why ``wrapper`` (in ``given``), which keeps an optimizer in ``.optimizer`` but is not Accelerate's, is
    refused, and the fix."""
    name = type(wrapper).__name__
    if isinstance(wrapper, torch.optim.lr_scheduler.LRScheduler):
        return f"got a learning-rate scheduler ({name}) where an optimizer belongs: pass its optimizer ({name}.optimizer)"
    return (f"{name} keeps an optimizer in .optimizer, but it is not Accelerate's wrapper, whose step is that "
            "optimizer's alone: a wrapper's step may move the weights after its optimizer's (Lookahead's slow weights), "
            "which the connectome, hooking the inner optimizer's step, would not mask, and pruned synapses would come "
            f"back. Attach the inner optimizer ({name}.optimizer) and call conn.apply() after each {name}.step(), "
            "which puts the masks back on the weights")


def unsupported_problem(optimizer: torch.optim.Optimizer) -> str | None:
    """Why the torch optimizer ``optimizer`` cannot step a connectome's weights (a module's dense
    parameters), naming the fix; None where it can. Refused when attached, before anything changes,
    rather than at a first step that would fail inside torch:
    ``SparseAdam`` steps only sparse gradients (an ``nn.Embedding(sparse=True)``'s), and
    ``differentiable=True`` updates the weights in place under autograd, which torch refuses for a
    module's parameters (leaf tensors that require grad)."""
    name = type(optimizer).__name__
    if isinstance(optimizer, torch.optim.SparseAdam):
        return (f"{name} steps only sparse gradients (those of nn.Embedding(sparse=True)), but a connectome's weights "
                "(Linear, Conv) get dense ones: its first step would fail ('SparseAdam does not support dense "
                "gradients'). Step them with torch.optim.Adam or AdamW, and keep SparseAdam in a second optimizer "
                "built from the sparse embeddings' parameters alone (not attached to the connectome)")
    if any(g.get("differentiable") for g in optimizer.param_groups):
        return (f"{name} has differentiable=True: its step updates the weights in place under autograd, which torch "
                "refuses for a module's parameters (leaf tensors that require grad: 'a leaf Variable that requires grad "
                "is being used in an in-place operation'), with or without a connectome. Build it with "
                "differentiable=False (the default)")
    return None


def _is_zero_redundancy(optimizer) -> bool:
    """Whether ``optimizer`` is a ``torch.distributed.optim.ZeroRedundancyOptimizer`` (read without
    importing torch.distributed where nothing has)."""
    import sys

    mod = sys.modules.get("torch.distributed.optim.zero_redundancy_optimizer")
    return mod is not None and isinstance(optimizer, mod.ZeroRedundancyOptimizer)


@torch.no_grad()
def reset_state(optimizer: torch.optim.Optimizer, param: torch.Tensor, where: torch.Tensor) -> None:
    """Zero every parameter-shaped state tensor of ``param`` at the positions ``where`` (bool)."""
    if isinstance(optimizer, torch.optim.LBFGS):
        _reset_lbfgs(optimizer, param, where)
        return
    for key, v in shaped_state(optimizer, param):
        v.masked_fill_(where.to(v.device), _fresh_value(optimizer, param, key))


def shaped_state(optimizer: torch.optim.Optimizer, param: torch.Tensor) -> list:
    """``[(key, tensor)]``: ``param``'s state tensors in ``optimizer`` that are shaped like it and
    floating point (moments, momentum buffers): the ones an edit resets position by position."""
    return [(key, v) for key, v in (optimizer.state.get(param) or {}).items()
            if isinstance(v, torch.Tensor) and v.shape == param.shape and v.is_floating_point()]


def unresettable_state(optimizer: torch.optim.Optimizer, param: torch.Tensor) -> list:
    """``[(key, shape)]``: ``param``'s state tensors in ``optimizer`` that hold more than one number but
    are not shaped like it (Adafactor's ``row_var`` and ``col_var``), which :func:`reset_state` cannot
    reset synapse by synapse and leaves as they are. Empty for L-BFGS, whose history is restarted instead."""
    if isinstance(optimizer, torch.optim.LBFGS):
        return []
    return [(key, tuple(v.shape)) for key, v in (optimizer.state.get(param) or {}).items()
            if isinstance(v, torch.Tensor) and v.numel() > 1 and v.shape != param.shape]


_WARNED_UNRESETTABLE = weakref.WeakSet()  # optimizers already told (once each)


def unresettable_state_warning(optimizer: torch.optim.Optimizer, name: str, param: torch.Tensor) -> str | None:
    """The warning for synapses of ``param`` (layer ``name``) regrown while ``optimizer`` keeps state
    for it that cannot be reset synapse by synapse (:func:`unresettable_state`); None where it keeps
    none, or where this optimizer was warned already (once per optimizer)."""
    kept = unresettable_state(optimizer, param)
    if not kept or optimizer in _WARNED_UNRESETTABLE:
        return None
    _WARNED_UNRESETTABLE.add(optimizer)
    what = ", ".join(f"{k} {tuple(shape)}" for k, shape in kept)
    if all(math.prod(shape) == param.numel() for _, shape in kept):  # one number per synapse, laid out otherwise
        return (f"{type(optimizer).__name__} keeps state for {name} {tuple(param.shape)} of one number per synapse "
                f"but not shaped like the weight ({what}), so which entry is which synapse is the optimizer's own "
                "layout: it cannot be reset for the synapses regrown there and is left as it is (pruned weights still "
                "stay exactly 0.0), so a regrown synapse steps with what that state held for its position, not from "
                "fresh state. Keep per-synapse state shaped like the weight (as Adam, AdamW and SGD do) to have it "
                "reset; shown once per optimizer")
    return (f"{type(optimizer).__name__} keeps state for {name} {tuple(param.shape)} that is not one number per "
            f"synapse ({what}: shared by several synapses, as Adafactor's factored second moments are by a row's "
            "or a column's), so it cannot be reset for the synapses regrown there and is left as it is (pruned "
            "weights still stay exactly 0.0). A regrown synapse then steps with its row's and column's averages, "
            "not from fresh state: where its whole row or column was pruned these have decayed toward 0 (they are "
            "0 if it was pruned before the first step), and its first steps are larger than a fresh optimizer's "
            "(Adafactor clips each layer's update as a whole, so the rest of the layer then steps less). For per-synapse "
            "resets use an optimizer with per-weight state (Adam, AdamW, SGD, ...); shown once per optimizer")


_LBFGS_VECTORS = ("d", "prev_flat_grad")
_LBFGS_LISTS = ("old_dirs", "old_stps")


def _reset_lbfgs(optimizer: torch.optim.LBFGS, param: torch.Tensor, where: torch.Tensor) -> None:
    """L-BFGS keeps, under its first parameter, flat vectors over all its parameters: the last
    direction ``d``, the last gradient and the curvature pairs (``old_dirs``, ``old_stps``). With
    masked gradients these stay 0.0 at pruned positions; after an edit the newly pruned positions
    carry the old values, which bend every later direction (a run diverged to NaN in five steps).
    Zeroing them there would break the pairs' curvature condition, so the history restarts."""
    params = optimizer._params
    state = optimizer.state.get(params[0])
    if not state:
        return
    offset = 0
    for p in params:
        if p is param:
            break
        offset += p.numel() * (2 if torch.is_complex(p) else 1)  # LBFGS views complex numbers as pairs of reals
    else:
        return  # not one of this optimizer's parameters
    flat = [state.get(k) for k in _LBFGS_VECTORS] + [v for k in _LBFGS_LISTS for v in state.get(k, [])]
    flat = [v for v in flat if isinstance(v, torch.Tensor)]
    if torch.is_complex(param):  # its pairs of reals: a position holds two entries
        where = torch.view_as_real(torch.zeros_like(param)).ne(0) | where.unsqueeze(-1)
    pos = where.reshape(-1).to(flat[0].device) if flat else where.reshape(-1)
    if any(v.numel() < offset + pos.numel() or v[offset: offset + pos.numel()][pos].any() for v in flat):
        optimizer.state.pop(params[0], None)  # the next step starts afresh (its first, cautious step size)


def _fresh_value(optimizer, param, key) -> float:
    """The value a state entry starts at in a fresh optimizer: 0, except Adagrad's ``sum``
    (``initial_accumulator_value``) and Rprop's ``step_size`` (``lr``), so that a regrown synapse's own
    state starts as a fresh optimizer's. Its steps are then a fresh optimizer's only where the state is
    per element: Adam's (and AdamW's) step count is one per tensor and is not reset, so a regrown weight's
    moments, zeroed, are bias-corrected for the tensor's step count, and its first steps are larger than a
    fresh Adam's (about 3.2x lr after many steps, with the default betas), as in RigL's own code, which
    zeroes the moments alike."""
    fresh = {(torch.optim.Adagrad, "sum"): "initial_accumulator_value", (torch.optim.Rprop, "step_size"): "lr"}
    for (cls, k), group_key in fresh.items():
        if isinstance(optimizer, cls) and key == k:
            for g in optimizer.param_groups:
                if any(p is param for p in g["params"]):
                    return float(g.get(group_key, 0.0))
    return 0.0


@torch.no_grad()
def snapshot_state(optimizers, params) -> list:
    """Copies of the parameter-shaped state tensors of ``params`` in ``optimizers``, for
    :func:`restore_state` (a rolled-back edit must not cost the moments it reset)."""
    saved = []
    for opt in optimizers:
        if opt is None:
            continue
        if isinstance(opt, torch.optim.LBFGS):  # its whole history, which an edit may drop (see _reset_lbfgs):
            first = opt._params[0]               # dropped, not changed in place, so a reference keeps it
            saved.append((opt, first, None, opt.state.get(first)))
            continue
        for p in params:
            saved.extend((opt, p, key, v.clone()) for key, v in shaped_state(opt, p))
    return saved


@torch.no_grad()
def restore_state(saved: list) -> None:
    for opt, p, key, v in saved:
        if key is None:  # L-BFGS's whole history, as it was
            opt.state.pop(p, None)
            if v is not None:
                opt.state[p] = v
            continue
        now = (opt.state.get(p) or {}).get(key)
        if isinstance(now, torch.Tensor) and now.shape == v.shape:
            now.copy_(v)


_ZERO_PRESERVING: set = set()


def register_zero_preserving(cls):
    """Declare that optimizer class ``cls`` is *zero-preserving*: its update at a position is exactly
    0.0 whenever that position's gradient, weight and every per-parameter state tensor are 0.0.

    The connectome masks gradients and weights before every step and keeps the state at pruned
    positions at 0.0, so after a step of such an optimizer the pruned weights are still exactly
    0.0 and the post-step re-masking (a pass over every prunable weight) is skipped. Any other
    optimizer (including subclasses of registered ones: the match is by exact type) is re-masked
    after each step. Registering a class that is not zero-preserving breaks invariant 1; prove a
    new entry with the 50-step test in tests/test_invariants.py. Usable as a class decorator."""
    if not (isinstance(cls, type) and issubclass(cls, torch.optim.Optimizer)):
        raise TypeError(f"register_zero_preserving expects a torch.optim.Optimizer subclass, got {cls!r}")
    _ZERO_PRESERVING.add(cls)
    return cls


def preserves_zeros(optimizer) -> bool:
    """Whether ``optimizer``'s exact type is registered as zero-preserving and its settings keep it so:
    with an ``eps`` that is 0 in a parameter's dtype (``eps=0``, or the default 1e-8 in float16) an
    adaptive optimizer's update at a pruned position is 0 / (sqrt(0) + 0) = NaN."""
    if type(optimizer) not in _ZERO_PRESERVING:
        return False
    return not zero_eps(optimizer)


def zero_eps(optimizer) -> list:
    """``(eps, dtype)`` for each parameter group whose ``eps`` is 0 in the dtype of a parameter it
    holds: 0 itself, or one too small for that dtype (1e-8 rounds to 0 in float16, whose smallest
    positive value is about 6e-8). Such an optimizer divides 0 by 0 wherever a gradient and its state
    are 0, so its step writes NaN there."""
    out = []
    for g in optimizer.param_groups:
        eps = g.get("eps")
        if isinstance(eps, torch.Tensor) and eps.numel() == 1:
            eps = eps.item()
        if isinstance(eps, bool) or not isinstance(eps, (int, float)):
            continue  # none, or not one number (Adafactor's eps is a pair, (None, 1e-3)): not this division
        eps = float(eps)
        for dtype in dict.fromkeys(p.dtype for p in g["params"]):  # the parameters' order: a set's follows
            # the dtypes' hashes (their addresses), which differ between processes, and the warning names the first
            if _rounds_to_zero(eps, dtype) and (eps, dtype) not in out:
                out.append((eps, dtype))
    return out


_ROUNDS_TO_ZERO: dict = {}  # (eps, dtype) -> bool


def _rounds_to_zero(eps: float, dtype: torch.dtype) -> bool:
    # a plain dict, not functools.lru_cache: torch.compile of a step that runs the hooks warned of every call
    # to an lru_cache-wrapped function
    key = (eps, dtype)
    found = _ROUNDS_TO_ZERO.get(key)
    if found is None:
        found = _ROUNDS_TO_ZERO[key] = eps == 0 or (dtype.is_floating_point and float(torch.tensor(eps, dtype=dtype)) == 0)
    return found


def zero_eps_warning(optimizer) -> str | None:
    """The warning :meth:`Connectome.attach` gives for :func:`zero_eps` groups, or None."""
    bad = zero_eps(optimizer)
    if not bad:
        return None
    eps, dtype = bad[0]
    what = "eps=0" if eps == 0 else f"eps={eps:g}, which is 0 in {str(dtype).replace('torch.', '')}"
    return (f"{type(optimizer).__name__} has {what}: its update is 0/0 = NaN wherever a gradient and its state are "
            "exactly 0, which pruning makes common (a unit whose outputs are all pruned gets no gradient). Pruned "
            "weights are kept at exactly 0.0 (re-masked after every step), but live ones there become NaN; give an "
            "eps > 0 that the parameters' dtype can hold (PyTorch's default 1e-8 in float32 or bfloat16; in float16 "
            "e.g. eps=1e-4), or train float32 master weights (torch.autocast for float16 compute)")


# Each keeps 0.0 where gradient, weight and state are 0.0, with or without momentum, dampening,
# nesterov, L2 or decoupled weight decay, amsgrad, centering (tests/test_invariants.py).
for _cls in (
    torch.optim.SGD,
    torch.optim.Adam,
    torch.optim.AdamW,
    torch.optim.NAdam,
    torch.optim.RAdam,
    torch.optim.RMSprop,
    torch.optim.Adagrad,
):
    register_zero_preserving(_cls)
