"""Command-line entry points: problems a user can fix end with one ``error:`` line (then the error's
notes, if any) and status 2."""
from __future__ import annotations

import argparse
import contextlib
import difflib
import math
import numbers
import os
import re
import signal
import sys
import threading
import time
import traceback
import warnings
from typing import Any, Callable, List, Optional, Tuple, Union


class ArgumentParser(argparse.ArgumentParser):
    """argparse's parser, whose "unrecognized arguments" error comes from the subcommand given (with
    its usage, which lists its options) and names the option a mistyped one nearly matches
    (``--remov``: did you mean --remove?). Every option takes dashes or underscores, as
    ``recipes/adaptive.py``'s do: ``--eval_batch_size`` is read as ``--eval-batch-size`` where only
    that spelling is declared, and the other way round."""

    def parse_known_args(self, args=None, namespace=None):
        """argparse's, with each ``--OPTION`` (or ``--OPTION=VALUE``) that this parser does not declare
        read as its other spelling, ``-`` and ``_`` swapped, where that one is declared; everything
        after ``--`` is left as it is. A subcommand's parser, of this class too, does the same for its
        own options. Where abbreviations are allowed (``allow_abbrev``), one that abbreviates no
        option as typed is read in its other spelling where that abbreviates one (``--eval_b`` for
        ``--eval-batch-size``), as argparse reads it (an ambiguous one refused, naming the options)."""
        args = list(sys.argv[1:] if args is None else args)
        known = self._option_string_actions

        def abbreviates(name):
            return self.allow_abbrev and any(o.startswith(name) for o in known)

        for i, arg in enumerate(args):
            if arg == "--":
                break
            name, eq, value = arg.partition("=") if isinstance(arg, str) else ("", "", "")
            if not name.startswith("--") or len(name) < 3 or name in known:
                continue
            others = ("--" + name[2:].replace("_", "-"), "--" + name[2:].replace("-", "_"))
            other = next((o for o in others if o in known), None)
            if other is None and not abbreviates(name):  # (an abbreviation as typed stays argparse's)
                other = next((o for o in others if o != name and abbreviates(o)), None)
            if other is not None:
                args[i] = other + eq + value
        return super().parse_known_args(args, namespace)

    def error(self, message):
        """argparse's (its usage, then ``{prog}: error: {message}``; status 2), written in one call
        (:func:`say_error`): under a multi-process launch, where every process reads the same command
        line, by the first process of each machine alone (:func:`quiet_at_start`), not once a process;
        once the process group exists (a script's second run of a recipe's main in one launch), by
        process 0 alone, as an error every process raises alike (the others write it where process 0
        has not within their wait, and at once where process 0's was another, their command lines differing:
        never lost)."""
        from .distributed import mark_raised_alike

        error = mark_raised_alike(SystemExit(2))  # (marked only where a process group exists)
        say_error(f"{self.format_usage()}{self.prog}: error: {message}", error, once=True)
        raise error

    def parse_args(self, args=None, namespace=None):
        ns, extras = self.parse_known_args(args, namespace)
        if extras:
            known, flags, parser = [], set(), self
            while True:  # this parser's options, then those of the subcommand given, and so on
                known += [o for a in parser._actions for o in a.option_strings if o.startswith("--")]
                flags |= {o for a in parser._actions for o in a.option_strings if a.nargs == 0 and o.startswith("--")}
                subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
                chosen = subs[0].choices.get(getattr(ns, subs[0].dest, None)) if subs else None
                if chosen is None:
                    break
                parser = chosen
            hints = [f"{m[0]} for {o}" for o in (e.split("=", 1)[0] for e in extras if e.startswith("--"))
                     if (m := difflib.get_close_matches(o, known, 1, 0.75))]
            flag = _flag_given_a_value(list(sys.argv[1:] if args is None else args), extras, flags)
            parser.error(f"unrecognized arguments: {' '.join(extras)}"
                         + (f" (did you mean {', '.join(hints)}?)" if hints else "") + flag)
        return ns


_YES_NO = {"true": True, "yes": True, "on": True, "1": True, "false": False, "no": False, "off": False, "0": False}


