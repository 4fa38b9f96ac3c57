"""Ctrl-C while a recipe is still importing torch (a second or more): one line and status 130, not
a KeyboardInterrupt traceback. Imported first thing by each recipe run as a program; it imports
nothing heavy. A Ctrl-C that the caller set to be ignored (a background job of a script) stays
ignored. ``adaptive.cli.run_cli`` puts Python's own handler back once the run starts, recognising
this one by its ``adaptive_startup`` attribute. Under a multi-process launch (``WORLD_SIZE`` > 1, set by
the launcher) a Ctrl-C reaches every process: the first of each machine (``LOCAL_RANK`` 0) writes the
line, the others end with the same status silently."""
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
