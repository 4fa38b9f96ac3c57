"""adaptive.yaml_read: a key given twice in one YAML mapping refused; what YAML itself allows
(merges that override, anchors, keys equal only as text) read as yaml.safe_load reads it."""
import pytest
import yaml

from adaptive.yaml_read import DuplicateKeyError, load_yaml


@pytest.mark.parametrize("text", [
    "base: &b {x: 1, y: 2}\nrun: {<<: *b, x: 3}\nother: *b\n",  # an anchor, a merge overridden, an alias
    "a: &a {x: 1}\nb: &b {x: 2}\nc: {<<: [*a, *b], x: 3}\n",  # a list of merges
    "a: &a {x: 1}\nb: &b {y: 2}\nc:\n  <<: *a\n  <<: *b\n",  # two merge keys
    "1: a\n'1': b\n~: c\n",  # keys that differ in type; a null key
    "a: {x: 1}\nb: {x: 2}\nx: 3\n",  # one key in mappings at different levels
    # a mapping merged into another before it is built itself: PyYAML's merge rewrote it in place
    # (its merged keys ahead of its own), and its override read as 'x' given twice (lines 2 and 2)
    "a:\n  b: &b {<<: {x: 1}, x: 2}\nc: {<<: *b}\n",
])
def test_what_yaml_allows_reads_as_safe_load_reads_it(text):
    assert load_yaml(text) == yaml.safe_load(text)


@pytest.mark.parametrize("text, where", [
    ("epochs: 1\nseed: 2\nepochs: 3\n", "lines 1 and 3"),
    ("1: a\n1.0: b\n", "lines 1 and 2"),  # equal as Python values: one dict key
    ("run:\n  <<: {y: 0}\n  x: 1\n  x: 2\n", "lines 3 and 4"),  # beside a merge
    # a key repeated through an alias of its anchor was kept last-one-wins, unsaid
    ("? &k a\n: 1\n*k : 2\n", "line 1, and again through an alias (*) of it"),
])
def test_a_key_given_twice_in_one_mapping_is_refused_naming_where(text, where):
    with pytest.raises(DuplicateKeyError, match=r"is given twice \(" + where.replace("(", r"\(").replace(")", r"\)")
                       .replace("*", r"\*") + r"\).*keep one of them"):
        load_yaml(text)


def test_every_yaml_read_of_the_project_refuses_a_key_given_twice(tmp_path):
    """A run folder's config.yaml was read back on --resume (adaptive.run_folder.read_settings), for a
    figure's title (adaptive.plots) and by diagnostics (adaptive.diagnostics.progress) with plain
    yaml.safe_load: an edited file with 'density' given twice was checked, and shown, by its last one."""
    import re
    from pathlib import Path

    from adaptive.diagnostics.progress import _read_config
    from adaptive.plots import run_config
    from adaptive.run_folder import RunFolderError, read_settings

    (tmp_path / "config.yaml").write_text("model: mlp\ndensity: 0.1\ndataset: mnist\ndensity: 0.5\n")
    with pytest.raises(RunFolderError, match=rf"--resume: {re.escape(str(tmp_path / 'config.yaml'))} is damaged \(the "
                                             r"YAML key 'density' is given twice \(lines 2 and 4\).*; put it back"):
        read_settings(tmp_path / "config.yaml", "put it back")
    assert _read_config(str(tmp_path)) is None  # unreadable, as a damaged file is there
    assert run_config(str(tmp_path)) == {}
    root = Path(__file__).resolve().parents[1]
    plain = [f"{p.relative_to(root)}:{i}" for p in [q for d in ("adaptive", "graphs", "recipes") for q in (root / d).rglob("*.py")]
             if p.name != "yaml_read.py"
             for i, line in enumerate(p.read_text().splitlines(), 1)
             if re.search(r"\byaml\.(safe_|full_|unsafe_)?load(_all)?\(", line)]
    assert not plain, f"read YAML through adaptive.yaml_read.load_yaml, not yaml.*load: {plain}"


def test_a_plain_scalar_with_a_colon_is_a_string_not_a_base_60_number():
    """YAML 1.1's base-60 numbers read `ensemble: 2:4` (an N:M ensemble) as 124 and `1:30` as 90, which a
    config file's str option refused as "expects str, got 124"; they are strings, as in YAML 1.2. Every
    other number reads as before, and yaml.safe_load itself is left as it was."""
    assert load_yaml("ensemble: 2:4\nt: 1:30\nf: 1:30.5\n") == {"ensemble": "2:4", "t": "1:30", "f": "1:30.5"}
    text = "a: 12\nb: -3\nc: 0x10\nd: 1_000\ne: 1.5\nf: .inf\ng: 1.0e-3\n"
    assert load_yaml(text) == yaml.safe_load(text)
    assert yaml.safe_load("e: 2:4") == {"e": 124}


def test_a_whole_number_with_leading_zeros_is_decimal_not_octal():
    """YAML 1.1 read `seed: 010` as the octal 8 (and `seed: 09`, no octal, as 9 through the config's
    text-to-int reading): a run seeded otherwise than its file says. It is ten, as in YAML 1.2."""
    assert load_yaml("a: 010\nb: -010\nc: 0_10\nd: 00\n") == {"a": 10, "b": -10, "c": 10, "d": 0}
    assert load_yaml("a: 0x10\nb: 0b11\nc: 0\nd: 1_000\n") == {"a": 16, "b": 3, "c": 0, "d": 1000}
    assert yaml.safe_load("a: 010") == {"a": 8}
