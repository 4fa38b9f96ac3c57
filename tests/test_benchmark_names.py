"""No benchmark script is named like an importable package.

``python recipes/benchmarks/NAME.py`` puts the script's own folder first on ``sys.path``, so a file
there named like a package stands in for it. The graphs benchmark was called graphs.py: in a checkout
the benchmarks put the repository first and found the package, but run from a copy of recipes/
beside an installed ``adaptive`` (whose wheel holds the ``graphs`` package), ``import graphs`` found
the benchmark instead. It is graphs_package.py now; this keeps it so for every benchmark.
"""
import importlib.metadata
import sys
from importlib.machinery import PathFinder
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = [ROOT / "recipes" / "benchmarks", ROOT / "recipes" / "benchmarks" / "mask_only_ablations"]


def _packages() -> set:
    """The importable top-level names: every installed distribution's (this project's adaptive and graphs
    among them), the standard library's and the repository's own folders."""
    names = set(importlib.metadata.packages_distributions()) | set(sys.stdlib_module_names)
    return names | {"adaptive", "graphs", "recipes"}


@pytest.mark.parametrize("folder", FOLDERS, ids=lambda p: p.name)
def test_no_script_in_a_benchmark_folder_stands_in_for_a_package(folder):
    assert {"adaptive", "graphs", "torch", "json"} <= _packages()  # the list holds what it must
    shadowing = sorted(name for name in _packages() if PathFinder.find_spec(name, [str(folder)]) is not None)
    assert shadowing == [], (f"{folder.relative_to(ROOT)} holds {shadowing}: run as a program, a script there "
                             "would import that file for the package of the same name; rename it")
