"""Typed configuration: dataclass defaults, YAML files that hold only the differences, and
``--key value`` overrides on top.

A recipe declares its options once, as a dataclass with typed defaults::

    @dataclass
    class TrainConfig:
        model: str = "mlp"
        density: float = 0.1
        epochs: int = 10
        data_dir: Optional[str] = None
        hidden: Tuple[int, ...] = (300, 100)
        model_kw: Dict[str, Any] = field(default_factory=dict)

    cfg = parse_config(TrainConfig, ["--config", "a.yaml", "--density", "0.05", "--data-dir", "/d"])

Order of precedence: dataclass defaults < each ``--config FILE`` in the order given < command line
``--key value`` / ``--key=value`` overrides (wherever they appear). Keys accept dashes or
underscores (``--data-dir`` == ``--data_dir``; YAML keys likewise, and a file or mapping that gives
one key in both spellings is refused rather than letting one silently win; a file key has no
leading dashes: ``--epochs: 5``, a pasted command-line option, is refused naming ``epochs``).
Dotted keys reach into a nested dataclass or a dict field (``--model_kw.depth 4``). Unknown keys and values of the wrong type raise
:class:`ConfigError` naming the key, where it came from, the expected type and the closest known
key. The dataclass's own checks (``__post_init__``) run once, on the merged settings, so a later
file or the command line can fix what an earlier file gave. ``parse_config(..., exit_on_error=True)``
turns any of these into an argparse-style exit.

Supported field types: bool, int, float, str, ``Optional[X]``, ``Literal[...]``, ``List[X]``,
``Tuple[X, ...]`` / fixed tuples (comma-separated on the command line, or a YAML list; a ``List``
option given more than once on the command line takes the values of every one, in order, over
a --config file's list, and ``none`` there sets None where the field allows it), ``Dict``
(a YAML mapping, ``--key.entry value`` or ``--key entry=value``, repeatable; command-line values of
dict entries are parsed as YAML scalars), ``Any``, and
nested dataclasses.
"""
from __future__ import annotations

import contextvars
import dataclasses
import difflib
import re
import sys
import types
import typing
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import yaml

from .atomic import write_text
from .cli import error_lines
from .yaml_read import DuplicateKeyError, load_yaml

__all__ = ["ConfigError", "parse_config", "from_dict", "to_dict", "load_config", "save_config",
           "config_help", "normalize_key", "check_keys", "check_colon_keys", "read_yaml", "merge_key_values", "dotted_key_values", "given_keys",
           "COMMAND_LINE"]

_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}
_NONE = {"none", "null", "~"}
# on the command line "~" is the home folder, as the shell would have made it (it leaves --data_dir=~ alone):
# read as none, --data_dir=~ silently took the default data folder and --output_dir=~ runs/<date-time>


def _none_word(value) -> bool:
    """Whether ``value`` is a string that means None: none, null (and YAML's ~, not on the command line)."""
    if not isinstance(value, str):
        return False
    word = value.strip().lower()
    return word in _NONE and not (isinstance(value, _Cli) and word == "~")


class _Cli(str):
    """A value typed on the command line (a string still to be parsed), as opposed to YAML's."""


COMMAND_LINE = "the command line"  # where given_keys() says a key came from the command line
_GIVEN: contextvars.ContextVar = contextvars.ContextVar("adaptive_config_given", default=None)


def given_keys() -> Optional[Dict[str, str]]:
    """While :func:`parse_config` builds a config (in its ``__post_init__``): each top-level key the
    user gave, mapped to the last source that gave it (:data:`COMMAND_LINE` or the ``--config``
    file's path); None when the config is built any other way (directly, :func:`from_dict`,
    :func:`load_config`). It tells a value given on purpose from the same value left at its default."""
    given = _GIVEN.get()
    return None if given is None else dict(given)


class ConfigError(ValueError):
    """A configuration key or value is not acceptable; the message says which and why."""


def _load(text, where: str = ""):
    """``text`` read as YAML (:func:`adaptive.yaml_read.load_yaml`); a key given twice in one of its
    mappings is a :class:`ConfigError`, ``where`` (the option or file that gave it) leading its message."""
    try:
        return load_yaml(text)
    except DuplicateKeyError as e:
        raise ConfigError(f"{where}: {e}" if where else str(e)) from None


SEED_RANGE = "[0, 2**32 - 1] (0 to 4294967295)"  # what numpy's seeding (and so every recipe's --seed) takes


