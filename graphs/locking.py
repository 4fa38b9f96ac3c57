"""The one lock that graphs' entry points hold while they trace or run a model (:data:`TRACING`), and
:func:`serialized`, which runs a function holding it. A process forked while another thread held it gets a lock of
its own (:func:`_new_lock_in_child`). ``graphs.trace.TRACING`` names the lock in use."""
from __future__ import annotations

import functools
import os
import threading


# fx's tracer patches ``nn.Module.__call__`` and ``__getattr__`` for the whole process while it traces (and
# _sizes_packed torch's factories): a module called in another thread meanwhile is taken by that trace ("module is
# not installed as a submodule"). graphs' entry points that trace or run a model hold this lock for all of their
# work (reentrant: compact traces inside, the CLI builds what it compacted). Threads running models outside
# graphs are not held back: trace before starting them, or from the thread that runs them.
TRACING = threading.RLock()


def _new_lock_in_child() -> None:
    """A forked process (multiprocessing's fork, a DataLoader's workers) copies the lock as it was: held by another
    thread of the parent, it would never be released there, and the child's first graphs call would wait forever.
    The child gets a lock of its own (a call the forking thread was in releases the copy it took)."""
    global TRACING
    TRACING = threading.RLock()


if hasattr(os, "register_at_fork"):  # not on Windows, which spawns
    os.register_at_fork(after_in_child=_new_lock_in_child)


def serialized(fn):
    """``fn`` run holding :data:`TRACING` (released however it returns or raises)."""
    @functools.wraps(fn)
    def run(*args, **kwargs):
        with TRACING:
            return fn(*args, **kwargs)
    return run
