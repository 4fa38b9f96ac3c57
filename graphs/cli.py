"""Command line: ``python -m graphs export RUN_DIR --level unit --format graphml``,
``python -m graphs report RUN_DIR`` and ``python -m graphs compact RUN_DIR``.

A run folder holds ``connectome.safetensors``, the weights (``model_state.pt``, ``dense_state_dict.pt``
or ``pruned_state_dict.pt``) and ``config.yaml`` (there or in the folder above, as
``prune_pretrained.py`` writes it) whose ``model`` key names the model for
``adaptive.models.build_model`` (a string, or a mapping with ``name`` and build_model keywords;
top-level ``num_classes``/``in_shape`` are read too; recipes record their ``model_kw``). ``--model``, ``--model-kw``
(:mod:`graphs.model_args`), ``--connectome`` and ``--weights`` override or stand in for any of them (RUN_DIR may also be the connectome file itself). RUN_DIR may also be a training checkpoint
(``RUN/checkpoints/step_N``, read by :mod:`graphs.run_files`: its outputs go into ``RUN``, named by the step), or a
folder holding exactly one checkpoint or ``remove_<target>`` folder; one holding several is refused, listing them.

``export --out`` names the file written; its extension (.graphml, .gexf, .json, .pt) is its format,
and a ``--format`` that disagrees with it is refused. .graphml, .gexf and .json may be followed by .gz
or .bz2 (``connectome.graphml.gz``): the file is written compressed, as ``graphs.write`` does. ``--out`` may also be an existing folder (or a
path ending in ``/``): ``connectome_<level>.<format>`` is written into it. An empty ``--out ''`` (an unset shell
variable) or one of spaces only is refused by every command, as are an empty ``--connectome``, ``--weights`` and ``--format``: leaving ``--out`` out is how to ask for the default path. A mistake the user can fix
ends with one ``error: ...`` line and status 2 (``ADAPTIVE_TRACEBACK=1`` shows the traceback);
Ctrl-C ends with one line and status 130.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
from typing import Optional

from adaptive import jsonio
from adaptive.atomic import atomic_torch_save, write_text
from adaptive.cli import ArgumentParser, counted
from adaptive.config import dotted_key_values
from adaptive.metrics import fmt_unsaturated
from adaptive.name_patterns import escape
from adaptive.paths import empty_path_problem, home_expanded
from adaptive.warn import command_line_warnings, warn_user

WEIGHT_FILES = ("model_state.pt", "dense_state_dict.pt", "pruned_state_dict.pt")
FORMATS = ("graphml", "gexf", "json", "pt")  # built in (pt: a torch_geometric Data saved with torch.save); a
# plugin may register more writers (graphs.register_writer), so --format is checked once plugins are loaded
# (num_classes, in_shape) of the datasets recipes/adaptive.py names in config.yaml's ``dataset``
DATASETS = {"mnist": (10, (1, 28, 28)), "cifar10": (10, (3, 32, 32)), "digits": (10, (1, 8, 8)),
            "imagenet": (1000, (3, 224, 224))}


def _config_path(run_dir: str) -> Optional[str]:
    """``config.yaml`` of the run folder, else of its parent (``prune_pretrained.py`` keeps one per
    output folder above its ``remove_<target>`` subfolders)."""
    for folder in (run_dir, os.path.dirname(os.path.abspath(run_dir))):
        path = os.path.join(folder, "config.yaml")
        if os.path.isfile(path):
            return path
    return None


def _config(run_dir: str) -> dict:
    path = _config_path(run_dir)
    if path is None:
        return {}
    import yaml

    from adaptive.yaml_read import DuplicateKeyError, load_yaml

    try:
        with open(path) as f:
            cfg = load_yaml(f.read())
    except DuplicateKeyError as e:
        raise ValueError(f"{path}: {e}") from None
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise ValueError(f"{path} cannot be read ({type(e).__name__}: {str(e).splitlines()[0]}): the run's config is "
                         "damaged; give the model with --model (and --num-classes, --in-shape) instead") from None
    if cfg is None:
        return {}
    if not isinstance(cfg, dict):
        raise ValueError(f"{path} is not a mapping of settings: the run's config is damaged; give the model with "
                         "--model (and --num-classes, --in-shape) instead")
    for key, ok, what in _CONFIG_TYPES:  # (a list model_kw or a number for plugins ended in a TypeError traceback)
        if cfg.get(key) is not None and not ok(cfg[key]):
            raise ValueError(f"{path}: its {key!r} is {cfg[key]!r}, not {what}: the run's config is damaged; give the "
                             "model with --model (and --model-kw, --num-classes, --in-shape, --plugins) instead")
    return cfg


# the types of the config.yaml keys read here: (key, accepts, what it should be)
_CONFIG_TYPES = (
    ("model", lambda v: isinstance(v, (str, dict)), "a model name or a mapping with its name"),
    ("model_kw", lambda v: isinstance(v, dict), "a mapping of the model builder's arguments"),
    ("dataset_kw", lambda v: isinstance(v, dict), "a mapping of the dataset builder's arguments"),
    ("plugins", lambda v: isinstance(v, str) or (isinstance(v, list) and all(isinstance(p, str) for p in v)),
     "a list of .py files or module names"),
)


def _config_plugins(cfg: dict) -> list:
    """config.yaml's ``plugins``: a list, or one string, each entry possibly several separated by commas (as the
    recipes write them; one string was read a character at a time)."""
    items = cfg.get("plugins") or []
    items = [items] if isinstance(items, str) else items
    return [p.strip() for item in items for p in item.split(",") if p.strip()]


def _model_spec(cfg: dict, args):
    name = args.model
    kw = {}
    m = cfg.get("model")
    if isinstance(m, dict):  # {name: ..., any build_model keyword: ...}
        if name is None or name == m.get("name"):  # keywords belong to the configured model only
            kw.update({k: v for k, v in m.items() if k != "name"})
        name = name or m.get("name")
    elif isinstance(m, str):
        if name is None or name == m:  # recipes/adaptive.py keeps build keywords in model_kw
            kw.update(cfg.get("model_kw") or {})
        name = name or m
    dataset = str(cfg.get("dataset", "")).lower()
    known = DATASETS.get(dataset)
    size = (cfg.get("dataset_kw") or {}).get("image_size") or cfg.get("image_size")
    for k in ("num_classes", "in_shape"):  # what the run recorded comes before a dataset's defaults
        if cfg.get(k) is not None and k not in kw:
            kw[k] = cfg[k]
        if isinstance(cfg.get("data"), dict) and cfg["data"].get(k) is not None and k not in kw:
            kw[k] = cfg["data"][k]
    if known is not None:
        if dataset != "imagenet":  # an ImageNet folder may hold any number of classes: the run or the connectome says
            kw.setdefault("num_classes", known[0])
        shape = known[1]
        if dataset == "imagenet" and size:
            shape = (3, int(size), int(size))
        kw.setdefault("in_shape", shape)
    elif dataset == "folder":  # any ImageFolder tree: classes from the connectome, size from its dataset_kw
        kw.setdefault("in_shape", (3, int(size or 224), int(size or 224)))
    kw.update(getattr(args, "model_kw", None) or {})  # --model-kw, over what the run recorded
    if args.num_classes is not None:
        kw["num_classes"] = args.num_classes
    if args.in_shape:
        shape = args.in_shape
        if isinstance(shape, str):
            try:
                shape = tuple(int(s) for s in shape.split(","))
            except ValueError:
                shape = ()
            if not shape or any(d <= 0 for d in shape):
                raise ValueError(f"in_shape {args.in_shape!r} is not an input shape: give positive integers separated "
                                 "by commas, without the batch, e.g. --in-shape 3,32,32")
        kw["in_shape"] = tuple(int(s) for s in shape)
    return name, kw


def _dataset_facts(cfg: dict):
    """``(num_classes, in_shape)`` of the run's dataset, as :func:`adaptive.data.dataset_facts` knows them
    without reading its data (a plugin's dataset too, once its plugin is loaded); None when it cannot
    say (no dataset in the config, a dataset it does not know, its folder elsewhere)."""
    if not cfg.get("dataset"):
        return None
    try:
        from adaptive.data.base import dataset_facts

        return dataset_facts(str(cfg["dataset"]), cfg.get("data_dir"), **(cfg.get("dataset_kw") or {}))
    except Exception:  # noqa: BLE001 - any failure: the connectome or the dataset's Source says
        return None


def _dataset_in_shape(cfg: dict, facts=None):
    """The input shape of the run's dataset (a plugin's or another graphs has no table entry for):
    from its ``facts`` (:func:`_dataset_facts`), else read from the dataset itself; None when it
    cannot be (its files are elsewhere, say): the model's own default input shape is used then."""
    if facts is not None:
        return facts[1]
    try:
        from adaptive.data.base import get_source_builder

        src = get_source_builder(str(cfg["dataset"]))(data_dir=cfg.get("data_dir"), download=False, augment=False,
                                                      **(cfg.get("dataset_kw") or {}))
        return tuple(int(s) for s in src.in_shape)
    except Exception:  # noqa: BLE001 - any failure: fall back to the model's default
        return None


