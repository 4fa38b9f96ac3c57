"""What the reference pages under docs/ (and the README) say of the command lines is what the code does:
every option a page quotes in its prose is one that some script of the project takes, the defaults the
pages quote are the parsers' defaults, and every figure a page shows names the command that draws it.
(test_readme.py runs every ```python block of these pages and parses every command line they show.)"""
import argparse
import contextlib
import glob
import inspect
import io
import math
import os
import re
import runpy
import sys
from functools import lru_cache

import pytest

from test_readme import PAGES, ROOT, page_blocks  # noqa: E402

# the options of `accelerate launch` itself, and placeholders the prose writes as options
NOT_OURS = {"--multi_gpu", "--num_processes", "--use_fsdp", "--fsdp_version", "--config_file", "--dynamo_backend",
            "--use_deepspeed", "--zero_stage", "--key"}


class _Got(Exception):
    pass


def _root_on_path():
    """The repository root on sys.path, once (recipes.* and the scripts' own imports need it): inserted on
    every call, it grew by one entry per quoted default read, for the rest of the pytest process."""
    if ROOT not in sys.path:
        sys.path.insert(0, ROOT)


def _parser_of(script):
    """The argparse parser that ``script`` builds, caught at its parse_args (nothing of it runs)."""
    import adaptive.cli

    got, saved, path = {}, [], list(sys.path)

    def catch(self, args=None, namespace=None):
        got["parser"] = self
        raise _Got

    for cls in (argparse.ArgumentParser, adaptive.cli.ArgumentParser):
        saved.append((cls, cls.__dict__.get("parse_args"), cls.__dict__.get("parse_known_args")))
        cls.parse_args = cls.parse_known_args = catch
    argv, sys.argv = sys.argv, [script]
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(_Got):
            runpy.run_path(os.path.join(ROOT, script), run_name="__main__")
    finally:
        sys.argv, sys.path[:] = argv, path
        for cls, parse, known in saved:
            for name, fn in (("parse_args", parse), ("parse_known_args", known)):
                if fn is None:
                    delattr(cls, name)
                else:
                    setattr(cls, name, fn)
    return got.get("parser")


def _options(parser):
    """option string -> action, a subcommand's options included."""
    out = {}
    for action in parser._actions:
        out.update({o: action for o in action.option_strings})
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                for o, a in _options(sub).items():
                    out.setdefault(o, a)
    return out


def _spellings(option):
    return {option, option.replace("_", "-"), "--" + option[2:].replace("-", "_")}


@lru_cache(maxsize=None)
def parsers():
    """script -> the parser of every script the pages can name: the recipes, the benchmarks (the
    mask-only ablations too) and ``-m graphs``. recipes/adaptive.py's options are its RunConfig's keys."""
    import graphs.cli

    _root_on_path()
    benchmarks = [p for p in glob.glob(os.path.join(ROOT, "recipes", "benchmarks", "**", "*.py"), recursive=True)
                  if "ArgumentParser(" in open(p).read()]  # (the ablations' harness parses nothing)
    scripts = sorted(os.path.relpath(p, ROOT) for p in [*glob.glob(os.path.join(ROOT, "recipes", "*.py")), *benchmarks]
                     if not os.path.basename(p).startswith("_"))
    out = {s: _parser_of(s) for s in scripts if s != "recipes/adaptive.py"}
    out["-m graphs"] = graphs.cli._parser()[0]
    return out


def adaptive_defaults():
    """recipes/adaptive.py's keys and their defaults."""
    from adaptive.config import _default_values

    _root_on_path()
    from recipes._adaptive.config import RunConfig

    return _default_values(RunConfig)


@lru_cache(maxsize=None)
def known_options():
    known = {"--config", "-h", "--help"}
    for key, value in adaptive_defaults().items():
        known |= _spellings("--" + key) | ({"--no-" + key.replace("_", "-"), "--no_" + key} if isinstance(value, bool) else set())
    for script, parser in parsers().items():
        assert parser is not None, f"{script} builds an ArgumentParser that this test did not catch"
        for o in _options(parser):
            known |= _spellings(o)
    return known


def quoted_options(text):
    """Every --option a page writes (prose, code spans and blocks alike)."""
    return set(re.findall(r"(?<![\w-])(--[A-Za-z][\w-]*)", text))


@pytest.mark.parametrize("page", list(PAGES))
def test_every_quoted_option_is_one_a_script_takes(page):
    unknown = sorted(o for o in quoted_options(PAGES[page]) - NOT_OURS if o not in known_options())
    assert unknown == [], f"{page} quotes options that no script of the project takes: {unknown}"


