"""Plugins: your own code, loaded by the recipes before they read any name.

A plugin is a Python file (``my_ext.py``) or an importable module (``mypkg.sparsity``) whose import
registers models, datasets, utility estimators, policies, budgets or ensembles with the
``register_*`` decorators. The recipes take ``--plugins`` (YAML key ``plugins``) and load each one
before they check the names in the configuration, so ``--model my_net --estimator snip`` works
exactly as a built-in name does, on every process of a multi-process run.
"""
from __future__ import annotations

import hashlib
import importlib
import importlib.util
import re
import sys
from pathlib import Path
from types import ModuleType
from typing import Iterable, List, Optional

from . import registry
from .cli import with_notes_of

_LOADED = {}  # resolved file path -> module: a file is executed once per process


def _is_file(spec: str) -> bool:
    """A plugin spec names a file (else a module): a .py name or a path with a separator."""
    spec = spec.strip()
    return spec.endswith(".py") or "/" in spec or "\\" in spec


class PluginError(RuntimeError):
    """A plugin could not be found or failed while it was imported."""


class PluginNotFoundError(PluginError):
    """The plugin file or module ``spec`` (as given) is not there."""

    def __init__(self, msg: str, spec: str):
        super().__init__(msg)
        self.spec = spec


def load_plugin(spec: str) -> ModuleType:
    """Import one plugin: a path to a ``.py`` file, or a dotted module name on ``sys.path``."""
    if not isinstance(spec, str) or not spec.strip():
        raise PluginError(f"a plugin is a .py file or a module name, got {spec!r}")
    spec = spec.strip()
    if _is_file(spec):
        path = Path(spec).expanduser().resolve()
        resolved_to = f" (resolved to {path})" if str(path) != spec else ""
        if path.is_dir():
            raise PluginError(f"plugin file {spec}{resolved_to} is a folder: give the path of a .py file in it, or a "
                              "package's module name with the folder holding the package on PYTHONPATH")
        if not path.is_file():
            raise PluginNotFoundError(f"plugin file {spec} not found{resolved_to}: give the path of a .py file, "
                                      "or the name of an importable module", spec)
        if path in _LOADED:
            return _LOADED[path]
        # the module name follows the file's content: two different plugins called ext.py must not
        # pass for the same definition run twice (the second would silently replace the first's
        # names), while a copy of the same file may be loaded again
        name = registry.PLUGIN_MODULE + re.sub(r"\W", "_", path.stem) + "_" + hashlib.sha1(path.read_bytes()).hexdigest()[:8]
        mod_spec = importlib.util.spec_from_file_location(name, path)
        if mod_spec is None:  # no loader for the file's suffix (a bare AttributeError below)
            raise PluginError(f"plugin file {spec}{resolved_to} is not a .py file: a plugin is Python source whose "
                              "name ends in .py, or an importable module's name")
        mod = importlib.util.module_from_spec(mod_spec)
        sys.modules[name] = mod  # dataclasses and pickling resolve the plugin's names through it
        try:
            with registry.all_or_nothing():  # a plugin that fails halfway registers nothing
                mod_spec.loader.exec_module(mod)
        except Exception as e:
            sys.modules.pop(name, None)
            raise with_notes_of(PluginError(f"plugin {spec} failed while loading: {type(e).__name__}: {e}"), e) from e
        _LOADED[path] = mod
        return mod
    if spec.startswith("."):  # importlib asks for a package to resolve it against (a bare TypeError)
        raise PluginError(f"plugin module {spec!r} is a relative name: give the module's full dotted name, or a "
                          ".py file's path")
    try:
        with registry.all_or_nothing():
            return importlib.import_module(spec)
    except ModuleNotFoundError as e:
        if e.name and (spec == e.name or spec.startswith(e.name + ".")):  # (not a dependency it imports: timm for timm_models)
            raise PluginNotFoundError(f"plugin module {spec!r} not found: give a .py file's path, or put the module "
                                      "on PYTHONPATH", spec) from e
        raise with_notes_of(PluginError(f"plugin {spec} failed while loading: {type(e).__name__}: {e}"), e) from e
    except Exception as e:
        raise with_notes_of(PluginError(f"plugin {spec} failed while loading: {type(e).__name__}: {e}"), e) from e


