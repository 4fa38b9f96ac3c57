"""One rule for every registry of the package (policies, estimators, budgets, ensembles, decays,
datasets, models): a name names one thing.

Registering a second, different object under a taken name is refused, so a user's extension can
never silently replace a built-in (and every run that names it) by a clash of names; pass
``replace=True`` to the ``register_*`` decorator to override on purpose. Running the same
definition again (a module re-executed, a notebook cell run twice) replaces the entry quietly.
A user's own entry can be taken out again (:func:`remove`, ``adaptive.unregister_granularity``);
a built-in one cannot.
"""
from __future__ import annotations

import difflib
import functools
import inspect
import math
import sys
import weakref

from contextlib import contextmanager
from typing import Any, Dict, List, Optional

_journal: Optional[List[tuple]] = None  # (table, name, previous entry or _ABSENT) while recording
# each registered object -> its _definition as it was registered: a closure's list or dict is compared as it was
# made (a memo dict or a counter list filled by use since made the same definition, run again, look another)
_DEFINED: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()
_ABSENT = object()


@contextmanager
def all_or_nothing():
    """Registrations made inside the block are undone if it raises (a plugin that fails halfway
    through its import leaves every registry as it found it)."""
    global _journal
    outer, _journal = _journal, []
    try:
        yield
    except BaseException:
        for table, name, old in reversed(_journal):
            if old is _ABSENT:
                table.pop(name, None)
            else:
                table[name] = old
        _journal = outer
        raise
    done, _journal = _journal, outer
    if outer is not None:  # an enclosing block may still undo these
        outer.extend(done)


PLUGIN_MODULE = "adaptive_plugin_"  # the start of the module name a plugin file is loaded under (adaptive.plugins)


def _origin(obj: Any) -> str:
    """Where ``obj`` was defined, for a message: module and qualified name, and for a lambda (whose name,
    ``<lambda>``, every lambda of its scope shares) the line it starts on too. One a plugin file defines
    (its module's generated name says nothing to its author): the name (a callable instance's class), the file's
    path and, for a function, its line. A ``functools.partial``: the function it calls, so named."""
    if isinstance(obj, functools.partial):
        return f"functools.partial of {_origin(obj.func)}"
    name = getattr(obj, "__qualname__", repr(obj))
    code = getattr(obj, "__code__", None)
    module = getattr(obj, "__module__", None) or "?"
    plugin = isinstance(module, str) and module.startswith(PLUGIN_MODULE)
    path = getattr(sys.modules.get(module), "__file__", None) if plugin else None
    if path:
        if not isinstance(getattr(obj, "__qualname__", None), str):  # an instance: its repr names the module
            name = f"a {type(obj).__qualname__}"
        return f"{name} in plugin {path}" + (f", line {code.co_firstlineno}" if code else "")
    line = f" (line {code.co_firstlineno})" if isinstance(name, str) and name.endswith("<lambda>") and code else ""
    return f"{module}.{name}{line}"


def _definition(obj: Any) -> str:
    """What tells two definitions apart: module and qualified name (a plugin file's module is named after its
    content, so a copy of the file loaded from elsewhere is the same definition, an edited one another), and for a
    lambda its line; a ``functools.partial``: its function's, and the arguments it fixes."""
    if isinstance(obj, functools.partial):
        return f"functools.partial of {_definition(obj.func)} with {obj.args!r}, {obj.keywords!r}"
    name = getattr(obj, "__qualname__", repr(obj))
    code = getattr(obj, "__code__", None)
    line = f" (line {code.co_firstlineno})" if isinstance(name, str) and name.endswith("<lambda>") and code else ""
    return f"{getattr(obj, '__module__', '?')}.{name}{line}{_made_with(obj)}"


def _as_defined(obj: Any) -> tuple:
    """``(_definition, _made_with)`` of ``obj`` as they were when it was registered (as they are now where
    not recorded)."""
    try:
        found = _DEFINED.get(obj)
    except TypeError:
        found = None
    return found if found is not None else (_definition(obj), _made_with(obj))


