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


# What an example shows of its output, checked where the example does not assert it itself: a line that
# only its example has -> (a regex for each line it prints, or None where a table is printed; code run after
# the example, in its process, that checks what its comments say of its values and files)
EXAMPLE_CHECKS = {
    "conn = adaptive.Connectome(model, ensemble=\"kernel\")": (None, """
import os
assert all(torch.equal(conn2.masks[n], conn.masks[n]) for n in conn.masks)  # the masks come back as saved
assert os.path.getsize("run/connectome.safetensors") < conn.num_synapses() / 8 + 65536  # 1 bit per synapse
assert all((plain[n][~conn.masks[n]] == 0).all() for n in conn.masks)  # zeros where pruned
assert conn.summary().split()[:6] == ["layer", "shape", "synapses", "live", "density", "ensemble"]
"""),
    "ctrl = adaptive.Controller(conn, optimizer, policy=\"rigl\"": ([r"\d+ density 0\.100"], ""),
    "bands = gradient_by_depth(net, data.train, layer=\"classifier\", batches=5)": (None, """
import os
assert all(os.path.getsize(f) > 0 for f in ("gradients_by_depth.png", "collinearity.png", "knowledge.png"))
assert {"depth", "median", "q1", "q3"} <= set(bands.table.columns)  # median and quartiles per source depth
assert col.fraction_above([0.5, 0.9]).columns == ["layer", "weights", ">0.5", ">0.9"]
assert curve.shown_fit_table().columns[0] == "quantity"
"""),
    "g = graphs.build(conn, level=\"unit\")": ([r"\{.*'dead': [1-9]\d*\}", r"269722 -> \d+"], """
import os
assert 0.75 < conn.density() < 0.85  # about 20% of the filters pruned
assert tuple(data.edge_index.shape) == (2, nxg.number_of_edges()) and data.num_nodes == nxg.number_of_nodes()
assert os.path.getsize("run/connectome.graphml") > 0
assert small.compaction["params_after"] < small.compaction["params_before"]  # the dead units removed
"""),
    "up = torch.nn.ConvTranspose2d(8, 4, 2, stride=2, groups=2)": ([r"\(4, 4, 2, 2\)"], """
assert tuple(up.weight.shape) == (8, 2, 2, 2)  # stored (in, out/groups, *kernel)
"""),
    "vit = torchvision.models.VisionTransformer(": (
        [r"\[" + ", ".join(f"'encoder\\.layers\\.encoder_layer_0\\.self_attention\\.{p}'" for p in ("q", "k", "v", "out_proj")) + r"\]",
         r"\{.*'dead': 0\}"], ""),
    "conn = adaptive.Connectome(model, ensemble=\"0=neuron;synapse\")": (None, """
assert int(hidden.all(1).sum()) == 32 and int((~hidden.any(1)).sum()) == 32  # 32 of the 64 units gone, whole
rows = {line.split()[0]: line.split()[-1] for line in conn.summary().splitlines() if line.startswith(("0.", "2."))}
assert rows == {"0.weight": "neuron", "2.weight": "synapse"}  # the ensemble column
"""),
    "@register_model(\"my_net\")": ([], """
import os, subprocess, sys, recipes  # the command of its first line, run short on the file (written beside it)
root = os.path.dirname(os.path.dirname(recipes.__file__))
r = subprocess.run([sys.executable, os.path.join(root, "recipes", "adaptive.py"), "--plugins", "my_ext.py", "--model",
                    "my_net", "--max_steps", "4", "--threads", "1", "--progress", "false", "--figures", "false",
                    "--output_dir", "run"], capture_output=True, text=True)
assert r.returncode == 0, r.stderr[-3000:]
assert "model: my_net" in open("run/config.yaml").read()
"""),
    "snap = res.use(\"0.5\")": ([r"25100 held-out accuracy 0\.\d{3}"], """
assert snap.removed == res.conn.num_synapses() // 2
vanilla = build_model("lenet300", num_classes=10, in_shape=data.in_shape)
vanilla.load_state_dict(torch.load("pruned_state_dict.pt"))  # loads into a vanilla model
assert all(torch.equal(vanilla.state_dict()[n], p * res.conn.masks[n]) for n, p in res.conn.params.items())
"""),
    "@register_estimator(\"snip\")": ([r"density 0\.050, test accuracy 0\.\d{3}"], ""),
}


def example_checks(code):
    """The EXAMPLE_CHECKS entry of the example ``code``: (line regexes or None, code run after it)."""
    found = [check for line, check in EXAMPLE_CHECKS.items() if line in code]
    assert len(found) <= 1, "two EXAMPLE_CHECKS entries match one example"
    return found[0] if found else (None, "")


