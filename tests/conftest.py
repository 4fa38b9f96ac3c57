"""Session set-up shared by every test module: the environment of the processes the tests start.

One torch thread for each process a test starts while pytest-xdist runs the tests side by side: the
workers already hold one thread each (the test modules set it), and a recipe or two-process launch
started with torch's default (a thread per core) beside them would oversubscribe the cores, its OpenMP
threads spinning while they wait (4% of the CPU of four in-process-heavy test files, measured alternately).
A value the environment gives is kept.

(Not done: a shared bytecode cache for the started processes where PYTHONDONTWRITEBYTECODE is set. A test
that limits a child's file size, RLIMIT_FSIZE, made Python's bytecode writer leave a truncated file, and
every later process importing that module stopped at "marshal data too short".)
"""
import os

if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OMP_NUM_THREADS", "1")