def seed_in_range(seed) -> bool:
    """Whether ``seed`` is an integer the recipes accept as --seed (:data:`SEED_RANGE`)."""
    return not isinstance(seed, bool) and isinstance(seed, int) and 0 <= seed <= 2**32 - 1


def normalize_key(key: str) -> str:
    """``--data-dir`` / ``data-dir`` / ``data_dir`` -> ``data_dir``: an option's name as the command
    line spells it (its leading dashes dropped) or as a config file does. (A file key that starts
    with a dash is refused before it is normalised: see :func:`check_keys`.)"""
    return key.lstrip("-").replace("-", "_")


# ----------------------------------------------------------------------------- types

def _fields(cls) -> Dict[str, Tuple[Any, dataclasses.Field]]:
    hints = typing.get_type_hints(cls)
    return {f.name: (hints[f.name], f) for f in dataclasses.fields(cls) if f.init}


def _type_name(tp) -> str:
    if isinstance(tp, type):
        return tp.__name__
    return str(tp).replace("typing.", "")


def _is_union(tp) -> bool:
    return typing.get_origin(tp) is Union or (hasattr(types, "UnionType") and isinstance(tp, types.UnionType))


def split_commas(text: str) -> list:
    """``"a, b,c"`` -> ``["a", "b", "c"]``, empty parts dropped; a comma inside a ``[...]`` character
    class of a name pattern does not split (``"layer[1,2],fc"`` -> ``["layer[1,2]", "fc"]``)."""
    return [t.strip() for t in re.split(r",(?![^\[]*\])", text) if t.strip()]


def _split_list(text: str) -> list:
    text = text.strip()
    if text.startswith("["):
        try:
            parsed = _load(text)
        except yaml.YAMLError:  # not a YAML list ('[ab]*' is a name pattern): the comma-separated form
            parsed = None
        if isinstance(parsed, list):
            return parsed
    return split_commas(text)


def _looks_float(value) -> bool:
    """A float as written: a YAML float, or a string with a decimal point or an exponent."""
    if isinstance(value, float):
        return True
    return isinstance(value, str) and any(c in value for c in ".eE") and value.strip().lower() not in _NONE


