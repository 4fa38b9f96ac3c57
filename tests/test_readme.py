"""Every README example is run verbatim, and CI runs the README's test command."""
import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = open(os.path.join(ROOT, "README.md")).read()


def python_blocks():
    return re.findall(r"```python\n(.*?)```", README, flags=re.S)


def test_readme_has_python_examples():
    assert len(python_blocks()) >= 2


@pytest.mark.parametrize("index", range(len(python_blocks())))
def test_readme_python_example_runs(index, tmp_path):
    code = python_blocks()[index]
    env = dict(os.environ, MPLBACKEND="Agg", PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, f"README example {index} failed:\n{code}\n--- stderr ---\n{r.stderr[-4000:]}"


def test_ci_runs_the_readme_test_command():
    quick = re.search(r"## Quick start.*?```bash\n(.*?)```", README, flags=re.S).group(1).strip().splitlines()
    assert len(quick) == 2, "the quick start is exactly two commands"
    assert "accelerate launch recipes/adaptive.py" in quick[0]
    ci = open(os.path.join(ROOT, ".ci", "run")).read()
    assert quick[1].strip() in ci.splitlines(), "the README's test command must be what .ci/run executes"


def test_readme_links_point_at_headings_and_files():
    def slug(heading):  # GitHub's anchors: lower case, punctuation dropped, spaces to hyphens
        return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")

    anchors = {slug(h) for h in re.findall(r"^#+ (.*)$", README, flags=re.M)}
    links = re.findall(r"\]\(#([^)]+)\)", README)
    assert links and [a for a in links if a not in anchors] == []
    for path in re.findall(r"\]\(((?:docs|recipes)/[^)#]+)\)", README):
        assert os.path.exists(os.path.join(ROOT, path)), path