def _layer_shapes(connectome_path: str) -> dict:
    """Each masked layer's weight shape, as the connectome file records it (read once per command)."""
    from .run_files import remembered

    return remembered("layer_shapes", connectome_path, _read_layer_shapes)


def _read_layer_shapes(connectome_path: str) -> dict:
    from safetensors import SafetensorError, safe_open

    from .run_files import connectome_state

    try:
        with safe_open(connectome_path, framework="pt") as f:
            return json.loads((f.metadata() or {}).get("layers", "{}"))
    except SafetensorError:  # a connectome state saved with torch.save (a training checkpoint's)
        sd = connectome_state(connectome_path) or {}
        return {n: list(m.shape) for n, m in (sd.get("masks") or {}).items()}


def _classes_from(connectome_path: str):
    """The connectome's last registered layer's units: a first guess at the class count, before the
    model is built (:func:`_classes_used_last` then checks it)."""
    shapes = _layer_shapes(connectome_path)
    return int(list(shapes.values())[-1][0]) if shapes else 10


def _classes_used_last(net, connectome_path: str, weights: Optional[str]) -> Optional[int]:
    """The output units of the Linear, Conv or ConvTranspose layer ``net``'s forward uses last (in its fx
    trace: a head registered before the stem is still the head), as the connectome records them, else (the
    head kept out of it by exclude=) the weights file; None where fx cannot trace ``net`` or neither records it."""
    from graphs.ops import TRANSPOSED_MODULES, WEIGHTED_MODULES
    from graphs.example_inputs import _first_uses

    first = _first_uses(net) or {}
    used = [(first[id(m)], n, m) for n, m in net.named_modules()
            if isinstance(m, WEIGHTED_MODULES + TRANSPOSED_MODULES) and id(m) in first]
    if not used:
        return None
    _, name, head = max(used, key=lambda u: u[:2])
    key = f"{name}.weight"
    shape = _layer_shapes(connectome_path).get(key)
    if shape is None and weights is not None:
        try:
            w = _weights_state(weights).get(key)
        except Exception:  # noqa: BLE001 - an unreadable file: loading it names the problem
            w = None
        shape = None if w is None or w.dim() < 2 else w.shape
    if shape is None:
        return None
    # a transposed convolution's weight is stored (in, out/groups, *kernel)
    return int(shape[1]) * head.groups if isinstance(head, TRANSPOSED_MODULES) else int(shape[0])


def _weights_state(path: str) -> dict:
    """The weights file's state_dict, read once per command (within :func:`graphs.run_files.read_once`): the
    class count's guess and the load read the same file."""
    from adaptive.models.weights import read_state_dict

    from .run_files import remembered

    return remembered("weights", path, read_state_dict)


def _check_connectome(path: str) -> None:
    """Refuse, with the fix, a file that is not a saved connectome (a config.yaml, a README, weights)."""
    from safetensors import safe_open

    from adaptive.connectome import FORMAT

    from .run_files import connectome_state

    try:
        with safe_open(path, framework="pt") as f:
            fmt = (f.metadata() or {}).get("format")
    except Exception as e:  # noqa: BLE001 - safetensors raises its own error type for any unreadable file
        if connectome_state(path) is not None:  # conn.state_dict() saved with torch.save (a checkpoint's)
            return
        first = (str(e).strip().splitlines() or [""])[0][:120]
        raise ValueError(f"{path!r} is not a connectome file ({type(e).__name__}: {first}); pass a run folder holding "
                         "connectome.safetensors, that file itself, or --connectome PATH") from None
    if fmt != FORMAT:
        raise ValueError(f"{path!r} is a safetensors file but not a connectome saved by adaptive (format {fmt!r}); "
                         "pass a run folder holding connectome.safetensors, that file itself, or --connectome PATH")