def test_reading_the_parsers_and_defaults_leaves_sys_path_as_it_was():
    """Discovering the parsers runs each script up to its parse_args: sys.path, sys.argv and argparse are
    restored, and the root is put on sys.path at most once however often the defaults are read."""
    parsers(), adaptive_defaults()
    path, argv = list(sys.path), list(sys.argv)
    for _ in range(3):
        adaptive_defaults()
    assert sys.path == path and sys.argv == argv
    assert argparse.ArgumentParser.parse_args.__module__ == argparse.ArgumentParser.parse_known_args.__module__ == "argparse"


def test_the_option_check_finds_a_misspelt_option():
    page = "`--line_search_tolerance 0`, `--line-search-tries`, `--no-progress`, `--remove best`, `--threshold-mode`, `--line_serch 3`"
    assert sorted(o for o in quoted_options(page) if o not in known_options()) == ["--line_serch"]


def _resolved(*argv):
    """recipes/adaptive.py's settings for ``argv``, the defaults that depend on the mode resolved."""
    from _scripts import load_script

    return load_script("recipes/adaptive.py", "recipe_adaptive_docs").parse_args(list(argv))


def _diagnostics_action(command, option):
    parser = parsers()["recipes/diagnostics.py"]
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[command]
    return _options(sub)[option]


def _diagnostics_default(command, option):
    return _diagnostics_action(command, option).default


def _diagnostics_constant(name):
    """A default that the diagnostics command resolves from a constant (its option's default is None)."""
    import adaptive.diagnostics.knowledge as knowledge
    from _scripts import load_script

    return getattr(knowledge, name) if hasattr(knowledge, name) else getattr(load_script("recipes/diagnostics.py", "diag_docs"), name)


def _controller_default(name):
    """The default of ``adaptive.Controller``'s argument ``name``."""
    import adaptive

    return inspect.signature(adaptive.Controller).parameters[name].default


def _edge_popup_call():
    """edge_popup's first five parameters, the default of ``passes`` and the keyword-only name ``target``."""
    from adaptive.baselines.edge_popup import edge_popup

    params = inspect.signature(edge_popup).parameters
    return list(params)[:5], params["passes"].default, params["target"].kind is inspect.Parameter.KEYWORD_ONLY


def _prune_pretrained_default(key):
    from _scripts import load_script

    return load_script("recipes/prune_pretrained.py", "prune_pretrained_docs").DEFAULTS[key]


