"""Cycling through a loader forever, with a position that a checkpoint can record and restore.

:class:`LoaderCycle` yields the batches of a loader pass after pass. Its :meth:`state_dict`
records where it stands: the random states when the current pass began (the global torch, CUDA,
Python and NumPy generators, and every ``torch.Generator`` the loader's samplers hold, which
decide its shuffling and worker seeds), how many batches of that pass were taken, and the random
states now. :meth:`load_state_dict` replays that pass from its start up to the recorded batch (the
batches are loaded and dropped) and then sets the random states to those recorded: a run resumed
from a checkpoint reads the very batches the uninterrupted run would have read next, provided the
loader's order depends only on those random states (a DataLoader's does; Accelerate-prepared
loaders too; so does a wrapper of one's own that holds its DataLoader as an attribute, whose generators are
recorded with it). A checkpoint taken at the end of a pass replays nothing.

Random transforms that draw from the global generators in the main process draw in the replay
what they drew the first time only where nothing else drew between batches. A loader that reads
ahead (an Accelerate-prepared one loads the next batch before it yields the current) has already
drawn the batch after the recorded position, under the random states of the moment it was asked
for the last batch; other code (an evaluation, dropout) may have drawn since the pass began. So
the states before each request are kept too, and the replay's last request runs under them.
"""
from __future__ import annotations

import random
from typing import Dict, List, Optional

import numpy as np
import torch
from torch.utils.data import DataLoader

from ..warn import warn_user


def _wrapped_loaders(obj) -> list:
    """The DataLoaders a loader of one's own holds as attributes (a class that moves each batch to a device
    around a DataLoader, ``self.loader``): where ``obj`` holds no sampler itself. Their generators decide its
    order; without them a resume replayed the wrapped DataLoader's pass under a fresh generator (other batches,
    unsaid)."""
    if isinstance(obj, DataLoader) or any(getattr(obj, a, None) is not None for a in ("sampler", "batch_sampler")):
        return []
    try:  # (not vars(): on an object without a __dict__ it asks the object's __getattr__, which a proxy forwards)
        values = list(object.__getattribute__(obj, "__dict__").values())
    except (AttributeError, TypeError):  # (no __dict__: a list, a generator, a class with __slots__ only)
        values = []
    for cls in type(obj).__mro__:  # a class with __slots__ holds its attributes there: read by their descriptors,
        slots = cls.__dict__.get("__slots__", ())  # so that no property or __getattr__ of the object runs
        for name in (slots,) if isinstance(slots, str) else slots:
            if name.startswith("__") and not name.endswith("__"):  # (a private name, mangled as Python stores it)
                name = f"_{cls.__name__.lstrip('_')}{name}"
            slot = cls.__dict__.get(name)
            if slot is not None and hasattr(slot, "__get__") and name not in ("__dict__", "__weakref__"):
                try:
                    values.append(slot.__get__(obj, cls))
                except AttributeError:  # (a slot not set)
                    pass
    return [v for v in values if isinstance(v, DataLoader)]


def _chain(loader, wrapped: bool = True) -> list:
    """The loader and the samplers it wraps (loader -> batch_sampler -> (shard) -> sampler ...), and (``wrapped``)
    those of the DataLoaders a wrapper of one's own holds (:func:`_wrapped_loaders`)."""
    found, seen, stack = [], set(), [loader]
    for _ in range(8):  # a few levels at most
        nxt = []
        for obj in stack:
            if id(obj) in seen:
                continue
            seen.add(id(obj))
            found.append(obj)
            for attr in ("sampler", "batch_sampler"):
                sub = getattr(obj, attr, None)
                if sub is not None and sub is not obj:
                    nxt.append(sub)
            nxt += _wrapped_loaders(obj) if wrapped else []
        stack = nxt
        if not stack:
            break
    return found


# Accelerate's seedable sampler reseeds with initial_seed + epoch at every pass, the epoch taken from
# the prepared loader's iteration (initial_seed: torch's seed when the loader was prepared, unless
# data_seed was given)
_COUNTERS = ("iteration", "epoch", "initial_seed")


