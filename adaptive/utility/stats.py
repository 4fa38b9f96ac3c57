"""Streaming gradient statistics over a window of batches: the raw material of utility.

For every synapse (present and absent alike: gradients are dense) the window keeps the sum of
batch gradients and, when asked, the sum of their squares. 8 bytes per synapse at most. Sums are
reduced (mean over ranks) before any decision, so every process decides from the same numbers.
"""
from __future__ import annotations

from typing import Dict, Optional

import torch

from ..distributed import all_reduce_mean_


class GradientStats:
    """Windowed first and second moments of the batch gradients of a connectome's weights."""

    def __init__(self, conn, second_moment: bool = True):
        self.conn = conn
        self.second_moment = second_moment
        self.g_sum: Dict[str, torch.Tensor] = {}
        self.g2_sum: Dict[str, torch.Tensor] = {}
        self.count = 0
        self._reduced = False

    def _ensure(self):
        if len(self.g_sum) == len(self.conn.params):
            return
        for n, p in self.conn.params.items():
            self.g_sum[n] = torch.zeros(p.shape, dtype=torch.float32, device=p.device)
            if self.second_moment:
                self.g2_sum[n] = torch.zeros(p.shape, dtype=torch.float32, device=p.device)

    @torch.no_grad()
    def observe(self) -> bool:
        """Add the current ``.grad`` of every weight to the window. Returns False when no weight
        has a gradient (nothing observed)."""
        self._ensure()
        names = [n for n, p in self.conn.params.items() if p.grad is not None]
        if not names:
            return False
        grads = [self.conn.params[n].grad.float() for n in names]
        if grads[0].device != self.g_sum[names[0]].device:
            for n in names:
                self.g_sum[n] = self.g_sum[n].to(grads[0].device)
                if self.second_moment:
                    self.g2_sum[n] = self.g2_sum[n].to(grads[0].device)
        if self.count == 0:  # a fresh window overwrites: no separate zeroing pass
            for n, g in zip(names, grads):
                self.g_sum[n].copy_(g)
                if self.second_moment:
                    torch.mul(g, g, out=self.g2_sum[n])
            if len(names) < len(self.g_sum):
                for n in set(self.g_sum) - set(names):
                    self.g_sum[n].zero_()
                    if self.second_moment:
                        self.g2_sum[n].zero_()
        else:
            torch._foreach_add_([self.g_sum[n] for n in names], grads)
            if self.second_moment:
                torch._foreach_addcmul_([self.g2_sum[n] for n in names], grads, grads)
        self.count += 1
        self._reduced = False
        return True

    def reduce(self) -> None:
        """Mean over processes (idempotent until the next observe)."""
        if self._reduced:
            return
        self._ensure()
        if self.count == 0:  # sums are stale between windows: contribute zeros
            for t in list(self.g_sum.values()) + list(self.g2_sum.values()):
                t.zero_()
        tensors = list(self.g_sum.values()) + list(self.g2_sum.values())
        cnt = torch.tensor([float(self.count)])
        all_reduce_mean_(tensors + [cnt])
        self.count = int(round(float(cnt)))
        self._reduced = True

    def mean(self, name: str) -> torch.Tensor:
        self._ensure()
        if self.count == 0:
            return torch.zeros_like(self.g_sum[name])
        return self.g_sum[name] / self.count

    def sq_mean(self, name: str) -> torch.Tensor:
        if not self.second_moment:
            raise RuntimeError("second moments were not collected (GradientStats(second_moment=False))")
        self._ensure()
        if self.count == 0:
            return torch.zeros_like(self.g2_sum[name])
        return self.g2_sum[name] / self.count

    def batch_variance(self, name: str) -> torch.Tensor:
        """Variance of the batch gradient across the window's batches (unbiased where count > 1)."""
        m = self.mean(name)
        v = (self.sq_mean(name) - m * m).clamp_min(0)
        n = self.count
        return v * (n / (n - 1)) if n > 1 else v

    def fisher(self, name: str, batch_size: Optional[int] = None) -> torch.Tensor:
        """Diagonal empirical Fisher per sample. With ``batch_size`` B, the per-sample second moment
        is recovered as mean^2 + B * batch variance; without it, the batch-gradient second moment
        (a lower bound) is used."""
        if batch_size and self.count > 1:
            m = self.mean(name)
            return m * m + batch_size * self.batch_variance(name)
        return self.sq_mean(name)

    def reset(self) -> None:
        """Start a new window (the next observation overwrites the sums)."""
        if self.count == 0:
            return
        self.count = 0
        self._reduced = False

    def nbytes_per_synapse(self) -> float:
        self._ensure()
        total = sum(t.numel() * t.element_size() for t in list(self.g_sum.values()) + list(self.g2_sum.values()))
        return total / max(1, self.conn.num_synapses())

    def state_dict(self) -> dict:
        self._ensure()
        return {
            "count": self.count,
            "g_sum": {n: t.cpu().clone() for n, t in self.g_sum.items()},
            "g2_sum": {n: t.cpu().clone() for n, t in self.g2_sum.items()},
        }

    def load_state_dict(self, sd: dict) -> None:
        self._ensure()
        for n, t in sd.get("g_sum", {}).items():
            self.g_sum[n].copy_(t)
        for n, t in sd.get("g2_sum", {}).items():
            if n in self.g2_sum:
                self.g2_sum[n].copy_(t)
        self.count = int(sd.get("count", 0))
