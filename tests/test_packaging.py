"""What ``pip install`` of the project gets: the wheel holds every module of the two packages and every
file they read, and nothing else (no tests, recipes or data); the sdist holds the whole project, so its
tests run from it; the version is written once and read from the file (the build imports no package).
The tests and CI use an editable checkout, which never shows a file left out of the wheel: these build
both, once, from a copy of the working tree."""
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import zipfile

import pytest

from _scripts import CHILD_TIMEOUT, ROOT

PACKAGES = ("adaptive", "graphs")
# never part of a build, whatever the working tree holds
_NOT_BUILT = shutil.ignore_patterns(".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", "*.py[cod]",
                                    ".pytest_cache", ".hypothesis", "runs")


def _package_files():
    """Every file of the two packages in the working tree (modules and any file they read), by path."""
    found = set()
    for pkg in PACKAGES:
        for folder, dirs, files in os.walk(os.path.join(ROOT, pkg)):
            dirs[:] = [d for d in dirs if d != "__pycache__"]
            found |= {os.path.relpath(os.path.join(folder, f), ROOT).replace(os.sep, "/")
                      for f in files if not f.endswith((".pyc", ".pyo"))}
    return found


def _committed():
    """The committed files that are in the working tree, by path; None where there is no git checkout."""
    listed = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True) if shutil.which("git") else None
    if listed is None or listed.returncode != 0 or not listed.stdout:
        return None
    return {f for f in listed.stdout.splitlines() if os.path.isfile(os.path.join(ROOT, f))}


def _build(tmp):
    """Build the wheel and the sdist in ``tmp`` (see :func:`built`); their file names."""
    src, out = tmp / "src", tmp / "dist"
    committed = _committed()
    if committed is None:  # (an unpacked sdist: nothing else is in it)
        shutil.copytree(ROOT, src, ignore=_NOT_BUILT)
    else:
        for rel in sorted(committed | _package_files()):
            (src / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(os.path.join(ROOT, rel), src / rel)
    names = []
    for build in ("build_wheel", "build_sdist"):  # (one process each: in one, the second writes elsewhere)
        # the packages cannot be imported there, as in pip's isolated build environment (setuptools alone, no
        # torch): the version must be read from the file
        code = ("import sys; sys.modules.update(adaptive=None, graphs=None, torch=None)\n"
                f"from setuptools import build_meta as b; print('BUILT', b.{build}(sys.argv[1]))")
        r = subprocess.run([sys.executable, "-c", code, str(out)], cwd=src, capture_output=True, text=True,
                           timeout=CHILD_TIMEOUT)
        assert r.returncode == 0, f"{r.stderr[-4000:]}\n(where the build imported adaptive: adaptive.__version__ must " \
                                  "stay a plain string, which setuptools reads from the file without importing the package)"
        names.append(r.stdout.splitlines()[-1].split()[1])  # (setuptools logs to stdout before it)
    return [str(out / n) for n in names]


def _built_once(shared):
    """The wheel's and the sdist's paths, built in ``shared/packaging`` by the first process to ask (under a
    lock) and read from there by the others."""
    from filelock import FileLock  # (a dependency of torch)

    tmp, done = shared / "packaging", shared / "packaging.json"
    with FileLock(str(shared / "packaging.lock")):
        if not done.is_file():
            shutil.rmtree(tmp, ignore_errors=True)  # (what a build that failed left)
            tmp.mkdir()
            done.write_text(json.dumps(_build(tmp)))
    return json.loads(done.read_text())


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """(wheel's file names, sdist's file names relative to its top folder, the wheel's METADATA), built with
    setuptools (a test extra) without build isolation, from a copy of the committed files and of the two
    packages' folders (so a file added to a package and not yet committed counts): a build/ folder left in the
    checkout by an earlier build would otherwise put modules deleted since into the wheel, and what other tests
    write while this one copies (run folders, temporary files) is not copied. Built once a test session: the
    workers of pytest-xdist (CI's -n 2, where these tests are spread over both) share the folder above their own."""
    pytest.importorskip("setuptools", minversion="77", reason="the build backend pyproject.toml asks for")
    base = tmp_path_factory.getbasetemp()
    wheel_path, sdist_path = _built_once(base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base)
    with zipfile.ZipFile(wheel_path) as z:
        wheel = set(z.namelist())
        metadata = next(z.read(n).decode() for n in wheel if n.endswith(".dist-info/METADATA"))
    with tarfile.open(sdist_path) as t:
        sdist = {m.name.split("/", 1)[1] for m in t.getmembers() if m.isfile() and "/" in m.name}
    return wheel, sdist, metadata


def test_the_build_is_made_once_a_session(built, tmp_path_factory):
    """Every process of the session that asks again gets the same files, unbuilt again: each pytest-xdist worker
    built them for itself (the module fixture runs once a worker), twice the cost on CI."""
    base = tmp_path_factory.getbasetemp()
    shared = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    paths = json.loads((shared / "packaging.json").read_text())
    before = [os.stat(p).st_mtime_ns for p in paths]
    assert _built_once(shared) == paths and [os.stat(p).st_mtime_ns for p in paths] == before


def test_the_wheel_holds_every_file_of_the_packages(built):
    wheel, _, _ = built
    missing = sorted(_package_files() - wheel)
    assert missing == [], f"files of the packages left out of the wheel: {missing}: list non-.py files the code " \
                          "reads in [tool.setuptools.package-data] of pyproject.toml"


def test_the_wheel_holds_the_packages_and_nothing_else(built):
    wheel, _, _ = built
    tops = {name.split("/")[0] for name in wheel}
    assert tops - {t for t in tops if t.endswith(".dist-info")} == set(PACKAGES)
    packaged = {n for n in wheel if n.split("/")[0] in PACKAGES}
    assert packaged == _package_files(), f"in the wheel but not in the packages' folders: {sorted(packaged - _package_files())}"
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in wheel)


