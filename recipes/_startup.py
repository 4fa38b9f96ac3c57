"""Ctrl-C while a recipe is still importing torch (a second or more): one line and status 130, not
a KeyboardInterrupt traceback. Imported first thing by each recipe run as a program; it imports
nothing heavy. A Ctrl-C that the caller set to be ignored (a background job of a script) stays
ignored. ``adaptive.cli.run_cli`` puts Python's own handler back once the run starts, recognising
this one by its ``adaptive_startup`` attribute. Under a multi-process launch (``WORLD_SIZE`` > 1, set by
the launcher) a Ctrl-C reaches every process: the first of each machine (``LOCAL_RANK`` 0) writes the
line, the others end with the same status silently. Under torchelastic (``torchrun``, ``accelerate launch
--multi_gpu``) each process also stops as on a Ctrl-C when the launcher ends (:func:`_stop_with_the_launcher`).
It also takes the recipes' own folder off ``sys.path`` once it is imported (:func:`_free_the_package_names`)."""
import os
import signal
import sys


def _one_of_the_others() -> bool:
    """Whether this process is one of a multi-process launch but not the first of its machine."""
    try:
        return int(os.environ.get("WORLD_SIZE") or 1) > 1 and os.environ.get("LOCAL_RANK", "0") != "0"
    except ValueError:
        return False


def _starting(*_):
    if not _one_of_the_others():
        print(f"{sys.argv[0]}: interrupted while starting; nothing was written", file=sys.stderr)
    os._exit(130)


_starting.adaptive_startup = True

if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
    signal.signal(signal.SIGINT, _starting)


def _orphaned() -> bool:
    """Whether this process's launcher has already ended: it was handed to process 1, which is not the
    Python that launched it (a torchelastic launcher runs the processes with its own interpreter)."""
    if os.getppid() != 1:
        return False
    try:
        return os.readlink("/proc/1/exe") != os.readlink("/proc/self/exe")
    except OSError:  # (another user's process 1, no /proc: nothing known)
        return False


def _stop_with_the_launcher() -> None:
    """Under torchelastic (``TORCHELASTIC_RUN_ID`` set: ``torchrun``, ``accelerate launch --multi_gpu``),
    on Linux: have the kernel send this process a Ctrl-C (SIGINT; SIGTERM where SIGINT is ignored) when
    its launcher ends, and send it now where the launcher ended already. The launcher starts its
    processes in sessions of their own, where a terminal's Ctrl-C does not reach them, and passes its
    own on; one that reached it while it was starting them ended it before it held them, and they ran
    on, orphaned (waiting for the process group, or training)."""
    if not os.environ.get("TORCHELASTIC_RUN_ID") or not sys.platform.startswith("linux"):
        return
    sig = signal.SIGTERM if signal.getsignal(signal.SIGINT) is signal.SIG_IGN else signal.SIGINT
    try:
        import ctypes

        if ctypes.CDLL(None, use_errno=True).prctl(1, int(sig), 0, 0, 0) != 0:  # 1: PR_SET_PDEATHSIG
            return
    except (OSError, AttributeError):
        return
    if _orphaned():
        os.kill(os.getpid(), sig)


_stop_with_the_launcher()


def _free_the_package_names() -> None:
    """Take this folder (recipes/) off ``sys.path``: Python put it first for the recipe run as a program,
    and the recipe put it there to import this file; beside ``adaptive.py`` (the recipe), ``import adaptive``
    would import the recipe itself, not the package. Where the package is no longer beside recipes/ (an
    installed ``adaptive`` with a copy of recipes/), the recipes stopped at 'cannot import name ... from
    partially initialized module adaptive'. The recipes import their parts as ``recipes._adaptive`` etc.,
    from the folder above, which they put on ``sys.path`` themselves."""
    here = os.path.realpath(os.path.dirname(os.path.abspath(__file__)))
    sys.path[:] = [p for p in sys.path if os.path.realpath(p or os.curdir) != here]


_free_the_package_names()
