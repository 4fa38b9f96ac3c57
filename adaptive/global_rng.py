"""The global random generators (torch's CPU generator, CUDA's, Python's ``random``, NumPy's), which
library calls leave as they found them: a script then draws the same numbers next whether or not it
built a graph, compacted a model or ran a diagnostic in between.

The library's own random draws come from a ``torch.Generator`` of their own, seeded deterministically
(the same result at every call). Code the library runs but does not control can still draw from the
global generators (a model's dropout in train mode; a DataLoader without a ``generator``, which
draws the seed of every pass from torch's): it runs inside :func:`kept_global_rng`, which puts them
all back afterwards. Calls given a ``seed`` (:func:`adaptive.optimize_connectome`, edge-popup) run
inside :class:`seeded_global_rng` instead: the same, with the generators seeded from ``seed`` for the
call, so that a loader without a generator of its own shuffles alike at every call with that seed.
"""
from __future__ import annotations

import functools
import inspect
import random

import numpy as np
import torch

from .counts import whole_number


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


def seed_globals(seed: int) -> None:
    """Seed every global generator from ``seed``, as ``torch.manual_seed(seed)``, ``random.seed(seed)``
    and ``np.random.seed(seed % 2**32)`` would, with one difference: CUDA's generators only where
    CUDA is initialised (``torch.manual_seed`` queues a seed for a later initialisation, which
    would reach past the block into the caller's CUDA)."""
    torch.default_generator.manual_seed(seed % 2**64)
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.manual_seed_all(seed % 2**64)
    random.seed(seed)
    np.random.seed(seed % 2**32)


class seeded_global_rng(kept_global_rng):
    """:class:`kept_global_rng` with every global generator seeded from ``seed`` inside the block
    (:func:`seed_globals`): what the block draws from them depends on ``seed`` alone, not on the
    caller's states, which are put back afterwards. ``seeded_global_rng.by_argument("seed")``
    decorates a function so that each call runs inside it, seeded from the call's ``seed``."""

    def __init__(self, seed: int):
        self.seed = seed

    def __enter__(self) -> "seeded_global_rng":
        super().__enter__()
        seed_globals(self.seed)
        return self

    @staticmethod
    def by_argument(name: str):
        """Decorator: each call of the function runs inside ``seeded_global_rng(<its argument name>)``
        (the default where not given). A value that is no whole number is left for the function's
        own check to refuse: that call runs inside :class:`kept_global_rng` only."""
        def decorate(fn):
            signature = inspect.signature(fn)

            @functools.wraps(fn)
            def seeded(*args, **kwargs):
                try:
                    bound = signature.bind(*args, **kwargs)
                except TypeError:  # the call itself raises it, with Python's own message
                    return fn(*args, **kwargs)
                seed = whole_number(bound.arguments.get(name, signature.parameters[name].default), floats=True)
                with kept_global_rng() if seed is None else seeded_global_rng(seed):
                    return fn(*args, **kwargs)
            return seeded
        return decorate