def _made_with(obj: Any) -> str:
    """The plain values (text, numbers, None, tuples of them) a closure holds and its defaults are, which
    tell apart the functions one factory makes (``make("l1")``, ``make("l2")``: one qualified name), while
    the same definition run again (a plugin file loaded twice) makes the same; lists, sets and dicts of them by
    their contents too (``make([64])``, ``make([128])`` counted only by type passed for one definition, and the
    second silently replaced the first); other values count by type."""
    def plain(v, depth=0):
        if v is None or isinstance(v, (str, bytes, bool, int, float, complex)):
            return repr(v)
        if depth > 4:  # (a list holding itself)
            return "<...>"
        if isinstance(v, (tuple, list, set, frozenset, dict)) and len(v) > 32:  # (a table of a million entries)
            return f"<{type(v).__qualname__} of {len(v)}>"
        if isinstance(v, (tuple, list)):
            inner = ", ".join(plain(x, depth + 1) for x in v)
            return (f"({inner}{',' if len(v) == 1 else ''})" if isinstance(v, tuple) else f"[{inner}]")
        if isinstance(v, (set, frozenset)):
            return "{" + ", ".join(sorted(plain(x, depth + 1) for x in v)) + "}"
        if isinstance(v, dict):
            return "{" + ", ".join(f"{plain(k, depth + 1)}: {plain(x, depth + 1)}" for k, x in v.items()) + "}"
        return f"<{type(v).__qualname__}>"

    cells = []
    for cell in getattr(obj, "__closure__", None) or ():
        try:
            cells.append(plain(cell.cell_contents))
        except ValueError:  # an empty cell (a name not bound yet)
            cells.append("<empty>")
    defaults = getattr(obj, "__defaults__", None) or ()
    return (f" with closure ({', '.join(cells)})" if cells else "") + (f" defaults {plain(tuple(defaults))}" if defaults else "")


def add(table: Dict[str, Any], kind: str, name: str, obj: Any, replace: bool = False) -> None:
    """Put ``obj`` into ``table`` under ``name``, or raise if another object holds the name."""
    check_free(table, kind, name, obj, replace)
    try:
        _DEFINED[obj] = (_definition(obj), _made_with(obj))
    except TypeError:  # (an object that cannot be weakly referenced or hashed: read again when compared)
        pass
    if _journal is not None:
        _journal.append((table, name, table.get(name, _ABSENT)))
    table[name] = obj


def check_free(table: Dict[str, Any], kind: str, name: str, obj: Any, replace: bool = False) -> None:
    """Raise unless ``obj`` may take ``name`` in ``table``: a non-empty string that no other definition
    holds (``replace``: it may)."""
    if not isinstance(name, str) or not name:
        raise TypeError(f"a {kind} is registered under a non-empty string name, got {name!r}")
    old = table.get(name)
    if old is not None and not replace and _as_defined(old)[0] != _definition(obj):
        was, new = _origin(old), _origin(obj)
        if was == new:  # two functions one factory made: told apart by what each was made with
            was, new = was + _as_defined(old)[1], new + _made_with(obj)
        raise ValueError(
            f"{kind} {name!r} is already registered ({was}); register {new} under another "
            f"name, or pass replace=True to override it")


def remove(table: Dict[str, Any], kind: str, name: str, builtins: Dict[str, Any]) -> None:
    """Take the user's entry ``name`` out of ``table`` (``builtins``: the entries the package registers
    itself, which stay: a built-in that a user's ``replace=True`` entry overrides comes back). An
    unknown name, or a built-in one, is a ValueError naming what can be removed."""
    own = sorted(k for k in table if k not in builtins or table[k] is not builtins[k])
    if name not in table:
        raise ValueError(f"no {kind} {name!r} is registered; the ones registered outside the package: "
                         f"{own or 'none'}" + near_misses([name], own))
    if name in builtins and table[name] is builtins[name]:
        raise ValueError(f"{kind} {name!r} is built in ({_origin(table[name])}) and cannot be removed; register "
                         "yours under another name, or with replace=True to override it")
    if _journal is not None:  # (a plugin that fails after this gets it back)
        _journal.append((table, name, table[name]))
    if name in builtins:
        table[name] = builtins[name]
    else:
        del table[name]


_NAME_BREAKERS = "=;,"  # what the command line's KEY=VALUE options and the ensemble rules' strings split on