def _coerce(value, tp, key: str, src: str = ""):
    """``value`` (from YAML, or a command-line string when a ``_Cli``) as ``tp``; ``key`` and
    ``src`` (where the value came from) name it in errors."""
    where = f"config key '{key}'" + (f" {src}" if src else "")

    def bad(extra=""):
        shown = repr(value) if not isinstance(value, str) else f"'{value}'"
        if value is None and not extra:  # ('batch_size:' with nothing after it: YAML's null)
            extra = " (the key has no value: give it one, or leave the key out for its default)"
        return ConfigError(f"{where} expects {_type_name(tp)}, got {shown}{extra}")

    if tp is Any:
        if not isinstance(value, _Cli):  # (a file's: a dict field's mapping was checked whole)
            return _exponent_floats(value)
        value = _load(value, where)
        _check_colon_keys_in(value, where, command_line=True)  # --model_kw opts={a:1}
        return _exponent_floats(value)
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if _is_union(tp):
        if value is None or _none_word(value):
            if type(None) in args:
                return None
            raise bad()
        errors = []
        order = [a for a in args if a is not type(None)]
        if int in order and float in order and _looks_float(value):  # 1.0 is the fraction, not the count 1
            order.remove(float)
            order.insert(order.index(int), float)
        for arg in order:
            try:
                return _coerce(value, arg, key, src)
            except ConfigError as e:
                errors.append(e)
        raise bad()
    if origin is typing.Literal:
        for choice in args:
            if value == choice or (isinstance(value, str) and not isinstance(choice, str) and value == str(choice)):
                return choice
        if isinstance(value, bool) and not any(isinstance(c, bool) for c in args):
            # YAML 1.1 reads a bare no/off/false (yes/on/true) as a boolean: mixed_precision: no is the choice 'no'
            words = ("yes", "on", "true") if value else ("no", "off", "false")
            for choice in args:
                if isinstance(choice, str) and choice.lower() in words:
                    return choice
            raise ConfigError(f"{where} must be one of {list(args)}, got {value!r} (YAML reads a bare "
                              f"{'yes, on or true' if value else 'no, off or false'} as a yes/no: quote a word, "
                              f"e.g. '{args[0]}')")
        raise ConfigError(f"{where} must be one of {list(args)}, got {value!r}")
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
            return value.strip().lower() in _TRUE
        raise bad(" (use true or false)")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str):
            try:
                return int(value.strip())  # exactly, however large (a float would round it)
            except ValueError:
                pass
        if isinstance(value, (str, float)) and not isinstance(value, bool):
            try:
                f = float(value)
            except ValueError:
                raise bad() from None
            if f.is_integer():
                return int(f)
        raise bad()
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                raise bad() from None
        raise bad()
    if tp is str:
        if isinstance(value, str):
            return str(value)
        raise bad()
    if tp is Path:
        if isinstance(value, (str, Path)):
            return Path(value)
        raise bad()
    if origin in (list, tuple) or tp in (list, tuple):
        items = _split_list(value) if isinstance(value, str) else value
        if not isinstance(items, (list, tuple)):
            raise bad()
        if origin is tuple and args and not (len(args) == 2 and args[1] is Ellipsis):
            if len(items) != len(args):
                raise bad(f" ({len(args)} items needed)")
            out = [_coerce(v, a, f"{key}[{i}]", src) for i, (v, a) in enumerate(zip(items, args))]
        else:
            elem = args[0] if args else Any
            out = [_coerce(v, elem, f"{key}[{i}]", src) for i, v in enumerate(items)]
        return tuple(out) if (origin is tuple or tp is tuple) else out
    if origin is dict or tp is dict:
        typed = isinstance(value, _Cli)
        if typed:
            value = _load(value, where) if value.strip() else {}
        if not isinstance(value, dict):
            raise bad(f" (a YAML mapping such as '{{a: 1}}', KEY=VALUE, or one entry: --{key}.KEY VALUE)")
        check_colon_keys(value, where, command_line=typed)
        vt = args[1] if len(args) == 2 else Any
        return {str(k): _coerce(v, vt, f"{key}.{k}", src) for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise bad(" (a mapping of its fields)")
        return _apply(tp, _default_values(tp), value, key + ".", src)
    if isinstance(tp, type) and isinstance(value, tp):
        return value
    raise bad()


# ----------------------------------------------------------------------------- building

def _default_values(cls) -> Dict[str, Any]:
    out = {}
    for name, (_, f) in _fields(cls).items():
        if f.default is not dataclasses.MISSING:
            out[name] = f.default
        elif f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
            out[name] = f.default_factory()  # type: ignore[misc]
    return out


def _unknown(key: str, known, where: str) -> ConfigError:
    close = difflib.get_close_matches(key, list(known), n=1)
    hint = f"; did you mean '{close[0]}'?" if close else f"; known keys: {', '.join(sorted(known))}"
    return ConfigError(f"unknown config key '{key}' {where}{hint}")


def check_colon_keys(mapping: Dict[str, Any], where: str, nested: bool = True, command_line: bool = True) -> None:
    """A :class:`ConfigError` where YAML read ``KEY:VALUE`` written without a space after the colon
    (``{image_size:32}``) as a key named ``image_size:32`` with no value (nested mappings too), which
    the checks after would call an unknown argument; ``where`` (the option and its value, say) starts
    the message. ``nested``: the mappings inside too; ``command_line``: the mapping was typed on the
    command line, where KEY=VALUE is the other way to write it. With ``nested``, the mappings in
    lists are checked too (``{transforms: [{resize:36}]}``)."""
    for k, v in mapping.items():
        if nested and isinstance(v, (dict, list, tuple)):
            _check_colon_keys_in(v, where, command_line)
        elif v is None and isinstance(k, str) and ":" in k.strip(": "):
            name, _, value = k.partition(":")
            raise ConfigError(f"{where}: YAML read {k!r} as a key with no value: YAML needs a space after ':' "
                              f"({{{name}: {value}}})" + (f", or use KEY=VALUE ({name}={value})" if command_line else ""))


def _check_colon_keys_in(value, where: str, command_line: bool) -> None:
    """:func:`check_colon_keys` on ``value`` (a mapping) and on every mapping its lists hold."""
    if isinstance(value, dict):
        check_colon_keys(value, where, True, command_line)
    elif isinstance(value, (list, tuple)):
        for item in value:
            _check_colon_keys_in(item, where, command_line)


def check_keys(mapping: Dict[str, Any], prefix: str = "", source: str = "") -> None:
    """A :class:`ConfigError` where a key of ``mapping`` (a config file's, or a section's) starts with
    a dash (``--epochs:``, a command-line option pasted into a file: the dashes belong to the command
    line, and the file would read otherwise than it is written), or where two keys are one key spelt
    two ways (``data_dir`` and ``data-dir``): one of them would silently win; or where YAML read
    ``key:value`` (no space after the colon) as a key with no value (:func:`check_colon_keys`)."""
    check_colon_keys(mapping, f"config {('keys of ' + prefix.rstrip('.')) if prefix else 'keys'}"
                     + (f" {source}" if source else ""), nested=False,  # a dict field's value: _coerce
                     command_line=source.startswith("(from --"))
    spelt: Dict[str, List[str]] = {}
    for raw_key in mapping:
        if str(raw_key).startswith("-"):
            key = normalize_key(str(raw_key))
            raise ConfigError(f"config key '{prefix}{raw_key}'{(' ' + source) if source else ''} starts with a dash, "
                              f"as a command-line option does; a key in a config file (or a YAML mapping) is the "
                              f"option's name alone: write '{prefix}{key}' (e.g. '{key}: VALUE')")
        spelt.setdefault(normalize_key(str(raw_key)), []).append(str(raw_key))
    for key, keys in spelt.items():
        if len(keys) > 1:
            shown = " and ".join(f"'{prefix}{k}'" for k in keys)
            raise ConfigError(f"config keys {shown}{(' ' + source) if source else ''} are the same key "
                              f"'{prefix}{key}' (dashes and underscores are one spelling), so one would silently "
                              f"win: keep one of them")


class _Unbuilt(dict):
    """A nested dataclass field's values, merged from every source, built (and checked) last."""


def _merge(cls, values: Dict[str, Any], updates: Dict[str, Any], prefix: str = "", source: str = "") -> Dict[str, Any]:
    """``values`` (of ``cls``'s fields) updated by the nested mapping ``updates``: keys known and values
    of the right types, or a :class:`ConfigError` naming ``source``; a dict field is updated entry by
    entry. Nothing is built, so ``__post_init__`` checks (and derives) only the merged settings."""
    fields = _fields(cls)
    values = dict(values)
    check_keys(updates, prefix, source)
    for raw_key, value in updates.items():
        key = normalize_key(str(raw_key))
        if key not in fields:
            raise _unknown(prefix + key, [prefix + k for k in fields], source or "")
        tp, _ = fields[key]
        current = values.get(key)
        if dataclasses.is_dataclass(tp) and isinstance(value, dict):
            base = (current if isinstance(current, _Unbuilt) else
                    _shallow(current) if dataclasses.is_dataclass(current) else _default_values(tp))
            values[key] = _Unbuilt(_merge(tp, base, value, prefix + key + ".", source))
        else:
            value = _coerce(value, tp, prefix + key, source)
            if isinstance(value, dict) and isinstance(current, dict):
                value = {**current, **value}  # a dict field is updated entry by entry
            values[key] = value
    return values


def _build(cls, values: Dict[str, Any], prefix: str = "", source: str = "") -> Any:
    """``cls`` from merged ``values`` (nested dataclasses first), its ``__post_init__`` checks naming ``source``."""
    fields = _fields(cls)
    values = {k: (_build(fields[k][0], v, prefix + k + ".", source) if isinstance(v, _Unbuilt) else v)
              for k, v in values.items()}
    missing = [k for k in fields if k not in values]
    if missing:
        raise ConfigError(f"required config keys missing: {', '.join(prefix + k for k in missing)}")
    try:
        return cls(**values)
    except (TypeError, ValueError) as e:
        if isinstance(e, ConfigError):
            raise
        raise ConfigError(f"invalid configuration{(' ' + source) if source else ''}: {e}") from e


def _apply(cls, values: Dict[str, Any], updates: Dict[str, Any], prefix: str = "", source: str = "") -> Any:
    """``cls`` built from ``values`` updated by the nested mapping ``updates`` (all checked)."""
    return _build(cls, _merge(cls, values, updates, prefix, source), prefix, source)


def from_dict(cls, data: Dict[str, Any], source: str = "") -> Any:
    """Build ``cls`` from its defaults updated by the (nested) mapping ``data``, strictly."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"a configuration must be a mapping of keys to values{(' ' + source) if source else ''}, "
                          f"got {type(data).__name__}")
    return _apply(cls, _default_values(cls), data, source=source)


def to_dict(cfg) -> Dict[str, Any]:
    """Plain nested dict of a config (tuples become lists, Paths strings): YAML/JSON-safe."""

    def plain(v):
        if dataclasses.is_dataclass(v) and not isinstance(v, type):
            return {f.name: plain(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {str(k): plain(x) for k, x in v.items()}
        if isinstance(v, Path):
            return str(v)
        return v

    return plain(cfg)


def _settings(cls, raw: Dict[str, Any]) -> Dict[str, Any]:
    """A file's settings without the keys that ``cls`` lists in ``RECORDED_KEYS`` (a ClassVar): what a
    program writes beside the settings for the reader (``save_config(..., extra=)``), read by nothing."""
    recorded = set(getattr(cls, "RECORDED_KEYS", ()))
    return {k: v for k, v in raw.items() if normalize_key(str(k)) not in recorded} if recorded else raw


def load_config(cls, path, overrides: Optional[Dict[str, Any]] = None):
    """``cls`` from the YAML file ``path`` (only known keys, right types; the keys ``cls.RECORDED_KEYS``
    names are skipped), then ``overrides``; the config's own checks see the file and the overrides
    together."""
    raw = _settings(cls, _read_yaml(path, option=None) or {})
    values = _merge(cls, _default_values(cls), raw, source=f"in {path}")
    if overrides:
        values = _merge(cls, values, overrides, source="in overrides")
    return _build(cls, values, source=f"in {path}" + (" with overrides" if overrides else ""))


def save_config(cfg, path, extra: Optional[Dict[str, Any]] = None, **override) -> None:
    """Write the resolved config as YAML (readable back with :func:`load_config`), with the keys of
    ``override`` set to the values given (e.g. ``resume=None``: a rerun from the file is a new run)
    and the keys of ``extra`` after them: records for the reader (what a setting resolved to), each one
    that the config's class lists in ``RECORDED_KEYS``, so that reading the file back skips it."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    data = to_dict(cfg)
    unknown = set(override) - set(data)
    if unknown:
        raise KeyError(f"save_config: no config key(s) {sorted(unknown)}")
    data.update(override)
    extra = extra or {}
    unlisted = sorted(set(extra) - set(getattr(type(cfg), "RECORDED_KEYS", ())))
    if unlisted or set(extra) & set(data):
        raise KeyError(f"save_config: extra key(s) {unlisted or sorted(set(extra) & set(data))} are settings or not "
                       f"listed in {type(cfg).__name__}.RECORDED_KEYS, so reading the file back would refuse or take them")
    data.update(to_dict(extra))
    write_text(path, yaml.safe_dump(data, sort_keys=False))


def read_yaml(path, option: Optional[str] = "--config") -> Dict[str, Any]:
    """The mapping in the YAML file ``path`` ({} for an empty file); :class:`ConfigError` naming the
    file (and ``option``, the command-line option that gave it, when not None) when it is missing,
    a folder, unreadable, not YAML or not a mapping."""
    p = Path(path).expanduser()  # ~ as the shell would have (--config=~/c.yaml was 'does not exist')
    given = f"{option} file '{path}'" if option else f"config file '{path}'"
    if not str(path).strip():  # (Path("") is the working directory: "is a folder" misled)
        raise ConfigError(f"{option or 'the config file path'} '{path}' names no file: give the path of a YAML "
                          "file (a run folder's config.yaml, say)")
    if p.is_dir():
        raise ConfigError(f"{given} is a folder: give the path of a YAML file (a run folder's config.yaml, say)")
    if not p.is_file():
        raise ConfigError(f"{given} does not exist: check the path (relative paths start from {Path.cwd()})")
    try:
        with open(p) as f:
            data = _load(f.read(), given)
    except yaml.YAMLError as e:
        raise ConfigError(f"{given} is not valid YAML: {e}") from None
    except UnicodeDecodeError:  # (an image, a checkpoint: 'utf-8' codec can't decode byte 0x89 said nothing of it)
        raise ConfigError(f"{given} is not a text file: a config is YAML text, a 'key: value' line per option "
                          "(a run folder's config.yaml, say)") from None
    except OSError as e:
        raise ConfigError(f"{given} cannot be read ({e.strerror or e})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        shown = f" ({data!r:.60})" if isinstance(data, (str, int, float)) else ""
        raise ConfigError(f"{given} must hold a mapping of keys to values, got {type(data).__name__}{shown}: a config "
                          "is YAML with a 'key: value' line per option (a space after each colon), e.g. 'lr: 0.1'")
    return data


_read_yaml = read_yaml


def _shallow(cfg) -> Dict[str, Any]:
    return {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg) if f.init}


# ----------------------------------------------------------------------------- command line

def _is_bool(tp) -> bool:
    return tp is bool or (_is_union(tp) and bool in typing.get_args(tp))


def _is_list(tp) -> bool:
    """``List[X]`` or ``Optional[List[X]]``: a field whose command-line values accumulate."""
    if _is_union(tp):
        return any(_is_list(a) for a in typing.get_args(tp) if a is not type(None))
    return typing.get_origin(tp) is list or tp is list


def _lookup_type(cls, dotted: str):
    """Type of the field at ``dotted`` (``a.b.c``), or None when unknown. Dict entries: value type."""
    tp = cls
    for part in dotted.split("."):
        if dataclasses.is_dataclass(tp):
            fields = _fields(tp)
            if part not in fields:
                return None
            tp = fields[part][0]
        elif typing.get_origin(tp) is dict or tp is dict:
            args = typing.get_args(tp)
            tp = args[1] if len(args) == 2 else Any
        else:
            return None
    return tp


_EXPONENT_FLOAT = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)[eE][+-]?\d+")


