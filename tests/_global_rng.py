"""The global random generators a library call must leave alone: torch's CPU generator, CUDA's
(where initialised), Python's ``random`` and NumPy's. Written independently of the library's own
save/restore, so that a slip there cannot hide here."""
import random

import numpy as np
import torch


def global_rng_states() -> dict:
    """A copy of every global generator's state."""
    states = {"torch": torch.get_rng_state().clone(), "random": random.getstate(), "numpy": np.random.get_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = [s.clone() for s in torch.cuda.get_rng_state_all()]
    return states


def moved_generators(before: dict, after: dict) -> list:
    """The names of the global generators whose state differs between two :func:`global_rng_states`."""
    def same(a, b):
        if isinstance(a, torch.Tensor):
            return torch.equal(a, b)
        if isinstance(a, np.ndarray):
            return np.array_equal(a, b)
        if isinstance(a, (tuple, list)):
            return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
        return a == b

    return [k for k in sorted(set(before) | set(after)) if k not in before or k not in after
            or not same(before[k], after[k])]
