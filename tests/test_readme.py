"""Every example of the README and of the reference pages under docs/ is run verbatim, every command
they show parses, every link of theirs lands, and CI runs the README's test command."""
import glob
import os
import re
import shlex
import subprocess
import sys

import pytest

from _scripts import CHILD_TIMEOUT  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = open(os.path.join(ROOT, "README.md")).read()
# the README and the reference pages it links to (docs/*.md), by path relative to the repository root
PAGES = {rel: open(os.path.join(ROOT, rel)).read()
         for rel in ["README.md", *sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, "docs", "*.md")))]}


def page_blocks():
    """(page, index within the page, code) of every ```python block of every page."""
    return [(page, i, code) for page, text in PAGES.items()
            for i, code in enumerate(re.findall(r"```python\n(.*?)```", text, flags=re.S))]


def python_blocks():
    return [code for _, _, code in page_blocks()]


def test_readme_has_python_examples():
    assert len([1 for page, _, _ in page_blocks() if page == "README.md"]) >= 2
    assert len(page_blocks()) >= 12  # as many as the one-page README held before the docs/ pages split it


def test_readme_stays_short():
    """The README is the entry page: the reference lives under docs/ and must not drift back."""
    assert len(README.splitlines()) < 300, "move the new text into a page under docs/ and link it from the README"
    assert len(PAGES) > 1


@pytest.mark.parametrize("page, index", [(p, i) for p, i, _ in page_blocks()], ids=lambda v: str(v))
def test_readme_python_example_runs(page, index, tmp_path):
    code = next(c for p, i, c in page_blocks() if (p, i) == (page, index))
    env = dict(os.environ, MPLBACKEND="Agg", PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=CHILD_TIMEOUT, env=env)
    assert r.returncode == 0, f"{page} example {index} failed:\n{code}\n--- stderr ---\n{r.stderr[-4000:]}"


def test_ci_runs_the_readme_test_command():
    quick = re.search(r"## Quick start.*?```bash\n(.*?)```", README, flags=re.S).group(1).strip().splitlines()
    assert len(quick) == 2, "the quick start is exactly two commands"
    assert "accelerate launch recipes/adaptive.py" in quick[0]
    ci = open(os.path.join(ROOT, ".ci", "run")).read()
    assert quick[1].strip() in ci.splitlines(), "the README's test command must be what .ci/run executes"


def _anchors(text):
    """The anchors of a page's headings (outside code blocks), as GitHub makes them: lower case,
    punctuation dropped, spaces to hyphens."""
    prose = re.sub(r"```.*?```", "", text, flags=re.S)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in re.findall(r"^#+ (.*)$", prose, flags=re.M)}


@pytest.mark.parametrize("page", list(PAGES))
def test_readme_links_point_at_headings_and_files(page):
    """A link within the page (#anchor) names one of its headings; one to a file (relative to the page's
    folder) names a file that exists, and its #anchor, if any, a heading of that file."""
    links = re.findall(r"\]\(([^)\s]+)\)", re.sub(r"```.*?```", "", PAGES[page], flags=re.S))
    assert links, f"{page} links nowhere (not even back to the README)"
    bad = []
    for link in links:
        if re.match(r"[a-z]+:", link):  # https:, mailto:
            continue
        path, _, anchor = link.partition("#")
        target = os.path.normpath(os.path.join(os.path.dirname(page), path)) if path else page
        if not os.path.exists(os.path.join(ROOT, target)):
            bad.append(f"{link}: no file {target}")
        elif anchor and (not target.endswith(".md") or anchor not in _anchors(open(os.path.join(ROOT, target)).read())):
            bad.append(f"{link}: no heading #{anchor} in {target}")
    assert bad == []


def readme_commands():
    """Every command line the README and the docs/ pages show (bash blocks and inline code) that runs
    one of the project's scripts: (script or '-m graphs', argv)."""
    lines = []
    for text in PAGES.values():
        for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
            lines += block.replace("\\\n", " ").splitlines()
        lines += re.findall(r"`((?:python|accelerate launch) [^`]+)`", text)
    out = []
    for line in lines:
        for part in line.split("&&"):
            part = re.sub(r"\s+#.*$", "", part).strip()
            m = re.match(r"(?:python|accelerate launch)\s+(-m graphs|recipes/\S+\.py)(.*)$", part)
            if m:
                argv = [a for a in shlex.split(re.sub(r"\[([^\]]*)\]", r"\1", m.group(2))) if a != "..."]  # quoted values stay whole
                out.append((m.group(1), argv))
    return out


class _Parsed(Exception):
    pass


def _parse_then_stop(real):
    def parse_then_stop(self, args=None, namespace=None):
        real(self, args, namespace)
        raise _Parsed

    return parse_then_stop


def test_the_readme_shows_commands_of_every_kind():
    scripts = {s for s, _ in readme_commands()}
    assert {"recipes/adaptive.py", "recipes/prune_pretrained.py", "recipes/diagnostics.py", "-m graphs"} <= scripts


@pytest.mark.parametrize("script, argv", readme_commands(), ids=lambda v: v if isinstance(v, str) else " ".join(v))
def test_readme_command_options_parse(script, argv, monkeypatch, tmp_path):
    """Each command's options exist and take the values shown (parsed, not run)."""
    import argparse
    import runpy

    monkeypatch.chdir(ROOT)
    if "--plugins" in argv:  # the plugin file the pages show, written where the command runs
        plugin = argv[argv.index("--plugins") + 1]
        code = next(b for b in python_blocks() if b.startswith(f"# {plugin}"))
        (tmp_path / plugin).write_text(code)
        monkeypatch.chdir(tmp_path)
    if script == "recipes/adaptive.py":
        sys.path.insert(0, os.path.join(ROOT, "tests"))
        from _scripts import load_script

        parse = load_script("recipes/adaptive.py", "recipe_adaptive_readme").parse_args
        if "--help" in argv:
            with pytest.raises(SystemExit) as e:
                parse(argv)
            assert e.value.code == 0
        else:
            parse(argv)
        return
    if script == "-m graphs":
        import graphs.cli

        def stop(a):
            raise _Parsed

        monkeypatch.setattr(graphs.cli, "_run", stop)
        with pytest.raises(_Parsed):
            graphs.cli.main(argv)
        return
    import adaptive.cli

    # the recipes' parser (adaptive.cli.ArgumentParser) has a parse_args of its own: both stop once parsed,
    # or the command would run for real (a whole prune_pretrained job, written under the repository)
    for cls in (argparse.ArgumentParser, adaptive.cli.ArgumentParser):
        monkeypatch.setattr(cls, "parse_args", _parse_then_stop(cls.parse_args))
    monkeypatch.setattr(sys, "argv", [script, *argv])
    monkeypatch.syspath_prepend(os.path.join(ROOT, os.path.dirname(script)))
    with pytest.raises(_Parsed):
        runpy.run_path(os.path.join(ROOT, script), run_name="__main__")