def _exponent_floats(value):
    """YAML 1.1 reads 1e-3 (no decimal point) as a string: the float it was written as, also inside
    lists and mappings of untyped values (controller_kw, model_kw, dataset_kw)."""
    if isinstance(value, str) and _EXPONENT_FLOAT.fullmatch(value.strip()):
        return float(value)
    if isinstance(value, list):
        return [_exponent_floats(v) for v in value]
    if isinstance(value, dict):
        return {k: _exponent_floats(v) for k, v in value.items()}
    return value


def key_value(item: str, option: str = "--dataset-kw"):
    """``(KEY, value)`` from ``KEY=VALUE`` (the value read as YAML: numbers, lists, true/false);
    ValueError naming ``option`` otherwise."""
    key, sep, value = str(item).partition("=")
    if not sep or not key.strip().isidentifier():
        raise ValueError(f"{option} {item!r}: write KEY=VALUE, e.g. {option} image_size=32")
    try:
        return key.strip(), (_exponent_floats(_load(value, f"{option} {item!r}")) if value.strip() else None)
    except yaml.YAMLError as e:
        raise ValueError(f"{option} {item!r}: the value is not YAML ({str(e).splitlines()[0]}); quote it differently, "
                         f"e.g. {option} '{key.strip()}=[1, 2]'") from None