# (page, the words it says, what the code has, the value those words mean)
DEFAULTS = [
    ("docs/python_api.md", "`--budget`, default `erk`", lambda: adaptive_defaults()["budget"], "erk"),
    ("docs/python_api.md", "`--min_density`, default 0", lambda: adaptive_defaults()["min_density"], 0),
    ("docs/training.md", "`--gradient_accumulation_steps K` (default 1", lambda: adaptive_defaults()["gradient_accumulation_steps"], 1),
    ("docs/training.md", "`--momentum` (the default 0.9", lambda: adaptive_defaults()["momentum"], 0.9),
    ("docs/training.md", "`--warmup_steps` (default 0", lambda: adaptive_defaults()["warmup_steps"], 0),
    ("docs/training.md", "`--lr_schedule cosine`\n  (the default", lambda: adaptive_defaults()["lr_schedule"], "cosine"),
    ("docs/training.md", "`--lr_gamma` (default 0.1", lambda: adaptive_defaults()["lr_gamma"], 0.1),
    ("docs/training.md", "`--lr_milestones` (default `0.5,0.75`", lambda: adaptive_defaults()["lr_milestones"], [0.5, 0.75]),
    ("docs/training.md", "`--label_smoothing E` (default 0", lambda: adaptive_defaults()["label_smoothing"], 0),
    ("docs/training.md", "`--max_grad_norm X` (default none", lambda: adaptive_defaults()["max_grad_norm"], None),
    ("docs/training.md", "`--line_search N` (default 0", lambda: adaptive_defaults()["line_search"], 0),
    ("docs/training.md", "`--line_search_tolerance` (default `inf`", lambda: adaptive_defaults()["line_search_tolerance"], math.inf),
    ("docs/training.md", "`--line_search_tries` times (default 3", lambda: adaptive_defaults()["line_search_tries"], 3),
    ("docs/training.md", "(utility policy, curvature estimator, 20% density, ERK budget)",
     lambda: [adaptive_defaults()[k] for k in ("policy", "density", "budget")], ["utility", 0.2, "erk"]),
    ("docs/training.md", "(an update every 25 steps, edits until\n75% of the run)",
     lambda: [getattr(_resolved(), k) for k in ("update_every", "end_fraction")], [25, 0.75]),
    ("docs/training.md", "The recipe's default edit fraction, 0.3", lambda: _resolved().edit_fraction, 0.3),
    ("docs/training.md", "the defaults of `adaptive.optimize_connectome` (estimator `presence`, an update every batch",
     lambda: [getattr(_resolved("--mode", "mask_only"), k) for k in ("estimator", "update_every")], ["presence", 1]),
    ("docs/python_api.md", "`curvature`\n(consistency's gain", lambda: _resolved().estimator, "curvature"),
    ("docs/diagnostics.md", "`--train_steps`\nSGD steps (default 300)", lambda: _diagnostics_default("knowledge", "--train_steps"), 300),
    ("docs/diagnostics.md", "at `--lr` (default 0.05)", lambda: _diagnostics_default("collinearity", "--lr"), 0.05),
    ("docs/diagnostics.md", "`--depth` (default 8)", lambda: _diagnostics_default("dense-gradients", "--depth"), 8),
    ("docs/diagnostics.md", "`--width` (32)", lambda: _diagnostics_default("dense-gradients", "--width"), 32),
    ("docs/diagnostics.md", "`--activation` (`relu`, `tanh`, `gelu`)",
     lambda: list(_diagnostics_action("dense-gradients", "--activation").choices), ["relu", "tanh", "gelu"]),
    ("docs/diagnostics.md", "(`classifier`) over `--grad_batches` batches (50)",
     lambda: [_diagnostics_default("dense-gradients", o) for o in ("--layer", "--grad_batches")], ["classifier", 50]),
    ("docs/diagnostics.md", "`--compare_steps` (600)", lambda: _diagnostics_default("dense-gradients", "--compare_steps"), 600),
    ("docs/diagnostics.md", "`--adam_lr` (0.001)", lambda: _diagnostics_default("dense-gradients", "--adam_lr"), 0.001),
    ("docs/diagnostics.md", "`--split` (`train`, the\ndefault", lambda: _diagnostics_default("collinearity", "--split"), "train"),
    ("docs/diagnostics.md", "`--estimator` (default `magnitude`)", lambda: _diagnostics_default("knowledge", "--estimator"), "magnitude"),
    ("docs/diagnostics.md", "`--points` (40), `--max_fraction` (1.0), `--finetune_batches` (0: one shot) and `--finetune_lr` (0.001)",
     lambda: [_diagnostics_default("knowledge", o) for o in ("--points", "--max_fraction", "--finetune_batches", "--finetune_lr")],
     [40, 1.0, 0, 0.001]),
    ("docs/diagnostics.md", "`--bn_batches` (0)", lambda: _diagnostics_default("knowledge", "--bn_batches"), 0),
    ("docs/diagnostics.md", "`--order_batches` (20)", lambda: _diagnostics_constant("DEFAULT_ORDER_BATCHES"), 20),
    ("docs/diagnostics.md", "`--noise_floor` (1e-3)", lambda: _diagnostics_constant("DEFAULT_NOISE_FLOOR"), 1e-3),
    ("docs/python_api.md", "`end_step` defaults to None: left\nout, the fraction stays at `edit_fraction`",
     lambda: _controller_default("end_step"), None),
    ("docs/mask_only.md", "`edge_popup(model, train_loader, holdout_loader, targets, passes=1.0, ...)`, `targets` as `target=`",
     _edge_popup_call, (["model", "train_loader", "holdout_loader", "targets", "passes"], 1.0, True)),
    ("docs/mask_only.md", "`--window` (training batches per update, default 1)", lambda: _prune_pretrained_default("window"), 1),
    ("docs/mask_only.md", "decaying over a stage; default 1.0)", lambda: _prune_pretrained_default("edit_fraction"), 1.0),
    ("docs/mask_only.md", "default 0, a jump at the stage's start", lambda: _prune_pretrained_default("approach"), 0),
    ("docs/mask_only.md", "batches per line search; default 0, none", lambda: _prune_pretrained_default("verify_batches"), 0),
    ("docs/mask_only.md", "default 100 here", lambda: _prune_pretrained_default("eval_every"), 100),
    ("docs/mask_only.md", "`--train-eval-batches` (default 10)", lambda: _prune_pretrained_default("train_eval_batches"), 10),
    ("docs/mask_only.md", "`--remove best` (the default)", lambda: _prune_pretrained_default("remove"), ["best"]),
    ("docs/mask_only.md", "(`--ladder`, default 0.1 to 0.9)", lambda: _prune_pretrained_default("ladder"),
     [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]),
    ("docs/mask_only.md", "`--patience` rungs\n(default 2)", lambda: _prune_pretrained_default("patience"), 2),
    ("docs/mask_only.md", "the default is the fixed `runs/prune_pretrained`", lambda: _prune_pretrained_default("output_dir"),
     "runs/prune_pretrained"),
]


