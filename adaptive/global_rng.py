"""The global random generators (torch's CPU generator, CUDA's, Python's ``random``, NumPy's), which
library calls leave as they found them: a script then draws the same numbers next whether or not it
built a graph, compacted a model or ran a diagnostic in between.

The library's own random draws come from a ``torch.Generator`` of their own, seeded deterministically
(the same result at every call). Code the library runs but does not control can still draw from the
global generators (a model's dropout in train mode; a DataLoader without a ``generator``, which
draws the seed of every pass from torch's): it runs inside :func:`kept_global_rng`, which puts them
all back afterwards.
"""
from __future__ import annotations

import functools
import random

import numpy as np
import torch


def global_states() -> tuple:
    """Every global generator's state: torch's CPU one, each CUDA device's (where CUDA is initialised:
    a process that never used CUDA has drawn nothing from it, and initialising it costs seconds),
    Python's ``random`` and NumPy's."""
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else None
    return torch.get_rng_state(), cuda, random.getstate(), np.random.get_state()


def set_global_states(states: tuple) -> None:
    """Put the generators back where :func:`global_states` found them."""
    cpu, cuda, py, npy = states
    torch.set_rng_state(cpu)
    if cuda is not None:
        torch.cuda.set_rng_state_all(cuda)
    random.setstate(py)
    np.random.set_state(npy)


class kept_global_rng:
    """Run the block (or, as ``@kept_global_rng()``, each call of a function) and put every global
    generator back as it was before it, whether it returns or raises. Draws inside it come from the
    states the caller left, so they are as reproducible as the caller's own; a second call draws the
    same again. (CUDA first initialised inside the block is not rewound: it had no state before.)
    Not ``contextlib.contextmanager``: its wrapper's frame, outside this package, would take the
    place of the user's line in warnings (:func:`adaptive.warn.user_stacklevel`)."""

    def __enter__(self) -> "kept_global_rng":
        self._states = global_states()
        return self

    def __exit__(self, *exc) -> bool:
        set_global_states(self._states)
        return False

    def __call__(self, fn):
        @functools.wraps(fn)
        def kept(*args, **kwargs):
            with kept_global_rng():
                return fn(*args, **kwargs)
        return kept