def _counters(loader, wrapped: bool = True) -> List[tuple]:
    """(object, attribute) of the pass counters a loader's order depends on besides its generators:
    Accelerate's seedable sampler reseeds its generator with ``seed + epoch`` at every pass, the
    epoch taken from the prepared loader's ``iteration``."""
    return [(obj, a) for obj in _chain(loader, wrapped) for a in _COUNTERS
            if isinstance(getattr(obj, a, None), int) and not isinstance(getattr(obj, a), bool) and _settable(obj, a)]


def _settable(obj, attr: str) -> bool:
    prop = getattr(type(obj), attr, None)
    return not isinstance(prop, property) or prop.fset is not None


def _generators(loader, make: bool = True, wrapped: bool = True) -> List[torch.Generator]:
    """Every distinct ``torch.Generator`` a loader (or a sampler it wraps) shuffles with."""
    found, seen = [], set()
    for obj in _chain(loader, wrapped):
        if make and getattr(obj, "generator", 0) is None and isinstance(getattr(obj, "initial_seed", None), int):
            # Accelerate's seedable sampler makes its generator at its first pass: make it now (as it
            # would), so that a fresh loader and a used one hold the same generators
            dev = torch.get_default_device() if hasattr(torch, "get_default_device") else "cpu"
            obj.generator = torch.Generator(device=dev)
            obj.generator.manual_seed(obj.initial_seed)
        for attr in ("generator", "synchronized_generator"):
            g = getattr(obj, attr, None)
            if isinstance(g, torch.Generator) and id(g) not in seen:
                seen.add(id(g))
                found.append(g)
    return found


def _capture(loader=None) -> tuple:
    """The random states as the generators hand them out (cheap enough to take before every batch;
    :func:`_recorded` turns them into what a checkpoint stores)."""
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else None
    return (torch.get_rng_state(), random.getstate(), np.random.get_state(),
            [g.get_state() for g in _generators(loader)] if loader is not None else [],
            [int(getattr(o, a)) for o, a in _counters(loader)] if loader is not None else [], cuda)


def _recorded(captured: tuple) -> Dict[str, object]:
    """Captured states as tensors and plain values, so that ``torch.load(..., weights_only=True)``
    reads them back."""
    torch_state, (version, mt, gauss), np_state, generators, counters, cuda = captured
    state = {
        "torch": torch_state,
        "python": {"version": version, "mt": torch.tensor(mt, dtype=torch.int64), "gauss": gauss},
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached": float(np_state[4])},
        "generators": generators,
        "counters": counters,
        "wrapped_loaders": 1,  # the generators and counters of the DataLoaders a loader of one's own holds are in
    }
    if cuda is not None:
        state["cuda"] = cuda
    return state


def rng_states(loader=None) -> Dict[str, object]:
    """The random states that decide what ``loader`` yields next (tensors and plain values, so
    that ``torch.load(..., weights_only=True)`` reads them back)."""
    return _recorded(_capture(loader))


