"""Process-group helpers: every decision that edits masks is made from statistics reduced across
processes, so all ranks reach the same masks without broadcasting them."""
from __future__ import annotations

import os
import sys
from typing import Iterable, List

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


@torch.no_grad()
def all_reduce_mean_(tensors: Iterable[torch.Tensor]) -> None:
    """In-place mean over ranks (no-op on one process). Tensors are flattened into one bucket."""
    tensors: List[torch.Tensor] = [t for t in tensors if t is not None]
    if not tensors or not is_distributed():
        return
    flat = torch.cat([t.reshape(-1).to(torch.float64) for t in tensors])
    backend = dist.get_backend()
    if backend == "nccl" and not flat.is_cuda:
        flat = flat.cuda()
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    flat /= dist.get_world_size()
    off = 0
    for t in tensors:
        n = t.numel()
        t.copy_(flat[off : off + n].view_as(t).to(t.dtype))
        off += n


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
            "Every rank must use the same seed, the same controller configuration and reduced statistics."
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