def _flag_given_a_value(argv, extras, flags) -> str:
    """What an "unrecognized arguments" error adds where one of ``extras`` is a yes/no word typed after
    a flag (``--cpu false``, as recipes/adaptive.py's options take it): the flag takes no value, and
    how to say yes or no; "" otherwise."""
    for before, word in zip(argv, argv[1:]):
        spellings = {before, "--" + before[2:].replace("_", "-"), "--" + before[2:].replace("-", "_")}
        flag = next((f for f in sorted(spellings) if f in flags), None)
        if flag is None or word not in extras or word.strip().lower() not in _YES_NO:
            continue
        negative = next((f for f in (f"--no-{flag[2:]}", f"--no_{flag[2:]}") if f in flags), None)
        return (f": {flag} is a flag and takes no value ({word!r}): give {flag} alone to set it, or leave it out"
                + (f" ({negative} says no)" if negative else ""))
    return ""



def path_type(what: str = "the path", fix: str = "a path, or leave the option out for its default"
              ) -> Callable[[str], str]:
    """``type=`` of a path option (a benchmark's ``--out``, ``--runs``, ``--figure`` ...): the value with a
    leading ~ read as the home folder; an empty or whitespace-only value (``--out "$DIR"`` with DIR unset)
    refused, naming ``what`` the option holds and ``fix`` (what to give instead), where it would have
    meant the default, the working directory or a file named by a space, unsaid
    (:func:`adaptive.paths.empty_path_problem`, :func:`adaptive.paths.home_expanded`). argparse puts the
    option's name before the message: ``argument --out: the path is empty (''): give a path, ...``."""
    from .paths import empty_path_problem, home_expanded

    def path(text: str) -> str:
        problem = empty_path_problem(text, what, fix)
        if problem:
            raise argparse.ArgumentTypeError(problem)
        return home_expanded(text)

    return path


def data_dir_type(text: str) -> str:
    """``type=`` of a --data-dir option (the benchmarks'): an empty or whitespace-only folder (an unset shell
    variable) is refused, as the recipes refuse it (it read the default folder unsaid), and ~ is the home
    folder (:func:`path_type`)."""
    return path_type("the data folder", "a data folder, or leave the option out for the default "
                                        "($ADAPTIVE_DATA, else ../shared/data)")(text)


def show_progress(setting: Optional[bool] = None) -> bool:
    """Whether to draw progress bars: ``True`` or ``False`` as asked; ``None`` (the recipes' default)
    draws them only when stderr is a terminal, so pipes and log files get no bar updates. Under
    ``accelerate launch`` only the first process of each machine draws (``LOCAL_RANK`` 0)."""
    if os.environ.get("LOCAL_RANK", "0") != "0":
        return False
    if setting is not None:
        return bool(setting)
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):  # replaced or closed stderr
        return False


def counted(n: int, word: str) -> str:
    """``n`` and ``word``, plural unless ``n`` is 1: ``1 unit``, ``3 units``, ``1,200 units``."""
    return f"{n:,} {word}{'' if n == 1 else 's'}"


def progress_lines(setting: Optional[bool], main: bool) -> bool:
    """Whether to print plain progress lines: on the main process (``main``) wherever no bar is drawn
    (stderr not a terminal, or ``--no-progress``), so that a run into a pipe or a log file is not
    silent between its start line and its summary. The recipes print them at evaluations, never per batch."""
    return main and not show_progress(setting)


def progress_line(**figures) -> str:
    """One plain progress line, no carriage return: ``progress: step 40/200, epoch 2, train loss 0.512,
    ...``; a figure that is None is left out, a float shows 4 significant digits, except an accuracy (a
    key ending in ``accuracy``, given as a fraction), shown as a percentage with 2 decimals as the recipes'
    closing lines and tables show it (``holdout accuracy 88.98%``), and a ``density`` (a fraction), shown
    with 4 decimals (``density 0.2000``); ``seconds`` comes last. An accuracy or density that would round
    onto none or all without being it keeps the digits that say so (``fmt_unsaturated``): 49,999 of
    50,000 is "99.998%", not "100.00%", a density of 199,999 of 200,000 "0.99999", not "1.0000"."""
    seconds = figures.pop("seconds", None)
    parts = [f"{k.replace('_', ' ')} {_figure(k, v)}" for k, v in figures.items() if v is not None]
    if seconds is not None:
        parts.append(f"{seconds:.0f} s")
    return "progress: " + ", ".join(parts)


