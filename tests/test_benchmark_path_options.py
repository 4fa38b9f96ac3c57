"""Every benchmark's path options (``--out``, ``--output``, ``--figure``, ``--runs`` ...) refuse an empty or
whitespace-only value (``--out "$DIR"`` with DIR unset) as the recipes and every --data-dir do, through the
shared ``adaptive.cli.path_type``: '' had meant the default file unsaid (``args.out or DEFAULT``), the working
directory (``Path('')``), a file named by a space, or (a default of '') "do not save"."""
import ast
import re
import runpy
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "recipes" / "benchmarks"
SCRIPTS = sorted(p for p in BENCH.rglob("*.py") if not p.name.startswith("_"))
# the options whose value names a file or a folder (a new one must match this, or the guard below misses it)
PATHISH = re.compile(r"(--)?(out|output|figure|runs?|results|save(-masks)?|teacher|proxy|masks|[\w-]*-(dir|cache|file|path))")
ADD = re.compile(r'add_argument\("([\w-]+)"(.*)')
# what else the command line needs to reach the option's check (a positional argument, a required option)
NEEDS = {"proxy.py": ["pretrain"]}


def _shared_declarers(script):
    """The source of every function ``script`` imports from another benchmark module (``from
    recipes.benchmarks.MOD import NAME``) and calls on its parser (``NAME(ap``): the shared options it declares
    there (``_paired_runs.add_recipe_run_options``, ``mask_only.add_run_options``)."""
    text = script.read_text()
    found = []
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("recipes.benchmarks."):
            module = BENCH.joinpath(*node.module.split(".")[2:]).with_suffix(".py")
            source = module.read_text()
            for alias in node.names:
                if f"{alias.asname or alias.name}(ap" not in text:
                    continue
                for fn in ast.walk(ast.parse(source)):
                    if isinstance(fn, ast.FunctionDef) and fn.name == alias.name:
                        found.append(ast.get_source_segment(source, fn))
    return found


def _declared(script):
    """(option, rest of its add_argument line) of every option ``script`` declares, those declared by a shared
    function it calls (:func:`_shared_declarers`) included."""
    return ADD.findall(script.read_text()) + [d for source in _shared_declarers(script) for d in ADD.findall(source)]


def _path_options():
    found = []
    for script in SCRIPTS:
        for name, rest in _declared(script):
            if re.search(r"type=path_type\(", rest):
                found.append((script, name))
    return found


def test_every_path_option_of_every_benchmark_takes_the_shared_path_type():
    """A static guard: a benchmark's option named like a path (found in the source) is typed by
    path_type (or data_dir_type), so a new --out cannot come back without the check."""
    missing = [f"{s.relative_to(BENCH)} {name}" for s in SCRIPTS for name, rest in _declared(s)
               if PATHISH.fullmatch(name) and not re.search(r"type=(path_type\(|data_dir_type)", rest)]
    assert not missing, missing
    assert len({s for s, _ in _path_options()}) >= 25  # the top-level benchmarks and the mask-only ablations



def test_options_declared_by_a_shared_function_are_followed():
    """mask_only_ceiling.py declares --output through mask_only.add_run_options, which the scan did not follow
    (it followed _paired_runs.add_recipe_run_options alone, by name): its empty --output went unchecked here."""
    found = set(_path_options())
    assert (BENCH / "mask_only_ceiling.py", "--output") in found and (BENCH / "mask_only.py", "--output") in found
    assert {(BENCH / s, o) for s in ("threshold_pace.py", "threshold_estimators.py") for o in ("--runs", "--output")} <= found

@pytest.mark.parametrize("script, option", _path_options(), ids=lambda v: v.name if isinstance(v, Path) else v)
@pytest.mark.parametrize("value", ["", "  "])
def test_an_empty_path_is_refused_naming_the_option(script, option, value, capsys, monkeypatch, tmp_path):
    """The script, run as from the shell, stops at its command line (status 2, nothing written) with the
    option's name and the fix."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))  # (the ablation scripts put their folder first)
    for name in ("harness", "proxy"):  # (the ablations' sibling modules, imported by name)
        monkeypatch.delitem(sys.modules, name, raising=False)
    if script.name == "ensemble.py":  # (a required --proxy and at least two mask files)
        argv = ["--proxy", value, "a.pt", "b.pt"] if option == "--proxy" else ["--proxy", "p.pt", "a.pt", value]
    else:
        argv = NEEDS.get(script.name, []) + [option, value]
    monkeypatch.setattr(sys, "argv", [str(script)] + argv)
    with pytest.raises(SystemExit) as e:
        runpy.run_path(str(script), run_name="__main__")
    err = capsys.readouterr().err
    assert e.value.code == 2, err
    assert f"argument {option}: the path is empty ({value!r}): give a path" in err, err
    assert not list(tmp_path.iterdir())


# the ablations' options whose '' meant "none" (no teacher, no proxy, nothing saved): the refusal says how to say it
NONE = {("ep.py", "--save-masks"): "leave --save-masks out to save none",
        ("ep.py", "--teacher"): "leave --teacher out for no teacher",
        ("ep.py", "--proxy"): "leave --proxy out for the DEV split",
        ("ours.py", "--proxy"): "leave --proxy out for the DEV split",
        ("finetune.py", "--save"): "leave --save out to save nothing"}


@pytest.mark.parametrize("script, option", sorted(NONE))
def test_an_option_whose_empty_value_meant_none_says_how_to_say_none(script, option, capsys, monkeypatch):
    """ep.py --teacher "", --proxy "", --save-masks "", ours.py --proxy "" and finetune.py --save "" meant
    "none" (their default was ''); refused now, the message says to leave the option out for that, not
    "for its default", which the help does not name."""
    assert (BENCH / "mask_only_ablations" / script, option) in _path_options()
    monkeypatch.setattr(sys, "path", list(sys.path))
    for name in ("harness", "proxy"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    monkeypatch.setattr(sys, "argv", [script, option, ""])  # (finetune.py's required --proxy is checked after)
    with pytest.raises(SystemExit) as e:
        runpy.run_path(str(BENCH / "mask_only_ablations" / script), run_name="__main__")
    err = capsys.readouterr().err
    assert e.value.code == 2 and f"argument {option}: the path is empty (''): give a path, or {NONE[script, option]}" in err, err