def _recorded_plugins(recorded: list, given, where) -> list:
    """The plugins config.yaml (``where``) records that are loaded: each, where it can be; with ``--plugins``
    (``given``), one that is no longer where the run found it (its file moved) is left out with a warning, as
    --plugins gives its models now; without, its refusal says to give it. A run whose plugin file moved could
    not be read at all: --plugins NEW/file.py was loaded after the recorded path, which failed first."""
    from adaptive.plugins import PluginNotFoundError, load_plugin

    kept = []
    for spec in recorded:
        try:
            load_plugin(spec)
        except PluginNotFoundError as e:
            if not given:
                raise PluginNotFoundError(f"{e} (recorded in {where or 'config.yaml'}): where the plugin is now, give "
                                          "--plugins PATH", spec) from None
            warn_user(f"{where or 'config.yaml'} records the plugin {spec}, which is not found: left out, as --plugins "
                      f"{' '.join(given)} is given")
            continue
        kept.append(spec)
    return kept


def _load_plugins(specs) -> None:
    """The run's plugins (config.yaml's ``plugins``) and ``--plugins``: a model a plugin registered
    is rebuilt by name like a built-in one."""
    if not specs:
        return
    from adaptive.plugins import load_plugins

    load_plugins(specs)


def load_run(run: str, model: Optional[str] = None, connectome: Optional[str] = None, weights: Optional[str] = None,
             num_classes=None, in_shape=None, plugins=None, model_kw: Optional[dict] = None):
    """(model, connectome) from a run folder, a training checkpoint folder (``RUN/checkpoints/step_N``)
    or a connectome file, with optional overrides; ``plugins`` are imported first, after those the
    run's config.yaml names. ``model_kw`` (``--model-kw``) are the model builder's arguments, over
    those the run recorded (its ``num_classes`` and ``in_shape`` count as those arguments). A folder
    holding no connectome but one checkpoint or target folder reads that one; several are refused,
    listing them (:func:`graphs.run_files.locate`). A model rebuilt with layers shaped otherwise than
    the connectome's is refused naming the layer and ``--model-kw``. Each file is read once."""
    return _load(run, model, connectome, weights, num_classes, in_shape, plugins, model_kw)[:2]


def _load(run: str, model: Optional[str] = None, connectome: Optional[str] = None, weights: Optional[str] = None,
          num_classes=None, in_shape=None, plugins=None, model_kw: Optional[dict] = None):
    """(model, connectome, :class:`~graphs.run_files.RunFiles`): :func:`load_run`'s work."""
    from .run_files import read_once

    with read_once():  # the connectome file is looked at several times below: read from disk once
        return _load_once(run, model, connectome, weights, num_classes, in_shape, plugins, model_kw)


def _load_once(run, model, connectome, weights, num_classes, in_shape, plugins, model_kw):
    from . import model_args
    from .run_files import CHECKPOINT_WEIGHTS, locate

    user_kw, num_classes, in_shape = model_args.split_own(model_kw or {}, num_classes, in_shape)
    ns = argparse.Namespace(model=model, num_classes=num_classes, in_shape=in_shape, model_kw=user_kw)
    given_connectome = connectome  # (--connectome: a file of the user's choosing, maybe another run's)
    found = locate(run, connectome)
    run_dir, connectome = found.source, found.connectome
    if not os.path.isfile(connectome):
        raise FileNotFoundError(f"no connectome at {connectome!r}: pass a run folder holding connectome.safetensors or --connectome PATH")
    _check_connectome(connectome)
    try:
        cfg = _config(run_dir)
    except ValueError as e:
        if model is None:
            raise
        warn_user(f"{e.args[0].split(': the run')[0]}: ignored, the model is --model {model}")
        cfg = {}
    _load_plugins(_recorded_plugins(_config_plugins(cfg), plugins, _config_path(run_dir)) + list(plugins or []))
    name, kw = _model_spec(cfg, ns)
    if not name:
        where = _config_path(run_dir)
        raise ValueError(f"no model name: {where} has no 'model' key; pass --model NAME (e.g. resnet20)" if where else
                         f"no model name: no config.yaml in {run_dir} or its parent; pass --model NAME (e.g. resnet20)")
    try:
        from adaptive.models import build_model
    except ImportError as e:
        raise RuntimeError(f"adaptive.models.build_model is not available ({e}); it is needed to rebuild {name!r}") from e
    model_args.check(name, user_kw)  # an argument the builder does not take: named before anything is built
    facts = _dataset_facts(cfg) if "num_classes" not in kw or "in_shape" not in kw else None
    # the dataset's classes, else (it cannot say) a guess checked once the model is built: the units of
    # the layer its forward uses last
    classes_guessed = "num_classes" not in kw and facts is None
    if "num_classes" not in kw:
        kw["num_classes"] = facts[0] if facts is not None else _classes_from(connectome)
    guessed = None
    if "in_shape" not in kw and cfg.get("dataset"):
        guessed = _dataset_in_shape(cfg, facts)  # None: the model's own default input shape
        if guessed is not None:
            kw["in_shape"] = guessed
    net = _rebuild(build_model, name, kw, guessed, user_kw)
    if weights is None:
        names = WEIGHT_FILES + (CHECKPOINT_WEIGHTS if found.checkpoint else ())
        weights = next((os.path.join(run_dir, f) for f in names if os.path.isfile(os.path.join(run_dir, f))), None)
    if classes_guessed:
        used_last = _classes_used_last(net, connectome, weights)
        if used_last is not None and used_last != kw["num_classes"]:
            kw["num_classes"] = used_last
            net = _rebuild(build_model, name, kw, guessed, user_kw)
    # a run built with other arguments (a wider model): named with the fix, before any weights are read into it
    found.weights = weights
    try:
        model_args.check_fits(net, _layer_shapes(connectome), name, kw,
                              "the checkpoint" if found.checkpoint else "the connectome")
    except model_args.ModelArgumentsError as e:
        if not given_connectome:
            raise
        # the run's own arguments may be right and the connectome another run's: say both
        raise model_args.ModelArgumentsError(
            f"{e.args[0]}; or --connectome {given_connectome} is another run's connectome, not the one of the run "
            f"{run_dir}: give the folder of the run it comes from, or this run's connectome") from None
    if weights is not None:  # strict, naming missing, unexpected and misshapen keys; tensors only
        from adaptive.models import WeightsMismatchError, load_weights

        try:
            load_weights(net, weights, state_dict=_weights_state(weights))
        except WeightsMismatchError as e:  # keys or shapes that differ: the model's; a damaged file: the file's
            if not getattr(e, "keys_differ", False):  # unreadable, damaged, a meta or quantized tensor: rebuilding
                raise  # the model otherwise cannot help
            fits = f". The file holds the weights of {e.fits}" if e.fits else ""  # (a torchvision file of its family)
            error = WeightsMismatchError(f"{e.found}{fits}: {model_args.fix(name, kw)}")
            error.keys_differ, error.found, error.fits = True, e.found, e.fits
            raise error from e
    else:
        print(f"note: no weights file ({' or '.join(WEIGHT_FILES)}) in {run_dir}: L1/L2 come from a fresh init",
              file=sys.stderr)
    try:
        conn = _connectome(connectome, net)
    except KeyError as e:  # layers the model lacks, or has and the file does not: another model's file
        said = str(e.args[0] if e.args else e)
        raise KeyError(f"{said}; {model_args.fix(name, kw)}") from e
    return net, conn, found