@pytest.mark.parametrize("page, words, actual, expected", DEFAULTS, ids=[f"{p}: {w[:40]}" for p, w, _, _ in DEFAULTS])
def test_quoted_defaults_are_the_codes(page, words, actual, expected):
    assert words in PAGES[page], f"{page} no longer says {words!r}: update this test with the page"
    assert actual() == expected, f"{page} says {words!r}, the code's default is {actual()!r}"


# every figure under docs/figures: the command a page names beside it (in the figure's section, or for a
# page without sections the paragraph after the figure) and the file that command writes
FIGURES = {
    "gradients_by_depth_mnist.png": ("python recipes/diagnostics.py dense-gradients --dataset mnist", "gradients_by_depth_mlp.png"),
    "knowledge_resnet20.png": ("python recipes/diagnostics.py knowledge --dataset cifar10 --model resnet20", "knowledge_resnet20.png"),
    "mask_only_resnet20.png": ("python recipes/prune_pretrained.py --model resnet20", "curves.png"),
    "gradual_pruning_resnet20.png": ("python recipes/benchmarks/gradual_pruning.py", "docs/figures/gradual_pruning_MODEL"),
    "gradual_pruning_resnet20_seed1.png": (None, "docs/figures/gradual_pruning_MODEL"),  # shown by its results file only
    "threshold_pace.png": ("python recipes/benchmarks/threshold_pace.py", "docs/figures/threshold_pace.png"),
    "zero_cost_ties.png": ("python recipes/benchmarks/zero_cost_ties.py", "docs/figures/zero_cost_ties.png"),
    "lenet5_stability.png": ("python recipes/benchmarks/lenet5_stability.py", "docs/figures/lenet5_stability.png"),
}


def _beside(text, image):
    """The text a reader takes as the figure's account: its section (from the heading above it to the next
    one), or, on a page without sections, the figure and the paragraph after it."""
    at = text.index(image)
    headings = [m.start() for m in re.finditer(r"^## ", text, flags=re.M)]
    if headings:
        start = max([h for h in headings if h < at], default=0)
        end = min([h for h in headings if h > at], default=len(text))
        return text[start:end]
    paragraphs = text[at:].split("\n\n")
    return "\n\n".join(paragraphs[:2])


def test_every_figure_is_listed_with_the_command_that_draws_it():
    on_disk = sorted(os.path.basename(p) for p in glob.glob(os.path.join(ROOT, "docs", "figures", "*")))
    assert on_disk == sorted(FIGURES), "a figure under docs/figures needs the command that draws it (FIGURES here, and its page)"


@pytest.mark.parametrize("figure", sorted(FIGURES))
def test_a_figure_names_the_command_that_draws_it(figure):
    command, written = FIGURES[figure]
    shown = [(page, text) for page, text in PAGES.items() if f"figures/{figure})" in text]
    assert bool(shown) == bool(command), f"{figure} is shown by {[p for p, _ in shown]}"
    for page, text in shown:
        beside = re.sub(r"\s+", " ", _beside(text, f"figures/{figure})"))
        assert command in beside, f"{page} shows {figure} without naming the command that draws it ({command} ...)"
        assert written in beside or command.startswith("python recipes/benchmarks/"), \
            f"{page} shows {figure} without naming the file {written} that the command writes"
        if command.startswith("python recipes/benchmarks/"):  # a benchmark writes it into docs/figures itself
            script = command.split()[1]
            assert written in open(os.path.join(ROOT, script)).read(), f"{script} does not write {written}"


def test_every_code_block_is_run_or_parsed():
    """test_readme.py runs ```python blocks and parses the commands of ```bash ones: a block of another
    language (```py, ```sh, ```console) would go unchecked."""
    for page, text in PAGES.items():
        opening = re.findall(r"^```(\S*)\n(?:.*?)^```$", text, flags=re.S | re.M)
        assert set(opening) <= {"python", "bash"}, f"{page} has a code block of {set(opening) - {'python', 'bash'}}"
    assert any(page == "docs/python_api.md" for page, _, _ in page_blocks())