def merge_key_values(items: Sequence[str], option: str = "--dataset-kw",
                     base: Optional[Dict[str, Any]] = None,
                     examples: Tuple[str, str] = ("image_size=32", "{image_size: 32, resize: 36}")) -> Dict[str, Any]:
    """``base`` (a --config file's mapping, say) updated by each of ``items`` in order, each
    ``KEY=VALUE`` or a YAML mapping (``'{a: 1, b: 2}'``), as :func:`parse_config` reads a dict
    field: entry by entry, later ones winning per key. ValueError naming ``option`` otherwise, with
    ``examples`` (one KEY=VALUE, one mapping) of what to write."""
    # (a --config file's mapping: there KEY=VALUE is no way to write it)
    check_colon_keys(dict(base or {}), f"the config file's {option.lstrip('-').replace('-', '_')}", command_line=False)
    # a file's 1e-6, read by YAML as text, is the float as here; its keys text, as the command line's are (a file's
    # {1: 2} reached the checks as an int key: "'int' object is not iterable", naming neither key nor file)
    out = {str(k): v for k, v in _exponent_floats(dict(base or {})).items()}
    for item in items:
        try:
            entry = dict([key_value(item, option)])
        except ValueError:
            key, sep, _ = str(item).partition("=")
            if sep and key.strip().isidentifier() and not str(item).lstrip().startswith("{"):
                raise  # KEY=VALUE whose value is not YAML: key_value says so
        else:
            check_colon_keys(entry, f"{option} {item!r}")  # (its value's mappings: opts={a:1})
            out.update(entry)
            continue
        try:
            mapping = _load(item, f"{option} {item!r}") if str(item).strip() else {}
        except yaml.YAMLError:
            mapping = None
        if not isinstance(mapping, dict):
            raise ValueError(f"{option} {item!r}: write KEY=VALUE or a YAML mapping, e.g. {option} {examples[0]} "
                             f"or {option} '{examples[1]}'")
        check_colon_keys(mapping, f"{option} {item!r}")
        out.update({str(k): _exponent_floats(v) for k, v in mapping.items()})
    return out