def resolved(specs: Iterable[str] | str | None) -> List[str]:
    """The plugin list with every file given by its absolute path (module names unchanged), so a
    run's config.yaml loads the same files from any working directory."""
    if specs is None:
        return []
    if isinstance(specs, str):
        specs = [specs]
    out = []
    for s in specs:
        if isinstance(s, str) and _is_file(s):
            out.append(str(Path(s.strip()).expanduser().resolve()))
        else:
            out.append(s)
    return out


def load_plugins(specs: Iterable[str] | str | None) -> List[ModuleType]:
    """Import every plugin in order (one string is one plugin)."""
    if specs is None:
        return []
    if isinstance(specs, str):
        specs = [specs]
    return [load_plugin(s) for s in specs]


def _recorded(settings: Path) -> List[str]:
    """The plugins a run's config.yaml (``settings``) records; none for no such file or a damaged one
    (the resume's own check names it)."""
    from .run_folder import RunFolderError, read_settings

    try:
        saved = read_settings(settings, "")
    except RunFolderError:
        saved = None
    return [str(p) for p in saved["plugins"]] if isinstance(saved, dict) and isinstance(saved.get("plugins"), list) else []


def _content(spec: str) -> Optional[str]:
    """A plugin file's content digest (None: a module name, or no such file)."""
    if not _is_file(spec):
        return None
    path = Path(spec).expanduser()
    return hashlib.sha1(path.read_bytes()).hexdigest() if path.is_file() else None


def resume_without_plugins(settings, given: Iterable[str], resume: str = "--resume") -> str:
    """The error of a ``--resume`` run that loads none in place of a plugin the run was started with
    (its config.yaml, ``settings``, records them); "" where every recorded plugin is loaded again.
    Without the plugin only its names that nothing else registers were refused (as unknown): one
    that overrode a built-in (``replace=True``: its own ``curvature``) resumed silently as the
    built-in, which the run did not run. A recorded plugin counts as loaded when it is given again,
    or a file with its content is; one given in its place (a moved or renamed file, a module made a
    file) pairs with a recorded one no longer found, so the check counts those left unpaired."""
    settings = Path(settings)
    recorded, given = _recorded(settings), list(given or [])
    if not recorded:
        return ""
    def unpaired(specs, others):
        contents = {_content(o) for o in others} - {None}
        return [p for p in specs if p not in others and _content(p) not in contents]  # (None never in contents)

    missing, in_place = unpaired(recorded, given), unpaired(given, recorded)
    if len(missing) <= len(in_place):
        return ""
    return (f"the run in {settings.parent} was started with --plugins {' '.join(recorded)} (its config.yaml records "
            f"them), and this resume loads none in place of {' '.join(missing)}: a name such a plugin registers or "
            "overrides (a built-in it replaces, replace=True) would run other code than the run did; give them again "
            f"with {resume} (a moved file: its new path), or --config {settings} {resume} for every setting of the run")


def resume_hint(settings, given: Iterable[str], error: Optional[PluginError] = None, resume: str = "--resume") -> str:
    """For the error of a ``--resume`` run without a plugin it was started with: which plugins the
    run's recorded ``settings`` (its config.yaml, a path) list. With ``error`` (loading the plugins
    failed), the recorded plugin it says is not there (a file moved, a module off the path): how to
    give it again; without, the recorded ones not in ``given`` (the plugins loaded, resolved), whose
    names are then unknown (``resume``: the option that resumes, as the recipe takes it). "" where there is nothing to say: no such file, or a damaged one (the
    resume's own check names it), no plugins recorded, or an error about another plugin."""
    settings = Path(settings)
    recorded = _recorded(settings)
    run = f"the run in {settings.parent}"
    if error is not None:
        spec = getattr(error, "spec", None)
        if not isinstance(error, PluginNotFoundError) or spec not in recorded:
            return ""  # a plugin that is there but fails is its own problem, said by the error
        how = ("put the file back, or give its new path" if _is_file(spec) else
               "put the module back on PYTHONPATH, or give it (or its file's path)")
        return f"; {run} records it in {settings}: {how} with --plugins (which replaces the recorded plugins)"
    missing = [p for p in recorded if p not in given]
    return (f"; {run} was started with --plugins {' '.join(missing)} (its config.yaml records them): give them "
            f"again with {resume}, or --config {settings} {resume} for every setting of the run") if missing else ""
