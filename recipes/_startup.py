"""Ctrl-C while a recipe is still importing torch (a second or more): one line and status 130, not
a KeyboardInterrupt traceback. Imported first thing by each recipe run as a program; it imports
nothing heavy. A Ctrl-C that the caller set to be ignored (a background job of a script) stays
ignored. ``adaptive.cli.run_cli`` puts Python's own handler back once the run starts, recognising
this one by its ``adaptive_startup`` attribute."""
import os
import signal
import sys


def _starting(*_):
    print(f"{sys.argv[0]}: interrupted while starting; nothing was written", file=sys.stderr)
    os._exit(130)


_starting.adaptive_startup = True

if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
    signal.signal(signal.SIGINT, _starting)
