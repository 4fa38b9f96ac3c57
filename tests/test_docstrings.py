"""Every parameter of the public API is documented: each name a function, class or public method
of ``adaptive``, ``adaptive.diagnostics`` and ``graphs`` exports takes appears in its docstring
(a class's together with its ``__init__``'s), so ``help()`` tells a user what each one does."""
import inspect
import re

import pytest

import adaptive
import adaptive.diagnostics as diagnostics
import graphs

# names whose meaning the signature says on its own: the graph, a file, a state_dict, the model
SELF_EVIDENT = {"self", "cls", "g", "G", "path", "sd", "model", "data", "kw", "args", "masks", "name", "step"}
METHODS_OF = ("Connectome", "Controller", "MaskOnlyResult", "Snapshot", "ConnectomeGraph", "Table")


def _doc(obj) -> str:
    text = inspect.getdoc(obj) or ""
    if inspect.isclass(obj):
        text += "\n" + (inspect.getdoc(obj.__init__) or "")
    return text


def _public():
    for module in (adaptive, diagnostics, graphs):
        for name in module.__all__:
            obj = getattr(module, name)
            if inspect.ismodule(obj) or not callable(obj):
                continue
            yield f"{module.__name__}.{name}", obj
            if inspect.isclass(obj) and name in METHODS_OF:
                own = {}  # its methods and those of the project's classes it inherits (mixins: the controller's state)
                for cls in reversed(obj.__mro__):
                    if cls.__module__.split(".")[0] in ("adaptive", "graphs"):
                        own.update(vars(cls))
                for attr, member in own.items():
                    if not attr.startswith("_") and callable(member):
                        yield f"{module.__name__}.{name}.{attr}", getattr(obj, attr)


def _undocumented(obj):
    try:
        params = inspect.signature(obj).parameters
    except (TypeError, ValueError):
        return []
    text = _doc(obj)
    return [p for p in params if p not in SELF_EVIDENT
            and not re.search(r"(?<![A-Za-z0-9_])" + re.escape(p) + r"(?![A-Za-z0-9_])", text)]


@pytest.mark.parametrize("qualname, obj", list(_public()), ids=lambda v: v if isinstance(v, str) else "")
def test_every_parameter_of_the_public_api_is_documented(qualname, obj):
    missing = _undocumented(obj)
    assert not missing, f"{qualname}: the docstring does not mention parameter(s) {missing}"


def test_the_check_sees_an_undocumented_parameter():
    def documented(alpha, beta):
        """Scale by ``alpha``, then shift by ``beta``."""

    def half(alpha, beta):
        """Scale by ``alpha`` (the words alphabet, betas and beta_2 do not name the second)."""

    assert _undocumented(documented) == [] and _undocumented(half) == ["beta"]


def test_inherited_methods_of_the_api_classes_are_checked():
    """Controller's state_dict/load_state_dict live in a mixin: they are checked all the same."""
    names = {q for q, _ in _public()}
    assert {"adaptive.Controller.state_dict", "adaptive.Controller.load_state_dict",
            "adaptive.Controller.update"} <= names
