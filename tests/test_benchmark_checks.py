"""The checks behind the benchmarks' printed claims run under ``python -O`` too (a plain assert would vanish and the
table would print "same answers: yes" unchecked)."""
import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = sorted((ROOT / "recipes" / "benchmarks").glob("*.py"))


def test_a_failed_check_raises_under_python_O():
    code = "from recipes.benchmarks._checks import check\ncheck(True, 'fine')\ncheck(0 == 1, 'the answers differ')"
    p = subprocess.run([sys.executable, "-O", "-c", code], cwd=ROOT, capture_output=True, text=True,
                       env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert p.returncode == 1, p
    assert "CheckFailed: the answers differ" in p.stderr, p.stderr


@pytest.mark.parametrize("path", BENCHMARKS, ids=lambda p: p.name)
def test_no_benchmark_rests_a_claim_on_a_plain_assert(path):
    tree = ast.parse(path.read_text())
    lines = [n.lineno for n in ast.walk(tree) if isinstance(n, ast.Assert)]
    assert not lines, f"{path.name}: assert on line(s) {lines} vanishes under python -O; use _checks.check"
