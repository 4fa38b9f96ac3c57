"""Every recipe entry point turns a user's mistake into one `error:` line and status 2."""
import os
import re
import subprocess
import sys

import pytest

from _scripts import CHILD_TIMEOUT  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize(
    "args, expect",
    [
        (["recipes/adaptive.py", "--density", "2"], "density must be in (0, 1]"),
        (["recipes/prune_pretrained.py", "--model", "resnet20", "--remove", "1.5", "--dataset", "fake"], "target fraction 1.5"),
        (["recipes/diagnostics.py", "knowledge", "--dataset", "nope"], "unknown dataset 'nope'"),
        # refused while parsing: it was status 1 and no error: line
        (["recipes/prune_pretrained.py", "--seed", "-1"], "--seed must be in [0, 2**32 - 1]"),
    ],
)
def test_bad_input_gives_one_error_line(args, expect):
    env = dict(os.environ, MPLBACKEND="Agg")
    env.pop("ADAPTIVE_TRACEBACK", None)
    r = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=CHILD_TIMEOUT, env=env)
    assert r.returncode == 2, r.stderr[-2000:]
    assert "Traceback" not in r.stderr
    errors = [line for line in r.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and expect in errors[0], r.stderr[-2000:]


def test_ctrl_c_ends_with_one_line_saying_how_to_continue(capsys, monkeypatch):
    from adaptive.cli import run_cli

    def interrupted():
        raise KeyboardInterrupt

    monkeypatch.delenv("ADAPTIVE_TRACEBACK", raising=False)
    with pytest.raises(SystemExit) as e:
        run_cli(interrupted, "prog", on_interrupt="--resume continues")
    assert e.value.code == 130
    assert capsys.readouterr().err == "prog: interrupted; --resume continues\n"
    monkeypatch.setenv("ADAPTIVE_TRACEBACK", "1")
    with pytest.raises(KeyboardInterrupt):
        run_cli(interrupted, "prog")



@pytest.mark.parametrize("raised, line", [
    (ValueError("bad setting"), "prog: error: bad setting\n"),
    (PermissionError(13, "Permission denied", "/out"), "prog: error: Permission denied: /out (check the output and input paths)\n"),
    (KeyboardInterrupt(), "prog: interrupted; --resume continues\n"),
])
def test_each_closing_line_is_written_with_its_newline_in_one_write(monkeypatch, raised, line):
    """stderr is unbuffered, and print wrote the line and its newline apart: under `accelerate launch
    --num_processes 2` every process stops on the same bad setting or Ctrl-C, and the two processes'
    lines ran together ('...start afresh thererecipes/adaptive.py: error: ...')."""
    from adaptive.cli import run_cli

    class Recorder:
        def __init__(self):
            self.writes = []

        def write(self, text):
            self.writes.append(text)
            return len(text)

        def flush(self):
            pass

    def fail():
        raise raised

    err = Recorder()
    monkeypatch.delenv("ADAPTIVE_TRACEBACK", raising=False)
    monkeypatch.setattr(sys, "stderr", err)
    with pytest.raises(SystemExit):
        run_cli(fail, "prog", on_interrupt="--resume continues")
    assert err.writes == [line]


@pytest.mark.parametrize("raised, code, line", [
    (ValueError("bad setting"), 2, "prog: error: bad setting\n"),
    (PermissionError(13, "Permission denied", "/out"), 2, "prog: error: Permission denied: /out (check the output and input paths)\n"),
    (KeyboardInterrupt(), 130, "prog: interrupted; --resume continues\n"),
])
def test_the_closing_line_of_a_run_started_without_stderr_keeps_its_status(capsys, monkeypatch, raised, code, line):
    """Python sets sys.stderr to None for a process started with it closed (`2>&-`, pythonw):
    print(file=None) wrote the line on stdout, and writing it with sys.stderr.write raised
    AttributeError instead, which ended the run with status 1, not 2 or 130."""
    from adaptive.cli import run_cli

    def fail():
        raise raised

    monkeypatch.delenv("ADAPTIVE_TRACEBACK", raising=False)
    monkeypatch.setattr(sys, "stderr", None)
    with pytest.raises(SystemExit) as e:
        run_cli(fail, "prog", on_interrupt="--resume continues")
    assert e.value.code == code
    assert capsys.readouterr().out == line


def _printed_warnings(fn):
    """What ``fn()``'s warnings print on stderr, shown as Python shows them outside pytest (pytest
    records them instead): every one, each through ``warnings.formatwarning``."""
    import io
    import warnings

    err = io.StringIO()
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.showwarning = lambda message, category, filename, lineno, file=None, line=None: err.write(
            warnings.formatwarning(message, category, filename, lineno, line))
        fn()
    return err.getvalue()


def test_a_data_warning_prints_as_one_warning_line_on_the_command_line(monkeypatch):
    """A data layer's warning (a subset larger than the split) printed as Python's
    ``/path/recipes/prune_pretrained.py:628: UserWarning: ...`` and the source line; under run_cli (every
    recipe) and ``python -m graphs`` it is one ``warning:`` line. The library's warning is unchanged."""
    import warnings

    from adaptive.cli import run_cli
    from adaptive.data import get_datasets
    from graphs import cli as graphs_cli

    monkeypatch.delenv("ADAPTIVE_TRACEBACK", raising=False)

    def load():
        get_datasets("fake", subset=100000, train_size=64, test_size=16)

    expect = ("warning: subset=100000 asks for more examples than the train split of fake holds (64): all 64 are "
              "used; give subset=64 (or leave it out) to say so\n")
    assert _printed_warnings(lambda: run_cli(load, "prog")) == expect
    monkeypatch.setattr(graphs_cli, "_run", lambda a: load())
    assert _printed_warnings(lambda: graphs_cli.main(["report", "somewhere"])) == expect
    raw = _printed_warnings(load)  # outside the command line: Python's own format, as before
    assert "test_cli.py:" in raw and "UserWarning: subset=100000" in raw
    with pytest.warns(UserWarning, match="subset=100000"):  # and a caller inside run_cli still catches it
        run_cli(load, "prog")
    assert warnings.formatwarning.__module__ == "warnings"  # put back once the run ends
    monkeypatch.setenv("ADAPTIVE_TRACEBACK", "1")  # asks for the internals: where it was raised too
    assert "UserWarning" in _printed_warnings(lambda: run_cli(load, "prog"))


def test_a_recipe_prints_a_data_warning_as_one_line(tmp_path):
    """The recipe run as a program: the subset warning reads as the recipe's other warnings do."""
    env = dict(os.environ, MPLBACKEND="Agg")
    env.pop("ADAPTIVE_TRACEBACK", None)
    (tmp_path / "plugin.py").write_text("import warnings\nwarnings.warn('the plugin says so')\n")
    r = subprocess.run([sys.executable, "recipes/adaptive.py", "--dataset", "fake", "--subset", "100000",
                        "--mode", "mask_only", "--mask_only_kw.approach", "3",  # refused once the data has loaded
                        "--output_dir", str(tmp_path / "run"),
                        "--plugins", str(tmp_path / "plugin.py")],  # imported while the options are parsed
                       cwd=ROOT, capture_output=True, text=True, timeout=CHILD_TIMEOUT, env=env)
    assert r.returncode == 2 and "approach must be in [0, 1], got 3" in r.stderr, r.stderr[-2000:]
    assert "warning: the plugin says so\n" in r.stderr, r.stderr[-2000:]
    assert ("warning: --subset 100000 asks for more examples than the train split of fake holds (512): all 512 are "
            "used; give --subset 512 (or leave it out)") in r.stderr  # the option as the recipe spells it
    assert "UserWarning" not in r.stderr and not re.search(r"\.py:\d+:", r.stderr), r.stderr  # no FILE:LINE:


def test_a_mistyped_option_names_the_one_it_nearly_matches_in_every_argparse_command(capsys):
    """prune_pretrained.py, diagnostics.py and python -m graphs said only "unrecognized arguments:
    --remov 0.1" (recipes/adaptive.py names its closest key); each now names the option meant, of the
    subcommand given, with that subcommand's usage, and guesses nothing where nothing is near."""
    from _scripts import load_script
    from graphs.cli import main as graphs_main

    prune = load_script("recipes/prune_pretrained.py", "prune_cli_near_miss")
    diag = load_script("recipes/diagnostics.py", "diagnostics_cli_near_miss")
    cases = [(lambda: prune.build_parser().parse_args(["--remov", "0.1"]),
              "unrecognized arguments: --remov 0.1 (did you mean --remove for --remov?)"),
             (lambda: diag.build_parser().parse_args(["knowledge", "--point", "5", "--modle=x"]),
              " knowledge [-h] [--output_dir OUTPUT_DIR]"),
             (lambda: diag.build_parser().parse_args(["knowledge", "--point", "5", "--modle=x"]),
              "--point 5 --modle=x (did you mean --points for --point, --model for --modle?)"),
             (lambda: graphs_main(["export", "run", "--formt", "json"]), "(did you mean --format for --formt?)"),
             (lambda: graphs_main(["export", "run", "--formt", "json"]), "usage: python -m graphs export")]
    for parse, expect in cases:
        with pytest.raises(SystemExit):
            parse()
        assert expect in capsys.readouterr().err
    with pytest.raises(SystemExit):
        diag.build_parser().parse_args(["progress", "run", "--zzz"])
    assert capsys.readouterr().err.rstrip().endswith("unrecognized arguments: --zzz")


def test_every_argparse_command_takes_dashes_or_underscores():
    """recipes/adaptive.py takes --eval_batch_size and --eval-batch-size alike, but prune_pretrained.py
    refused --eval_batch_size, --edit_fraction, --verify_batches, ..., and diagnostics.py --test-subset,
    --grad-batch-size, ... (each declared in one spelling only): now every option takes both, in a
    subcommand too, with =VALUE or not; what follows -- stays as it is."""
    from _scripts import load_script
    from graphs.cli import _parser as graphs_parser

    prune = load_script("recipes/prune_pretrained.py", "prune_cli_spellings")
    diag = load_script("recipes/diagnostics.py", "diagnostics_cli_spellings")
    a = prune.build_parser().parse_args(["--edit_fraction", "0.5", "--eval_batch_size=100", "--verify_batches", "2",
                                         "--output-dir", "x", "--batch_size", "7"])
    assert (a.edit_fraction, a.eval_batch_size, a.verify_batches, a.output_dir, a.batch_size) == (0.5, 100, 2, "x", 7)
    d = diag.build_parser().parse_args(["collinearity", "--test-subset", "10", "--grad-batch-size=5", "--output-dir", "o"])
    assert (d.test_subset, d.grad_batch_size, d.output_dir) == (10, 5, "o")
    g = graphs_parser()[0].parse_args(["export", "run", "--in_shape", "784", "--num_classes=10"])
    assert (g.in_shape, g.num_classes) == ("784", 10)
    a, rest = prune.build_parser().parse_known_args(["--seed", "1", "--", "--eval_batch_size"])
    assert a.eval_batch_size is None and rest == ["--", "--eval_batch_size"]


def test_an_abbreviation_in_the_other_spelling_is_read_where_abbreviations_are_allowed(capsys):
    """adaptive.cli.ArgumentParser allows abbreviations by default (the project's commands turn them off):
    --eval-b abbreviated --eval-batch-size, but --eval_b was refused; an abbreviation of an option as typed
    keeps its meaning, an exact other spelling wins over it, and an ambiguous one is still refused."""
    from adaptive.cli import ArgumentParser

    p = ArgumentParser(prog="x")
    p.add_argument("--eval-batch-size", type=int)
    p.add_argument("--eval-every", type=int)
    p.add_argument("--foo_bar", type=int)
    p.add_argument("--foo-b", type=int)
    a = p.parse_args(["--eval_b", "3", "--eval_ev=4", "--foo_b", "5", "--foo_ba", "6"])
    assert (a.eval_batch_size, a.eval_every, a.foo_b, a.foo_bar) == (3, 4, 5, 6)
    with pytest.raises(SystemExit):
        p.parse_args(["--eval_", "1"])
    assert "ambiguous option: --eval" in capsys.readouterr().err
    q = ArgumentParser(prog="y", allow_abbrev=False)
    q.add_argument("--eval-batch-size", type=int)
    with pytest.raises(SystemExit):
        q.parse_args(["--eval_b", "3"])
    assert "unrecognized arguments: --eval_b 3" in capsys.readouterr().err


@pytest.mark.parametrize("error, line", [
    (ValueError("train/dog/1.png cannot be read as an image: replace it, or delete it"),
     "train/dog/1.png cannot be read as an image: replace it, or delete it (in DataLoader worker process 0)"),
    # the traceback names a non-builtin error with its module (adaptive.paths.DatasetNotFoundError: ...)
    ("DatasetNotFoundError", "no data in /x: download it there (in DataLoader worker process 0)"),
    (ValueError(), "ValueError (in DataLoader worker process 0)"),  # no message: the traceback's last line is its type alone
    # an image the run may not read (an operating-system error, which the image folders leave as it is)
    (PermissionError(13, "Permission denied", "train/dog/1.png"),
     "[Errno 13] Permission denied: 'train/dog/1.png' (in DataLoader worker process 0) (check the output and input paths)"),
])
def test_an_error_raised_in_a_data_loader_worker_is_one_line_with_its_own_message(capsys, monkeypatch, error, line):
    """torch re-raises a worker's error with the worker's whole traceback as its message: with
    --num-workers (the ImageNet configs set 8) an unreadable image printed that traceback as its
    error: line, the message naming the file and the fix at its very end."""
    import torch
    from adaptive.cli import run_cli
    from adaptive.paths import DatasetNotFoundError

    if error == "DatasetNotFoundError":
        error = DatasetNotFoundError("no data in /x: download it there")

    class Unreadable(torch.utils.data.Dataset):
        def __len__(self):
            return 2

        def __getitem__(self, i):
            raise error

    def main():
        next(iter(torch.utils.data.DataLoader(Unreadable(), num_workers=1)))

    monkeypatch.delenv("ADAPTIVE_TRACEBACK", raising=False)
    with pytest.raises(SystemExit) as e:
        run_cli(main, "prog")
    assert e.value.code == 2
    assert capsys.readouterr().err == f"prog: error: {line}\n"


def test_an_errors_notes_print_on_the_lines_after_its_error_line(capsys, monkeypatch):
    """An error's notes (PEP 678: "the original weights were restored", "the edit was rolled back")
    print after its one ``error:`` line, as Python prints them under a traceback: the line printed
    str(error) alone, and what the note said was lost."""
    from adaptive.cli import run_cli

    def noted(error):
        def main():
            error.add_note("adaptive: the original weights were restored")
            error.add_note("second note\nof two lines")
            raise error
        return main

    monkeypatch.delenv("ADAPTIVE_TRACEBACK", raising=False)
    for error, line in [(ValueError("a bad window"), "prog: error: a bad window"),
                        (KeyError("no such layer"), "prog: error: no such layer"),
                        (PermissionError(13, "Permission denied", "out/x"),
                         "prog: error: Permission denied: out/x (check the output and input paths)")]:
        with pytest.raises(SystemExit) as e:
            run_cli(noted(error), "prog")
        assert e.value.code == 2
        assert capsys.readouterr().err == (f"{line}\nadaptive: the original weights were restored\n"
                                           "second note\nof two lines\n")
    with pytest.raises(SystemExit):  # no notes: the one line, as before
        run_cli(lambda: (_ for _ in ()).throw(ValueError("plain")), "prog")
    assert capsys.readouterr().err == "prog: error: plain\n"


def test_the_notes_of_an_error_raised_in_a_data_loader_worker_follow_its_line(capsys, monkeypatch):
    """A worker's error comes back as the worker's traceback, its notes on the lines after the message:
    those lines follow the error line (they were glued to the message, the worker's name after them)."""
    import torch
    from adaptive.cli import run_cli

    class Unreadable(torch.utils.data.Dataset):
        def __len__(self):
            return 2

        def __getitem__(self, i):
            error = ValueError("train/dog/1.png cannot be read as an image")
            error.add_note("adaptive: a note from the worker")
            raise error

    def main():
        next(iter(torch.utils.data.DataLoader(Unreadable(), num_workers=1)))

    monkeypatch.delenv("ADAPTIVE_TRACEBACK", raising=False)
    with pytest.raises(SystemExit):
        run_cli(main, "prog")
    assert capsys.readouterr().err == ("prog: error: train/dog/1.png cannot be read as an image (in DataLoader worker "
                                       "process 0)\nadaptive: a note from the worker\n")


@pytest.mark.parametrize("raised", ["ValueError", "SystemExit", "KeyboardInterrupt"])
def test_what_the_failed_frames_held_is_freed_once_the_error_is_said(capsys, monkeypatch, raised):
    """The SystemExit that run_cli raises keeps the error it reported, whose traceback kept every frame's
    locals: a DataLoader iterator whose worker raised lived on until a later garbage collection, where,
    freed among the other objects of its reference cycle, it waited torch's 5-s join timeout for its worker,
    in whichever later code that collection came (the suite met such 5- and 10-s stalls in unrelated tests).
    The frames' locals are cleared once the error is said: freed at once, by reference count, no collection."""
    import gc
    import weakref

    import torch
    from adaptive.cli import run_cli

    class Unreadable(torch.utils.data.Dataset):
        def __len__(self):
            return 2

        def __getitem__(self, i):
            raise ValueError("train/dog/1.png cannot be read as an image")

    held = []

    def main():
        batches = iter(torch.utils.data.DataLoader(Unreadable(), num_workers=1))
        held.append(weakref.ref(batches))
        if raised == "ValueError":
            next(batches)
        raise SystemExit("refused") if raised == "SystemExit" else KeyboardInterrupt()

    monkeypatch.delenv("ADAPTIVE_TRACEBACK", raising=False)
    gc.disable()  # (what is freed here is freed by reference count)
    try:
        with pytest.raises(SystemExit) as e:
            run_cli(main, "prog")
        assert held[0]() is None, "the iterator outlived the error it failed with"
    finally:
        gc.enable()
    assert e.value.code in (2, 130) and "prog: " in capsys.readouterr().err


def test_notes_that_are_no_list_of_strings_print_as_python_prints_them(capsys, monkeypatch):
    """``__notes__`` set by hand to a string printed it one character a line; a note whose ``str()``
    raised replaced the error line with a traceback from the printer itself: a string is one note,
    a note object prints by its ``str()``, and one whose ``str()`` fails as ``<note str() failed>``."""
    from adaptive.cli import run_cli

    class Broken:
        def __str__(self):
            raise RuntimeError("no text")

    def raising(notes):
        def main():
            error = ValueError("a bad window")
            error.__notes__ = notes
            raise error
        return main

    monkeypatch.delenv("ADAPTIVE_TRACEBACK", raising=False)
    for notes, lines in [("one note\nof two lines", ["one note", "of two lines"]),
                         ([Broken(), 5, "kept"], ["<note str() failed>", "5", "kept"]),
                         (7, ["7"])]:
        with pytest.raises(SystemExit) as e:
            run_cli(raising(notes), "prog")
        assert e.value.code == 2
        assert capsys.readouterr().err.splitlines() == ["prog: error: a bad window", *lines]


@pytest.mark.parametrize("value, seconds", [("300", 300.0), ("0", 0.0), ("-1", None), ("nan", None),
                                            ("inf", None), ("soon", None), (None, None)])
def test_the_wait_for_another_process_to_report_can_be_set_by_the_environment(monkeypatch, value, seconds):
    """ADAPTIVE_LEFT_TO_ANOTHER_SECONDS sets how long a process leaving its error line to another waits
    (the tests' launches use 300 s: a loaded machine); a value that is not a number >= 0 keeps the
    default, so a typo never makes the wait endless or loses the line."""
    import adaptive.cli as cli

    if value is None:
        monkeypatch.delenv("ADAPTIVE_LEFT_TO_ANOTHER_SECONDS", raising=False)
    else:
        monkeypatch.setenv("ADAPTIVE_LEFT_TO_ANOTHER_SECONDS", value)
    assert cli._left_to_another_seconds() == (cli.LEFT_TO_ANOTHER_SECONDS if seconds is None else seconds)


@pytest.mark.parametrize("local_rank, leaves", [("1", True), ("0", False)])
def test_a_launched_process_leaves_a_settings_error_line_to_the_first_process(monkeypatch, capsys, local_rank, leaves):
    """Under `accelerate launch --num_processes 2` one bad setting printed one error line per process:
    before the process group exists, every process but the first of its machine now waits for the
    launcher to end it (it does once the first has written the line and exited: a sleep interrupted
    here as the launcher's SIGTERM would), and writes the line itself only if it is still running."""
    import adaptive.cli as cli

    class Ended(BaseException):
        pass

    def ended_by_the_launcher(seconds):
        assert seconds == cli.LEFT_TO_ANOTHER_SECONDS
        raise Ended

    def fail():
        raise ValueError("lr must be a finite number > 0, got -1.0")

    monkeypatch.delenv("ADAPTIVE_TRACEBACK", raising=False)
    monkeypatch.delenv("ADAPTIVE_LEFT_TO_ANOTHER_SECONDS", raising=False)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", local_rank)
    monkeypatch.setattr(cli.time, "sleep", ended_by_the_launcher)
    with pytest.raises(Ended if leaves else SystemExit):
        cli.run_cli(fail, "prog", once=True)
    assert capsys.readouterr().err == ("" if leaves else "prog: error: lr must be a finite number > 0, got -1.0\n")
    monkeypatch.setattr(cli.time, "sleep", lambda s: None)  # not ended: the line is written all the same
    with pytest.raises(SystemExit):
        cli.run_cli(fail, "prog", once=True)
    assert capsys.readouterr().err == "prog: error: lr must be a finite number > 0, got -1.0\n"
    with pytest.raises(SystemExit):  # without once=: every process writes it
        cli.run_cli(fail, "prog")
    assert capsys.readouterr().err == "prog: error: lr must be a finite number > 0, got -1.0\n"


class _FakeStore:
    """The launch's store as the processes of a test share it: keys set, counted and checked."""

    def __init__(self):
        self.keys = {}

    def set(self, key, value):
        self.keys[key] = value

    def add(self, key, n):
        self.keys[key] = int(self.keys.get(key, 0)) + n
        return self.keys[key]

    def check(self, keys):
        return all(k in self.keys for k in keys)

    def get(self, key):
        return str(self.keys[key]).encode()


class _FakeGroup:
    """torch.distributed's process group as process ``rank`` of two sees it."""

    def __init__(self, rank):
        self.rank = rank

    def get_rank(self):
        return self.rank


def test_an_agreed_error_is_written_once_however_long_process_0_takes_to_exit(monkeypatch, capsys):
    """A sweep saw an agreed refusal's line twice (once in seven launches): process 1 left it to process
    0 and waited for the launcher to end it, which it does only once process 0 has exited; where that
    (or the launcher's noticing it) took longer than the wait, on a loaded machine, process 1 wrote it
    too. Process 0 now records in the launch's store that it wrote the line, and process 1 ends
    silently once it reads that, whenever process 0 exits (here: not before process 1's wait is over)."""
    import adaptive.cli as cli
    import adaptive.distributed as D

    def refused():
        raise D.mark_raised_alike(ValueError("the processes found different checkpoints (process 1 of 2: ...)"))

    line = "prog: error: the processes found different checkpoints (process 1 of 2: ...)\n"
    store = _FakeStore()
    monkeypatch.delenv("ADAPTIVE_TRACEBACK", raising=False)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("ADAPTIVE_LEFT_TO_ANOTHER_SECONDS", "0")  # process 0 still running when the wait ends
    monkeypatch.setattr(D, "is_distributed", lambda: True)  # (raised alike: marked)
    monkeypatch.setattr(D, "_launch_store", lambda: store)
    monkeypatch.setattr(cli.time, "sleep", lambda s: None)
    monkeypatch.setattr(D, "begin_report_round", lambda: None)  # (the three calls: both processes' one run)
    for rank, written in [(1, line), (0, line), (1, "")]:  # process 1 before process 0 wrote it, and after
        monkeypatch.setattr(cli, "_process_group", lambda: _FakeGroup(rank))
        with pytest.raises(SystemExit) as e:
            cli.run_cli(refused, "prog", once=True)
        assert e.value.code == 2 and capsys.readouterr().err == written
    assert store.keys == {f"adaptive_error_reported.{D._ROUND[0]}": D._line_digest(line[:-1])}
    monkeypatch.setattr(D, "_launch_store", lambda: None)  # no store answers: written after the wait, as before
    with pytest.raises(SystemExit):
        cli.run_cli(refused, "prog", once=True)
    assert capsys.readouterr().err == line


def test_a_parse_error_of_a_command_line_that_differs_between_processes_is_written_by_each(monkeypatch, capsys):
    """Once the process group exists (a script's second run of a recipe's main in one launch), an argparse
    error is marked as raised alike and left to process 0; but each process parses its own command line,
    and where they differ (an argv of each process's own) process 1's error was another, and only process
    0's line was written. Process 1 now writes its own where process 0 recorded writing another, and still
    nothing where process 0's was the same."""
    import adaptive.cli as cli
    import adaptive.distributed as D

    def parse(argv):
        p = cli.ArgumentParser(prog="prog")
        p.add_argument("--steps", type=int)
        return lambda: p.parse_args(argv)

    store = _FakeStore()
    monkeypatch.delenv("ADAPTIVE_TRACEBACK", raising=False)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("ADAPTIVE_LEFT_TO_ANOTHER_SECONDS", "0")
    monkeypatch.setattr(D, "is_distributed", lambda: True)
    monkeypatch.setattr(D, "_launch_store", lambda: store)
    monkeypatch.setattr(cli.time, "sleep", lambda s: None)
    monkeypatch.setattr(D, "begin_report_round", lambda: None)  # (one round: both processes' one run)

    def run(rank, argv):
        monkeypatch.setattr(cli, "_process_group", lambda: _FakeGroup(rank))
        with pytest.raises(SystemExit) as e:
            cli.run_cli(parse(argv), "prog", once=True)
        assert e.value.code == 2
        return capsys.readouterr().err

    assert "prog: error: argument --steps: invalid int value: 'x'" in run(0, ["--steps", "x"])
    assert "prog: error: unrecognized arguments: --stpes 3" in run(1, ["--stpes", "3"])  # lost before
    assert run(1, ["--steps", "x"]) == ""  # the same line as process 0's: written once


def test_a_second_run_in_one_launch_reads_no_report_of_the_first(monkeypatch, capsys):
    """The launch store's report keys were never cleared within a launch: a script that ran a recipe's
    main() again after catching its error (SystemExit) had process 1 read process 0's report of the
    first run's error as that of the second's, and end silently before process 0 wrote it (lost, were
    process 0 to end without writing it); and a second Ctrl-C was claimed by no process (the count
    was past 1), so no process wrote its line. Each run now has a round of keys of its own."""
    import adaptive.cli as cli
    import adaptive.distributed as D

    def refused():
        raise D.mark_raised_alike(ValueError("the processes were given different settings"))

    def interrupted():
        raise KeyboardInterrupt

    store, rounds = _FakeStore(), {0: [0], 1: [0]}  # each process's count of its runs

    def run(rank, main):
        monkeypatch.setattr(cli, "_process_group", lambda: _FakeGroup(rank))
        monkeypatch.setattr(D, "_ROUND", rounds[rank])
        with pytest.raises(SystemExit):
            cli.run_cli(main, "prog", once=True)
        return capsys.readouterr().err

    line = "prog: error: the processes were given different settings\n"
    monkeypatch.delenv("ADAPTIVE_TRACEBACK", raising=False)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("ADAPTIVE_LEFT_TO_ANOTHER_SECONDS", "0")  # process 0 still running when the wait ends
    monkeypatch.setattr(D, "is_distributed", lambda: True)
    monkeypatch.setattr(D, "_launch_store", lambda: store)
    monkeypatch.setattr(cli.time, "sleep", lambda s: None)
    assert run(0, refused) == line and run(1, refused) == ""  # the first run: process 0 writes it
    assert run(1, refused) == line  # the second, process 1 first: process 0 has not written this one
    assert run(0, refused) == line
    assert run(0, interrupted) == "prog: interrupted\n" and run(1, interrupted) == ""  # a Ctrl-C: the first claims it
    assert run(0, interrupted) == "prog: interrupted\n" and run(1, interrupted) == ""  # and another, in a later run


def test_a_process_that_left_its_error_line_to_process_0_waits_for_the_launcher_to_end_it(monkeypatch, capsys):
    """Process 1 ended (status 2) as soon as it read that process 0 had written the agreed line: the
    launcher then named rank 1 as the failure's root cause and killed process 0, still exiting, with
    SIGTERM (its buffered output lost). Having read it, process 1 writes nothing and waits out the rest
    of its wait, for the launcher to end it once process 0 has exited."""
    import adaptive.cli as cli
    import adaptive.distributed as D

    clock = [0.0]  # a fake clock: sleeping advances it

    def sleep(s):
        clock[0] += s

    monkeypatch.delenv("ADAPTIVE_TRACEBACK", raising=False)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("ADAPTIVE_LEFT_TO_ANOTHER_SECONDS", "20")
    monkeypatch.setattr(D, "is_distributed", lambda: True)
    monkeypatch.setattr(D, "error_reported", lambda: clock[0] >= 1.0)  # process 0 writes it after 1 s
    monkeypatch.setattr(cli, "_process_group", lambda: _FakeGroup(1))
    monkeypatch.setattr(cli.time, "sleep", sleep)
    monkeypatch.setattr(cli.time, "monotonic", lambda: clock[0])

    def refused():
        raise D.mark_raised_alike(ValueError("the processes found different checkpoints"))

    with pytest.raises(SystemExit) as e:
        cli.run_cli(refused, "prog", once=True)
    assert e.value.code == 2 and capsys.readouterr().err == ""
    assert clock[0] == pytest.approx(20.0)  # ended by the launcher meanwhile, or silently at the wait's end


@pytest.mark.parametrize("code, status, printed", [("prog: error: --output_dir is empty", 2, True),
                                                   ("a bare message", 2, "prog: error: a bare message"),
                                                   (0, 0, False), (3, 3, False)])
def test_a_programs_own_error_line_exit_ends_with_status_2(monkeypatch, capsys, code, status, printed):
    """recipes/diagnostics.py refused with SystemExit("recipes/diagnostics.py: error: ..."), which Python
    ends with status 1, while every other refusal (and docs/training.md) says 2: run_cli prints such a
    line once and ends with 2, and a bare message (prune_pretrained's option checks) with the prefix;
    a SystemExit with a number passes through as it was."""
    import adaptive.cli as cli

    monkeypatch.delenv("ADAPTIVE_TRACEBACK", raising=False)

    def main():
        raise SystemExit(code)

    with pytest.raises(SystemExit) as e:
        cli.run_cli(main, "prog")
    assert e.value.code == status
    shown = code if printed is True else printed
    assert capsys.readouterr().err == (f"{shown}\n" if printed else "")


@pytest.mark.parametrize("local_rank, printed", [("1", ""), ("0", "prog: interrupted; --resume continues\n")])
def test_ctrl_c_before_the_process_group_is_written_by_the_first_process_alone(monkeypatch, capsys, local_rank, printed):
    """A Ctrl-C to `accelerate launch --num_processes 2` before the process group existed (reading the
    settings, the data) printed its line once per process: the first process of the machine alone
    writes it now, the others end with the same status 130 silently."""
    import adaptive.cli as cli

    def interrupted():
        raise KeyboardInterrupt

    monkeypatch.delenv("ADAPTIVE_TRACEBACK", raising=False)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", local_rank)
    with pytest.raises(SystemExit) as e:
        cli.run_cli(interrupted, "prog", on_interrupt="--resume continues", once=True)
    assert e.value.code == 130 and capsys.readouterr().err == printed
    with pytest.raises(SystemExit) as e:  # without once= (a recipe whose processes all report): every process writes it
        cli.run_cli(interrupted, "prog", on_interrupt="--resume continues")
    assert e.value.code == 130 and capsys.readouterr().err == "prog: interrupted; --resume continues\n"


@pytest.mark.parametrize("world_size, local_rank, shown", [("2", "1", False), ("2", "0", True), ("1", "1", True),
                                                           (None, "1", True)])
def test_start_up_warnings_are_shown_by_the_first_process_of_a_launch_alone(monkeypatch, world_size, local_rank, shown):
    """Each process of a launch showed the warnings of reading the settings (a --plugins module's): every
    process but the first of its machine now shows none before the process group exists, while the
    filters still act there (an error that -W error makes of one is raised on every process)."""
    import warnings

    import adaptive.cli as cli

    if world_size is None:
        monkeypatch.delenv("WORLD_SIZE", raising=False)
    else:
        monkeypatch.setenv("WORLD_SIZE", world_size)
    monkeypatch.setenv("LOCAL_RANK", local_rank)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        with cli.start_up_warnings_once():
            warnings.warn("a plugin's warning")
    assert len(seen) == int(shown)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(UserWarning, match="a plugin's warning"), cli.start_up_warnings_once():
            warnings.warn("a plugin's warning")


def test_a_parse_error_in_a_second_run_of_one_launch_is_written_by_process_0_alone(monkeypatch, capsys):
    """A script that ran a recipe's main() twice under `accelerate launch --num_processes 2` saw the second
    run's argument error once a process: the process group existed by then, so the first process of each
    machine no longer wrote it alone, and a parse error was not marked as raised alike. Every process
    parses the same command line: process 0 now writes it, and the others leave it to process 0."""
    import adaptive.cli as cli
    import adaptive.distributed as D

    def main():
        parser = cli.ArgumentParser(prog="prog")
        parser.add_argument("--remove", type=float)
        parser.parse_args(["--remove", "0.5", "--bogus"])

    monkeypatch.delenv("ADAPTIVE_TRACEBACK", raising=False)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setenv("ADAPTIVE_LEFT_TO_ANOTHER_SECONDS", "0")
    monkeypatch.setattr(D, "is_distributed", lambda: True)
    store = _FakeStore()
    monkeypatch.setattr(D, "_launch_store", lambda: store)
    monkeypatch.setattr(cli.time, "sleep", lambda s: None)
    monkeypatch.setattr(D, "begin_report_round", lambda: None)  # (both processes' one run)
    written = {}
    for rank in (0, 1):
        monkeypatch.setattr(cli, "_process_group", lambda: _FakeGroup(rank))
        with pytest.raises(SystemExit) as e:
            cli.run_cli(main, "prog", once=True)
        assert e.value.code == 2
        written[rank] = capsys.readouterr().err
    assert written[0].endswith("prog: error: unrecognized arguments: --bogus\n") and written[1] == ""
