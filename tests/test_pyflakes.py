"""pyflakes over the library and the recipes: no unused import, undefined name or other message. A probe
import (is an optional package installed?) goes through importlib.import_module, which pyflakes reads as a
call, not as a name left unused; ``# noqa`` is flake8's and pyflakes does not read it."""
import io

import adaptive.paths as paths


def test_pyflakes_finds_nothing_in_adaptive_graphs_and_recipes():
    """pyflakes (a test extra in pyproject.toml) reports no message on adaptive/, graphs/ or recipes/."""
    from pyflakes.api import checkRecursive
    from pyflakes.reporter import Reporter

    out, err = io.StringIO(), io.StringIO()
    found = checkRecursive([str(paths.REPO_ROOT / d) for d in ("adaptive", "graphs", "recipes")], Reporter(out, err))
    assert found == 0 and not err.getvalue(), out.getvalue() + err.getvalue()