@pytest.mark.parametrize("command", ["dense-gradients", "collinearity", "knowledge", "progress"])
def test_every_file_a_diagnostics_command_writes_is_named_on_its_page(command, tmp_path):
    """docs/diagnostics.md names every file each command writes into its --output_dir (every --kind,
    --batchnorm and --compare; a DenseCat net's files as gradients_by_depth_TAG, the knowledge figure
    as knowledge_MODEL), as recipes/_diagnostics/folder.py knows them."""
    from argparse import Namespace

    _root_on_path()
    from recipes._diagnostics.folder import DENSE_TAGS, files

    args = Namespace(command=command, svg=False, kind="both", batchnorm="both", compare=True, model="resnet20")
    written, _ = files(args, str(tmp_path))
    page = re.sub(r"\s+", " ", PAGES["docs/diagnostics.md"])
    for name in written:
        stem, ext = os.path.splitext(name)
        stem = re.sub(r"^gradients_by_depth_(" + "|".join(DENSE_TAGS) + ")$", "gradients_by_depth_TAG", stem)
        stem = "knowledge_MODEL" if stem == "knowledge_resnet20" else stem
        assert f"`{stem}{ext}" in page or f"`{stem}.csv`/`{ext}`" in page, \
            f"docs/diagnostics.md does not name {name}, which `{command}` writes"
    if command == "dense-gradients":
        assert all(f"`{tag}`" in page for tag in DENSE_TAGS)


def test_every_public_name_is_named_on_a_page():
    """Every name ``adaptive``, ``graphs`` and ``adaptive.diagnostics`` export (``__all__``) is named in
    code on the README or a docs/ page: a new public name comes with its line of documentation."""
    import adaptive
    import adaptive.diagnostics
    import graphs

    text = "\n".join(PAGES.values())
    code = "\n".join(re.findall(r"```.*?```", text, flags=re.S) + re.findall(r"`[^`]+`", re.sub(r"```.*?```", "", text, flags=re.S)))
    missing = [f"{m.__name__}.{n}" for m in (adaptive, graphs, adaptive.diagnostics) for n in m.__all__
               if not re.search(r"(?<![\w])" + re.escape(n) + r"(?![\w])", code)]
    assert missing == [], f"public names no page names: {missing}"


_fresh_recipe = pytest.fixture(name="fresh_recipe")(__import__("_training").fresh_recipe_state)


@pytest.mark.parametrize("mode", [["--mode", "train"], ["--mode", "mask_only"]], ids=["train", "mask_only"])
def test_every_summary_and_event_field_of_a_run_is_named_on_the_training_page(mode, tmp_path, fresh_recipe):
    """docs/training.md names every key a recipes/adaptive.py run writes into summary.json and into
    each line of events.jsonl, in either mode."""
    import json

    from _scripts import load_script

    recipe = load_script("recipes/adaptive.py", "recipe_adaptive_fields")
    recipe.main(["--max_steps", "12", "--update_every", "4", "--log_every", "4", "--threads", "1", "--progress",
                 "false", "--figures", "false", "--output_dir", str(tmp_path), *mode])
    page = PAGES["docs/training.md"]
    summary = json.loads((tmp_path / "summary.json").read_text())
    events = [json.loads(line) for line in (tmp_path / "events.jsonl").read_text().splitlines()]
    keys = {*summary, *(k for e in events for k in e)}
    assert events and summary
    if "init" not in {e["kind"] for e in events}:  # mask_only: the page said every run's first line was init
        assert "a mask_only run, starting dense, has none" in re.sub(r"\s+", " ", page)
    assert sorted(k for k in keys if f"`{k}`" not in page) == [], "docs/training.md does not name these keys"
    # every file of the run folder, and every metrics.csv column in the page's account of that file
    assert sorted(f.name for f in tmp_path.iterdir() if f"`{f.name}`" not in page) == [], \
        "docs/training.md does not name these files of the run folder"
    columns = (tmp_path / "metrics.csv").read_text().splitlines()[0].split(",")
    said = re.sub(r"\s+", " ", page[page.index("`metrics.csv`\n("):page.index("`events.jsonl` (")])
    assert [c for c in columns if not re.search(r"(?<![\w.])" + c + r"(?!\w)", said)] == [], \
        f"docs/training.md's account of metrics.csv ({said[:80]}...) does not name these columns"


def test_no_file_holds_a_merge_conflict_marker():
    """A merge resolved by hand must leave no ``<<<<<<<``/``>>>>>>>`` lines behind: inside a docstring or a page
    they parse and run, so nothing else notices (graphs/compact.py's module docstring once showed both sides)."""
    opening, closing = "<" * 7 + " ", ">" * 7 + " "
    found = []
    for top, dirs, files in os.walk(ROOT):
        dirs[:] = [d for d in dirs if not d.startswith(".") and d not in ("__pycache__", "node_modules")]
        for f in files:
            if not f.endswith((".py", ".md", ".toml", ".cfg", ".txt", ".yaml", ".yml", ".json", ".sh")):
                continue
            path = os.path.join(top, f)
            with open(path, encoding="utf-8", errors="replace") as fh:
                for i, line in enumerate(fh, 1):
                    if line.startswith((opening, closing)):
                        found.append(f"{os.path.relpath(path, ROOT)}:{i}")
    assert not found, f"merge conflict markers left in {found}: resolve them (keep what both sides meant)"


