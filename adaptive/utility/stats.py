"""Streaming gradient statistics over a window of batches: the raw material of utility.

For every synapse (present and absent alike: gradients are dense) the window keeps the sum of
batch gradients and, when asked, the sum of their squares. 8 bytes per synapse at most. Sums are
reduced (mean over ranks) before any decision, so every process decides from the same numbers.
Processes whose gradients differ (mask_only mode: each scores its own batches) each add a batch
gradient per step: a window of n steps on R processes then holds n*R of them, and :meth:`GradientStats.n`
counts them so (the estimators' batch variance and standard errors are those of one process that
observed all n*R batches); where DDP averaged the gradients before the step, every process observed
the same ones, and n they stay.
Each observation counts once, whatever the number of examples its gradient averages: the window's
mean is the mean of its batch-mean gradients (a short last batch of an epoch weighs its examples more
than the others'), and :meth:`GradientStats.fisher` takes one batch size for all of them.
A gradient is added as it is, NaN or inf included; :meth:`GradientStats.finite` checks the reduced
window once, before anything reads it (the controller leaves such a window out).
"""
from __future__ import annotations

from typing import Dict, Iterable, Optional

import torch

from ..distributed import all_reduce_mean_, collective_device, is_distributed, world_size
from ..finite import finite_flags


def _dense(g: torch.Tensor) -> torch.Tensor:
    """A sparse gradient (an ``nn.Embedding(sparse=True)`` tied to a masked weight) as a dense one."""
    return g.to_dense() if g.layout != torch.strided else g


_CHUNK = 1 << 24  # entries of a fingerprint widened to int64 at once: 128 MB beside the sums at most


def _fingerprints(tensors) -> torch.Tensor:
    """A ``(len(tensors), 2)`` int64 fingerprint of float32 tensors, on the first one's device (one transfer
    for all, none per layer): of each, the sum of its entries' bit patterns as integers, and the sum of the
    products of their high and low 16 bits. Exact: any order of the additions gives the same numbers
    (the same bits give the same fingerprint on any device or thread count), and no sum overflows below
    2**32 entries; pieces of :data:`_CHUNK` entries bound the int64 copy."""
    out = []
    for t in tensors:
        bits = t.detach().float().contiguous().view(-1).view(torch.int32)
        s = torch.zeros(2, dtype=torch.int64, device=t.device)
        for piece in bits.split(_CHUNK):
            a = piece.to(torch.int64)
            s[0] += a.sum()
            s[1] += ((a >> 16) * (a & 0xFFFF)).sum()
        out.append(s.to(tensors[0].device))
    return torch.stack(out)


