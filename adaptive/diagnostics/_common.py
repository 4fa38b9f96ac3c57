"""Pieces shared by the diagnostics: batch iteration, layer lookup, the connectome of a pruned model,
bounded-memory quantiles."""
from __future__ import annotations

import contextlib
import threading
from typing import Dict, Iterator, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn
from ..connectome import Connectome, _MASKED_BY, _plain_module, _plain_names
from ..discovery import prunable_types
from ..label_checks import _labels_to_range_check, refuse_batch_targets
from ..metrics import refuse_one_class
from ..warn import warn_user


_BARS: Optional[bool] = None  # set_progress's setting: None, bars only where stderr is a terminal


def set_progress(setting: Optional[bool]) -> Optional[bool]:
    """The diagnostics' progress bars: ``True`` always, ``False`` never, ``None`` (the default) only
    where stderr is a terminal (:func:`adaptive.cli.show_progress`); recipes/diagnostics.py sets it from
    --progress / --no-progress for its run and gives back the setting it found. Returns the setting it
    replaces."""
    global _BARS
    if setting is not None and not isinstance(setting, bool):
        raise TypeError(f"set_progress takes True, False or None, got {setting!r}")
    before, _BARS = _BARS, setting
    return before


def bars_off() -> bool:
    """tqdm's ``disable=`` for a diagnostics bar (:func:`set_progress`)."""
    from ..cli import show_progress

    return not show_progress(_BARS)


