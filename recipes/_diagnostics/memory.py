"""Freed memory kept for reuse, where the C library is glibc.

A convolutional DenseCat step on MNIST allocates and frees activations of ~100 MB each. glibc's
malloc serves blocks that large with fresh mmap calls and gives them back to the system when they
are freed, so every step faults in (and the kernel zeroes) half a gigabyte of new pages: about a
third of dense-gradients' CPU time on one thread went there (user 1.85 s + system 0.9 s per cnn step
at batch 128). Raising malloc's mmap and trim thresholds keeps that memory in the process for the next
step instead. Only where the memory goes changes, never a value computed, so the printed numbers
stay bit for bit the same; the cost is that the process holds on to its peak memory until it ends,
so the recipe sets it only where it is the process (run as a script), never in one that calls it.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import sys

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters (malloc.h)
_KEPT = 1 << 30  # blocks below 1 GiB come from (and return to) the heap; up to 1 GiB free stays mapped


def keep_freed_memory() -> bool:
    """Ask glibc's malloc to reuse freed large blocks instead of unmapping them (see the module
    docstring). True where that was set; False, changing nothing, on another C library (macOS,
    Windows, musl) or where glibc refuses a value."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
        libc.gnu_get_libc_version  # glibc's own symbol: musl has mallopt as a no-op stub
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, _KEPT)) and bool(mallopt(_M_TRIM_THRESHOLD, _KEPT))