def _connectome(path: str, net):
    """The connectome in ``path`` on ``net``: a file Connectome.save wrote, or a state_dict saved with
    torch.save (a training checkpoint's), rebuilt on the layers it has masks for."""
    from adaptive import Connectome

    from .run_files import connectome_state

    sd = None if path.endswith(".safetensors") else connectome_state(path)
    if sd is None:
        return Connectome.load(path, net)
    modules = [escape(n[: -len(".weight")] if n.endswith(".weight") else n) for n in sd["masks"]]
    conn = Connectome(net, ensemble=sd.get("ensemble", "synapse"), include=modules, mode=sd.get("mode") or "train")
    conn.load_state_dict(sd)
    return conn


def _rebuild(build_model, name: str, kw: dict, guessed, user_kw: Optional[dict] = None):
    """``build_model(name, **kw)``; a failure where the input shape was guessed (or is missing) says so,
    one where ``--model-kw`` gave arguments (``user_kw``) names them."""
    from .model_args import OPTION, entries

    try:
        net = build_model(name, **kw)
    except (TypeError, ValueError) as e:
        if user_kw:
            raise ValueError(f"{OPTION} {entries(user_kw)}: rebuilding model {name!r} failed ({type(e).__name__}: "
                             f"{e}); give values the model's builder takes") from e
        if "in_shape" in kw and guessed is None:
            raise
        raise ValueError(f"rebuilding model {name!r} with {kw} failed ({type(e).__name__}: {e}); if the input shape "
                         "is wrong or missing, pass --in-shape C,H,W") from e
    if kw.get("in_shape") and getattr(net, "in_shape", None) is None:
        net.in_shape = tuple(int(d) for d in kw["in_shape"])  # the data's shape: what tracing feeds the model
    return net


class UsageError(ValueError):
    """A mistake in the command line (an option, a path) found after parsing."""


_COMMANDS = {
    "export": ("write the connectome graph to a file",
               "Write the connectome graph of a run as GraphML, GEXF, JSON or a torch_geometric Data (.pt)."),
    "report": ("print a summary and draw figures (dead units, reachability, density, degrees)",
               "Print the graph's summary (dead and unreachable units, reachability, density per layer, "
               "concatenations) and write summary.json and figures into a folder."),
    "compact": ("save the model with its dead units physically removed",
                "Remove the run's dead units (and the matching channels of their readers), check the result "
                "against the masked model, and save it with torch.save."),
}