def test_every_file_the_graphs_commands_write_is_named_on_the_graphs_page(tmp_path, fresh_recipe):
    """docs/graphs.md names every file `python -m graphs export`, `report` and `compact` write into a run
    folder by default (report's figures and summary.json went unnamed: "summary + figures", and where?)."""
    import graphs.cli
    import graphs.figures
    from _scripts import load_script

    run = tmp_path / "run"
    load_script("recipes/adaptive.py", "recipe_adaptive_graph_files").main(
        ["--max_steps", "8", "--update_every", "4", "--threads", "1", "--progress", "false", "--figures", "false",
         "--output_dir", str(run)])
    before = {p for p in run.rglob("*")}
    with contextlib.redirect_stdout(io.StringIO()):
        for argv in (["export", str(run), "--level", "unit", "--format", "graphml"], ["report", str(run)], ["compact", str(run)]):
            assert graphs.cli.main(argv) in (0, None), argv
    written = sorted(os.path.relpath(p, run) for p in set(run.rglob("*")) - before if p.is_file())
    assert written and any(w.endswith(".png") for w in written), written
    page = re.sub(r"\s+", " ", re.sub(r"```.*?```", "", PAGES["docs/graphs.md"], flags=re.S))
    spans = re.findall(r"`([^`]+)`", page)
    assert [w for w in written if not any(s.endswith(os.path.basename(w)) for s in spans)] == [], \
        "docs/graphs.md does not name these files of `python -m graphs` (export, report, compact)"
    # the figure a model without concatenations does not draw is named too
    assert "`concat_depths.png`" in page and "concat_depths.png" in open(graphs.figures.__file__).read()


def _resolves(dotted):
    """Whether ``adaptive.x.y`` names something: the longest importable module prefix, then attributes."""
    import importlib

    parts = dotted.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        for attr in parts[i:]:
            if not hasattr(obj, attr):
                return False
            obj = getattr(obj, attr)
        return True
    return False


def quoted_dotted_names(text):
    """Every ``adaptive.…``, ``graphs.…`` and ``recipes.…`` name a page writes (not a file path)."""
    names = {n.rstrip(".") for n in re.findall(r"(?<![\w./-])((?:adaptive|graphs|recipes)(?:\.[A-Za-z_]\w*)+)", text)}
    return {n for n in names if not n.endswith((".py", ".md", ".yaml", ".json", ".csv", ".png"))}


@pytest.mark.parametrize("page", list(PAGES))
def test_every_dotted_name_a_page_quotes_exists(page):
    """A renamed or moved function leaves the pages naming the old one: each quoted ``adaptive.x.y`` resolves."""
    _root_on_path()
    assert sorted(n for n in quoted_dotted_names(PAGES[page]) if not _resolves(n)) == [], \
        f"{page} names these, which do not exist (renamed or moved?)"


def test_the_dotted_name_check_finds_a_moved_name():
    text = "`adaptive.mask_only.changed_from`, `graphs.exporters.JSON_CHUNK`, `adaptive.utility.nowhere_now`, recipes/adaptive.py"
    assert sorted(n for n in quoted_dotted_names(text) if not _resolves(n)) == ["adaptive.utility.nowhere_now"]


# keywords the pages quote in code that belong to other libraries' calls (torch, torchvision, the RigL code),
# not to one of ours
OUTSIDE_KEYWORDS = {
    "assign", "find_unused_parameters", "requires_grad", "retain_graph", "use_reentrant", "alpha", "beta",
    "aux_logits", "dropout_p", "features", "output_size", "temperature", "training", "shuffle", "fused",
    "first_layer_sparsity", "prune_first_layer", "in_proj_weight", "label_smoothing", "transform_input",
    "device_placement",  # (Accelerate's prepare)
}


@lru_cache(maxsize=None)
def our_keywords():
    """Every parameter name of every function, class and method that adaptive and graphs define."""
    import importlib
    import inspect
    import pkgutil

    import adaptive
    import graphs

    names = set()
    for pkg in (adaptive, graphs):
        for info in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + "."):
            if info.name.endswith("__main__"):
                continue
            module = importlib.import_module(info.name)
            for obj in vars(module).values():
                if not (inspect.isfunction(obj) or inspect.isclass(obj)) or not obj.__module__.startswith(("adaptive", "graphs")):
                    continue
                members = [obj] + ([getattr(obj, n) for n, m in vars(obj).items() if callable(m) or isinstance(m, (staticmethod, classmethod))]
                                   if inspect.isclass(obj) else [])
                for f in members:
                    with contextlib.suppress(TypeError, ValueError):
                        names.update(inspect.signature(f).parameters)
    return names