def _figure(key: str, value) -> str:
    """One figure of :func:`progress_line`: an accuracy fraction as a percentage, a density fraction to
    4 decimals (neither shown as 0 or all where it is not: ``fmt_unsaturated``), another float to
    4 significant digits, anything else as it is."""
    real = isinstance(value, numbers.Real) and not isinstance(value, numbers.Integral)  # (bool too)
    if real and key.endswith("accuracy"):
        from .metrics import fmt_accuracy  # (torch: not at the CLI's import)

        return f"{fmt_accuracy(value)}%"
    if real and key == "density":
        from .metrics import fmt_unsaturated

        return fmt_unsaturated(value, ".4f", (0.0, 1.0))
    return f"{value:.4g}" if real else f"{value}"


def mask_only_progress(total_synapses: int, show: Callable[[str], None]) -> Callable[[dict], None]:
    """A callback for ``optimize_connectome``'s records that shows one :func:`progress_line` per held-out
    evaluation (every ``eval_every`` updates and at each target's end) naming its target, with the train
    loss of the target's last update (none for a target of 0, which runs none)."""
    last: dict = {}

    def on_record(rec: dict) -> None:
        if rec["kind"] == "update":
            last.update(target=rec.get("target"), train_loss=rec.get("train_loss"))
        elif rec["kind"] == "eval":
            target = rec.get("target", last.get("target"))  # (an evaluation names its own target)
            train_loss = last.get("train_loss") if last.get("target") == target else None
            show(progress_line(step=rec["step"], target=target, train_loss=train_loss,
                               holdout_loss=rec.get("holdout_loss"), holdout_accuracy=rec.get("holdout_acc"),
                               density=1 - rec['removed'] / max(1, total_synapses),
                               seconds=rec.get("wall_seconds")))
    return on_record


def _notes(e: BaseException) -> List[str]:
    """``e``'s notes (PEP 678), one line each, as Python's traceback prints them: a note that is no
    string by its ``str()``, one whose ``str()`` fails as ``<note str() failed>``, and ``__notes__``
    set to a single value (not a list) as that one note, so that the error line is never lost to them."""
    notes = getattr(e, "__notes__", None)
    if notes is None:
        return []
    if isinstance(notes, (str, bytes)) or not isinstance(notes, (list, tuple)):
        notes = [notes]
    lines = []
    for note in notes:
        try:
            text = note if isinstance(note, str) else str(note)
        except Exception:  # noqa: BLE001 - a note's own failure must not hide the error it is on
            text = "<note str() failed>"
        lines.extend(text.splitlines())
    return lines


def _message(e: BaseException) -> Tuple[str, List[str]]:
    """``e``'s message for an ``error:`` line, and the lines that follow it: its notes (PEP 678,
    ``add_note``: "the original weights were restored", "the edit was rolled back"), one line each.
    One raised in a DataLoader worker process comes back from torch with the worker's whole traceback
    as its message: the worker's own message is kept, and the worker's notes (the traceback's lines
    after it) follow."""
    msg = str(e.args[0] if isinstance(e, KeyError) and e.args else e)
    follow = _notes(e)
    first, _, rest = msg.partition("\n")
    worker = re.fullmatch(r"Caught (\w+) (in DataLoader worker process \d+)\.?", first)
    if worker:
        # the traceback's last line is the error's own: its type, with its module unless a builtin
        # (adaptive.paths.DatasetNotFoundError), then its message (none: the type alone), then its notes
        own = list(re.finditer(rf"^(?:[\w.]+\.)?{worker[1]}(: |$)", rest, re.M))
        if own:
            text, *notes = rest[own[-1].end():].rstrip().split("\n")
            return f"{text or worker[1]} ({worker[2]})", notes + follow
    return msg, follow