def set_rng_states(state: Dict[str, object], loader=None) -> None:
    """Undo :func:`rng_states`: every generator back where it was."""
    torch.set_rng_state(state["torch"])
    py = state["python"]
    random.setstate((py["version"], tuple(int(v) for v in py["mt"].tolist()), py["gauss"]))
    npy = state["numpy"]
    np.random.set_state(("MT19937", npy["keys"].numpy().astype(np.uint32), npy["pos"], npy["has_gauss"],
                         npy["cached"]))
    if "cuda" in state and torch.cuda.is_available():  # as many devices as both machines have
        for i, s in enumerate(state["cuda"][: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(s, i)
    if loader is not None:
        recorded_counters = "counters" in state  # (absent from checkpoints older than pass counters)
        # (absent from checkpoints older than the wrapped DataLoaders' states: read as they were recorded, without)
        wrapped = bool(state.get("wrapped_loaders", 0))
        gens = _generators(loader, make=False, wrapped=wrapped)
        if len(gens) != len(state["generators"]):  # recorded after a seedable sampler made its generator
            gens = _generators(loader, wrapped=wrapped)
        if not wrapped and (len(_generators(loader, make=False)) != len(_generators(loader, make=False, wrapped=False))
                            or len(_counters(loader)) != len(_counters(loader, False))):  # (read only: nothing made)
            warn_user("this loader position was recorded without the random states of the DataLoader your loader "
                      "holds (an older checkpoint): that DataLoader's order is drawn from its generator as it is now, "
                      "so the resumed run may read other batches than the uninterrupted one")
        if len(gens) != len(state["generators"]):
            raise ValueError(f"the loader shuffles with {len(gens)} generator(s), the recorded one with "
                             f"{len(state['generators'])}: resume with the loader of the recorded run")
        for g, s in zip(gens, state["generators"]):
            g.set_state(s)
        counters = _counters(loader, wrapped)
        if recorded_counters and len(counters) == len(state["counters"]):
            for (o, a), v in zip(counters, state["counters"]):
                setattr(o, a, int(v))
        elif counters and any(a == "iteration" for _, a in counters):
            warn_user("this loader position was recorded without the loader's pass counters (an older "
                          "checkpoint): an Accelerate-prepared loader reseeds its sampler at every pass, so after "
                          "its first pass the resumed run may read other batches than the uninterrupted one")


class LoaderCycle:
    """The batches of ``loader``, pass after pass, forever; raises ValueError if a pass is empty."""

    def __init__(self, loader):
        self.loader = loader
        self._it = None
        self.offset = 0  # batches taken from the current pass
        self._pass_start: Optional[dict] = None
        self._pending = None  # a batch read past the loader's stated length (see _settle)
        self._before_last = None  # the random states when the last batch was asked for (captured)

    def __iter__(self):
        return self

    def _begin_pass(self) -> None:
        self._pass_start = rng_states(self.loader)
        self._it = iter(self.loader)
        self.offset = 0

    def __next__(self):
        if self._pending is not None:
            batch, self._pending = self._pending, None
            self.offset += 1
            return batch
        if self._it is None:
            self._begin_pass()
        try:
            self._before_last = _capture(self.loader)
            batch = next(self._it)
        except StopIteration:
            if self.offset == 0:
                raise ValueError("loader yielded no batches") from None
            self._begin_pass()
            try:
                self._before_last = _capture(self.loader)
                batch = next(self._it)
            except StopIteration:
                raise ValueError("loader yielded no batches") from None
        self.offset += 1
        return batch

    def _pass_length(self) -> Optional[int]:
        try:
            return len(self.loader)
        except TypeError:
            return None

    def _settle(self) -> None:
        """Finish a pass whose last batch was taken: a DataLoader draws from its sampler's
        generator when it finds itself exhausted, so the recorded states must come after that."""
        n = self._pass_length()
        if self._it is not None and self._pending is None and n is not None and self.offset >= n:
            try:
                before = _capture(self.loader)
                self._pending = next(self._it)  # a loader longer than it says: read, not taken yet
                self._before_last = before
            except StopIteration:
                self._it = None  # the next batch begins a new pass

    def state_dict(self) -> dict:
        self._settle()
        before = self._before_last if self._it is not None and self.offset > 0 else None
        return {"pass_start": self._pass_start, "offset": self.offset, "pending": self._pending is not None,
                "now": rng_states(self.loader), "before_last": None if before is None else _recorded(before)}

    def load_state_dict(self, state: dict) -> None:
        """Stand where ``state`` was recorded (see the module docstring)."""
        offset, n = int(state["offset"]), self._pass_length()
        pending = bool(state.get("pending", False))  # (absent from checkpoints older than it)
        self._it, self.offset, self._before_last, self._pending = None, 0, None, None
        if state["pass_start"] is not None and offset > 0 and (n is None or offset < n or pending):
            set_rng_states(state["pass_start"], self.loader)
            self._begin_pass()
            before = state.get("before_last")  # (absent from checkpoints older than it)
            requests = offset + pending  # a batch read past the stated length is read again, kept for next
            for i in range(requests):  # replayed: the loader's own draws come out as they did
                if i == requests - 1:
                    if before is not None:
                        set_rng_states(before, self.loader)  # what a read-ahead batch drew from
                    self._before_last = _capture(self.loader)
                batch = next(self._it)
            if pending:
                self._pending = batch
            self.offset = offset
        set_rng_states(state["now"], self.loader)