def dotted_key_values(argv: Sequence[str], options: Sequence[str]) -> List[str]:
    """``argv`` with each ``--OPTION.KEY VALUE`` (or ``--OPTION.KEY=VALUE``) of the dict ``options``
    (``model_kw``, spelt with - or _) written ``--OPTION KEY=VALUE``: the spelling :func:`parse_config`
    takes for a dict field's entry, for a recipe whose options argparse reads. A ``--OPTION.KEY`` with
    no value after it is left for argparse to refuse."""
    names = {normalize_key(o) for o in options}
    out, i = [], 0
    while i < len(argv):
        tok = str(argv[i])
        head, eq, value = tok.partition("=")
        option, dot, key = head[2:].partition(".") if head.startswith("--") else ("", "", "")
        if dot and normalize_key(option) in names and key.isidentifier():
            if eq:
                out += [f"--{option}", f"{key}={value}"]
                i += 1
                continue
            if i + 1 < len(argv) and not (str(argv[i + 1]).startswith("--") and len(str(argv[i + 1])) > 2):
                out += [f"--{option}", f"{key}={argv[i + 1]}"]
                i += 2
                continue
        out.append(tok)
        i += 1
    return out


def _nest(flat: Dict[Tuple[str, ...], Any]) -> Dict[str, Any]:
    out: Dict[str, Any] = {}
    for path, v in flat.items():
        *parents, last = path
        d = out
        for p in parents:
            d = d.setdefault(p, {})
        d[last] = v
    return out


