"""Session set-up shared by every test module: the environment of the processes the tests start.

Bytecode for the processes the tests start. Where ``PYTHONDONTWRITEBYTECODE`` is set (this project's
development machine sets it), every recipe, benchmark and two-process launch a test starts would compile the
package's ~200 modules from source again (installed dependencies are compiled by pip at install time):
about 0.3 s of CPU a process, a couple of hundred processes a run. The child processes write their bytecode
to one folder of this session instead (``PYTHONPYCACHEPREFIX``), outside the checkout, so nothing is
written beside the sources. Bytecode changes no behaviour a test checks; a test that sets its own
``PYTHONPYCACHEPREFIX`` or ``PYTHONDONTWRITEBYTECODE`` keeps it.
"""
import os
import tempfile

if os.environ.get("PYTHONDONTWRITEBYTECODE") and not os.environ.get("PYTHONPYCACHEPREFIX"):
    # one folder per user for all xdist workers of a run and later runs (importlib writes each file
    # whole under a temporary name and renames it, and checks the source's time and size on reading)
    _prefix = os.path.join(tempfile.gettempdir(), f"adaptive-tests-pycache-{getattr(os, 'getuid', lambda: 'user')()}")
    os.makedirs(_prefix, exist_ok=True)
    os.environ["PYTHONPYCACHEPREFIX"] = _prefix
    del os.environ["PYTHONDONTWRITEBYTECODE"]

# One torch thread for each process a test starts while pytest-xdist runs the tests side by side: the
# workers already hold one thread each (the test modules set it), and a recipe or two-process launch
# started with torch's default (a thread per core) beside them would oversubscribe the cores, its
# OpenMP threads spinning while they wait. A value the environment gives is kept.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OMP_NUM_THREADS", "1")