def _parser():
    """(the parser, its subcommands' parsers by name)."""
    p = ArgumentParser(prog="python -m graphs", allow_abbrev=False,
                                description="The connectome of a run folder as a graph: export it, report on it, "
                                            "or compact the model. 'python -m graphs COMMAND --help' lists a "
                                            "command's options.")
    sub = p.add_subparsers(dest="cmd", required=True, metavar="{export,report,compact}")
    subs = {}
    for cmd, (short, long) in _COMMANDS.items():
        s = subs[cmd] = sub.add_parser(cmd, allow_abbrev=False, help=short, description=long)
        s.add_argument("run", help="run folder, training checkpoint folder (RUN/checkpoints/step_N) or connectome "
                                   ".safetensors file")
        if cmd == "export":
            s.add_argument("--level", default="unit", choices=("synapse", "unit", "layer"),
                           help="synapse: unit nodes, one edge per live synapse; unit: unit nodes, one edge per "
                                "connected pair (live synapse count, L1, L2); layer: one node per layer; default: unit")
        elif cmd == "report":
            s.add_argument("--level", default="unit", choices=("synapse", "unit", "layer"),
                           help="graph the report reads: unit or synapse; dead units are facts about single "
                                "units, so layer reads the unit graph; default: unit")
        s.add_argument("--model", metavar="NAME",
                       help="model name for adaptive.models.build_model (default: config.yaml's 'model')")
        s.add_argument("--model-kw", "--model_kw", dest="model_kw", action="append", default=[], metavar="KEY=VALUE",
                       help="an argument of the model's builder, for a run built with non-default ones, e.g. width=2 "
                            "or hidden=[16] (repeatable, later ones winning per key, over config.yaml's model_kw; the "
                            "value read as YAML: numbers, [lists], true/false, null, text; several at once as a YAML "
                            "mapping '{width: 2, num_classes: 100}'; also --model-kw.KEY VALUE; num_classes and "
                            "in_shape are --num-classes and --in-shape; default: the arguments config.yaml records)")
        s.add_argument("--connectome", metavar="PATH", help="connectome file (default: RUN/connectome.safetensors)")
        s.add_argument("--weights", metavar="PATH",
                       help="state dict file (default: the first of model_state.pt, dense_state_dict.pt, "
                            "pruned_state_dict.pt in RUN; without one the model keeps a fresh init, so L1/L2 are "
                            "not the run's)")
        s.add_argument("--num-classes", type=_num_classes, metavar="N",
                       help="classes of the model's output layer (default: from config.yaml's dataset or "
                            "num_classes, else the outputs of the layer the forward uses last)")
        s.add_argument("--in-shape", type=_in_shape, metavar="C,H,W",
                       help="input shape without batch, e.g. 3,32,32, or 16 for 16 tokens (default: from "
                            "config.yaml's dataset or in_shape, else the model's own)")
        s.add_argument("--in-dtype", choices=("float", "long"),
                       help="what the example input the model is traced (and compact checked) on holds: long for "
                            "token indices (below the smallest nn.Embedding's size; 16 tokens unless --in-shape "
                            "says), float for features in the model's own floating dtype (default: tokens first "
                            "where the model's first layer is an nn.Embedding or nn.EmbeddingBag, float first "
                            "otherwise, each tried where the other fails)")
        s.add_argument("--batch-axis", type=int, choices=(0, 1),
                       help="the axis of the model's input that holds the batch: 1 for a sequence-first model "
                            "([T, B] tokens, [T, B, F] features, as nn.GRU/LSTM/Transformer layers read by default): "
                            "the guessed input is laid out so, and the graph reads one sample along that axis; 0: "
                            "batch first (default: batch first, or as the model's sequence layers show where the "
                            "inputs reach them with their axes known; not for an image input)")
        if cmd == "export":
            s.add_argument("--out", metavar="PATH",
                           help="file to write, its extension naming the format (.graphml, .gexf, .json, .pt; the first "
                                "three compressed with .gz or .bz2 after it, e.g. .graphml.gz), or "
                                "an existing folder to write connectome_LEVEL.FORMAT into "
                                "(default: RUN/connectome_LEVEL.FORMAT)")
            s.add_argument("--format", metavar="FORMAT",
                           help=f"{', '.join(FORMATS[:-1])}, or {FORMATS[-1]} (a torch_geometric Data saved with "
                                "torch.save), or the extension of a writer a plugin registers (--plugins, "
                                "config.yaml's 'plugins'); default: the extension of --out, else graphml; refused "
                                "if --out's extension differs")
        elif cmd == "report":
            s.add_argument("--out", metavar="PATH", help="folder for summary.json and the figures, created if "
                           "needed (default: RUN/graph_report)")
        else:
            s.add_argument("--out", metavar="PATH", help="file the compacted model is saved to, or an existing "
                           "folder to write compact_model.pt into (default: RUN/compact_model.pt)")
            s.add_argument("--atol", type=_tolerance, metavar="X",
                           help="absolute tolerance of the check that the compacted model's outputs match the masked "
                                "model's (torch.allclose; scaled by the outputs' largest magnitude where that is below 1; "
                                "default: the dtype's, as graphs.compact: 1e-4 in float32/float64; in bfloat16/float16, 4 of the "
                                "dtype's roundings of each output's largest magnitude, or the square root of the number of "
                                "Linear/Conv layers where that is more)")
            s.add_argument("--rtol", type=_tolerance, metavar="X",
                           help="relative tolerance of that check (default: 1e-4 in float32/float64, 0 in "
                                "bfloat16/float16, as graphs.compact)")
            s.add_argument("--float64", action="store_true",
                           help="compact and check a float64 copy of the model, to tell float32 rounding from a real "
                                "change; the saved model is float64 too (default: the model's own dtype)")
        s.add_argument("--plugins", nargs="+", action="extend", default=[], metavar="PLUGIN",
                       help=".py files or modules that register the run's model (those config.yaml's 'plugins' "
                            "names are imported anyway; repeatable, the values adding up; default: none)")
        if cmd != "compact":
            s.add_argument("--contract", action="store_true",
                           help="replace junctions (residual sums) by direct edges from every feeding unit "
                                "(default: junctions are nodes)")
    return p, subs


def _tolerance(text: str) -> float:
    """--atol / --rtol: a finite number >= 0."""
    try:
        x = float(text)
    except ValueError:
        x = float("nan")
    if not math.isfinite(x) or x < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a tolerance: give a finite number >= 0, e.g. 1e-4")
    return x


def _in_shape(text: str) -> str:
    """--in-shape: positive integers separated by commas (kept as text, as load_run takes it)."""
    try:
        dims = [int(d) for d in text.split(",")]
    except ValueError:
        dims = []
    if not dims or any(not 0 < d <= LARGEST_SIZE for d in dims):  # (past 2**63 - 1: torch's TypeError, a traceback)
        raise argparse.ArgumentTypeError(f"{text!r} is not an input shape: give positive integers (at most "
                                         f"{LARGEST_SIZE}) separated by commas, without the batch, e.g. 3,32,32")
    return text


LARGEST_SIZE = 2**63 - 1  # the largest size of a tensor's dimension torch takes (a 64-bit signed integer)


def _num_classes(text: str) -> int:
    """--num-classes: a whole number from 1 to :data:`LARGEST_SIZE` (0 and -1 were refused only once the
    model was built; past 2**63 - 1, torch's TypeError ended in a traceback)."""
    try:
        n = int(text)
    except ValueError:
        n = 0
    if not 0 < n <= LARGEST_SIZE:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of classes: give a whole number from 1 to "
                                         f"{LARGEST_SIZE:,}, or leave --num-classes out for config.yaml's")
    return n


def main(argv=None) -> int:
    """Run the command line; returns the exit status (2: a mistake the user can fix, 130: Ctrl-C)."""
    p, subs = _parser()
    # --model-kw.KEY VALUE is --model-kw KEY=VALUE, as the recipes spell it
    argv = dotted_key_values(sys.argv[1:] if argv is None else list(argv), ["model_kw"])
    a = p.parse_args(argv)  # an unknown option is said by the subcommand, with its own usage
    for name in ("run", "connectome", "weights", "out"):  # ~ as the shell would have (--out=~/g made a folder ~)
        if hasattr(a, name):
            setattr(a, name, home_expanded(getattr(a, name)))
    from safetensors import SafetensorError

    from adaptive.models import WeightsMismatchError

    out = sys.stdout
    sys.stdout = _ReaderGone(out)  # `report RUN | head`: the files are still written, the status 0
    try:
        with command_line_warnings():  # one ``warning:`` line each, as the recipes print them
            return _run(a)
    except KeyboardInterrupt:
        if os.environ.get("ADAPTIVE_TRACEBACK"):
            raise
        print(f"interrupted: {a.cmd} stopped (Ctrl-C)", file=sys.stderr)
        return 130
    except (OSError, ValueError, KeyError, WeightsMismatchError, SafetensorError, ImportError, RuntimeError) as e:
        if os.environ.get("ADAPTIVE_TRACEBACK"):
            raise
        print(f"error: {_one_line(e)}", file=sys.stderr)
        return 2
    finally:
        gone, sys.stdout = sys.stdout.gone, out
        if gone:  # Python's own flush at exit would complain of the closed pipe
            try:
                os.dup2(os.open(os.devnull, os.O_WRONLY), out.fileno())
            except (OSError, ValueError, AttributeError):  # no file descriptor (a captured stream)
                pass