def quoted_keywords(text):
    """The ``name=`` keywords of a page's inline code (command lines and options left out)."""
    prose = re.sub(r"```.*?```", "", text, flags=re.S)
    spans = [s for s in re.findall(r"`([^`]+)`", prose) if not s.startswith(("python ", "accelerate ", "--")) and " --" not in s]
    return {k for s in spans for k in re.findall(r"(?<![\w.\-])([a-z_]\w*)=(?!=)", s)}


@pytest.mark.parametrize("page", list(PAGES))
def test_every_keyword_a_page_quotes_is_a_parameter_of_ours(page):
    """A keyword a page shows in code (`zero_cost_order="magnitude"`, `holdout_loss=`) is a parameter of
    some function or class of adaptive or graphs (or a listed outside library's): a renamed parameter
    leaves no page showing its old name."""
    unknown = sorted(quoted_keywords(PAGES[page]) - our_keywords() - OUTSIDE_KEYWORDS)
    assert unknown == [], f"{page} shows keywords that no function of adaptive or graphs takes: {unknown}"


def test_the_keyword_check_finds_a_misspelt_keyword():
    text = '`Controller(conn, zero_cost_ordr="index")`, `holdout_loss=`, `python recipes/adaptive.py --x y=1`, `--a b=2`'
    assert quoted_keywords(text) - our_keywords() - OUTSIDE_KEYWORDS == {"zero_cost_ordr"}


def test_the_diagnostics_page_lists_every_data_and_model_option_its_commands_share():
    """docs/diagnostics.md lists the data/model options every command but `progress` takes: the list left
    out --download, --dataset-kw, --plugins, --eval_batch_size, --holdout and --threads, which they take."""
    parser = parsers()["recipes/diagnostics.py"]
    subs = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    shared = set.intersection(*({a.option_strings[0] for a in subs[c]._actions if a.option_strings}
                                for c in ("dense-gradients", "collinearity", "knowledge")))
    own = {"-h", "--output_dir", "--svg", "--overwrite", "--lr", "--train_steps"}  # every command's, and training's
    own |= {"--progress", "--no-progress"}  # not data or model options: named just before the list
    page = re.sub(r"\s+", " ", PAGES["docs/diagnostics.md"])
    assert "`--progress`/`--no-progress` (progress bars" in page
    listed = set(re.findall(r"`(--[\w-]+)`", page[page.index("the data/model options ("):].split(")", 1)[0]))
    assert sorted(shared - own - listed) == [], "docs/diagnostics.md's list of the data/model options lacks these"
    assert sorted(listed - shared) == [], "docs/diagnostics.md lists data/model options not every command takes"


def test_the_training_page_lists_the_settings_a_resume_may_change():
    """docs/training.md lists the settings a `--resume` may change (where and how a run is shown) as
    recipes/_adaptive/resume.py has them: one added there, or on the page alone, is a promise the other lacks."""
    _root_on_path()
    from recipes._adaptive.resume import _RESUME_MAY_CHANGE

    page = re.sub(r"\s+", " ", PAGES["docs/training.md"])
    start = page.index("only where and how it is shown may change: ")
    listed = {o[2:] for o in re.findall(r"`(--\w+)`", page[start:page.index(";", start)])}
    assert listed == _RESUME_MAY_CHANGE - {"resume", "overwrite"}, (sorted(listed), sorted(_RESUME_MAY_CHANGE))


def test_the_mask_only_page_lists_the_settings_a_prune_pretrained_resume_may_change():
    """docs/mask_only.md's list of what `prune_pretrained.py --resume` may change is RESUME_MAY_CHANGE of
    recipes/_prune_pretrained/resume.py (less --resume, --overwrite and the folder it names)."""
    _root_on_path()
    from recipes._prune_pretrained.resume import RESUME_MAY_CHANGE

    page = re.sub(r"\s+", " ", PAGES["docs/mask_only.md"])
    start = page.index("; only `--data-dir`")
    listed = {o[2:].replace("-", "_") for o in re.findall(r"`(--[\w-]+)`", page[start:page.index(" may change)", start)])}
    assert listed == RESUME_MAY_CHANGE - {"resume", "overwrite", "output_dir"}, (sorted(listed), sorted(RESUME_MAY_CHANGE))