def check_name(kind: str, name: Any) -> None:
    """Refuse a name a configuration could not give back: a non-string, an empty one, or one holding
    whitespace or one of ``= ; ,`` (``--estimator my est`` is two words; ``--controller_kw
    policy=a=b`` and the ensemble rules' ``pattern=spec;...`` strings split on them). A TypeError or
    ValueError naming ``kind`` and the name, raised when the decorator is applied."""
    if not isinstance(name, str) or not name:
        raise TypeError(f"a {kind} is registered under a non-empty string name, got {name!r}")
    bad = sorted({c for c in name if c.isspace() or c in _NAME_BREAKERS or not c.isprintable()})
    if bad:
        fixed = "".join("_" if c in bad else c for c in name.strip())
        raise ValueError(f"{kind} name {name!r} holds {', '.join(map(repr, bad))}, which a command line or config "
                         f"string cannot give back (options split on whitespace, '=', ';' and ','): register it "
                         f"as {fixed!r}, say")


def check_class(kind: str, name: str, cls: Any, base: type, needs: tuple = (), one_of: bool = False) -> None:
    """Refuse, when it is registered, a class the controller could not use: not a class, not a subclass
    of ``base`` (whose attributes and defaults the controller reads), or one that overrides none
    (``one_of``) or not all of the methods ``needs``, which ``base`` only declares. A TypeError naming
    ``kind``, ``name``, the class and the methods to write."""
    if not isinstance(cls, type) or not issubclass(cls, base):
        what = f"a {type(cls).__name__}" if not isinstance(cls, type) else f"class {cls.__name__}"
        raise TypeError(f"{kind} {name!r}: the decorator registers a subclass of {base.__module__}.{base.__qualname__}, "
                        f"got {what} ({_origin(cls)}): derive it from {base.__qualname__}")
    missing = [m for m in needs if getattr(cls, m, None) is getattr(base, m, None)]
    if missing and (not one_of or len(missing) == len(needs)):
        names = ("any of " if one_of and len(needs) > 1 else "") + ", ".join(needs if one_of else missing)
        raise TypeError(f"{kind} {name!r} ({_origin(cls)}) does not define {names}, which "
                        f"{base.__qualname__} only declares: write {'one of them' if one_of else 'it'} in the class")


def class_decorator(table: Dict[str, Any], kind: str, name: str, replace: bool = False,
                    base: Optional[type] = None, needs: tuple = (), one_of: bool = False):
    """Class decorator for a registry of classes: the class answers to ``name`` in ``table`` (a
    taken name is refused unless ``replace``, :func:`add`) and keeps it as ``cls.name``. The name is
    checked at once (:func:`check_name`), the class when decorated (:func:`check_class` with
    ``base``, ``needs`` and ``one_of``), so a mistake is named where it is made, not at the first update."""
    check_name(kind, name)

    def deco(cls):
        check_free(table, kind, name, cls, replace)  # a clash first: the name is what the user sees
        if base is not None:
            check_class(kind, name, cls, base, needs, one_of)
        add(table, kind, name, cls, replace)
        cls.name = name
        return cls

    return deco


def near_misses(given, known, whose: str = "") -> str:
    """``"; did you mean 'pace' for 'pacee'?"`` for each of ``given`` that is a near miss of one of
    ``known`` (``whose``, such as "the Controller's ", says whose option it is), else ``""``."""
    hints = [f"{m[0]!r} for {k!r}" for k in given if (m := difflib.get_close_matches(k, list(known), 1, 0.75))]
    return f"; did you mean {whose}{', '.join(hints)}?" if hints else ""


def build(table: Dict[str, Any], kind: str, name: Any, kw: Dict[str, Any], via: str = "") -> Any:
    """An instance of the class registered in ``table`` as ``name``, built with ``kw``. An unknown
    name, a keyword the class does not take, or a non-number (a flag too: YAML reads yes and on as
    true) for an option whose default is a number is a ValueError naming what exists (``kind`` names
    the registry in the message; ``via``, such as " (neither a Controller nor a policy option)",
    says where an unknown keyword came from). An integer for an option whose default is a float is
    given as that float, so 1 and 1.0 build the same object (and the same repr, which checkpoints
    fingerprint)."""
    if not isinstance(name, str) or name not in table:
        raise ValueError(f"unknown {kind} {name!r}: use one of {sorted(table)}")
    cls = table[name]
    params = inspect.signature(cls).parameters
    if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
        unknown = sorted(k for k in kw if k not in params)
        if unknown:
            takes = sorted(k for k, p in params.items() if p.kind is not p.VAR_POSITIONAL)
            raise ValueError(
                f"unknown argument(s) {unknown} for {kind} {name!r}{via}: "
                + (f"the {kind} takes {takes}" if takes else f"the {kind} takes none") + near_misses(unknown, takes)
            )
    kw = dict(kw)
    for k, v in kw.items():  # a number option given something else is named, not a bare float() error
        d = params[k].default if k in params else None
        if isinstance(d, float) and isinstance(v, int) and not isinstance(v, bool):
            kw[k] = float(v)
        elif isinstance(d, (int, float)) and not isinstance(d, bool) and (
                is_flag(v) or not isinstance(v, (int, float))):
            try:
                if isinstance(v, (str, bytes)) or is_flag(v):  # float("0.5") works, but the class would get a string
                    raise TypeError
                float(v)  # a numpy or a one-element torch number is taken
            except (TypeError, ValueError):
                raise ValueError(f"{kind} {name!r} option {k} must be a number, got {v!r}"
                                 + (f" (a string: write {k}={v})" if isinstance(v, str) and _numeric(v) else "")
                                 + (_FLAG_HINT.format(k=k, d=d) if is_flag(v) else "")) from None
    return cls(**kw)


