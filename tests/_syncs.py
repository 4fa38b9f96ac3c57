"""Counting the host-device synchronisations a piece of code would make on a GPU, on CPU tensors.

On a GPU every call that needs a tensor's value on the host (``t.item()``, ``float(t)``, ``if t:``,
``t.tolist()``, ``t.cpu()``) or whose output size depends on the data (``nonzero``, ``masked_select``,
boolean-mask indexing, ``unique``) waits for the device's queue to drain. The same calls are made on
CPU tensors, so ``with count_syncs() as s: ...`` counts them where no GPU is present:

- a ``TorchDispatchMode`` sees every aten op that reaches the Python dispatch key:
  ``_local_scalar_dense`` (what ``item``, ``float``, ``int``, ``bool`` and ``__index__`` of a
  tensor become), ``equal``, ``nonzero``, ``masked_select``, ``unique``, ``bincount``,
  ``repeat_interleave`` by a tensor, and ``index``/``index_put_`` with a boolean or uint8 index
  (``t[mask]``, ``t[mask] = v``). It catches them inside torch functions too (``torch.tensor`` of
  a list of 0-d tensors, ``clip_grad_norm_(error_if_nonfinite=True)``).
- monkeypatches catch what never reaches the dispatcher on a CPU tensor: ``tolist``, ``numpy``,
  ``cpu`` and ``to("cpu")`` (no-ops on a CPU tensor, copies to the host on a GPU),
  ``torch.tensor``/``torch.as_tensor`` of a list holding tensors (each is read on the host; once
  per call is counted), and ``torch.tensor``/``torch.as_tensor`` of host data with a
  ``device=torch.device(...)`` (the caller's device, a GPU there: a copy from pageable host memory
  that waits for the device's queue to drain, as ``.to(device)`` without ``non_blocking`` does).

What it cannot catch: a copy to the host written as ``.to(torch.device("cpu"))`` (a
``torch.device`` is taken as a variable holding the model's device, the host here, a GPU there;
only the string ``.to("cpu")`` is counted), a host tensor's ``.to(device)`` (a copy to the GPU
there, indistinguishable here from a no-op), reads of a
tensor that lives on the CPU on a GPU machine too (an optimizer's ``step`` counter, a CPU generator:
counted here, free there), and syncs inside C++ kernels that call no op (none known in the paths
measured). A ``t[mask] = scalar`` is counted although PyTorch runs it as ``masked_fill_`` (no sync);
write ``masked_fill_`` to say so.

Only calls made by the project's own code are counted in ``count``: the innermost frame of the
Python stack outside torch must lie under ``adaptive/``, ``recipes/`` or ``graphs/``, so the
test's own loop and the optimizer's internals are left out. ``all`` counts every call, ``where``
names the project line of each counted one.
"""
from __future__ import annotations

import collections
import contextlib
import os
import sys

import torch
from torch.utils._python_dispatch import TorchDispatchMode

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_PROJECT = tuple(os.path.join(_ROOT, d) + os.sep for d in ("adaptive", "recipes", "graphs"))
_TORCH = os.path.dirname(torch.__file__) + os.sep
_HERE = os.path.abspath(__file__)

_aten = torch.ops.aten
_ALWAYS = {_aten._local_scalar_dense.default, _aten.equal.default, _aten.nonzero.default,
           _aten.masked_select.default, _aten.bincount.default, _aten._unique.default,
           _aten._unique2.default, _aten.unique_dim.default, _aten.unique_consecutive.default,
           _aten.repeat_interleave.Tensor, _aten.argwhere.default}
_INDEXING = {_aten.index.Tensor, _aten.index_put.default, _aten.index_put_.default,
             _aten._index_put_impl_.default}


def _bool_index(args) -> bool:
    indices = args[1] if len(args) > 1 else ()
    return any(isinstance(i, torch.Tensor) and i.dtype in (torch.bool, torch.uint8) for i in indices or ())


def _caller():
    """The innermost frame outside torch and this file, as 'path:line'."""
    f = sys._getframe(2)
    while f is not None:
        path = f.f_code.co_filename
        if not path.startswith(_TORCH) and path != _HERE and "/contextlib.py" not in path:
            return f"{path}:{f.f_lineno}"
        f = f.f_back
    return "?"


class _Counter(TorchDispatchMode):
    def __init__(self, syncs: "Syncs"):
        super().__init__()
        self.syncs = syncs

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in _ALWAYS or (func in _INDEXING and _bool_index(args)):
            self.syncs._record(func.__name__)
        return func(*args, **(kwargs or {}))


def _holds_tensor(data) -> bool:
    return isinstance(data, (list, tuple)) and any(isinstance(d, torch.Tensor) or _holds_tensor(d) for d in data)


class Syncs:
    """What ``count_syncs`` counted: ``count`` (the project's own calls), ``all``, ``where``
    (a Counter of 'op @ path:line' for the project's calls), ``ops`` (a Counter of every call by op)."""

    def __init__(self):
        self.count = 0
        self.all = 0
        self.where = collections.Counter()
        self.ops = collections.Counter()
        self.paused = False

    def _record(self, what: str) -> None:
        if self.paused:
            return
        self.all += 1
        self.ops[what] += 1
        at = _caller()
        if at.startswith(_PROJECT):
            self.count += 1
            self.where[f"{what} @ {os.path.relpath(at, _ROOT)}"] += 1

    @contextlib.contextmanager
    def pause(self):
        """Count nothing inside (a test's own checks between the steps it measures)."""
        self.paused, was = True, self.paused
        try:
            yield
        finally:
            self.paused = was

    def __repr__(self) -> str:
        return f"Syncs(count={self.count}, all={self.all}, where={dict(self.where)})"


@contextlib.contextmanager
def count_syncs():
    """Count, inside the block, the calls that would synchronise host and device on a GPU."""
    syncs = Syncs()
    T = torch.Tensor
    saved = {name: getattr(T, name) for name in ("tolist", "numpy", "cpu", "to")}

    def wrap(name, host):
        orig = saved[name]

        def f(self, *a, **kw):
            if host(a, kw):
                syncs._record(name)
            return orig(self, *a, **kw)
        return f

    always = lambda a, kw: True  # noqa: E731
    # .to(d) with a torch.device is taken as the caller's device variable (the model's, a GPU on a GPU
    # machine); only the string "cpu" says "to the host" whatever the machine
    to_cpu = lambda a, kw: any(isinstance(d, str) and d.split(":")[0] == "cpu" for d in (*a[:1], kw.get("device")))  # noqa: E731
    patches = {"tolist": wrap("tolist", always), "numpy": wrap("numpy", always),
               "cpu": wrap("cpu", always), "to": wrap("to", to_cpu)}
    for name, f in patches.items():
        setattr(T, name, f)
    builders = {name: getattr(torch, name) for name in ("tensor", "as_tensor")}
    for name, orig in builders.items():
        def build(data, *a, _orig=orig, _name=name, **kw):
            if _holds_tensor(data):
                syncs._record(_name)
            elif isinstance(kw.get("device"), torch.device) and not torch.is_tensor(data):
                syncs._record(f"{_name}(device=)")  # host data copied to the device: a GPU's queue drains first
            return _orig(data, *a, **kw)
        setattr(torch, name, build)
    try:
        with _Counter(syncs):
            yield syncs
    finally:
        for name, f in saved.items():
            setattr(T, name, f)
        for name, f in builders.items():
            setattr(torch, name, f)
