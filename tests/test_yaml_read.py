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
