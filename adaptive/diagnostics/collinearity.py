"""Gradient collinearity: how well each weight's per-batch gradients agree with its full-data
gradient.

For one weight with batch gradients ``g_1 .. g_B`` and full gradient ``G = mean(g_b)``:

* cosine collinearity ``cos = |mean g_b| / sqrt(mean g_b^2)``, the cosine between the vector of
  its batch gradients and the vector ``(G, .., G)``: 1 when every batch agrees exactly, about
  ``1/sqrt(B)`` for pure noise, 0 when they cancel;
* sign agreement: the fraction of batches whose gradient has the sign of ``G`` (a batch gradient
  of exactly 0 never agrees). Where ``G`` is exactly 0 (batch gradients that cancel exactly) it has
  no sign, and the agreement is the mean of the agreements with either sign: half the batches whose
  gradient is not 0, as a sign drawn at random for ``G`` would give on average, and the mean of the
  values just above and just below 0. (Reading 0 there would call batches that split both ways
  worse than noise; taking 0 as a sign of its own would give a weight with no gradient in any batch
  a perfect 1 rather than 0.)

Both come from running sums (``sum g``, ``sum g^2``, counts of positive and negative batch
gradients) in one pass: memory is four numbers per weight, whatever the number of batches, and
no per-sample gradient is ever stored.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterable, Iterator, Optional, Sequence

import torch
from torch import nn

from ..connectome import _local_module, _plain_module, _plain_patterns
from ..counts import whole_number
from ..discovery import discover
from ..global_rng import kept_global_rng
from ..metrics import call_model
from ..warn import warn_user
from ._common import (batch_loss, batch_statistics_explained, check_finite, default_loss, iterate_batches, kept_buffers, live_mask,
                      measured_gradients, model_connectome, model_device, scalers_suspended, warn_if_zeros)
from ..modes import modes_kept
from ..plots import closed_on_error, legend_below
from .table import Table, pyplot, save_figure

THRESHOLDS = (0.1, 0.25, 0.5, 0.75, 0.9)
STATISTICS = ("median_cosine", "mean_sign_agreement", "median_G2", "frac_cos>0.5", "no_gradient")



def _median(x: torch.Tensor) -> float:
    """The median (the mean of the two middle values for an even count; ``Tensor.median`` gives the
    lower one)."""
    x = x.reshape(-1)
    n = x.numel()
    if n == 0:
        return float("nan")
    lo = torch.kthvalue(x, (n + 1) // 2).values
    return float(lo if n % 2 else (lo + torch.kthvalue(x, n // 2 + 1).values) / 2)

def _describe(batch) -> str:
    """What a loader yielded, for an error message."""
    if isinstance(batch, dict):
        keys = sorted(map(str, batch))
        return f"a dict with keys {keys[:6]}{' ...' if len(keys) > 6 else ''}"
    if isinstance(batch, (tuple, list)):
        parts = ["tensor" if isinstance(b, torch.Tensor) else f"a {type(b).__name__}" for b in batch[:4]]
        return f"a {type(batch).__name__} of ({', '.join(parts)}{', ...' if len(batch) > 4 else ''})"
    return f"a {type(batch).__name__}"


def rebatch(loader, batch_size: Optional[int]) -> Iterator:
    """The loader's ``(x, y)`` batches re-cut into batches of exactly ``batch_size`` samples (the
    remainder that does not fill one is dropped); the loader's own batches when None. Re-cutting
    needs batches of ``(inputs tensor, targets tensor, ...)``: anything else is refused with a
    TypeError saying what the loader yielded and what to do."""
    if batch_size is None:
        yield from loader
        return
    if whole_number(batch_size) is None or batch_size <= 0:  # 2.5 failed deep in slicing; True re-cut into 1s
        raise ValueError(f"batch_size must be a whole number of samples, at least 1 (or None: the loader's own "
                         f"batches), got {batch_size!r}")
    batch_size = whole_number(batch_size)
    xs, ys, have, cut = [], [], 0, 0
    for batch in loader:
        if not (isinstance(batch, (tuple, list)) and len(batch) >= 2
                and isinstance(batch[0], torch.Tensor) and isinstance(batch[1], torch.Tensor)):
            fix = ("give the DataLoader a collate_fn that makes each batch (inputs tensor, targets tensor)"
                   if isinstance(batch, dict) or not isinstance(batch, (tuple, list)) or len(batch) < 2 else
                   "pass batch_size=None to measure the loader's own batches (their inputs go to the model as they "
                   "are, a tuple of tensors included), or give the DataLoader a collate_fn that makes each batch "
                   "(inputs tensor, targets tensor)")
            raise TypeError(
                f"collinearity(batch_size={batch_size}) re-cuts the loader's batches into batches of {batch_size} "
                f"samples, so each must be (inputs tensor, targets tensor, ...); this loader yielded "
                f"{_describe(batch)}: {fix}")
        x, y = batch[0], batch[1]
        xs.append(x)
        ys.append(y)
        have += len(x)
        while have >= batch_size:
            X, Y = torch.cat(xs), torch.cat(ys)
            yield X[:batch_size], Y[:batch_size]
            cut += 1
            xs, ys, have = [X[batch_size:]], [Y[batch_size:]], have - batch_size
    if cut == 0 and have > 0:
        raise ValueError(f"the loader holds only {have} samples, fewer than one batch of batch_size={batch_size}: "
                         "pass a smaller batch_size or more data")


@dataclass
class Collinearity:
    """Per-weight collinearity statistics of each measured layer (flat tensors, float32).

    ``cosine[name]``, ``sign_agreement[name]``, ``full_grad_sq[name]`` (``G^2``) and
    ``grad_var[name]`` (variance of the batch gradients) are aligned with ``weight.reshape(-1)``.
    ``batches`` is the number of batches measured, ``batch_size`` the samples per batch (None: the
    loader's own batches), ``examples`` the samples measured in all (None where a batch's size could
    not be read: no tensor among its targets or inputs); :meth:`describe_batches` says both in words.
    ``table`` has one row per layer; its ``no_gradient`` is the share of the
    layer's weights whose gradient was exactly 0 in every batch (a dead unit's inputs and outputs),
    whose cosine and sign agreement read 0 and count in the layer's medians and fractions. Where
    ``G`` is exactly 0 but some batch gradient is not, the sign agreement is half the batches whose
    gradient is not 0 (the module docstring says why).

    A pruned model (a connectome given or attached): only its live synapses are measured. Each
    per-weight tensor then holds the layer's live weights only, in the order of
    ``weight.reshape(-1)[live[name]]`` (``live``: each masked layer's flat mask; empty for a dense
    model), and the table's ``weights`` counts them, its ``pruned`` the weights left out. A layer
    pruned entirely has no per-weight tensors, and its row NaN statistics and a ``note``.
    ``measured`` is the number of weights measured, ``pruned`` the number left out.
    """

    cosine: Dict[str, torch.Tensor]
    sign_agreement: Dict[str, torch.Tensor]
    full_grad_sq: Dict[str, torch.Tensor]
    grad_var: Dict[str, torch.Tensor]
    batches: int
    batch_size: Optional[int]
    table: Table = field(default_factory=Table)
    live: Dict[str, torch.Tensor] = field(default_factory=dict)
    pruned: int = 0
    examples: Optional[int] = None

    def describe_batches(self) -> str:
        """What was measured, in words for a title or a console line: ``5 batches, 301 examples``
        (the loader's own batches, whose last one may be short), ``5 batches of 64, 320 examples``
        (re-cut to ``batch_size``)."""
        size = f" of {self.batch_size:,}" if self.batch_size else ""
        examples = "" if self.examples is None else f", {self.examples:,} example{'' if self.examples == 1 else 's'}"
        return f"{self.batches:,} batch{'' if self.batches == 1 else 'es'}{size}{examples}"

    @property
    def measured(self) -> int:
        """How many weights were measured (a pruned model's live ones)."""
        return sum(int(c.numel()) for c in self.cosine.values())

    def fraction_above(self, thresholds: Sequence[float] = THRESHOLDS, measure: str = "cosine") -> Table:
        """One row per layer (and ``all``): fraction of its weights whose collinearity exceeds each threshold."""
        src = getattr(self, measure)
        rows = []
        for name, c in list(src.items()) + [("all", torch.cat(list(src.values())))]:
            row = {"layer": name, "weights": c.numel()}
            # a float64 mean, as the layer table's frac_cos>0.5: the same figure to the last digit of a CSV
            row.update({f">{t:g}": float((c > t).double().mean()) for t in thresholds})
            rows.append(row)
        return Table(rows)

    def plot(self, path, svg: bool = False, measure: str = "cosine", title: str = ""):
        """Density of collinearity against squared full gradient (log x), all layers together.
        ``title`` should say which model and data split the gradients come from."""
        plt = pyplot()
        c = torch.cat(list(getattr(self, measure).values())).numpy()
        g2 = torch.cat(list(self.full_grad_sq.values())).double()
        keep = (g2 > 0).numpy()
        fig, ax = plt.subplots(figsize=(6, 4.2))
        with closed_on_error(fig):
            if keep.any():
                hb = ax.hexbin(g2.log10().numpy()[keep], c[keep], gridsize=60, bins="log", cmap="viridis", mincnt=1)
                fig.colorbar(hb, ax=ax, label="weights per cell")
            else:  # a hexbin of nothing has no colour range: matplotlib's colorbar raised "Invalid vmin or vmax"
                ax.text(0.5, 0.5, "every weight has G = 0 (no gradient reached them): nothing to draw",
                        ha="center", va="center", transform=ax.transAxes, fontsize=8)
            if measure == "cosine" and self.batches > 1:
                ax.axhline(self.batches ** -0.5, color="red", ls=":", lw=1, label="1/sqrt(batches): one batch alone, or noise")
                # under the axes: inside (upper left), it lay over the cells of weights with a small G and a high
                # collinearity, which a run's single-batch flukes fill
                legend_below(ax, fontsize=7, ncol=1)
            ax.set_xlabel(f"squared gradient G² (log10), G = mean over the {self.batches} batches")
            ax.set_ylabel("cosine collinearity |mean g|/rms g" if measure == "cosine" else "sign agreement with G")
            zero = int((~keep).sum())
            skipped = f"; {zero:,} with G = 0 not drawn" if zero else ""
            what = "cosine collinearity" if measure == "cosine" else "sign agreement"
            head = f"{title}\n" if title else ""
            pruned = f"; {self.pruned:,} pruned left out" if self.pruned else ""
            ax.set_title(f"{head}per-weight {what} ({self.describe_batches()}; {int(keep.sum()):,} weights{skipped}{pruned})",
                         fontsize=9)
            return save_figure(fig, path, svg=svg)

    def plot_summary(self, path, svg: bool = False, thresholds: Sequence[float] = THRESHOLDS, measure: str = "cosine",
                     title: str = ""):
        """Fraction of weights above each collinearity threshold, one line per layer (legend beside
        the axes, so it hides no line)."""
        plt = pyplot()
        t = self.fraction_above(thresholds, measure)
        fig, ax = plt.subplots(figsize=(6.5, 4.2))
        with closed_on_error(fig):
            cols = [f">{x:g}" for x in thresholds]
            for i, row in enumerate(t):
                # more layers than colours: the line style tells apart the layers that share a colour
                style = dict(color="black", lw=2.5) if row["layer"] == "all" else dict(lw=1, alpha=0.8, ls=("-", "--", ":")[(i // 10) % 3])
                ax.plot(list(thresholds), [row[c] for c in cols], marker="o", ms=3, label=row["layer"], **style)
            if measure == "cosine" and self.batches > 1:
                ax.axvline(self.batches ** -0.5, color="red", ls=":", lw=1, label="1/sqrt(batches): noise level")
            ax.set_xlabel(f"{measure} collinearity threshold")
            ax.set_ylabel("fraction of the layer's weights above it")
            ax.set_ylim(0, 1.02)
            ax.grid(True, alpha=0.3)
            ax.legend(fontsize=6, ncol=2 if len(t) > 24 else 1, loc="upper left", bbox_to_anchor=(1.01, 1.0))
            head = f"{title}\n" if title else ""
            pruned = f"; live weights only: {self.pruned:,} pruned left out" if self.pruned else ""
            ax.set_title(f"{head}gradient collinearity by layer ({self.describe_batches()}{pruned})", fontsize=9)
            return save_figure(fig, path, svg=svg)


def _samples(x, y) -> Optional[int]:
    """How many samples a batch holds: its targets' first dimension, else its inputs' (the first
    tensor of a tuple of inputs); None where neither is a tensor with one."""
    for t in (y, x[0] if isinstance(x, (tuple, list)) and x else x):
        if isinstance(t, torch.Tensor) and t.dim() > 0:
            return int(t.shape[0])
    return None


def _to_device(x, device):
    """``x`` on ``device``: a tensor, or the tensors inside a tuple, list or dict of them."""
    if isinstance(x, torch.Tensor):
        return x.to(device)
    if isinstance(x, (tuple, list)):
        return type(x)(_to_device(t, device) for t in x)
    if isinstance(x, dict):
        return {k: _to_device(v, device) for k, v in x.items()}
    return x


@kept_global_rng()
@torch.inference_mode(False)  # its tensors (sums, gradients) must be normal ones, whatever the caller's mode
def collinearity(
    model: nn.Module,
    loader,
    batch_size: Optional[int] = None,
    batches: Optional[int] = None,
    loss_fn: Callable = default_loss,
    include: Optional[Iterable[str] | str] = None,
    exclude: Optional[Iterable[str] | str] = None,
    train_mode: bool = True,
    device=None,
    conn=None,
) -> Collinearity:
    """Stream ``batches`` batches (all of one pass when None) of ``batch_size`` samples (re-cut from
    the loader's batches, which must then be ``(inputs tensor, targets tensor, ...)``; the loader's
    own batches when None, whose inputs may be a tuple of tensors for a model taking one) and measure the collinearity of every
    prunable weight (Linear/Conv weights, filtered by ``include``/``exclude`` like
    :class:`adaptive.Connectome`: on a DDP/DataParallel/compiled wrapper ``module.NAME`` and ``module.*`` read as
    ``NAME`` and ``*``, and a pattern matching no prunable layer is refused); a layer the loss does not reach in any batch (an unused head) has no
    gradient to measure and is left out with a warning (a ValueError when none is reached). Leaves ``.grad``, the parameters and the buffers (BatchNorm
    running statistics, even in train mode) untouched; an attached :class:`~adaptive.diagnostics.BandGradientScaler`
    neither scales the gradients measured nor updates its state. A frozen layer
    (``requires_grad=False``) is measured too: its weight requires grad for the measurement and gets
    its flag back afterwards; a call under ``torch.no_grad()`` or ``torch.inference_mode()`` measures
    as well (batches and model must be made outside inference mode).

    ``loss_fn(output, targets)``: the loss whose gradients are measured (default cross-entropy).
    ``train_mode``: run the model in train mode (dropout, batch statistics) while measuring, as
    training sees it; False measures in eval mode; each module's own mode is restored afterwards.
    ``device``: where batches go (default: the model's device). The global random generators are left
    as it found them (dropout masks and a loader's pass seeds are drawn from them, then they are put
    back: :mod:`adaptive.global_rng`).

    A pruned model: pass its :class:`~adaptive.Connectome` as ``conn`` (one attached to an optimizer
    of ``model`` is found without it). Only its live synapses (mask True; an ensemble granularity's
    masks are read at synapse level) enter the statistics: a pruned position's dense gradient is
    no synapse's. The result says how many were measured and left out (:class:`Collinearity`);
    a layer the connectome does not hold is measured whole."""
    include, exclude = _plain_patterns(model, include), _plain_patterns(model, exclude)  # module.* of a wrapper
    model = _local_module(model)  # a DDP model (accelerator.prepare's): the module inside, see _local_module
    conn = model_connectome(model, conn, "collinearity", "which synapses exist")
    found = discover(_plain_module(model), include, exclude)  # named as a connectome names them (a compiled model too)
    if not found:
        raise ValueError("no prunable weight matched: check include/exclude patterns")
    names = list(found)
    params = [p for _, p in found.values()]
    live = [None if m is None else m.reshape(-1) for m in (live_mask(conn, p) for p in params)]
    if conn is None:
        warn_if_zeros([p.detach() for p in params], "collinearity", "their gradients are counted as those of live synapses")
    if live and all(m is not None and not bool(m.any()) for m in live):
        raise ValueError(f"collinearity: every measured weight ({', '.join(names[:4])}{' ...' if len(names) > 4 else ''}) "
                         "is pruned (the connectome's masks): no synapse exists to measure; measure layers with live "
                         "synapses (include=/exclude=)")
    device = device or model_device(model)
    s1 = [torch.zeros(p.numel(), dtype=torch.float64) for p in params]
    s2 = [torch.zeros(p.numel(), dtype=torch.float64) for p in params]
    pos = [torch.zeros(p.numel(), dtype=torch.int32) for p in params]
    neg = [torch.zeros(p.numel(), dtype=torch.int32) for p in params]
    used = [False] * len(params)
    n, examples = 0, 0
    one_sample = ("measure batches of at least 2 samples (batch_size=)" + (", or in eval mode (train_mode=False), where "
                                                                           "BatchNorm uses its running statistics" if train_mode else ""))
    with measured_gradients(params, "collinearity"), kept_buffers(model), modes_kept(model, train_mode), \
            scalers_suspended(model), batch_statistics_explained("collinearity", one_sample):
        for x, y in iterate_batches(rebatch(loader, batch_size), batches, desc="collinearity", warn_short=True):
            size = _samples(x, y)
            examples = None if examples is None or size is None else examples + size
            x, y = _to_device(x, device), _to_device(y, device)
            loss = batch_loss(loss_fn, call_model(model, x, "collinearity"), y, f"collinearity's batch {n + 1}")
            grads = torch.autograd.grad(loss, params, allow_unused=True)
            for i, g in enumerate(grads):
                if g is None:
                    continue
                check_finite(g, "collinearity", names[i], n + 1)
                used[i] = True
                g = g.detach().reshape(-1).double().cpu()
                s1[i] += g
                s2[i] += g * g
                pos[i] += (g > 0).int()
                neg[i] += (g < 0).int()
            n += 1
    if n == 1:
        warn_user("collinearity measured on a single batch: every weight's gradient agrees with itself, so cosine and "
                  "sign agreement are 1 by definition and say nothing; pass a loader (or batches=) with several "
                  "batches (batch_size= re-cuts a loader into more, smaller ones)")
    unused = [name for name, u in zip(names, used) if not u]
    if len(unused) == len(names):
        raise ValueError(f"collinearity: none of the measured weights ({', '.join(names[:4])}{' ...' if len(names) > 4 else ''}) "
                         "takes part in the loss (the model's forward does not use them, or runs them under "
                         "torch.no_grad() or detaches their output), so there is no gradient to measure: include layers "
                         "on the way to the output whose output the loss's gradient reaches")
    if unused:  # no gradient in any batch: cosine and sign agreement would read 0 ("the batches cancel")
        warn_user(f"collinearity: {len(unused)} layer(s) take no part in the loss in any batch and are left out "
                  f"(no gradient to measure): {', '.join(unused[:6])}{' ...' if len(unused) > 6 else ''} (the forward "
                  "does not use them, or runs them under torch.no_grad() or detaches their output, as a frozen "
                  "feature extractor's may); exclude= them to silence this")
    cos, agree, g2, var, rows, masks = {}, {}, {}, {}, [], {}
    for i, name in enumerate(names):
        if not used[i]:
            continue
        keep = live[i]
        if keep is not None:  # a pruned model: only its live synapses are measured
            masks[name] = keep
            s1[i], s2[i], pos[i], neg[i] = s1[i][keep], s2[i][keep], pos[i][keep], neg[i][keep]
        left_out = {} if conn is None else {"pruned": 0 if keep is None else int((~keep).sum())}
        if keep is not None and not bool(keep.any()):
            rows.append({"layer": name, "weights": 0, **{k: math.nan for k in STATISTICS}, **left_out,
                         "note": "every weight pruned: nothing measured"})
            continue
        mean = s1[i] / n
        ms = s2[i] / n
        rms = ms.sqrt()
        c = torch.where(rms > 0, mean.abs() / rms.clamp_min(1e-300), torch.zeros_like(mean)).clamp_(0, 1)
        # G exactly 0 has no sign: the mean of the agreements with + and - (module docstring)
        a = torch.where(mean > 0, pos[i].double(), torch.where(mean < 0, neg[i].double(), 0.5 * (pos[i] + neg[i]).double())) / n
        cos[name], agree[name] = c.float(), a.float()
        g2[name], var[name] = (mean * mean).float(), (ms - mean * mean).clamp_min(0).float()
        rows.append({
            "layer": name,
            "weights": int(c.numel()),
            "median_cosine": _median(c),
            "mean_sign_agreement": float(a.mean()),
            "median_G2": _median(mean * mean),
            # from the float32 cosines the result holds, as fraction_above() and plot_summary() count them:
            # float64 put cosines a rounding error above 0.5 (0.5 + 5e-10) on the other side of it
            "frac_cos>0.5": float((cos[name] > 0.5).double().mean()),
            # no gradient in any batch (a dead unit's weights): cosine and agreement read 0 there, as if
            # the batches cancelled; this says how much of the median and fractions that is
            "no_gradient": float(((pos[i] + neg[i]) == 0).double().mean()),
            **left_out,
        })
    if not cos:  # the layers the loss reaches are all pruned whole (a live one takes no part in the loss)
        reached = [name for name, u in zip(names, used) if u]
        raise ValueError(f"collinearity: every weight of the layers the loss reaches ({', '.join(reached[:4])}"
                         f"{' ...' if len(reached) > 4 else ''}) is pruned (the connectome's masks), and the layers "
                         "with live synapses take no part in the loss: no synapse's gradient exists to measure; "
                         "measure layers on the way to the output that hold live synapses (include=/exclude=)")
    if any("note" in r for r in rows):
        for r in rows:
            r.setdefault("note", "")
    pruned = sum(int((~m).sum()) for m in masks.values())
    return Collinearity(cos, agree, g2, var, n, batch_size, Table(rows), masks, pruned, examples)