def message_lines(e: BaseException, suffix: str = "") -> str:
    """``e``'s message and ``suffix``, then each of its notes (PEP 678) on a line of its own: what a
    recipe's ``SystemExit`` prints for an error whose line has no ``error:`` prefix (as
    :func:`error_lines`, which adds it)."""
    text, notes = _message(e)
    return "\n".join([f"{text}{suffix}", *notes])


def error_lines(prog: str, e: BaseException, suffix: str = "") -> str:
    """What a command prints for error ``e``: ``{prog}: error: {message}{suffix}``, then each of
    ``e``'s notes (PEP 678) on a line of its own, as Python prints them under a traceback, so that
    what an ``add_note`` tells (original weights restored, an edit rolled back) is not lost."""
    return f"{prog}: error: {message_lines(e, suffix)}"


def with_notes_of(error: BaseException, cause: BaseException) -> BaseException:
    """``error`` (which rewraps ``cause`` in a message of its own) with ``cause``'s notes added, so that
    the rewrapping does not drop them; returns ``error``."""
    for note in getattr(cause, "__notes__", None) or ():
        error.add_note(note if isinstance(note, str) else str(note))
    return error


def _say(text: str) -> None:
    """Write ``text`` and its newline to stderr in one call: stderr is unbuffered, so ``print`` writes
    the two apart, and the processes of a multi-process launch (which all stop at once, on one bad
    setting or one Ctrl-C) ran their lines together (``...start afresh thererecipes/adaptive.py: error:``).
    Where ``print(file=sys.stderr)`` wrote it, still: with no stderr (None: started with it closed,
    ``2>&-``, or under pythonw) on stdout, with neither nowhere, so the status stays 2 or 130."""
    stream = sys.stderr if sys.stderr is not None else sys.stdout
    if stream is None:
        return
    stream.write(text + "\n")
    flush = getattr(stream, "flush", None)  # print needs none
    if flush is not None:
        flush()


# how long a process of a multi-process launch that leaves its error line to another waits for the launcher
# to end it (which it does once that other process has reported and exited), before reporting it itself;
# the environment variable ADAPTIVE_LEFT_TO_ANOTHER_SECONDS sets another (a machine so loaded that the other
# process may take longer to reach the same error)
LEFT_TO_ANOTHER_SECONDS = 20.0


def _left_to_another_seconds() -> float:
    """:data:`LEFT_TO_ANOTHER_SECONDS`, or the ``ADAPTIVE_LEFT_TO_ANOTHER_SECONDS`` environment
    variable where it holds a finite number >= 0 (anything else is ignored: an error line is never
    lost to a typo in it)."""
    try:
        seconds = float(os.environ["ADAPTIVE_LEFT_TO_ANOTHER_SECONDS"])
    except (KeyError, ValueError):
        return LEFT_TO_ANOTHER_SECONDS
    return seconds if seconds >= 0 and math.isfinite(seconds) else LEFT_TO_ANOTHER_SECONDS


def _left_to_another_process(e: BaseException) -> bool:
    """Whether this process of a multi-process launch (``WORLD_SIZE`` > 1) leaves the error line of
    ``e`` to another process that finds the same error: before the process group exists, every
    process but the first of its machine (``LOCAL_RANK`` 0), which reads the same command line,
    environment and files; once it exists, every process but process 0, for an error every process
    raises alike (:func:`adaptive.distributed.raised_alike`). An error a process may have found on its
    own is never left to another."""
    if not _launched_with_others():
        return False
    dist = _process_group()
    if dist is not None:
        from .distributed import raised_alike

        return raised_alike(e) and dist.get_rank() != 0
    return quiet_at_start()


def _launched_with_others() -> bool:
    """Whether this process is one of a multi-process launch (``WORLD_SIZE`` above 1)."""
    try:
        return int(os.environ.get("WORLD_SIZE") or 1) > 1
    except ValueError:
        return False