_FLAG_HINT = " (a flag, not a number: give {k} the number itself, such as its default {d!r})"


def is_flag(value: Any) -> bool:
    """Whether ``value`` is a flag: a Python bool, a numpy bool (``np.bool_``, no subclass of bool) or
    a boolean tensor or array. ``float()`` reads each as 1.0 or 0.0, so a number option given one
    would silently take that number; a flag option (whose default is a bool) takes any of them."""
    return isinstance(value, bool) or str(getattr(value, "dtype", "")) in ("bool", "torch.bool")


def _numeric(text: str) -> bool:
    """Whether ``text`` reads as a finite number (the hint to write it unquoted helps only then: YAML
    reads ``nan`` and ``inf`` unquoted as text too, and no option takes them)."""
    try:
        return math.isfinite(float(text))
    except ValueError:
        return False


def flag_option(owner: str, key: str, value: Any, why: str = "") -> bool:
    """``value`` as a bool, checked where a registered class (``owner``: "policy 'threshold'", say) is
    constructed: True or False (a numpy or one-value torch bool too). Text, None or a number is a ValueError
    naming ``owner``, ``key``, ``why`` (what the option does) and the value given: ``--controller_kw
    adapt='false'`` (a file's quoted word) arrived as the text 'false' and was taken as true."""
    if is_flag(value):
        try:
            return bool(value)
        except (TypeError, RuntimeError, ValueError):  # (a tensor of several values)
            pass
    hint = (f" (the text {value!r}: give {key} unquoted, {key}={str(value).strip().lower() in ('true', 'yes', 'on')})"
            if isinstance(value, str) and value.strip().lower() in ("true", "false", "yes", "no", "on", "off") else "")
    raise ValueError(f"{owner} option {key} must be True or False{' (' + why + ')' if why else ''}, got {value!r}"
                     f"{hint}")


def number_option(owner: str, key: str, value: Any, low: Optional[float] = None, high: Optional[float] = None,
                  low_open: bool = False, high_open: bool = False, finite: bool = True, why: str = "") -> float:
    """``value`` as a float, checked where a registered class (``owner``: "utility estimator 'obd'",
    say) is constructed, so that the command line's ``--estimator_kw`` and the Python API refuse the
    same values: a ValueError naming ``owner``, ``key``, the range (``low``/``high``, each inclusive
    unless ``*_open``; ``finite``: NaN and inf refused, else only NaN and the infinities outside the
    range), ``why`` (what the option does) and the value given. A flag (True) is no number."""
    try:
        x = float(value) if not (isinstance(value, (str, bytes)) or is_flag(value)) else math.nan
    except (TypeError, ValueError):
        x = math.nan
    ok = not math.isnan(x) and (math.isfinite(x) or not finite) and (
        low is None or (x > low if low_open else x >= low)) and (high is None or (x < high if high_open else x <= high))
    if not ok:
        if low is not None and high is not None:
            span = f"in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
        elif low is not None or high is not None:
            span = f"{'>' if low is not None else '<'}{'' if (low_open if low is not None else high_open) else '='} " \
                   f"{low if low is not None else high:g}"
        else:
            span = ""
        kind = "a finite number" if finite else "a number"
        raise ValueError(f"{owner} option {key} must be {kind}{' ' + span if span else ''}{' (' + why + ')' if why else ''}"
                         f", got {value!r}" + (f" (a flag, not a number: give {key} the number itself)"
                                               if is_flag(value) else ""))
    return x