def test_the_version_is_written_once(built):
    """pyproject.toml reads the version from adaptive.__version__, so the two cannot differ."""
    import adaptive

    tomllib = pytest.importorskip("tomllib", reason="Python 3.11 reads pyproject.toml")
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        pyproject = tomllib.load(f)
    assert "version" not in pyproject["project"] and "version" in pyproject["project"]["dynamic"]
    assert pyproject["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "adaptive.__version__"}
    _, _, metadata = built
    assert re.search(r"^Version: (.+)$", metadata, flags=re.M).group(1) == adaptive.__version__
    assert re.search(r"^License-Expression: MIT$", metadata, flags=re.M)


def test_the_sdist_holds_the_whole_project(built):
    """Everything committed (but .gitignore): the tests need recipes/, docs/ and .ci/ beside them (the sdist left
    .ci/ out, and tests/test_readme.py and tests/test_floor_constraints.py, which read it, failed from it)."""
    _, sdist, _ = built
    committed = _committed()
    if committed is None:
        pytest.skip("no git checkout to list the committed files of (an unpacked sdist)")
    wanted = {f for f in committed if f != ".gitignore"}
    assert sorted(wanted - sdist) == [], "committed files left out of the sdist: add them to MANIFEST.in"
    assert {"LICENSE", "README.md", "pyproject.toml", "tests/_scripts.py", "recipes/adaptive.py"} <= sdist


RECIPES = ("adaptive.py", "prune_pretrained.py", "diagnostics.py")
# Runs each recipe given as an argument as ``python RECIPE --help`` would, one after another in this one
# process (torch imported once, not once a recipe): sys.path as Python sets it for a program (the recipe's
# folder first), no module of the project or of the recipes' folder imported yet, the default Ctrl-C handler.
# Prints one line a recipe: OK, or what it stopped at.
_AS_PROGRAMS = """
import contextlib, io, json, runpy, signal, sys, traceback
import torch  # (what every recipe imports: once for all of them)
path, default = list(sys.path), signal.getsignal(signal.SIGINT)
ours = ("adaptive", "graphs", "recipes", "_startup", "_adaptive", "_diagnostics", "_prune_pretrained",
        "prune_pretrained", "diagnostics")
for recipe in sys.argv[1:]:
    for name in [m for m in sys.modules if m.split(".")[0] in ours]:
        del sys.modules[name]
    sys.path[:] = [recipe.rsplit("/", 1)[0]] + path[1:]
    sys.argv = [recipe, "--help"]
    signal.signal(signal.SIGINT, default)
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out):
            runpy.run_path(recipe, run_name="__main__")
        got = "ran on past --help"
    except SystemExit as e:
        got = "OK" if e.code in (0, None) and out.getvalue().startswith("usage:") else f"exit {e.code}: {out.getvalue()[:300]}"
    except BaseException:
        got = traceback.format_exc()[-2000:]
    print("RECIPE", json.dumps([recipe.rsplit("/", 1)[1], got]), flush=True)
"""


def test_the_recipes_run_on_the_installed_package(tmp_path):
    """A copy of recipes/ with no package beside it (the packages installed, found on the path as
    site-packages would be): each recipe imports the package, not recipes/adaptive.py, which Python put first
    on sys.path by running a file of that folder ('cannot import name ... from partially initialized module').
    The three run in one process (see _AS_PROGRAMS), which imports torch once."""
    shutil.copytree(os.path.join(ROOT, "recipes"), tmp_path / "recipes", ignore=_NOT_BUILT)
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    r = subprocess.run([sys.executable, "-c", _AS_PROGRAMS, *(f"{tmp_path}/recipes/{n}" for n in RECIPES)],
                       cwd=tmp_path, capture_output=True, text=True, timeout=CHILD_TIMEOUT, env=env)
    got = dict(json.loads(line.split(" ", 1)[1]) for line in r.stdout.splitlines() if line.startswith("RECIPE "))
    assert got == dict.fromkeys(RECIPES, "OK"), f"{got}\n{r.stderr[-3000:]}"