def _process_group():
    """``torch.distributed`` where its process group is made (imported by then wherever one exists), else None."""
    dist = sys.modules.get("torch.distributed")
    return dist if dist is not None and dist.is_available() and dist.is_initialized() else None


def quiet_at_start() -> bool:
    """Whether this process leaves what every process of a multi-process launch prints alike before
    the process group exists (the help text, the warnings of reading the settings, a Ctrl-C's line) to
    the first process of its machine: it is one of a launch (``WORLD_SIZE`` > 1), its process group is
    not made yet, and it is not that first process (``LOCAL_RANK`` 0), which reads the same command
    line, environment and files. The launcher sets these variables before it starts the processes."""
    return _launched_with_others() and _process_group() is None and os.environ.get("LOCAL_RANK", "0") != "0"


def _drop_warning(*_args, **_kw) -> None:
    """A ``warnings.showwarning`` that shows nothing (:func:`start_up_warnings_once`)."""


@contextlib.contextmanager
def start_up_warnings_once():
    """Inside the block, a process that is :func:`quiet_at_start` shows no warning: every process of
    the launch reads the same settings and gives the same warnings, which each printed. Only their
    showing changes: filters (``-W error`` making one an error, ``once``) act as on the first process,
    so an error is never lost."""
    if not quiet_at_start():
        yield
        return
    before = warnings.showwarning
    warnings.showwarning = _drop_warning
    try:
        yield
    finally:
        warnings.showwarning = before


def say_error(text: str, e: BaseException, once: bool = False) -> None:
    """Write the error line(s) ``text`` of ``e`` (:func:`_say`). ``once``: under a multi-process
    launch, a process that leaves the line to another (:func:`_left_to_another_process`) writes
    nothing once that other has written it (:func:`_wait_for_the_report`), and writes it itself
    where it cannot tell within :data:`LEFT_TO_ANOTHER_SECONDS` (:func:`_left_to_another_seconds`):
    an error is never lost, at worst late and twice. Process 0, which writes the line of an error
    every process raises alike, records in the launch's store that it did
    (:func:`adaptive.distributed.note_error_reported`)."""
    if once and _left_to_another_process(e) and _wait_for_the_report(text):
        return
    _say(text)
    if once and _launched_with_others():
        dist = _process_group()
        if dist is not None and dist.get_rank() == 0:
            from .distributed import note_error_reported, raised_alike

            if raised_alike(e):
                note_error_reported(text)


# how often a process that leaves its error line to process 0 asks the launch's store whether it was written
REPORT_POLL_SECONDS = 0.05


def _wait_for_the_report(text: str = "") -> bool:
    """Whether the error line ``text`` this process leaves to another was written: once the process group
    exists, process 0 records in the launch's store that it wrote its line
    (:func:`adaptive.distributed.error_reported`), asked here every :data:`REPORT_POLL_SECONDS` for up
    to :func:`_left_to_another_seconds`; where process 0's line was another
    (:func:`adaptive.distributed.reported_error_is`: an argparse error of a command line that differs between
    the processes, such as a script's second run of a recipe's main with an argv of each process's own),
    this process writes its own too, at once, and it counts as written. Where that cannot be known (before the process group exists,
    or no store answers), this process waits that long for the launcher to end it, which it does
    (torchrun, ``accelerate launch``) once any process has exited: still running then, it writes the line
    itself. Waiting on the launcher alone wrote the line twice where process 0's exit (or the launcher's
    noticing it) took longer than the wait, on a loaded machine. Once it is written, this process still
    waits for the launcher (the rest of that wait at most), so that process 0 exits first: the launcher
    names it, and does not kill it while it exits. A Ctrl-C meanwhile (it reaches every process: the
    first reports it) counts as written."""
    from .distributed import error_reported, reported_error_is

    wait = _left_to_another_seconds()
    try:
        reported = error_reported() if _process_group() is not None else None
        if reported is None:
            time.sleep(wait)
            return False
        deadline = time.monotonic() + wait
        while not reported:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            time.sleep(min(left, REPORT_POLL_SECONDS))
            reported = error_reported()
        if not reported_error_is(text):  # process 0 wrote another line: this one would be lost
            _say(text)
        # written: still wait (the rest of the wait at most) for the launcher to end this process once process 0
        # has exited. Exiting first, this process was the launcher's "root cause" (rank 1, status 2) and process 0,
        # still exiting, was killed by its SIGTERM (its buffered output, its exit handlers lost)
        left = deadline - time.monotonic()
        if left > 0:
            time.sleep(left)
        return True
    except KeyboardInterrupt:
        return True