def default_loss(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``F.cross_entropy``, refusing an output whose class axis 1 holds one channel (its loss and
    gradients would all be 0): a non-classifier passes its own ``loss_fn``. An output that is no
    tensor (a tuple, a dict, an object with ``.logits``) is refused with a TypeError naming both fixes
    (a ``loss_fn`` that reads it, or a model returning the logits), not cross-entropy's own."""
    if not torch.is_tensor(output):
        raise TypeError(
            f"the default loss, F.cross_entropy, needs the model's output to be a tensor (the logits, class axis 1), "
            f"but the model returned a {type(output).__name__}: pass loss_fn= that reads it (for example "
            "`loss_fn=lambda out, y: F.cross_entropy(out[0], y)`, or `out.logits`), or wrap the model in a module "
            "whose forward returns the logits")
    refuse_one_class(output, "the default loss, F.cross_entropy,")
    # targets of another shape or type: an error naming loss_fn= (torch's own names neither), read on no host
    _labels_to_range_check(output, target, F.cross_entropy, "the default loss, F.cross_entropy,")
    return F.cross_entropy(output, target)


def iterate_batches(loader, batches: Optional[int], desc: str, cycle: bool = False,
                    warn_short: bool = False) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
    """Yield up to ``batches`` ``(x, y)`` pairs from ``loader`` (all of one pass when None) with a
    tqdm bar. ``cycle`` restarts the loader when it runs out before ``batches`` (a generator or iterator,
    which cannot be, then runs out); ``warn_short`` warns when it runs out first (for callers whose
    ``batches`` is a request, not a cap)."""
    from tqdm.auto import tqdm

    if batches is not None and batches <= 0:
        raise ValueError(f"batches must be positive, got {batches}")
    source = _cycled(loader) if cycle and batches else loader
    total = batches
    if total is None:
        try:
            total = len(loader)
        except TypeError:
            total = None
    it = iter(source)
    with tqdm(total=total, desc=desc, leave=False, disable=bars_off()) as bar:
        n = 0
        while batches is None or n < batches:
            try:
                batch = next(it)
            except StopIteration:
                break
            if not isinstance(batch, (tuple, list)) or len(batch) < 2:
                what = f"a dict with keys {sorted(map(str, batch))[:6]}" if isinstance(batch, dict) else f"a {type(batch).__name__}"
                raise TypeError(f"the loader must yield (inputs, targets) pairs; it yielded {what}: give the DataLoader "
                                "a collate_fn (or wrap the dataset) so that each batch is (inputs, targets)")
            yield batch[0], batch[1]
            n += 1
            bar.update(1)
    if n == 0:
        raise ValueError(f"the loader for {desc} yielded no batches: it is empty (an empty dataset or subset, or "
                         "drop_last with fewer samples than one batch); pass a loader with at least one (inputs, targets) batch")
    if warn_short and batches is not None and n < batches:
        fix = ("a loader read again (a DataLoader or a list, not a generator or iterator, which a second pass finds "
               "empty: it was restarted and gave nothing)" if cycle else "a larger loader")
        warn_user(f"{desc}: asked for {batches} batches but the loader ran out after {n}; the result rests on {n} "
                  f"(pass {fix}, or batches=None for one pass)")


def _cycled(loader) -> Iterator:
    """``loader``'s batches pass after pass; stops (instead of spinning forever) when a pass is empty."""
    while True:
        empty = True
        for batch in loader:
            empty = False
            yield batch
        if empty:
            return


def model_device(model: nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


@contextlib.contextmanager
def batch_statistics_explained(what: str, fix: str):
    """Inside, PyTorch's bare ``Expected more than 1 value per channel when training`` (a BatchNorm
    normalising a batch by its own statistics, given one value per channel: a batch of one sample
    of a ``(N, C)`` layer) becomes a ValueError naming ``what`` ran it and ``fix``."""
    try:
        yield
    except ValueError as e:
        if "Expected more than 1 value per channel" not in str(e):
            raise
        raise ValueError(f"{what}: a BatchNorm normalises each batch by the batch's own statistics here (train mode), "
                         f"and a batch of one sample gives it a single value per channel, which has none ({e}); {fix}") from e


_SUSPENDED: Dict[int, int] = {}  # id of a parameter -> how many scalers_suspended() blocks hold it
_SUSPENDED_LOCK = threading.Lock()


@contextlib.contextmanager
def scalers_suspended(model: nn.Module):
    """Inside, a :class:`~adaptive.diagnostics.BandGradientScaler` hook on a parameter of ``model``
    passes gradients through unscaled and leaves its running state alone: the diagnostics measure
    the model's own gradients and leave a scaler attached for training as they found it. Scalers
    on other models' parameters (one training in another thread) keep working. Kept per parameter,
    process-wide, not per thread: autograd may run the measured model's hooks on its own threads."""
    ids = {id(p) for p in model.parameters()}
    with _SUSPENDED_LOCK:
        for i in ids:
            _SUSPENDED[i] = _SUSPENDED.get(i, 0) + 1
    try:
        yield
    finally:
        with _SUSPENDED_LOCK:
            for i in ids:
                if _SUSPENDED[i] == 1:
                    del _SUSPENDED[i]
                else:
                    _SUSPENDED[i] -= 1


def scaler_suspended(param_id: int) -> bool:
    """Whether hooks on the parameter ``id(param) == param_id`` are suspended (a diagnostic is
    measuring its model)."""
    return param_id in _SUSPENDED


@contextlib.contextmanager
def kept_buffers(model: nn.Module):
    """Restore every buffer of ``model`` (BatchNorm running statistics, counters) on exit, so a
    measurement run in train mode leaves the model exactly as it found it. Saved per module and
    buffer name, so a module that reassigns its buffer (``self.mean = 0.9 * self.mean + ...``)
    gets its original tensor object back, holding its original values (references to it stay
    valid); a buffer that was None is None again, and a non-persistent one stays non-persistent."""
    saved = []
    for mod in model.modules():
        for name, b in mod._buffers.items():
            saved.append((mod, name, b, None if b is None else b.detach().clone(),
                          name in mod._non_persistent_buffers_set))
    try:
        yield model
    finally:
        with torch.no_grad():
            for mod, name, b, value, non_persistent in saved:
                if b is not None:
                    b.copy_(value)
                mod._buffers[name] = b
                if non_persistent:
                    mod._non_persistent_buffers_set.add(name)
                else:
                    mod._non_persistent_buffers_set.discard(name)


@contextlib.contextmanager
def kept_grads(model: nn.Module):
    """Every parameter's ``.grad`` of ``model`` as it was on entry, put back on exit: a diagnostic that reads
    gradients by ``backward()`` (which the utility statistics read from ``.grad``) leaves a caller's pending
    gradients, taken between its backward pass and its optimizer step, as they were."""
    kept = [(p, p.grad) for p in {id(p): p for p in model.parameters()}.values()]
    try:
        yield
    finally:
        for p, g in kept:
            p.grad = g


@contextlib.contextmanager
def measured_gradients(params, what: str):
    """The frame of a diagnostic's gradient work: autograd records inside even when the caller
    runs under ``torch.no_grad()`` or ``torch.inference_mode()``, and every tensor of ``params``
    (the measured weights) requires grad, so a frozen layer (``requires_grad=False``, as in a
    frozen backbone) is measured like any other. Each ``requires_grad`` flag is given back on exit.
    ``what`` names the diagnostic in the error raised where a tensor made inside inference mode
    (a parameter or a batch) cannot take part in autograd."""
    unique = list({id(p): p for p in params}.values())
    flags = [(p, p.requires_grad) for p in unique]
    with torch.inference_mode(False), torch.enable_grad():
        try:
            for p, _ in flags:
                p.requires_grad_(True)
            yield
        except RuntimeError as e:
            if "nference tensor" not in str(e):
                raise
            raise RuntimeError(
                f"{what} measures gradients, and a tensor made inside torch.inference_mode() (a batch of the "
                f"loader or a parameter of the model) cannot take part in autograd ({e}); call {what} outside "
                "torch.inference_mode(), with the model and the batches made outside it too") from e
        finally:
            for p, flag in flags:
                p.requires_grad_(flag)


def check_finite(grad: torch.Tensor, what: str, name: str, batch: int) -> None:
    """Refuse a gradient with NaN or inf entries (the loss or the data of batch ``batch``, counted
    from 1, is not finite): its statistics would be wrong (a NaN collinearity reads as 0, "cancels",
    and a NaN cannot be binned). The error names the batch, the layer and what to check."""
    bad = ~torch.isfinite(grad)
    if bool(bad.any()):
        raise ValueError(f"{what}: the gradient of {name!r} at batch {batch} has {int(bad.sum())} of {grad.numel()} "
                         "entries NaN or inf (a non-finite loss, input or weight): its statistics would be wrong; check "
                         "the data and the model's weights (a diverged model), or use a loader whose batches are finite")


def find_weight(model: nn.Module, layer: str) -> Tuple[str, nn.Module, nn.Parameter]:
    """``(module_name, module, weight)`` for ``layer`` given as a module name ("classifier") or a
    parameter name ("classifier.weight"), by any name the module has (one held twice, ``self.out =
    self.head``, answers to both, as in include/exclude); ``module_name`` is its first, the name a
    connectome and a traced graph give it. Another parameter of a layer that has a ``weight`` (its
    bias, ``classifier.bias``) is refused with a ValueError: it was taken as the layer, whose weight was then
    measured in its place."""
    modules = dict(model.named_modules(remove_duplicate=False))  # every name of a module held under several
    first = {id(m): n for n, m in model.named_modules()}
    name = layer[: -len(".weight")] if layer.endswith(".weight") and layer not in modules else layer
    # the layers the depth diagnostics can measure: a LayerNorm's or an Embedding's weight has no input units
    weighted = [n for n, m in model.named_modules() if isinstance(m, prunable_types())]
    owner, _, attr = layer.rpartition(".")
    if name not in modules and isinstance(getattr(modules.get(owner), attr, None), nn.Parameter):
        if isinstance(getattr(modules[owner], "weight", None), nn.Parameter):  # a Linear's bias: not its weight
            raise ValueError(f"layer {layer!r} names the parameter {attr!r} of {owner!r}, but the depth diagnostics measure a "
                             f"layer's `weight` only (a bias reads no input units, so it has no signal depth): pass "
                             f"{owner!r} (or {owner + '.weight'!r})")
        name = owner  # a matrix of its own name (an RNN's weight_hh_l0, an attention's in_proj_weight)
    if name not in modules:
        raise KeyError(f"the model has no layer {layer!r}; layers it can measure (Linear, convolution): {weighted[:12]}")
    mod = modules[name]
    name = first[id(mod)]
    w = getattr(mod, "weight", None)
    if isinstance(w, torch.Tensor) and not isinstance(w, nn.Parameter):
        _refuse_computed_weight(model, name, mod)
    if not isinstance(w, nn.Parameter):
        # the gradient is split by the depths of one `weight`'s input units, traced per call of its module
        matrices = [n for n, p in mod.named_parameters(recurse=False) if p.dim() >= 2]
        held = f": its matrices {matrices[:6]} are not measured here" if matrices else ""
        # its own first (an attention's out_proj), then those registered after it, which may read its output, in
        # the model's order (those before it, the earlier blocks of a transformer, cannot come first)
        order = [n for n, _ in model.named_modules()]
        at = order.index(name)
        weighted.sort(key=lambda n: (not n.startswith(name + "."), order.index(n) < at))
        raise TypeError(f"layer {layer!r}: {type(mod).__name__} {name!r} has no `weight` parameter{held} (the depth "
                        "diagnostics read the `weight` of a Linear or convolution layer, not a recurrent or attention "
                        "module's matrices); measure a layer that reads its output: the layers it can measure, its own "
                        f"and those after it in the model's order first, are {weighted[:12]}")
    return name, mod, w


def _refuse_computed_weight(model: nn.Module, name: str, mod: nn.Module) -> None:
    """Refuse a layer whose ``weight`` is a tensor computed at each call from other parameters
    (``torch.nn.utils.prune``'s ``weight_orig * weight_mask``, a parametrization, ``weight_norm``,
    ``spectral_norm``), naming them and the call that makes the weight a parameter again: it was refused
    as a recurrent or attention module's matrices, offering the very layer refused."""
    from ..discovery import _reparametrised_weight

    found = {n: _reparametrised_weight(model, f"{name}.{n}" if name else n) for n, _ in mod.named_parameters()}
    sources = [n for n, f in found.items() if f] or [n for n in found if not n.endswith("bias")]
    if "weight" in mod._buffers or not sources:  # stored, not computed: a frozen layer's weight made a buffer
        raise TypeError(f"layer {name!r}: the `weight` of {type(mod).__name__} {name!r} is a buffer (a tensor held by the "
                        "module that is no parameter), so it gets no gradient for the depth diagnostics to split; make "
                        "it an nn.Parameter of the module (requires_grad=False keeps it frozen in training, and is "
                        "measured all the same)")
    fixes = list(dict.fromkeys(f for f in found.values() if f))
    pruned = (", pruned positions staying 0 (pass the model's Connectome as conn= to measure the live synapses only)"
              if any("prune.remove" in f for f in fixes) else "")
    fix = (f"call {' and '.join(fixes)} first (here the module is model.get_submodule({name!r})): it makes the weight a "
           f"parameter again{pruned}" if fixes else "make the weight a parameter of the module again")
    raise TypeError(f"layer {name!r}: the `weight` of {type(mod).__name__} {name!r} is no parameter but a tensor computed "
                    f"at each call from {sources[:4]} (torch.nn.utils.prune, a parametrization, weight_norm or "
                    f"spectral_norm), so the depth diagnostics cannot split its gradient by input column; {fix}")


def module_names(model: nn.Module, module: nn.Module) -> List[str]:
    """Every name ``module`` has in ``model`` (one held under several, ``self.out = self.head``, has each),
    its first (the one a connectome and a traced graph give it) first."""
    return [n for n, m in model.named_modules(remove_duplicate=False) if m is module]


def plain_layer_name(model: nn.Module, layer: str) -> str:
    """``layer`` as a connectome names it: given as a wrapper of ``model`` names it (``module.NAME`` of
    DistributedDataParallel or DataParallel, ``_orig_mod.NAME`` of ``torch.compile``), NAME where the module
    inside has that layer or parameter; ``layer`` as given otherwise (an ordinary model's submodule named
    ``module`` is no wrapper)."""
    plain = _plain_module(model)
    if plain is model:
        return layer
    known = ({n for n, _ in plain.named_modules(remove_duplicate=False)}  # every name of a module held under several
             | {n for n, _ in plain.named_parameters(remove_duplicate=False)})
    return next(iter(_plain_names({layer: None}, known)))


def attached_connectome(model: nn.Module) -> Optional[Connectome]:
    """The Connectome that masks ``model``'s weights through an optimizer (attached), if any."""
    for p in _plain_module(model).parameters():
        c = masking_connectome(p)
        if c is not None:
            return c
    return None


def masking_connectome(param: torch.Tensor) -> Optional[Connectome]:
    """The Connectome that masks ``param`` through an optimizer (attached), if any."""
    entry = _MASKED_BY.get(id(param))
    c = entry[1]() if entry is not None and entry[0]() is param else None
    return c if c is not None and (c._optimizers or c._masker.handles) else None


def model_connectome(model: nn.Module, conn, what: str, why: str) -> Optional[Connectome]:
    """The connectome saying which synapses of ``model`` exist: ``conn`` when given (refused unless
    it is a :class:`~adaptive.Connectome` of this very model: one built on it or on a wrapper of it,
    ``torch.compile``, DistributedDataParallel or DataParallel, which a connectome takes as the module
    inside), else the one attached to an optimizer of ``model`` (:func:`attached_connectome`), else
    None (a dense model). ``what`` names the diagnostic in the errors, ``why`` says what it does with
    the masks."""
    if conn is None:
        conn = attached_connectome(model)
        if conn is not None:
            conn._check_params()  # masks of weights the model no longer holds (replaced, or parametrized since)
        return conn
    if not isinstance(conn, Connectome):
        raise TypeError(f"conn must be the model's adaptive.Connectome (its masks say {why}), got {type(conn).__name__}")
    if conn.model is not _plain_module(model):
        raise ValueError(f"conn masks another model than the one given: pass the Connectome built on this model "
                         f"({what}(conn.model, ..., conn=conn))")
    conn._check_params()  # masks of weights the model no longer holds (replaced, or parametrized since): refused, naming the fix
    return conn


def live_mask(conn: Optional[Connectome], weight: torch.Tensor, device=None) -> Optional[torch.Tensor]:
    """Which entries of ``weight`` are live synapses (a bool tensor of its shape, on ``device``, by
    default the CPU): the connectome's synapse-level mask of that very parameter (found by
    identity, whatever its name, and in the weight's stored layout: a transposed convolution's
    ``(in, out/groups, *kernel)``, an ensemble granularity expanded to its synapses). A weight
    ``conn`` does not hold is read from the Connectome attached to an optimizer that masks it, where
    there is one: a model may have several, over disjoint layers (each with its optimizer), and
    :func:`attached_connectome` finds only the first. None when no connectome holds the weight (a
    layer left dense)."""
    for c in (conn, masking_connectome(weight)):
        for n, p in ({} if c is None else c.params).items():
            if p is weight:
                return c.masks[n].detach().to(device or "cpu", torch.bool)
    return None


def held_masks(model: nn.Module, conn: Optional[Connectome]) -> dict:
    """Every weight of ``model`` a connectome holds, by its parameter name in ``model``, mapped to its
    live mask (:func:`live_mask`: ``conn`` first, else the Connectome attached to an optimizer that
    masks that weight, so several attached connectomes over disjoint layers are all read). Empty for a
    dense model. A weight held under several names (a language model's head tied to its embedding) is
    given under every one of them."""
    found = {}
    for name, p in _plain_module(model).named_parameters(remove_duplicate=False):
        m = live_mask(conn, p)
        if m is not None:
            found[name] = m
    return found


def warn_if_zeros(weights, what: str, counted: str) -> None:
    """Warn when no Connectome came with the model but 1% or more of the measured ``weights`` are
    exact zeros (a pruned model whose masks were not passed): ``counted`` says what ``what``
    then does with them."""
    weights = list(weights)
    zeros = sum(int((w == 0).sum()) for w in weights)
    total = sum(w.numel() for w in weights)
    if zeros and zeros >= 0.01 * total:
        warn_user(f"{zeros} of the {total} prunable weights {what} measures are exactly zero, as if pruned, but no "
                  f"Connectome came with the model: {counted}. If the model is pruned, pass its Connectome: "
                  f"{what}(model, ..., conn=conn)")


class LogHistogram:
    """Quantiles of many non-negative numbers, split into groups, in bounded memory.

    Values are binned by log10 (``bins_per_decade`` bins between ``10**lo`` and ``10**hi``, so a
    quantile is exact to a relative ``10**(1/bins_per_decade) - 1``, 1.2% by default); exact zeros
    are counted apart and rank below everything. The default range, 1e-46 to 1e10 (11,200 bins,
    90 KB a group), holds every non-zero float32, bfloat16 and float16 gradient up to 1e10, the
    subnormals included (float32's smallest is 1.4e-45). Values outside it (only float64 holds
    non-zero ones below 1e-46) are counted in the end bin, so a quantile among them reads about
    ``10**lo`` (or ``10**hi``); pass a wider ``lo``/``hi`` for those.
    """

    def __init__(self, groups: int, lo: float = -46.0, hi: float = 10.0, bins_per_decade: int = 200):
        self.groups, self.lo, self.hi, self.bpd = groups, lo, hi, bins_per_decade
        self.nbins = int(round((hi - lo) * bins_per_decade))
        self.counts = torch.zeros(groups, self.nbins, dtype=torch.float64)
        self.zeros = torch.zeros(groups, dtype=torch.float64)
        self.sums = torch.zeros(groups, dtype=torch.float64)

    def update(self, values: torch.Tensor, group: torch.Tensor) -> None:
        v = values.detach().reshape(-1).double().cpu()
        g = group.reshape(-1).cpu()
        self.sums += torch.bincount(g, weights=v, minlength=self.groups)
        zero = v == 0
        self.zeros += torch.bincount(g[zero], minlength=self.groups).double()
        v, g = v[~zero], g[~zero]
        b = ((v.log10() - self.lo) * self.bpd).floor().clamp_(0, self.nbins - 1).long()
        self.counts += torch.bincount(g * self.nbins + b, minlength=self.groups * self.nbins).double().view(self.groups, self.nbins)

    def total(self) -> torch.Tensor:
        return self.counts.sum(1) + self.zeros

    def mean(self) -> torch.Tensor:
        return self.sums / self.total().clamp_min(1)

    def quantile(self, q: float) -> torch.Tensor:
        """Per-group ``q``-quantile as ``torch.quantile`` defines it (linear interpolation between the
        two values ranked ``q * (n - 1)`` either side), each of the two read from its bin (geometric
        interpolation inside it, 0.0 among the zeros), so within the class's resolution of
        ``torch.quantile``. It read the value of rank ``q * n``, the lower of the two middle values
        for a median: on 96 values, 3% and more below ``torch.quantile``, however fine the bins."""
        tot = self.total()
        pos = q * (tot - 1).clamp_min(0)
        lo = pos.floor()
        frac = pos - lo
        a, b = self._at_rank(lo), self._at_rank(torch.minimum(lo + 1, (tot - 1).clamp_min(0)))
        val = a + frac * (b - a)
        return torch.where(tot == 0, torch.zeros_like(val), val)

    def _at_rank(self, rank: torch.Tensor) -> torch.Tensor:
        """Per group, the value of 0-based ``rank`` in ascending order: 0.0 among the zeros, else the
        geometric middle of its share of its bin."""
        need = rank - self.zeros + 0.5  # counts the value half: the middle of its share of the bin
        cum = self.counts.cumsum(1)
        idx = torch.searchsorted(cum, need.clamp_min(0).unsqueeze(1)).squeeze(1).clamp_(max=self.nbins - 1)
        before = torch.where(idx > 0, cum.gather(1, (idx - 1).clamp_min(0).unsqueeze(1)).squeeze(1), torch.zeros_like(need))
        inbin = self.counts.gather(1, idx.unsqueeze(1)).squeeze(1).clamp_min(1)
        frac = ((need - before) / inbin).clamp(0, 1)
        val = 10 ** (self.lo + (idx.double() + frac) / self.bpd)
        return torch.where(rank < self.zeros, torch.zeros_like(val), val)


def batch_loss(loss_fn, out, y, where: str):
    """``loss_fn(out, y)`` after :func:`adaptive.label_checks.refuse_batch_targets`: a label beyond the model's head
    (or targets of another shape or type) is refused naming the labels, the fix and ``where`` (which batch), where
    torch's loss raised a bare "Target 9 is out of bounds". The diagnostics run on the CPU, so the batch's labels
    are read on the host; losses the checks do not know are called as they are. :func:`default_loss` is checked as
    the cross-entropy it is, once its own refusals (an output that is no tensor, one class) have had their say."""
    checked = loss_fn
    if loss_fn is default_loss:
        if not torch.is_tensor(out) or out.dim() < 2 or out.shape[1] == 1:
            return loss_fn(out, y)
        checked = F.cross_entropy
    refuse_batch_targets(out, y, checked, where)
    return loss_fn(out, y)