class _ReaderGone:
    """stdout that drops what it is given once its reader has gone (``python -m graphs report RUN | head``
    closes the pipe after a few lines): a BrokenPipeError there stopped the command before it wrote
    summary.json and the figures, with status 2."""

    def __init__(self, stream):
        self._stream, self.gone = stream, False

    def write(self, text: str) -> int:
        if not self.gone:
            try:
                return self._stream.write(text)
            except BrokenPipeError:
                self.gone = True
        return len(text)

    def flush(self) -> None:
        if not self.gone:
            try:
                self._stream.flush()
            except BrokenPipeError:
                self.gone = True

    def __getattr__(self, name):
        return getattr(self._stream, name)


def _one_line(e: BaseException) -> str:
    """The first line of an error's message (with its type if that says something); longer
    messages point at ADAPTIVE_TRACEBACK."""
    from adaptive.plugins import PluginError

    from .trace_types import ExampleInputError, InputGuessError

    msg = e.args[0] if isinstance(e, KeyError) and e.args else e.failure if isinstance(e, ExampleInputError) else e
    if isinstance(e, InputGuessError):  # the options that give the input, not the API's example_input=
        tried = " ".join(e.tried.split())
        if len(e.inputs) > 1:  # --in-shape / --in-dtype shape one input: no option gives a second
            return (f"{e.what}: the command line gives a model one input only (--in-shape, --in-dtype); from Python, "
                    f"pass example_input={e.example(', batch first')}, to graphs.build (then graphs.write) "
                    "or graphs.compact")
        return (f"{e.what}: give the input with --in-shape (without the batch: 16 for 16 tokens, 3,32,32 for an "
                f"image) and --in-dtype (long for token indices, float otherwise)" + (f"; tried {tried}" if tried else ""))
    lines = [x for x in str(msg).strip().splitlines() if x.strip()] or [type(e).__name__]
    if isinstance(e, ImportError):
        lines[0] = f"{type(e).__name__}: {lines[0]} (install it, or choose another --format)"
    elif isinstance(e, OSError) and not isinstance(e, FileNotFoundError):  # permissions, a file where a folder goes
        lines[0] = f"{type(e).__name__}: {lines[0]}"
    elif isinstance(e, RuntimeError) and not isinstance(e, PluginError) and not type(e).__name__.endswith("MismatchError"):
        # a plugin's error names the plugin and what it did: it is no failure to rebuild the model
        lines[0] = (f"{lines[0]} (rebuilding or tracing the model failed: check --model, --in-shape, --in-dtype and --num-classes; "
                    "ADAPTIVE_TRACEBACK=1 shows the traceback)")
    return lines[0] + (" ..." if len(lines) > 1 else "")


def _check_out(out: str, folder: bool = False) -> None:
    """--out (a file, or a ``folder``) must lie under folders (existing or to be created), not under a file."""
    parent = os.path.abspath(out) if folder else os.path.dirname(os.path.abspath(out))
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise UsageError(f"--out {out!r} lies inside {parent!r}, which is a file, not a folder: choose another --out")


def _export_path(a, run_dir: str, suffix: str = ""):
    """(path, format) export writes: --out's extension is the format, --format may only agree with it;
    without --out, ``connectome_<level><suffix>.<format>`` in ``run_dir``."""
    from .exporters import COMPRESSED, COMPRESSIBLE, WRITERS

    known = sorted({*(e.lstrip(".") for e in WRITERS), "pt"})  # plugins are loaded by now: their writers too
    if a.format is not None and not a.format.strip():  # ("" was read as left out: --out's extension, else graphml)
        raise UsageError(f"--format is empty ({a.format!r}): give one of {', '.join(known)}, or leave --format out "
                         "for --out's extension (else graphml)")
    fmt = a.format.lower() if a.format else None
    if fmt is not None and fmt not in known:
        plugin = sorted(set(known) - set(FORMATS))
        raise UsageError(f"--format {a.format!r} is no format graphs can write: use one of {', '.join(known)}"
                         + (f" ({', '.join(plugin)}: registered by a plugin)" if plugin else "")
                         + "; a plugin's writer counts once --plugins (or config.yaml's 'plugins') loads it")
    out = a.out
    if out is None or os.path.isdir(out) or out.endswith(("/", os.sep)):
        fmt = fmt or "graphml"
        return os.path.join(out or run_dir, f"connectome_{a.level}{suffix if out is None else ''}.{fmt}"), fmt
    ext = os.path.splitext(out)[1].lower()
    endings = (f"{', '.join('.' + k for k in known)} (or compressed: "
               f"{', '.join(e + c for e in COMPRESSIBLE for c in COMPRESSED)})")
    if not ext:
        raise UsageError(f"--out {out!r} has no file extension, so it names no format: end it with {endings}, or "
                         f"pass an existing folder (or end the path with /) to write "
                         f"connectome_{a.level}.{fmt or 'graphml'} into it")
    packed = ""  # the compression suffix of x.graphml.gz, as written
    if ext in COMPRESSED:  # x.graphml.gz: the format is the extension before it
        inner = os.path.splitext(os.path.splitext(out)[0])[1].lower()
        if inner not in COMPRESSIBLE:
            raise UsageError(f"--out {out!r} ends in {inner}{ext}, which graphs cannot write compressed: end it with "
                             f"{endings}")
        ext, packed = inner, os.path.splitext(out)[1]
    if ext.lstrip(".") not in known:
        raise UsageError(f"--out {out!r} ends in {ext}, a format graphs cannot write: end it with {endings}")
    if fmt and fmt != ext.lstrip("."):
        want = f".{fmt}{packed}" if packed and f".{fmt}" in COMPRESSIBLE else f".{fmt}"
        raise UsageError(f"--format {fmt} but --out {out!r} ends in {ext}{packed}: drop --format (the extension names "
                         f"the format) or give --out a {want} name")
    return out, ext.lstrip(".")


# what each command writes where --out is left out (in the run's folder)
_DEFAULT_OUT = {"export": "connectome_<level>.graphml", "report": "the folder graph_report",
                "compact": "compact_model.pt"}