# how long a process of a multi-process launch but process 0, reached by Ctrl-C, waits for process 0 to report it
INTERRUPT_WAIT_SECONDS = 2.0


def _interrupt_left_to_another() -> bool:
    """Whether this process of a multi-process launch (``WORLD_SIZE`` > 1, its process group made)
    leaves its Ctrl-C line to another: a Ctrl-C to the whole launch reaches every process, and each
    wrote the line. The first process to claim the report in the launch's store writes it
    (:func:`adaptive.distributed.claim_interrupt_report`), the others nothing; a process but process
    0 first waits up to :data:`INTERRUPT_WAIT_SECONDS` for process 0 to claim it, and leaves it to
    the launch on another Ctrl-C meanwhile (the launcher passes on the one it got). A process that a
    Ctrl-C alone reached claims it and writes it (process 0, which did not stop, then writes
    :func:`adaptive.distributed.peer_stopped_error`'s line). Before the process group exists, the
    first process of each machine writes it and the others nothing (:func:`quiet_at_start`); where
    the store does not answer, every process writes its own."""
    if not _launched_with_others():
        return False
    dist = _process_group()
    if dist is None:  # (a launch's Ctrl-C reaches every process of the machine, which all read the same)
        return quiet_at_start()
    from .distributed import claim_interrupt_report, interrupt_reported

    if dist.get_rank() != 0:  # process 0, stuck in a collective this process left, reports once it has gone
        deadline = time.monotonic() + INTERRUPT_WAIT_SECONDS
        try:
            while time.monotonic() < deadline:
                reported = interrupt_reported()
                if reported:
                    return True
                if reported is None:
                    break
                time.sleep(0.05)
        except KeyboardInterrupt:  # the launcher's, passed on: the whole launch was interrupted, process 0 reports
            return True
    return claim_interrupt_report() is False


