"""Many shell-style (``fnmatch``) layer patterns matched against many names, in time linear in both.

``include=``/``exclude=`` and ``protect=`` test every pattern against every layer's names. Where the
patterns are exact names, as :meth:`Connectome.load <adaptive.connectome.Connectome.load>` passes one
:func:`escape`-d name per saved layer, that was a ``fnmatchcase`` call for every (pattern, name) pair:
quadratic in the layers (about 4 s to load the connectome of a 1,000-layer MLP). A pattern with no
wildcard (``*``, ``?``, ``[...]`` other than the one-character escapes ``[*]``, ``[?]``, ``[[]`` that
:func:`escape` writes) matches exactly the one name it spells, so :class:`PatternSet` looks those up
in a dict and runs ``fnmatchcase`` for the others only: the same answers, pattern for pattern.
"""
from __future__ import annotations

import fnmatch
import re
from typing import Dict, Iterable, List, Optional, Set

# a pattern made only of plain characters and escape's one-character classes matches one name
_LITERAL = re.compile(r"(?:\[[*?\[]\]|[^*?\[])*")
_ESCAPE = re.compile(r"\[([*?\[])\]")


_SPECIAL = re.compile(r"([*?\[])")


def escape(name: str) -> str:
    """The ``fnmatch`` pattern that matches ``name`` alone: every ``*``, ``?`` and ``[`` bracketed
    (``[*]``, ``[?]``, ``[[]``). ``glob.escape`` is for paths: on Windows it leaves a drive-like
    prefix as it is (``?:fc``, ``//a*/b``), a wildcard in a layer's name; this escapes every one,
    on every platform."""
    return _SPECIAL.sub(r"[\1]", name)


def literal(pattern: str) -> Optional[str]:
    """The one name ``pattern`` matches under ``fnmatch.fnmatchcase``, or None where it has a wildcard
    (``*``, ``?`` or a character class other than ``[*]``, ``[?]``, ``[[]``)."""
    if not _LITERAL.fullmatch(pattern):
        return None
    return _ESCAPE.sub(r"\1", pattern)


class PatternSet:
    """``patterns`` (strings) prepared to be matched against many names: :meth:`hits` is
    ``{p for p in patterns if any(fnmatch.fnmatchcase(n, p) for n in names)}``, with a dict look-up
    for each pattern that spells one name and ``fnmatchcase`` for the wildcard ones."""

    def __init__(self, patterns: Iterable[str]):
        self.patterns = tuple(patterns)
        self._exact: Dict[str, List[str]] = {}
        self._wild: List[str] = []
        for p in dict.fromkeys(self.patterns):  # each pattern once, in order
            name = literal(p)
            if name is None:
                self._wild.append(p)
            else:
                self._exact.setdefault(name, []).append(p)

    def hits(self, *names: str) -> Set[str]:
        """The patterns that match any of ``names``."""
        out = {p for n in names for p in self._exact.get(n, ())}
        out.update(p for p in self._wild if any(fnmatch.fnmatchcase(n, p) for n in names))
        return out

    def any(self, *names: str) -> bool:
        """Whether any pattern matches any of ``names``."""
        return (any(n in self._exact for n in names)
                or any(fnmatch.fnmatchcase(n, p) for p in self._wild for n in names))

    def __bool__(self) -> bool:
        return bool(self.patterns)
