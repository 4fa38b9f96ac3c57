"""The traced forward's signature, written into its fx graph: positional-only and keyword-only parameters
(:class:`_Signature`), the annotations that a copy's code can write with torch alone (:func:`_annotate`), and
the defaults a required placeholder follows dropped (:func:`_required_after_defaults`)."""
from __future__ import annotations

import inspect
import sys
import types
from typing import Any, Dict, List, Sequence

from torch import fx


class _Signature(fx.graph.CodeGen):
    """Writes a graph's forward with its first ``positional`` placeholders positional-only, before a ``/``, and
    its last ``keyword`` ones keyword-only, after a ``*``: fx writes every placeholder as a positional parameter,
    so ``forward(self, x, y=None, *, mask)`` became ``def forward(self, x, y = None, mask)``, a SyntaxError
    ("non-default argument follows default argument"), and without y's default ``forward(self, x, y, mask)``,
    which ``model(x, mask=m)`` does not call; ``forward(self, x, /)`` became ``forward(self, x)``."""

    def __init__(self, keyword: int, positional: int = 0):
        super().__init__()
        self.count, self.positional = keyword, positional

    def gen_fn_def(self, free_vars, maybe_return_annotation, **kwargs):
        free_vars = list(free_vars)
        if self.count:
            free_vars.insert(len(free_vars) - self.count, "*")
        if self.positional:
            free_vars.insert(self.positional, "/")
        return super().gen_fn_def(free_vars, maybe_return_annotation, **kwargs)


def _annotations(fn) -> Dict[str, Any]:
    """``fn``'s annotations as objects (a string one, ``from __future__ import annotations``, evaluated in the
    namespace ``fn`` was written in), those that a copy's code can write (:func:`_writable`); an annotation that
    does not evaluate or write is left out."""
    found = {}
    for name, a in inspect.get_annotations(fn).items():
        if isinstance(a, str):
            try:
                a = eval(a, getattr(fn, "__globals__", {}))  # noqa: S307 - what Python itself does for eval_str
            except Exception:  # noqa: BLE001 - a name imported only for type checkers
                continue
        if _writable(a):
            found[name] = a
    return found


def _writable(annotation) -> bool:
    """Can fx write ``annotation`` into a forward's code that runs (a type fx spells so that it names it), naming
    only what torch and Python's own library hold? The code a copy is saved with imports what it names, so the
    user's class (``cfg: Optional[Config]``) would have torch.load need the user's module, where a copy loads
    with torch alone."""
    g = fx.Graph()
    g.output(g.placeholder("a", type_expr=annotation), type_expr=annotation)
    code = g.python_code("self")
    try:
        exec(compile(code.src, "<annotation>", "exec"), dict(code.globals))  # noqa: S102 - fx's own code
    except Exception:  # noqa: BLE001 - a Literal's values, a local class fx cannot name, ...
        return False
    return all(_importable_anywhere(v) for v in code.globals.values())


def _importable_anywhere(obj) -> bool:
    """Is ``obj`` torch's, or of Python's own library (``typing.Optional``, ``int``), or without a module?"""
    module = obj.__name__ if isinstance(obj, types.ModuleType) else getattr(obj, "__module__", None)
    root = module.partition(".")[0] if isinstance(module, str) else None
    return root is None or root == "torch" or root in sys.stdlib_module_names


def _annotate(graph: fx.Graph, fn, holders: List[fx.Node], names: Sequence[str]) -> None:
    """Give the placeholders ``holders`` of ``fn``'s parameters ``names`` (one for one) and the output of ``graph``
    ``fn``'s annotations (:func:`_annotations`); an input traced at a value (``mask=None``) has its own."""
    found = _annotations(fn)
    for n, name in zip(holders, names):
        n.type = found.get(name)
    out = next(n for n in graph.nodes if n.op == "output")
    out.type = found.get("return")


def _required_after_defaults(graph: fx.Graph) -> None:
    """Drop the defaults of the placeholders that a placeholder without one follows, which fx's positional
    signature cannot write (see :class:`_Signature`). Such a graph is run with a value for every
    placeholder (:func:`graphs.forward_inputs._placeholder_values`)."""
    required = False
    for n in reversed([n for n in graph.nodes if n.op == "placeholder"]):
        if not n.args:
            required = True
        elif required:
            n.args = ()