def test_every_example_checks_what_it_shows():
    """An example that runs is not yet an example that shows what its page says: each one asserts its
    claims itself or has an EXAMPLE_CHECKS entry, and every entry still names exactly one example."""
    for line in EXAMPLE_CHECKS:
        assert sum(line in code for code in python_blocks()) == 1, f"EXAMPLE_CHECKS: {line!r} is no longer in exactly one example"
    unchecked = [(p, i) for p, i, code in page_blocks() if "assert " not in code and not example_checks(code)[1].strip()
                 and example_checks(code)[0] is None]
    assert unchecked == [], f"examples that check nothing of what they show: {unchecked}"


@pytest.mark.parametrize("page, index", [(p, i) for p, i, _ in page_blocks()], ids=lambda v: str(v))
def test_readme_python_example_runs(page, index, tmp_path):
    code = next(c for p, i, c in page_blocks() if (p, i) == (page, index))
    printed, after = example_checks(code)
    named = re.match(r"# (\w+\.py):", code)
    if named:  # a file the page names (a plugin), written where the example runs, as the page has it saved
        (tmp_path / named.group(1)).write_text(code)
    env = dict(os.environ, MPLBACKEND="Agg", PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    r = subprocess.run([sys.executable, "-c", code + "\n" + after], cwd=tmp_path, capture_output=True, text=True,
                       timeout=CHILD_TIMEOUT, env=env)
    assert r.returncode == 0, f"{page} example {index} failed:\n{code}\n--- stderr ---\n{r.stderr[-4000:]}"
    if printed is not None:
        lines = r.stdout.splitlines()
        assert len(lines) == len(printed) and all(re.fullmatch(p, line) for p, line in zip(printed, lines)), \
            f"{page} example {index} printed {lines}, not what its comments say ({printed})"


def test_ci_runs_the_readme_test_command():
    quick = re.search(r"## Quick start.*?```bash\n(.*?)```", README, flags=re.S).group(1).strip().splitlines()
    assert len(quick) == 2, "the quick start is exactly two commands"
    assert "accelerate launch recipes/adaptive.py" in quick[0]
    ci = open(os.path.join(ROOT, ".ci", "run")).read()
    assert quick[1].strip() in ci.splitlines(), "the README's test command must be what .ci/run executes"


def _slug(heading):
    """GitHub's anchor of a heading (github-slugger): the heading's text as rendered (a link's or code span's
    text, without the brackets, backticks or URL), lower case, every character that is not a letter, digit,
    underscore, hyphen or space dropped, each space a hyphen (so "a — b" gives "a--b")."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip())
    return re.sub(r"[^\w\- ]", "", text.lower()).replace(" ", "-")


def _anchors(text):
    """The anchors of a page's headings (outside code blocks), as GitHub makes them: each heading's slug,
    and a repeated slug numbered as GitHub numbers it (the second "## Notes" is #notes-1, the third #notes-2)."""
    prose = re.sub(r"```.*?```", "", text, flags=re.S)
    seen = {}
    for heading in re.findall(r"^#{1,6} (.*?)(?: +#+)? *$", prose, flags=re.M):
        slug = base = _slug(heading)
        while slug in seen:
            seen[base] += 1
            slug = f"{base}-{seen[base]}"
        seen[slug] = 0
    return set(seen)


def test_anchors_follow_githubs_rules():
    """Anchors checked by hand against GitHub's rules: backticks, slashes, dots, colons and parentheses
    dropped, hyphens and underscores kept, spaces to hyphens, repeats numbered."""
    page = "\n".join(["# Train with an adaptive connectome: `recipes/adaptive.py`", "## Invariants (each has a test)",
                      "### LeNet-5 at lr 0.1: clip the gradient", "## A transformer: `vit_tiny` on CIFAR-10",
                      "## The connectome as a graph (`graphs`)", "## Notes", "## Notes", "## Notes ##", "## A — B",
                      "## See [the API](docs/python_api.md)", "```bash", "# not a heading: a comment", "```"])
    assert _anchors(page) == {"train-with-an-adaptive-connectome-recipesadaptivepy", "invariants-each-has-a-test",
                              "lenet-5-at-lr-01-clip-the-gradient", "a-transformer-vit_tiny-on-cifar-10",
                              "the-connectome-as-a-graph-graphs", "notes", "notes-1", "notes-2", "a--b", "see-the-api"}


def _links(text):
    """The destinations of a page's inline links and images, outside code blocks and code spans (a title,
    `[t](dest "title")`, and angle brackets, `[t](<dest>)`, are not part of the destination)."""
    prose = re.sub(r"`[^`\n]*`", "", re.sub(r"```.*?```", "", text, flags=re.S))
    return re.findall(r"\]\(\s*<?([^\s)>]*)>?(?:\s+\"[^\"]*\")?\s*\)", prose)


def _bad_links(page, text):
    """What is wrong with the links of `text`, the page at `page` (relative to the repository root): a link
    within the page (#anchor) must name one of its headings; one to a file (relative to the page's folder) a
    file of the repository that exists, and its #anchor, if any, a heading of that file."""
    bad = []
    for link in _links(text):
        if re.match(r"[a-z]+:", link):  # https:, mailto:
            continue
        path, _, anchor = link.partition("#")
        target = os.path.normpath(os.path.join(os.path.dirname(page), path)) if path else page
        if not link:
            bad.append("an empty link")
        elif target.split(os.sep)[0] == "..":
            bad.append(f"{link}: {target} is outside the repository")
        elif not path:
            if anchor not in _anchors(text):
                bad.append(f"{link}: no heading #{anchor} in {page}")
        elif not os.path.exists(os.path.join(ROOT, target)):
            bad.append(f"{link}: no file {target}")
        elif anchor and (not target.endswith(".md") or anchor not in _anchors(open(os.path.join(ROOT, target)).read())):
            bad.append(f"{link}: no heading #{anchor} in {target}")
    return bad


@pytest.mark.parametrize("page", list(PAGES))
def test_readme_links_point_at_headings_and_files(page):
    """Every link of the README and of the docs/ pages lands (`_bad_links`)."""
    assert _links(PAGES[page]), f"{page} links nowhere (not even back to the README)"
    assert _bad_links(page, PAGES[page]) == []


def test_the_link_check_finds_broken_links():
    """The check itself: a missing file, a heading another page lacks, a link with a title or in angle
    brackets, one out of the repository and an in-page anchor are each caught; good links pass."""
    page = "\n".join([
        "# A page", "## Its section",
        "[ok](../README.md#python-api) [ok](training.md#zero-removal-costs-ordered-by-magnitude) [ok](#its-section)",
        "![ok](figures/threshold_pace.png) [ok](<data.md> \"a title\") [ok](https://example.com/x#y) `[not a link](nowhere.md)`",
        "[gone](missing.md) [anchor](training.md#no-such-section) [titled](missing2.md \"title\")",
        "[angled](<missing3.md>) [out](../../etc/passwd) [here](#no-such-heading) [png anchor](figures/threshold_pace.png#x)",
        "```bash", "[in code](nowhere2.md)", "```"])
    assert [b.split(":")[0] for b in _bad_links("docs/example.md", page)] == [
        "missing.md", "training.md#no-such-section", "missing2.md", "missing3.md", "../../etc/passwd",
        "#no-such-heading", "figures/threshold_pace.png#x"]


def readme_commands(texts=None):
    """Every command line the README and the docs/ pages (or `texts`) show (bash blocks and inline code,
    an inline one wrapped over several lines included) that runs one of the project's scripts:
    (script or '-m graphs', argv)."""
    lines = []
    for text in PAGES.values() if texts is None else texts:
        for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
            lines += block.replace("\\\n", " ").splitlines()
        lines += [c.replace("\n", " ") for c in re.findall(r"`((?:python|accelerate launch) [^`]+)`", text)]
    out = []
    for line in lines:
        for part in line.split("&&"):
            part = re.sub(r"\s+#.*$", "", part).strip()
            m = re.match(r"(?:python|accelerate launch)\s+(-m graphs|recipes/\S+\.py)(.*)$", part)
            if m:
                # an optional part written `[--opt]` is parsed as given; a value's own brackets (hidden=[512,256]) stay
                argv = [a for a in shlex.split(re.sub(r"\[(-[^\]]*)\]", r"\1", m.group(2))) if a != "..."]  # quoted values stay whole
                out.append((m.group(1), argv))
    return out


def test_commands_wrapped_over_lines_are_found():
    """An inline command the page wraps over two lines is parsed whole (such commands went unchecked)."""
    page = ("run `python recipes/prune_pretrained.py --model resnet20 --weights\nw.th --remove best` and `python -m graphs\nreport RUN`"
            " and `python -m graphs export c.safetensors --model mlp --model-kw 'hidden=[512,256]' [--contract]`")
    assert readme_commands([page]) == [("recipes/prune_pretrained.py", ["--model", "resnet20", "--weights", "w.th", "--remove", "best"]),
                                       ("-m graphs", ["report", "RUN"]),
                                       ("-m graphs", ["export", "c.safetensors", "--model", "mlp", "--model-kw", "hidden=[512,256]", "--contract"])]


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
