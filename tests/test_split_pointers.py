"""The modules split out of adaptive/connectome.py, adaptive/mask_only.py, graphs/trace.py, graphs/compact.py,
recipes/adaptive.py and recipes/prune_pretrained.py point at one another's names in their docstrings
(``:func:`name```): a bare name that moved to another module in the split pointed at nothing there, so
every such pointer names a definition of its own module (or one it imports) or gives the module where
the name lives."""
import ast
import importlib
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SPLIT = ["adaptive.connectome", "adaptive.mask_only", "adaptive.wrappers", "graphs.trace", "graphs.compact",
         "recipes._adaptive", "recipes._prune_pretrained", "recipes.prune_pretrained"] + [
    f"{pkg}.{p.stem}" for pkg, pattern in (("adaptive", "connectome_*.py"), ("adaptive", "mask_only_*.py"),
                                           ("graphs", "compact_*.py"), ("graphs", "flow*.py"),
                                           ("recipes._adaptive", "*.py"), ("recipes._prune_pretrained", "*.py"))
    for p in sorted((ROOT / pkg.replace(".", "/")).glob(pattern)) if p.stem != "__init__"] + [
    f"graphs.{m}" for m in ("book", "example_inputs", "forward_inputs", "id_tensors", "locking", "signature",
                            "trace_types", "tracer", "unchanged")]
REF = re.compile(r":(?:func|class|meth|data|attr|exc):`~?([A-Za-z_][\w.]*)`")


def _holders(module) -> list:
    """Where a bare name in ``module``'s docstrings may live: the module, its classes, and the classes its
    mixins make up (a method's pointer at a sibling method names the composed class's)."""
    import adaptive
    from graphs.flow import FlowProp

    return [module] + [v for v in vars(module).values() if isinstance(v, type)] + [adaptive.Connectome, FlowProp]


def _resolves(module, ref: str) -> bool:
    head, *rest = ref.split(".")
    holder = next((h for h in _holders(module) if hasattr(h, head)), None)
    if holder is not None:
        obj = getattr(holder, head)
    else:  # a dotted path from a module on: the longest importable prefix, then attributes
        for i in range(len(rest), -1, -1):
            try:
                obj = importlib.import_module(".".join([head] + rest[:i]))
            except ImportError:
                continue
            rest = rest[i:]
            break
        else:
            return False
    for part in rest:
        if not hasattr(obj, part):
            return False
        obj = getattr(obj, part)
    return True


def _docstrings(src: str):
    for node in ast.walk(ast.parse(src)):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            doc = ast.get_docstring(node, clean=False)
            if doc:
                yield doc


@pytest.mark.parametrize("name", sorted(set(SPLIT)))
def test_the_docstring_pointers_of_the_split_modules_name_where_the_name_lives(name):
    module = importlib.import_module(name)
    src = Path(module.__file__).read_text()
    lost = sorted({m.group(1) for doc in _docstrings(src) for m in REF.finditer(doc)
                   if not _resolves(module, m.group(1))})
    assert not lost, f"{name}'s docstrings point at names it does not hold: {lost} (give their module)"


def test_the_check_sees_a_pointer_at_a_name_that_moved():
    import graphs.compact_shrink as shrink

    assert not _resolves(shrink, "_uneven_groups")  # (it lives in graphs.compact_plan)
    assert _resolves(shrink, "graphs.compact_plan._uneven_groups") and _resolves(shrink, "FoldedConv")


DIAGNOSTICS = ["adaptive.diagnostics"] + [f"adaptive.diagnostics.{p.stem}" for p in
                                          sorted((ROOT / "adaptive" / "diagnostics").glob("*.py")) if p.stem != "__init__"]


def _field(module, ref: str) -> bool:
    """A dataclass field without a class-level default (``Class.field``), which hasattr does not see."""
    cls, _, name = ref.rpartition(".")
    holder = getattr(module, cls, None)
    return isinstance(holder, type) and name in getattr(holder, "__dataclass_fields__", {})


@pytest.mark.parametrize("name", DIAGNOSTICS)
def test_the_docstring_pointers_of_the_diagnostics_modules_name_where_the_name_lives(name):
    """adaptive/diagnostics' modules pointed at BandGradientScaler and gradient_by_depth by their bare
    names from modules that do not hold them (gradient_depth.py cannot import band_scaling.py, which
    imports it): every pointer names its own module's definition or the module where it lives."""
    module = importlib.import_module(name)
    src = Path(module.__file__).read_text()
    lost = sorted({m.group(1) for doc in _docstrings(src) for m in REF.finditer(doc)
                   if not _resolves(module, m.group(1)) and not _field(module, m.group(1))})
    assert not lost, f"{name}'s docstrings point at names it does not hold: {lost} (give their module)"
