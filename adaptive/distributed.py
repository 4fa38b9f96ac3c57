"""Process-group helpers: every decision that edits masks is made from statistics reduced across
processes, so all ranks reach the same masks without broadcasting them."""
from __future__ import annotations

import os
import sys
from typing import Iterable, List, Optional

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def collective_device(t: torch.Tensor) -> torch.device:
    """Where a collective of the process group reduces ``t``: on ``t``'s own device, except under the
    NCCL backend, which reduces CUDA tensors only: a tensor elsewhere (a CPU model's statistics, a
    CPU copy) goes through the process's current CUDA device."""
    return torch.device("cuda") if dist.get_backend() == "nccl" and not t.is_cuda else t.device


BUCKET_ELEMENTS = 1 << 24  # entries reduced at once: 16 M float64 values, 128 MB


@torch.no_grad()
def all_reduce_mean_(tensors: Iterable[torch.Tensor], bucket_elements: Optional[int] = None) -> None:
    """In-place mean over ranks (no-op on one process), summed in float64. The tensors are reduced
    in buckets of at most ``bucket_elements`` entries (default :data:`BUCKET_ELEMENTS`; a tensor
    larger than that is split across buckets), one after the other, so the extra memory is one
    bucket rather than a float64 copy of everything. Each entry is summed on its own, so the result
    does not depend on the bucket size."""
    if bucket_elements is not None and (isinstance(bucket_elements, bool) or int(bucket_elements) != bucket_elements
                                        or bucket_elements < 1):
        raise ValueError(f"bucket_elements must be a positive whole number of entries (or None for "
                         f"{BUCKET_ELEMENTS}), got {bucket_elements!r}")
    tensors: List[torch.Tensor] = [t for t in tensors if t is not None]
    if not tensors or not is_distributed():
        return
    cap = int(bucket_elements or BUCKET_ELEMENTS)
    # a flat view of each tensor to reduce into (a copy, written back at the end, where there is none)
    flats = [t.view(-1) if t.is_contiguous() else t.reshape(-1).clone() for t in tensors]
    device = collective_device(flats[0])
    world = dist.get_world_size()
    i, start = 0, 0  # the next entry to reduce: flats[i][start]
    while i < len(flats):
        pieces, n = [], 0  # (tensor's flat view, first entry, entries) in this bucket
        while i < len(flats) and n < cap:
            k = min(flats[i].numel() - start, cap - n)
            if k > 0:
                pieces.append((flats[i], start, k))
                n += k
                start += k
            if start >= flats[i].numel():
                i, start = i + 1, 0
        if not pieces:
            continue
        bucket = torch.empty(n, dtype=torch.float64, device=device)
        off = 0
        for f, s, k in pieces:
            bucket[off : off + k].copy_(f[s : s + k])
            off += k
        dist.all_reduce(bucket, op=dist.ReduceOp.SUM)
        bucket /= world
        off = 0
        for f, s, k in pieces:
            f[s : s + k].copy_(bucket[off : off + k])
            off += k
        del bucket
    for t, f in zip(tensors, flats):
        if not t.is_contiguous():
            t.copy_(f.view_as(t))


def agreed_problem(problem):
    """The first non-empty of every process's ``problem`` (a message, or anything picklable; in
    rank order), on every process: a check that fails on one process (a file only it reads, a write
    only it makes) stops all of them together, instead of one raising while the others wait in their
    next collective."""
    if not is_distributed():
        return problem
    every: list = [None] * dist.get_world_size()
    dist.all_gather_object(every, problem or None)
    return next((p for p in every if p), None)


class MaskMismatchError(RuntimeError):
    pass


def check_masks_agree(conn, step=None) -> str:
    """Gather every rank's mask hash and raise MaskMismatchError if any differs. Returns the hash."""
    h = conn.mask_hash()
    if not is_distributed():
        return h
    hashes: List[str] = [None] * dist.get_world_size()  # type: ignore
    dist.all_gather_object(hashes, h)
    if len(set(hashes)) != 1:
        where = f" at step {step}" if step is not None else ""
        raise MaskMismatchError(
            f"connectome masks differ between processes{where}: hashes {[x[:12] for x in hashes]}. "
            "Every process must build its controller alike (the same seed=, not offset by the rank; the same "
            "settings) on the same weights: a connectome and controller built before accelerator.prepare prune "
            "each process's own initial weights, so seed the model alike on every process or build them after "
            "prepare, which gives every process rank 0's weights."
        )
    return h


def gather_mask_hashes(accelerator, conn) -> List[str]:
    """Every process's mask hash, in rank order, on every process (all equal when they agree)."""
    if accelerator.num_processes == 1:
        return [conn.mask_hash()]
    from accelerate.utils import gather_object

    return list(gather_object([conn.mask_hash()]))


def exit_launched_process() -> None:
    """End a finished process of a multi-process launch (``WORLD_SIZE`` > 1) without interpreter
    teardown: gloo's background threads can abort a run that has written everything and left its
    process group ("terminate called without an active exception", pytorch/pytorch#190489), more
    often on a loaded machine. Call it last, after every file is closed; a single process returns."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