def _parse_argv(cls, argv: Sequence[str]) -> Tuple[List[str], Dict[Tuple[str, ...], Any]]:
    """The ``--config`` files in order, and every other option's value under its key path (dotted
    keys split; a dict field's entries each under their own path, the later of two winning)."""
    configs, flat = [], {}
    i = 0
    while i < len(argv):
        tok = argv[i]
        if not tok.startswith("--") or tok == "--":
            raise ConfigError(f"unexpected argument '{tok}': options are written --key value")
        key, eq, val = tok[2:].partition("=")
        key = ".".join(normalize_key(k) for k in key.split("."))
        has_value = bool(eq)
        if not has_value and i + 1 < len(argv) and not (argv[i + 1].startswith("--") and len(argv[i + 1]) > 2):
            val, has_value = argv[i + 1], True
            i += 1
        i += 1
        if key == "config":
            if not has_value:
                raise ConfigError("--config needs a YAML file path")
            configs.append(val)
            continue
        tp = _lookup_type(cls, key)
        leaf = key.rsplit(".", 1)[-1]
        if tp is None and leaf.startswith("no_") and not has_value:  # --no-progress: progress false
            neg = key[: len(key) - len(leaf)] + leaf[3:]
            if _is_bool(_lookup_type(cls, neg) or int):
                flat.pop(tuple(neg.split(".")), None)  # the latest option last
                flat[tuple(neg.split("."))] = _Cli("false")
                continue
        if tp is None:
            parent = key.rsplit(".", 1)[0] if "." in key else ""
            ptp = _lookup_type(cls, parent) if parent else cls
            if dataclasses.is_dataclass(ptp):
                known = [f"{parent}.{k}" if parent else k for k in _fields(ptp)] + ([] if parent else ["config"])
                raise _unknown(key, known, f"(from --{key})")
            raise ConfigError(f"config key '{parent or key}' has no entries to set (from --{key})")
        if not has_value:
            if not _is_bool(tp):
                raise ConfigError(f"--{key} needs a value ({_type_name(tp)})")
            val = "true"
        path = tuple(key.split("."))
        if typing.get_origin(tp) is dict or tp is dict:
            entries = _dict_entries(path, val, tp, key)
        elif dataclasses.is_dataclass(tp):  # --optim '{lr: 0.5}': its fields, each under its own path
            entries = _field_entries(path, val, tp, key)
        elif _is_list(tp) and not _none_word(_Cli(val)):  # repeated, a list option's values accumulate
            items = [_Cli(v) if isinstance(v, str) else v for v in _split_list(val)]
            before = flat.get(path)
            entries = {path: (before if isinstance(before, list) else []) + items}
        else:
            entries = {path: _Cli(val)}
        for p, v in entries.items():  # the latest option last, where a later one overrides an earlier one
            flat.pop(p, None)
            flat[p] = v
    return configs, flat


def _field_entries(path: Tuple[str, ...], val: str, tp, key: str) -> Dict[Tuple[str, ...], Any]:
    """The fields a YAML mapping given to the dataclass field at ``path`` sets, each under its own
    path (nested mappings too), so that it merges with ``--key.field value`` options in either order
    instead of replacing them; anything but a mapping gets the field's own error."""
    mapping = _load(val, f"--{key}") if val.strip() else None
    if not isinstance(mapping, dict):
        _coerce(_Cli(val), tp, key, f"(from --{key})")  # raises: a mapping of its fields is needed

    def flatten(prefix, m):  # field names as normalize_key spells them, as a --key.field option's are
        check_keys(m, ".".join(prefix) + ".", f"(from --{key})")
        for k, v in m.items():
            if isinstance(v, dict) and v:
                yield from flatten(prefix + (normalize_key(str(k)),), v)
            else:
                yield prefix + (normalize_key(str(k)),), _exponent_floats(v)

    return dict(flatten(path, mapping))