def _release_frames(error: BaseException) -> None:
    """Clear the local variables of the finished frames of ``error``'s traceback (and of the errors it
    chains), once its line is said: the ``SystemExit`` raised from it keeps it, and with it what those frames
    held (a model, a data loader's iterator) until a later garbage collection. A DataLoader iterator whose
    worker raised, freed there among the other objects of its reference cycle, waited 5 s for its worker
    at each such collection (torch's join timeout), in whichever later code it came; freed now, it stops
    its worker at once. The message, the notes and the error's type stay as they were."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        traceback.clear_frames(error.__traceback__)  # (the running frames, run_cli's own, are left alone)
        error = error.__cause__ or error.__context__


def run_cli(main: Callable[[], Any], prog: str, on_interrupt: Union[str, Callable[[], str]] = "",
            errors: Tuple[type, ...] = (), once: bool = False) -> Any:
    """Run ``main()``; a bad option, missing data or weights that do not fit print one line naming
    the problem instead of a traceback (set ADAPTIVE_TRACEBACK=1 to see it), then the error's notes
    (:func:`error_lines`), and Ctrl-C ends with
    one line (``on_interrupt``: how to continue, where the program can, or a function that says it
    then; status 130). An operating-system error on a path (a folder that is a file, no permission)
    is one line too, and so is a checkpoint that could not be written (a full disk). ``errors``:
    more exception types that mean a problem the user can fix. Warnings print as one ``warning:``
    line each (:func:`adaptive.warn.command_line_warnings`). A ``SystemExit`` raised with a message
    (its ``"{prog}: error: ..."`` line, or the bare message, which gets that prefix) prints it and ends
    with status 2 too (Python would end it with 1, unprefixed); one with a number passes through. ``once``: under a multi-process launch,
    an error every process finds alike is written by one process (:func:`say_error`), and so is the line of
    a Ctrl-C to the whole launch (:func:`_interrupt_left_to_another`). Returns what
    ``main()`` returns."""
    from .distributed import begin_report_round
    from .integrity import CheckpointWriteError
    from .models import WeightsMismatchError
    from .paths import DatasetNotFoundError
    from .warn import command_line_warnings

    if threading.current_thread() is threading.main_thread() and getattr(
            signal.getsignal(signal.SIGINT), "adaptive_startup", False):  # a recipe's quiet start-up handler:
        signal.signal(signal.SIGINT, signal.default_int_handler)  # from here on, Ctrl-C is handled below
    begin_report_round()  # (a second run in this launch reads no report of an earlier one's error or Ctrl-C)
    try:
        with command_line_warnings():
            return main()
    except (ValueError, KeyError, TypeError, FileNotFoundError, DatasetNotFoundError, WeightsMismatchError,
            CheckpointWriteError, *errors) as e:
        if os.environ.get("ADAPTIVE_TRACEBACK"):
            raise
        say_error(error_lines(prog, e), e, once)
        _release_frames(e)
        raise SystemExit(2) from e
    except (NotADirectoryError, IsADirectoryError, FileExistsError, PermissionError) as e:
        if os.environ.get("ADAPTIVE_TRACEBACK"):
            raise
        # (one a DataLoader worker raised comes back with no strerror: the worker's message names the file)
        if e.strerror:
            say_error("\n".join([f"{prog}: error: {e.strerror}: {e.filename or ''} (check the output and input "
                                  "paths)", *_notes(e)]), e, once)
        else:
            say_error(error_lines(prog, e, " (check the output and input paths)"), e, once)
        _release_frames(e)
        raise SystemExit(2) from e
    except SystemExit as e:  # a refusal raised with its message (its error line, or the bare message): status 2
        if os.environ.get("ADAPTIVE_TRACEBACK") or not isinstance(e.code, str):
            raise
        say_error(e.code if e.code.startswith(f"{prog}: error:") else f"{prog}: error: {e.code}", e, once)
        _release_frames(e)
        raise SystemExit(2) from None
    except KeyboardInterrupt as e:
        if os.environ.get("ADAPTIVE_TRACEBACK"):
            raise
        if once and _interrupt_left_to_another():
            _release_frames(e)
            raise SystemExit(130) from None
        how = on_interrupt() if callable(on_interrupt) else on_interrupt
        _say(f"{prog}: interrupted" + (f"; {how}" if how else ""))
        _release_frames(e)
        raise SystemExit(130) from None


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity where the system tells it, else all of them)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


# the most threads or worker processes an option takes: torch.set_num_threads takes a C int (a larger
# --threads was "Overflow when unpacking long long"), and no machine runs more
MOST_PROCESSES = 2**31 - 1


def check_parallelism(option: str, value: Optional[int], least: int) -> None:
    """The one rule of the command lines' ``--num_workers`` (``least`` 0) and ``--threads`` (``least``
    1): a ValueError naming ``option`` below ``least`` or above :data:`MOST_PROCESSES`; above the
    CPUs this process may use (:func:`usable_cpus`), one warning that says so (each worker is a
    process, each thread a CPU's share: more than the CPUs only slows the run, and thousands of
    workers can stall the machine). For ``--num_workers`` it stands in for torch's own warning, which
    each DataLoader gave again, in its own words. None (left out) passes."""
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or not least <= value <= MOST_PROCESSES:
        raise ValueError(f"{option} must be an integer from {least} to {MOST_PROCESSES:,}, got {value!r}")
    cpus = usable_cpus()
    if value > cpus:
        from .warn import warn_user

        what = "worker processes" if least == 0 else "threads"
        warn_user(f"{option} {value} asks for more {what} than the {counted(cpus, 'CPU')} this process may use, which "
                  f"slows the run (or stalls the machine): give {option} {cpus} or fewer")
        if least == 0:  # (torch's own, shown by each DataLoader: said once above)
            warnings.filterwarnings("ignore", message=r"This DataLoader will create \d+ worker processes")