def _run(a) -> int:
    import graphs

    # `--out "$DIR"` with DIR unset: not the default path, which leaving --out out asks for (" ": a folder named by a space)
    problem = empty_path_problem(a.out, "--out", f"a path, or leave --out out to write {_DEFAULT_OUT[a.cmd]} into the "
                                                 "run's folder")
    if problem:
        raise UsageError(problem)
    # `--connectome "$F"` with F unset: '' was read as left out (the run's own file, unsaid), ' ' as a missing file
    for option, fix in (("connectome", "a connectome file, or leave --connectome out for RUN/connectome.safetensors"),
                        ("weights", "a state dict file, or leave --weights out for the run's own (model_state.pt, "
                                    "dense_state_dict.pt or pruned_state_dict.pt in RUN)")):
        problem = empty_path_problem(getattr(a, option), f"--{option}", fix)
        if problem:
            raise UsageError(problem)
    if a.cmd == "report" and a.out and os.path.exists(a.out) and not os.path.isdir(a.out):
        raise UsageError(f"--out {a.out!r} is a file, but report writes a folder (summary.json and figures): "
                         "pass a folder path (created if needed)")
    if a.out:
        _check_out(a.out, folder=a.cmd == "report")
    if a.cmd == "report" and a.out:
        _refuse_a_foreign_summary(a.out)
    if a.model is not None and not a.model.strip():  # (rebuilt as config.yaml's model without its arguments)
        raise UsageError(f"--model {a.model!r} names no model: give a model name, or leave --model out for "
                         "config.yaml's")
    from .model_args import parse

    model_kw = parse(a.model_kw)  # a mistyped entry: refused before anything is read
    model, conn, found = _load(a.run, a.model, a.connectome, a.weights, a.num_classes, a.in_shape, a.plugins, model_kw)
    run_dir, suffix = found.out_dir, found.suffix  # a checkpoint's outputs: in its run folder, named by its step
    if a.cmd == "compact":
        return _compact(model, conn, a, found)
    x = None  # graphs.build guesses, trying token indices and float features
    if a.in_dtype is not None or a.batch_axis is not None:  # batch_axis= needs the input: laid out here
        from .example_inputs import runnable_example_input

        x = runnable_example_input(model, _tokens(a), batch_axis=_batch_axis(a, model))
    if a.cmd == "export":
        out, fmt = _export_path(a, run_dir, suffix)  # checked before the (long) build
        _refuse_an_input(out, found, "the graph")
        g = graphs.build(conn, a.level, junctions=not a.contract, example_input=x, batch_axis=a.batch_axis)
        if fmt == "pt":
            _save(graphs.to_pyg(g), out)
        else:
            graphs.write(g, out, format=fmt)
        print(f"wrote {out}: {g}")
        return 0
    level = a.level
    if level == "layer":  # dead units and reachability are facts about single units
        print("note: a report counts dead and unreachable units, so it reads the unit-level graph "
              "(--level layer applies to export)", file=sys.stderr)
        level = "unit"
    g = graphs.build(conn, level, junctions=not a.contract, example_input=x, batch_axis=a.batch_axis)
    out = a.out or os.path.join(run_dir, f"graph_report{suffix}")
    os.makedirs(out, exist_ok=True)
    s = graphs.summary(g)
    print(format_summary(s))
    write_text(os.path.join(out, "summary.json"), jsonio.dumps(s, indent=1))
    from adaptive.plots import run_config, run_title

    cfg = run_config(found.source)
    title = run_title(a.model or cfg.get("model"), cfg.get("dataset"), run_dir, what="connectome of ")
    if suffix:  # a checkpoint's: the title names its step
        title = f"{title[:-1]}, {suffix[1:]})" if title.endswith(")") else f"{title} ({suffix[1:]})"
    for path in graphs.figures.plot_all(g, out, title):
        print(f"figure: {path}")
    return 0


# the keys of graphs.summary that tell a graph report's summary.json from a run's own
_GRAPH_SUMMARY_KEYS = {"level", "nodes", "edges", "units", "live_synapses", "dead"}


def _refuse_a_foreign_summary(out: str) -> None:
    """Refuse a report ``out`` folder holding a summary.json that is not a graph report's (``report RUN --out RUN``
    replaced the run's own summary.json, its results, with the graph summary, without a word); an earlier graph
    report's is replaced, as before."""
    path = os.path.join(out, "summary.json")
    if not os.path.exists(path):
        return
    try:
        with open(path) as f:
            old = jsonio.loads(f.read())
    except (OSError, ValueError):
        old = None
    if not (isinstance(old, dict) and _GRAPH_SUMMARY_KEYS <= old.keys()):
        raise UsageError(f"--out {out!r} holds a summary.json that is not a graph report's (a run's own summary): "
                         "report writes its summary.json there and would replace it; choose another --out (a new "
                         "folder), or leave --out out to write into the run's graph_report folder")


# the files the recipes write into a run folder (recipes/adaptive.py's, recipes/prune_pretrained.py's and a target's)
_RUN_OWN_FILES = frozenset(("config.yaml", "summary.json", "metrics.csv", "events.jsonl", "results.md", "history.jsonl",
                            "dense_state_dict.pt", "pruned_state_dict.pt", "connectome.safetensors", "checkpoint.pt",
                            "MANIFEST.json"))


def _refuse_an_input(out: str, found, what: str) -> None:
    """Refuse an ``out`` that is the connectome or weights file the command read (``export RUN --out
    RUN/model_state.pt`` wrote the graph over the run's weights, without a word), or another file of a run: one
    the recipes write (config.yaml, summary.json, ...; ``compact RUN --out RUN/config.yaml`` wrote a pickled model
    over it, and every later command on the run failed) or one a checkpoint's manifest lists (its optimizer.bin)."""
    from adaptive.integrity import manifest_files

    for name, path in (("connectome", found.connectome), ("weights", found.weights)):
        if path and os.path.exists(out) and os.path.exists(path) and os.path.samefile(out, path):
            raise UsageError(f"--out {out!r} is the {name} file this command reads: writing {what} there would "
                             "replace it; choose another --out")
    base = os.path.basename(out)
    if os.path.isfile(out) and (base in _RUN_OWN_FILES or base in (manifest_files(os.path.dirname(out) or ".") or ())):
        raise UsageError(f"--out {out!r} is a file of a run ({base}, which the recipes or a checkpoint wrote): writing "
                         f"{what} there would replace it; choose another --out")