def _dict_entries(path: Tuple[str, ...], val: str, tp, key: str) -> Dict[Tuple[str, ...], Any]:
    """The entries one command-line value of the dict field at ``path`` sets, each under its own
    path: ``KEY=VALUE`` (repeatable) and a YAML mapping alike, so that every later entry updates the
    dict entry by entry instead of replacing what an earlier one gave (``--model_kw '{a: 1}'
    --model_kw b=2`` sets both)."""
    try:
        entry, _ = key_value(val, f"--{key}")
    except ConfigError:  # (a key its value's mapping gives twice: named as it is)
        raise
    except ValueError as e:
        k, sep, _ = val.partition("=")
        if sep and k.strip().isidentifier() and not val.lstrip().startswith("{"):  # KEY=VALUE, VALUE not YAML
            raise ConfigError(f"a value could not be read as YAML: {e}") from None
        entry = None
    if entry is not None:  # --dataset_kw image_size=32
        return {path + (entry,): _Cli(val.partition("=")[2])}
    mapping = _coerce(_Cli(val), tp, key, f"(from --{key})")  # a YAML mapping, or the field's own error
    return {path + (k,): v for k, v in mapping.items()}


def config_help(cls, prog: Optional[str] = None) -> str:
    """One line per key: name, type, default, and ``metadata["help"]`` where given."""
    lines = [f"usage: {prog or 'script'} [--config FILE.yaml ...] [--key value ...]", "",
             "options (dashes or underscores; later --config files and then --key value override;",
             "a list option given more than once takes the values of every one, in order;",
             "a yes/no option alone means yes, --no-KEY means no):"]
    defaults = _default_values(cls)
    for name, (tp, f) in _fields(cls).items():
        default = defaults.get(name, "<required>")
        text = f"  --{name.replace('_', '-')} ({_type_name(tp)}, default {default!r})"
        if f.metadata.get("help"):
            text += f": {f.metadata['help']}"
        lines.append(text)
    return "\n".join(lines)


def parse_config(cls, argv: Optional[Sequence[str]] = None, prog: Optional[str] = None,
                 exit_on_error: bool = False):
    """Build ``cls`` from defaults, ``--config`` YAML files, then ``--key value`` overrides.

    ``argv`` defaults to ``sys.argv[1:]``. ``-h``/``--help`` prints :func:`config_help` and exits.
    Raises :class:`ConfigError` (or, with ``exit_on_error``, prints ``error: ...`` and exits with
    status 2, like argparse).
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    if "-h" in argv or "--help" in argv:
        try:
            print(config_help(cls, prog), flush=True)
        except BrokenPipeError:  # `--help | head` closed the pipe: the help was read, status 0 (not a traceback)
            import os

            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # (Python's flush at exit would complain)
        raise SystemExit(0)
    try:
        configs, flat = _parse_argv(cls, argv)
        # each source's keys and types are checked naming it; the config's own checks (__post_init__)
        # run once, on the merged settings, so that a later file or the command line can fix what an
        # earlier file gave (and the defaults __post_init__ derives follow the final values)
        values, given = _default_values(cls), {}
        for path in configs:
            raw = _settings(cls, _read_yaml(path) or {})
            values = _merge(cls, values, raw, source=f"in {path}")
            given.update({normalize_key(str(k)): str(path) for k in raw})
        values = _merge(cls, values, _nest(flat), source="(from the command line)")
        given.update({p[0]: COMMAND_LINE for p in flat})
        sources = configs + ([COMMAND_LINE] if flat else [])
        token = _GIVEN.set(given)  # given_keys(), for __post_init__
        try:
            return _build(cls, values, source=f"(from {' and '.join(sources)})" if sources else "")
        finally:
            _GIVEN.reset(token)
    except yaml.YAMLError as e:
        e = ConfigError(f"a value could not be read as YAML ({type(e).__name__}: {str(e).splitlines()[0]}); quote "
                        "it differently or give it in a --config file")
        if not exit_on_error:
            raise e from None
        print(error_lines(prog or "error", e), file=sys.stderr)
        raise SystemExit(2)
    except ConfigError as e:
        if not exit_on_error:
            raise
        print(error_lines(prog or "error", e), file=sys.stderr)
        raise SystemExit(2)