def test_every_built_in_policy_estimator_and_budget_is_named_on_the_api_page():
    """python_api.md's lists of policies, utility estimators and layer budgets hold every built-in name the
    registries know (a policy added without its line of documentation is caught here)."""
    from adaptive.budgets import _BUDGETS
    from adaptive.policies.base import _POLICIES
    from adaptive.utility.base import _ESTIMATORS

    def ours(registry):  # the built-in names: a plugin another test registered in this process is not
        return [n for n, v in registry.items() if getattr(v, "__module__", "").startswith("adaptive.")]

    page = re.sub(r"\s+", " ", PAGES["docs/python_api.md"])
    sections = {"Policies (`adaptive.policies`, a registry)": ours(_POLICIES),
                "Utility estimators (`adaptive.utility`)": ours(_ESTIMATORS), "Layer budgets:": ours(_BUDGETS)}
    assert all(len(names) >= 4 for names in sections.values()), sections
    for opening, names in sections.items():
        text = page[page.index(opening):][:6000]
        assert [n for n in names if f"`{n}`" not in text] == [], f"python_api.md's list after {opening!r} lacks these"


def test_edge_popups_snapshot_keys_are_the_ones_its_docstring_and_the_mask_only_page_name():
    """mask_only.md and edge_popup's docstring list the entries of ``snapshots[label]``: they named four, where a run
    returns six (cpu_seconds and wall_seconds too)."""
    import torch
    from torch import nn

    from adaptive.baselines.edge_popup import edge_popup

    torch.manual_seed(0)
    data = torch.utils.data.TensorDataset(torch.randn(32, 6), torch.randint(0, 3, (32,)))
    loader = torch.utils.data.DataLoader(data, batch_size=16)
    _, snaps = edge_popup(nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3)), loader, loader, target=[0.5],
                          passes=0.5, progress=False)
    keys = set(next(iter(snaps.values())))
    page = re.sub(r"\s+", " ", PAGES["docs/mask_only.md"])
    said = page[page.index("`snapshots[label]` a dict of"):][:200]
    said = set(re.findall(r"`(\w+)`", said[:said.index(")")]))
    assert said == keys, (sorted(said), sorted(keys))
    doc = re.sub(r"\s+", " ", edge_popup.__doc__)
    assert set(re.findall(r'"(\w+)"', doc[doc.index("snapshots[label] = {"):].split("}")[0])) == keys


@pytest.mark.parametrize("script", ["recipes/prune_pretrained.py", "recipes/adaptive.py"])
def test_the_recipes_help_names_wnids_and_weights_none(script):
    """--dataset-kw wnids=FILE (docs/data.md) is named by the --help of both recipes that take it; neither did. And
    --weights none: recipes/adaptive.py's help did not say it."""
    import subprocess

    out = subprocess.run([sys.executable, os.path.join(ROOT, script), "--help"], capture_output=True, text=True,
                         cwd=ROOT, env={**os.environ, "PYTHONPATH": ROOT}, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "wnids=FILE" in out.stdout and "LOC_synset_mapping.txt" in out.stdout
    # (--weights none, which both recipes' warning of a torchvision model given no weights asks for, said in both too)
    weights = re.sub(r"\s+", " ", out.stdout[out.stdout.index("\n  --weights"):])[:300]
    assert "none: random initial weights" in weights or "none: the model's random initial weights" in weights, weights


def test_the_attach_docstrings_say_what_python_api_md_says_they_refuse():
    """python_api.md says Connectome.attach refuses SparseAdam, differentiable=True and (under a sign-reading
    controller) maximize=True, and takes a ZeroRedundancyOptimizer through its local optimizer; the docstrings of
    Connectome.attach and Controller.attach said none of it."""
    from adaptive import Connectome, Controller

    conn_doc = re.sub(r"\s+", " ", Connectome.attach.__doc__)
    for words in ("ZeroRedundancyOptimizer", "SparseAdam", "differentiable=True", "maximize=True"):
        assert words in conn_doc, words
    ctrl_doc = re.sub(r"\s+", " ", Controller.attach.__doc__)
    for words in ("maximize=True", "reads_gradient_sign", "ZeroRedundancyOptimizer"):
        assert words in ctrl_doc, words


def test_the_imagenet_and_folder_docstrings_say_they_read_a_flat_val_folder():
    """docs/data.md says datasets imagenet and folder read Kaggle's flat val/ with LOC_val_solution.csv; their
    docstrings said only ImageFolder class folders."""
    from adaptive.data.imagenet import folder, imagenet

    for builder in (imagenet, folder):
        doc = re.sub(r"\s+", " ", builder.__doc__)
        assert "LOC_val_solution.csv" in doc and "flat" in doc and "wnids" in doc, builder.__name__