def _save(obj, out: str) -> None:
    """``torch.save`` to ``out`` atomically (a failed or interrupted save leaves no half file). torch
    reports a failed write (permissions, a full disk) as a RuntimeError, which would read as a
    failure to rebuild the model: it is raised as the OSError it is, naming the file."""
    try:
        atomic_torch_save(obj, out)
    except RuntimeError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if "file failed" in first or "write" in first.lower():
            why = re.sub(r"^\[enforce fail at [^\]]*\]\s*\.?\s*", "", first)  # torch's C++ location, not news
            raise OSError(f"cannot write {out}: {why} (choose another --out, or free space)") from e
        raise


def _tokens(a) -> Optional[bool]:
    """--in-dtype as :func:`graphs.trace.runnable_example_input` takes it: token indices, floats, or both tried."""
    return None if a.in_dtype is None else a.in_dtype == "long"


def _batch_axis(a, model) -> Optional[int]:
    """--batch-axis, refused for a model whose input is an image (C,H,W): its batch comes first. Without an input
    shape, the image graphs guesses for a model whose first layer is a 2-d convolution is one too."""
    if a.batch_axis != 1:
        return a.batch_axis
    shape, what = getattr(model, "in_shape", None), "the model's input shape is"
    if shape is None:
        from .example_inputs import default_example_input

        shape = next((tuple(x.shape[1:]) for x in default_example_input(model, _tokens(a)) if x.dim() == 4), None)
        what = "no input shape is given and the input guessed from the model's first layer is"
    if shape is not None and len(shape) == 3:
        raise UsageError(f"--batch-axis 1 lays the guessed input out sequence-first ([T, B] tokens, [T, B, F] features), "
                         f"but {what} {','.join(map(str, shape))}, an image (C,H,W), whose batch "
                         "comes first: drop --batch-axis, or give a sequence's shape with --in-shape (T for T tokens, "
                         "T,F for T steps of F features)")
    return a.batch_axis


def _compact(model, conn, a, found) -> int:
    import graphs

    from .compact_check import CompactionMismatchError
    from .example_inputs import runnable_example_input

    out = a.out or found.out_dir
    if os.path.isdir(out) or out.endswith(("/", os.sep)):
        out = os.path.join(out, f"compact_model{found.suffix if a.out is None else ''}.pt")
    _refuse_an_input(out, found, "the compacted model")
    if a.float64:
        model.double()  # in place: the connectome masks the same parameters
    # floats in the dtype of the model's first layer
    x = runnable_example_input(model, _tokens(a), batch=8, batch_axis=_batch_axis(a, model))
    try:
        small = graphs.compact(model, conn, x, atol=a.atol, rtol=a.rtol, batch_axis=a.batch_axis)
    except CompactionMismatchError as e:
        said = str(e).replace(" Pass verify=False to get the model anyway.", "")  # the API's option, not the CLI's
        now = " and ".join("the dtype's default" if t is None else str(t) for t in (a.atol, a.rtol))
        raise CompactionMismatchError(f"{said} On the command line, --atol and --rtol set the tolerances (now {now}"
                                      ") and --float64 compacts a float64 copy; the Python API's "
                                      "graphs.compact(..., verify=False) returns the model unchecked.") from e
    _save(small, out)
    c = small.compaction
    # the relative figure too: 5e-18 says nothing of a fresh-initialised model whose outputs are 1e-12
    print(f"removed {counted(c['units_removed'], 'dead unit')}: {c['params_before']:,} -> {c['params_after']:,} parameters "
          f"(outputs agree to {c['max_abs_diff']:.2g}, {c['max_rel_diff']:.2g} relative to their largest magnitude), "
          f"checked at {c['tolerance']}; "
          f"wrote {out} (torch.load(..., weights_only=False))")
    for layer, n in c["removed"].items():
        if n:
            print(f"  {layer}: -{counted(n, 'unit')}")
    return 0


def _edge_kinds(s: dict) -> str:
    """What the edges beside the synapse edges are, so that the edge count beside the live synapses
    (53,250 edges, 53,240 live synapses) says which edges carry no synapse ("" where every edge does,
    or a summary from before ``edge_kinds``)."""
    k = s.get("edge_kinds")
    if not k or not (k.get("wire") or k.get("recurrent")):
        return ""
    parts = [f"{k['synapse']:,} synapse edge{'' if k['synapse'] == 1 else 's'}"]
    if k.get("wire"):
        # (a concatenation makes no wire: its units feed the next layer's synapse edges directly)
        parts.append(f"{k['wire']:,} wire{'' if k['wire'] == 1 else 's'} carrying no synapse: into the outputs, into "
                     "junctions (residual additions, products, a recurrent cell's gates) and into lookup or initial-state "
                     "inputs")
    if k.get("recurrent"):
        parts.append(f"{k['recurrent']:,} recurrent back edge{'' if k['recurrent'] == 1 else 's'} carrying no synapse")
    return f" ({'; '.join(parts)})"


def format_summary(s: dict) -> str:
    lines = [f"{s['level']}-level graph: {s['nodes']:,} nodes, {s['edges']:,} edges{_edge_kinds(s)}, {s['units']:,} units, "
             f"{s['junctions']:,} junctions, {s['live_synapses']:,} live synapses, deepest path {s['depth_max']} layers"]
    d = s["dead"]
    lines.append(f"dead units: {d['dead']} (no live input {d['no_live_input']}, no live output {d['no_live_output']}, "
                 f"unreachable from input {d['unreachable_from_input']}, cannot reach output {d['cannot_reach_output']})")
    lines.append(f"reachability: {s['outputs_reachable']}/{s['outputs']} outputs reached, "
                 f"{s['inputs_reaching_output']}/{s['inputs']} inputs reach an output")
    lines.append("density per layer:")
    w = max((len(k) for k in s["density"]), default=5)
    # (never rounded onto 100% or 0% where a layer is neither: one synapse pruned of 235,200 read "100.00%")
    lines += [f"  {k.ljust(w)}  {fmt_unsaturated(100 * v, '.2f'):>6}%" for k, v in s["density"].items()]
    for c in s["concats"]:
        lines.append(f"concat {c['node']}: channels by signal depth {c['histogram']}")
    for wmsg in s["warnings"]:
        lines.append(f"warning: {wmsg}")
    return "\n".join(lines)
