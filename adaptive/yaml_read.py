"""YAML as the settings read it: PyYAML's safe loader, with a key given twice in one mapping refused.

PyYAML (as the YAML 1.1 spec's loaders commonly do) keeps the last of two equal keys, so
``epochs: 5`` written again further down a config file silently replaced the first one, and
``--model_kw '{depth: 2, depth: 4}'`` built depth 4. :class:`UniqueKeyLoader` builds its mappings
with the same constructor, after checking their keys: a repeated key raises
:class:`DuplicateKeyError` naming it, where it stands (file and line) and what to do. Keys that a
merge (``<<: *base``) brings in may be overridden, as YAML means them to be.
"""
from __future__ import annotations

from typing import Any

import yaml

__all__ = ["DuplicateKeyError", "UniqueKeyLoader", "load_yaml"]

_MERGE = "tag:yaml.org,2002:merge"


class DuplicateKeyError(ValueError):
    """A YAML mapping gives one key twice; only the last would count. A ValueError, not a
    ``yaml.YAMLError``, so that no caller's "not valid YAML, quote it differently" reading of a
    syntax error hides it: the text is valid YAML, the mapping is ambiguous."""


def _where(first, here) -> str:
    """Where a key's two spellings stand: ``lines A and B of FILE`` in a file, ``in 'TEXT'`` in a
    one-line string (an inline value), ``lines A and B`` in another string."""
    name = str(here.name or "")
    lines = (f"line {here.line + 1}, and again through an alias (*) of it" if first is here
             else f"lines {first.line + 1} and {here.line + 1}")
    if name and not name.startswith("<"):
        return f"{lines} of {name}"
    text = (getattr(here, "buffer", None) or "").rstrip("\0").strip()
    return f"in {text!r}" if text and "\n" not in text else lines


_INT, _FLOAT = "tag:yaml.org,2002:int", "tag:yaml.org,2002:float"


class _NoColon:
    """An implicit resolver's pattern that matches no scalar holding a colon: YAML 1.1's base-60 numbers
    (``2:4`` is 124, ``1:30`` is 90), which YAML 1.2 dropped, stay strings."""

    def __init__(self, regexp):
        self.regexp = regexp

    def match(self, value: str):
        """The pattern's match of ``value``; None where ``value`` holds a colon."""
        return None if ":" in value else self.regexp.match(value)


class UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a mapping holding one key twice (:class:`DuplicateKeyError`).
    Keys equal as Python values count as one key (``1`` and ``1.0``; ``true`` and ``1``), as the dict
    built from them would merge them. A plain scalar with a colon is never a number: YAML 1.1's base-60
    integers and floats read ``ensemble: 2:4`` (an N:M ensemble) as the integer 124, refused as
    "expects str, got 124"; it reads as the string ``2:4``, as YAML 1.2 reads it. And a whole number
    written with leading zeros is decimal (``010`` is ten, not YAML 1.1's octal eight)."""

    yaml_implicit_resolvers = {first: [(tag, _NoColon(regexp) if tag in (_INT, _FLOAT) else regexp)
                                       for tag, regexp in resolvers]
                               for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}

    def flatten_mapping(self, node):
        """The safe loader's merge (``<<``) of ``node``, once no key that ``node`` itself gives repeats
        an earlier one. Checked here, on a node's first flattening, since flattening rewrites the
        node in place (merged keys ahead of its own): a node merged into another before it is built
        itself would otherwise show its overrides as repeats."""
        checked = self.__dict__.setdefault("_unique_checked", set())
        if isinstance(node, yaml.MappingNode) and id(node) not in checked:
            checked.add(id(node))
            seen = {}
            for key_node, _ in node.value:
                if key_node.tag == _MERGE:
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    first = seen.get(key)
                    seen[key] = first or key_node.start_mark
                except TypeError:  # an unhashable key: the safe loader's own error says so
                    continue
                if first is not None:  # (an alias repeats its anchor's node, and so its mark: compare by count)
                    raise DuplicateKeyError(f"the YAML key {key!r} is given twice ({_where(first, key_node.start_mark)}), "
                                            "and only the last would count: keep one of them")
        super().flatten_mapping(node)


def _construct_int(loader: UniqueKeyLoader, node) -> int:
    """An integer as YAML 1.2 reads it: ``010`` is ten, where YAML 1.1's leading-zero octal made it eight
    (``seed: 010`` ran seed 8, while ``seed: 09``, no octal, ran 9); ``0x``, ``0b`` and the rest as before."""
    value = loader.construct_scalar(node)
    digits = value.replace("_", "").lstrip("+-")
    if len(digits) > 1 and digits[0] == "0" and digits.isdigit():
        return int(value.replace("_", ""), 10)
    return yaml.SafeLoader.construct_yaml_int(loader, node)


UniqueKeyLoader.add_constructor(_INT, _construct_int)


def load_yaml(stream) -> Any:
    """``yaml.safe_load(stream)`` (a string or an open file), with a key given twice in one mapping
    refused (:class:`DuplicateKeyError`, naming the key and its lines)."""
    return yaml.load(stream, Loader=UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
