"""Session set-up shared by every test module: the environment of the processes the tests start.

Bytecode for the processes the tests start. Where ``PYTHONDONTWRITEBYTECODE`` is set (this project's
development machine sets it), every recipe, benchmark and two-process launch a test starts would compile the
package's ~200 modules from source again: about 0.3 s of CPU a process, a couple of hundred processes a
run. They write their bytecode to a cache folder outside the checkout instead (``PYTHONPYCACHEPREFIX``, one
per user in the temporary folder, kept for later runs: Python reads bytecode only from there then, so the
first processes ever compile the installed dependencies there too, once, about 150 MB an environment).
Bytecode changes no behaviour a test checks. A process a test runs under a file-size limit must write none
(``PYTHONDONTWRITEBYTECODE=1`` in its environment): Python's bytecode writer does not check for a short
write, and a truncated file there would stop every later process importing that module ("marshal data too
short"). The test processes themselves (pytest and its xdist workers, which inherit the environment) keep
reading the installed bytecode and writing none, as they were started; an environment that sets
``PYTHONPYCACHEPREFIX`` itself keeps it.
"""
import os
import sys
import tempfile

_CACHE = "ADAPTIVE_TESTS_PYCACHE"  # the folder this set-up gave the processes it starts, for the xdist workers
if os.environ.get("PYTHONDONTWRITEBYTECODE") and not os.environ.get("PYTHONPYCACHEPREFIX"):
    # (importlib writes each file whole under a temporary name and renames it, and checks the source's time
    # and size on reading: processes side by side and later runs share it safely)
    _prefix = os.path.join(tempfile.gettempdir(), f"adaptive-tests-pycache-{getattr(os, 'getuid', lambda: 'user')()}")
    os.makedirs(_prefix, exist_ok=True)
    os.environ.update({"PYTHONPYCACHEPREFIX": _prefix, _CACHE: _prefix})
    del os.environ["PYTHONDONTWRITEBYTECODE"]
if os.environ.get(_CACHE) and os.environ.get(_CACHE) == os.environ.get("PYTHONPYCACHEPREFIX"):
    sys.pycache_prefix, sys.dont_write_bytecode = None, True  # (this process: as PYTHONDONTWRITEBYTECODE started it)

# One torch thread for each process a test starts while pytest-xdist runs the tests side by side: the
# workers already hold one thread each (the test modules set it), and a recipe or two-process launch
# started with torch's default (a thread per core) beside them would oversubscribe the cores, its
# OpenMP threads spinning while they wait. A value the environment gives is kept.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OMP_NUM_THREADS", "1")
