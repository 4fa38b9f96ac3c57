"""Per-layer ensemble granularities: which granularity each prunable weight of a connectome uses.

A connectome's ``ensemble`` is one granularity for every layer (``"synapse"``, ``"neuron"``, ...)
or rules that give layers different ones, first match wins:

- a mapping ``{"*mlp*": "neuron", "*": "synapse"}`` (or granularity objects as values);
- the same as a string, ``"*mlp*=neuron;*=synapse"`` (for the command line and config files); a bare
  spec among the rules, ``"*mlp*=neuron;synapse"``, is the default for every other layer.

Patterns are shell-style (``fnmatch``) and tested against the parameter name and its module's name,
as ``include``/``exclude`` are. Every layer must get a granularity and every pattern must match a
layer, so a typo fails instead of silently changing nothing. ``n:m`` fixes a layer's density, so it
is accepted for all layers or none (use ``include``/``exclude`` to leave layers out of the connectome).
"""
from __future__ import annotations

import fnmatch
from collections.abc import Mapping
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from .ensembles import Granularity, get_granularity
from .name_patterns import literal

Rule = Tuple[Optional[str], Granularity]  # (pattern, granularity); pattern None: every layer


def parse_rules(ensemble) -> List[Rule]:
    """The rules of an ``ensemble`` argument (a spec, a Granularity, a rules string or a mapping)."""
    if isinstance(ensemble, Granularity):
        return [(None, ensemble)]
    if isinstance(ensemble, Mapping):
        if not ensemble:
            raise ValueError("ensemble rules are empty: give at least one, e.g. {'*': 'synapse'}")
        items = list(ensemble.items())
    elif isinstance(ensemble, str):
        if "=" not in ensemble and ";" not in ensemble:
            return [(None, get_granularity(ensemble))]
        items = []
        for part in (p.strip() for p in ensemble.split(";")):
            if not part:
                continue
            pat, eq, spec = part.rpartition("=")
            items.append((pat.strip() if eq else None, spec))
    else:
        raise TypeError(f"ensemble must be a spec string such as 'synapse', a Granularity or a mapping of layer "
                        f"patterns to specs, got {type(ensemble).__name__}")
    rules = []
    for pat, spec in items:
        if pat is not None and (not isinstance(pat, str) or not pat.strip()):
            raise ValueError(f"ensemble rule {pat!r}={spec!r}: the pattern must be a non-empty string such as '*fc*'")
        if pat is not None and ";" in pat:
            raise ValueError(f"ensemble rule {pat!r}={spec!r}: a pattern cannot hold ';' (it separates the rules of the "
                             "string form): use '?' or '*' in its place")
        try:
            g = get_granularity(spec)
        except (TypeError, ValueError) as e:
            raise type(e)(f"ensemble rule for {pat or 'every other layer'!r}: {e}") from None
        rules.append((None if pat in (None, "*") else pat.strip(), g))
    return rules


def _matches(pattern: str, names: Sequence[str]) -> bool:
    return any(fnmatch.fnmatchcase(n, pattern) for n in names if n)


class _FirstMatch:
    """The index of the first of ``rules`` that matches a layer, without testing every rule against every
    layer: a rule spelling one name (:func:`~adaptive.name_patterns.literal`, as a mapping of every layer's
    exact name is) is looked up in a dict, and only the wildcard rules ahead of the earliest such hit (or of
    the default) are matched by ``fnmatchcase``. The same index as trying the rules in order (which was
    quadratic in the layers for rules that name each layer: about 4 s for 2,000 layers)."""

    def __init__(self, rules: Sequence[Rule]):
        self.none = len(rules)
        self.default = next((i for i, (pat, _) in enumerate(rules) if pat is None), self.none)
        self.exact: Dict[str, int] = {}
        self.wild: List[Tuple[int, str]] = []
        for i, (pat, _) in enumerate(rules):
            if pat is None:
                continue
            name = literal(pat)
            if name is None:
                self.wild.append((i, pat))
            else:
                self.exact.setdefault(name, i)

    def __call__(self, known: Sequence[str]) -> int:
        """The first rule matching any of ``known`` (a layer's names; empty ones match nothing), or
        ``len(rules)`` where none does."""
        best = min((self.exact.get(k, self.none) for k in known if k), default=self.none)
        best = min(best, self.default)
        for i, pat in self.wild:
            if i >= best:
                break
            if _matches(pat, known):
                return i
        return best


def resolve(ensemble, names: Sequence[str], aliases: Optional[Mapping[str, Sequence[str]]] = None,
            rename: Optional[Callable[[str], str]] = None) -> Tuple[Dict[str, Granularity], str]:
    """Each of ``names`` with its granularity, and the canonical spec string of the rules (the
    single spec when every layer ends with the same one). ``aliases`` gives the names a layer answers
    to (a tied weight has several; default: the parameter's name and its module's). ``rename``: each
    pattern as ``names`` name layers (a wrapper's ``module.fc`` as ``fc``), also in the spec string."""
    rules = parse_rules(ensemble)
    if rename is not None:
        rules = [(pat if pat is None else rename(pat), g) for pat, g in rules]
    out: Dict[str, Granularity] = {}
    used = [False] * len(rules)
    first = _FirstMatch(rules)
    for n in names:
        i = first((aliases or {}).get(n) or (n, n.rpartition(".")[0]))
        if i < len(rules):
            out[n] = rules[i][1]
            used[i] = True
    missing = [n for n in names if n not in out]
    if missing:
        raise ValueError(f"the ensemble rules give no granularity for {len(missing)} layer(s) ({', '.join(missing[:3])}"
                         f"{', ...' if len(missing) > 3 else ''}): end the rules with a default, e.g. '...;synapse'")
    defaults = [g.spec for (pat, g), u in zip(rules, used) if pat is None]
    if len(defaults) > 1:
        raise ValueError(f"ensemble rules give more than one default ({', '.join(map(repr, defaults))}): the first "
                         "takes every layer left, so the others would never be used; keep one")
    unused = [pat for (pat, _), u in zip(rules, used) if not u and pat is not None]
    if unused:
        raise ValueError(f"ensemble pattern(s) {unused} match no prunable layer (or only layers an earlier rule "
                         f"took); prunable layers are {list(names)[:5]}{' ...' if len(names) > 5 else ''}")
    specs = {g.spec for g in out.values()}
    nm = {g.spec for g in out.values() if hasattr(g, "density")}
    if len(nm) > 1:
        raise ValueError(f"ensemble rules give different n:m specs {sorted(nm)}: n:m fixes the density, so one spec "
                         "goes to every layer")
    if nm and len(specs) > 1:
        raise ValueError(f"ensemble rules mix {sorted(nm)[0]!r} with {sorted(specs - nm)[:2]}: n:m fixes a layer's "
                         "density, so give it to every layer or to none (leave layers out with include/exclude)")
    if len(specs) == 1:
        return out, next(iter(specs))
    return out, ";".join(g.spec if pat is None else f"{pat}={g.spec}" for pat, g in rules)