class GradientStats:
    """Windowed first and second moments of the batch gradients of a connectome's weights.

    Each layer counts its own observations: with several optimizers each layer is observed at its
    own optimizer's step (:meth:`observe` with ``names``), once per training step."""

    def __init__(self, conn, second_moment: bool = True):
        self.conn = conn
        self.second_moment = second_moment
        self.g_sum: Dict[str, torch.Tensor] = {}
        self.g2_sum: Dict[str, torch.Tensor] = {}
        self.counts: Dict[str, int] = {}
        self.replicas: Dict[str, int] = {}  # processes whose distinct batch gradients a layer's window holds
        self._reduced = False

    @property
    def count(self) -> int:
        """Observations in the window (the most any layer has; :meth:`n` gives a layer's own)."""
        return max(self.counts.values(), default=0)

    @count.setter
    def count(self, value: int) -> None:
        self.counts = {n: int(value) for n in self.conn.params}

    def n(self, name: str) -> int:
        """Batch gradients in layer ``name``'s window, the number its mean averages: its observations,
        times the processes after :meth:`reduce` where they observed different gradients."""
        return self.counts.get(name, 0) * self.replicas.get(name, 1)

    def _ensure(self):
        if len(self.g_sum) == len(self.conn.params):
            return
        for n, p in self.conn.params.items():
            self.g_sum[n] = torch.zeros(p.shape, dtype=torch.float32, device=p.device)
            if self.second_moment:
                self.g2_sum[n] = torch.zeros(p.shape, dtype=torch.float32, device=p.device)
            self.counts.setdefault(n, 0)

    @torch.no_grad()
    def observe(self, names: Optional[Iterable[str]] = None, scale: Optional[torch.Tensor] = None) -> bool:
        """Add the current ``.grad`` of every weight (of the layers ``names`` only, when given) to
        the window; a layer without a gradient at this step adds zeros (the loss did not depend on
        it). Returns False when none has a gradient (nothing observed). Non-finite values are not
        checked here, once per batch, but by :meth:`finite`, once per window. ``scale``: the loss
        scale the gradients still carry (a GradScaler's, before ``unscale_``), divided out as
        GradScaler does; by default the connectome's :attr:`grad_scale` (a fused optimizer's)."""
        self._ensure()
        target = list(self.conn.params if names is None else names)
        names = [n for n in target if self.conn.params[n].grad is not None]
        if not names:
            return False
        for n in target:
            if self.counts[n] == 0 and self.conn.params[n].grad is None:  # a fresh window starts at zero
                self.g_sum[n].zero_()
                if self.second_moment:
                    self.g2_sum[n].zero_()
        grads = [_dense(self.conn.params[n].grad).float() for n in names]
        scale = getattr(self.conn, "grad_scale", None) if scale is None else scale
        if scale is not None:  # a fused optimizer under a GradScaler, or one not unscaled yet: .grad is unscaled later
            inv = scale.double().reciprocal().float().reshape(()).to(grads[0].device)  # as GradScaler.unscale_
            grads = torch._foreach_mul(grads, inv)
        if grads[0].device != self.g_sum[names[0]].device:
            for n in names:
                self.g_sum[n] = self.g_sum[n].to(grads[0].device)
                if self.second_moment:
                    self.g2_sum[n] = self.g2_sum[n].to(grads[0].device)
        fresh = [i for i, n in enumerate(names) if self.counts[n] == 0]  # a fresh window overwrites
        more = [i for i, n in enumerate(names) if self.counts[n] > 0]
        for i in fresh:
            self.g_sum[names[i]].copy_(grads[i])
            if self.second_moment:
                torch.mul(grads[i], grads[i], out=self.g2_sum[names[i]])
        if more:
            torch._foreach_add_([self.g_sum[names[i]] for i in more], [grads[i] for i in more])
            if self.second_moment:
                g = [grads[i] for i in more]
                torch._foreach_addcmul_([self.g2_sum[names[i]] for i in more], g, g)
        for n in target:
            self.counts[n] += 1
        self._reduced = False
        return True

    def reduce(self) -> None:
        """Mean over processes (idempotent until the next observe)."""
        if self._reduced:
            return
        self._ensure()
        names = list(self.g_sum)
        for n in names:  # sums are stale between windows: contribute zeros
            if self.counts[n] == 0:
                self.g_sum[n].zero_()
                if self.second_moment:
                    self.g2_sum[n].zero_()
        differ = self._differ_by_process(names)
        tensors = list(self.g_sum.values()) + list(self.g2_sum.values())
        cnt = torch.tensor([float(self.counts[n]) for n in names])
        all_reduce_mean_(tensors + [cnt])
        self.counts = {n: int(round(float(c))) for n, c in zip(names, cnt)}
        for n, d in zip(names, differ):  # kept to the window's end: a reduced window reduced again is one
            if d:
                self.replicas[n] = world_size()
        self._reduced = True

    def _differ_by_process(self, names) -> list:
        """Whether each layer's sums differ between processes (all False on one process): a fingerprint
        of each (:func:`_fingerprints`) compared by one max-reduce. DDP gives every process the same
        averaged gradient, so the same sums, bit for bit, and the same fingerprints: exact integer sums of
        the bits, which no order of the additions changes (a float sum's last bits follow the order a
        device reduces in: its thread count, its model of GPU)."""
        if not names or not is_distributed():
            return [False] * len(names)
        import torch.distributed as dist

        fp = _fingerprints([self.g_sum[n] for n in names])
        both = torch.cat([fp, -fp]).to(collective_device(fp))
        dist.all_reduce(both, op=dist.ReduceOp.MAX)
        hi, neg_lo = both.cpu().chunk(2)
        return [bool(x) for x in (hi != -neg_lo).any(dim=1)]

    def finite(self) -> bool:
        """Whether the window holds only finite sums: False when a batch of it had a NaN or inf loss
        or gradient (after :meth:`reduce`, where one process's NaN reaches all of them, so that
        every process answers alike). One pass over the sums and one sync, once per window.
        With second moments, only their sums are read: a NaN or inf gradient squares to one, and a
        sum of gradients past the largest float needs a gradient whose square is past it too, so the
        second moments are finite wherever the first are, and reading both would double the pass."""
        self.reduce()
        sums = [t for n, t in (self.g2_sum if self.second_moment else self.g_sum).items() if self.counts[n] > 0]
        if not sums:
            return True
        return bool(finite_flags(sums).all())

    def mean(self, name: str) -> torch.Tensor:
        self._ensure()
        if self.counts[name] == 0:
            return torch.zeros_like(self.g_sum[name])
        return self.g_sum[name] / self.counts[name]

    def sq_mean(self, name: str) -> torch.Tensor:
        if not self.second_moment:
            raise RuntimeError("second moments were not collected (GradientStats(second_moment=False))")
        self._ensure()
        if self.counts[name] == 0:
            return torch.zeros_like(self.g2_sum[name])
        return self.g2_sum[name] / self.counts[name]

    def batch_variance(self, name: str) -> torch.Tensor:
        """Variance of the batch gradient across the window's batches (unbiased where count > 1)."""
        m = self.mean(name)
        v = (self.sq_mean(name) - m * m).clamp_min(0)
        n = self.n(name)
        return v * (n / (n - 1)) if n > 1 else v

    def fisher(self, name: str, batch_size: Optional[int] = None) -> torch.Tensor:
        """Diagonal empirical Fisher per sample. With ``batch_size`` B, the per-sample second moment
        is recovered as mean^2 + B * batch variance; without it, the batch-gradient second moment
        (a lower bound) is used."""
        if batch_size and self.n(name) > 1:
            m = self.mean(name)
            return m * m + batch_size * self.batch_variance(name)
        return self.sq_mean(name)

    def reset(self) -> None:
        """Start a new window (the next observation overwrites the sums)."""
        if not any(self.counts.values()):
            return
        self.counts = {n: 0 for n in self.counts}
        self.replicas = {}
        self._reduced = False

    def nbytes_per_synapse(self) -> float:
        self._ensure()
        total = sum(t.numel() * t.element_size() for t in list(self.g_sum.values()) + list(self.g2_sum.values()))
        return total / max(1, self.conn.num_synapses())

    def state_dict(self) -> dict:
        self._ensure()
        return {
            "count": self.count,
            "counts": dict(self.counts),
            "replicas": dict(self.replicas),
            "g_sum": {n: t.to("cpu", copy=True) for n, t in self.g_sum.items()},
            "g2_sum": {n: t.to("cpu", copy=True) for n, t in self.g2_sum.items()},
        }

    def load_state_dict(self, sd: dict) -> None:
        self._ensure()
        g2 = sd.get("g2_sum", {})
        for n, t in sd.get("g_sum", {}).items():  # checked before anything is copied
            if n in g2 and n in self.g2_sum:
                odd = int((~torch.isfinite(t) & torch.isfinite(g2[n])).sum())
                if odd:
                    raise ValueError(f"the gradient window's sums for layer {n!r} hold {odd} NaN or inf entries whose "
                                     "second moments are finite, which no run gathers (a NaN or inf gradient squares to "
                                     "one): load the state Controller.state_dict() returned, unedited")
        for n, t in sd.get("g_sum", {}).items():
            self.g_sum[n].copy_(t)
        for n, t in sd.get("g2_sum", {}).items():
            if n in self.g2_sum:
                self.g2_sum[n].copy_(t)
        counts = sd.get("counts")
        if counts is None:  # saved before layers counted their own observations
            self.count = int(sd.get("count", 0))
        else:
            self.counts = {n: int(counts.get(n, 0)) for n in self.conn.params}
        self.replicas = {n: int(k) for n, k in sd.get("replicas", {}).items() if n in self.conn.params}
