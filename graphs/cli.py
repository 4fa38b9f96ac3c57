"""Command line: ``python -m graphs export RUN_DIR --level unit --format graphml``,
``python -m graphs report RUN_DIR`` and ``python -m graphs compact RUN_DIR``.

A run folder holds ``connectome.safetensors``, the weights (``model_state.pt``, ``dense_state_dict.pt``
or ``pruned_state_dict.pt``) and ``config.yaml`` (there or in the folder above, as
``prune_pretrained.py`` writes it) whose ``model`` key names the model for
``adaptive.models.build_model`` (a string, or a mapping with ``name`` and build_model keywords;
top-level ``num_classes``/``in_shape`` are read too). ``--model``, ``--connectome`` and ``--weights`` override or stand in
for any of them (RUN_DIR may also be the connectome file itself).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Optional

import torch

from adaptive.atomic import write_text

WEIGHT_FILES = ("model_state.pt", "dense_state_dict.pt", "pruned_state_dict.pt")
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

    with open(path) as f:
        return yaml.safe_load(f) or {}


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
    if known is not None:
        kw.setdefault("num_classes", known[0])
        shape = known[1]
        if dataset == "imagenet" and size:
            shape = (3, int(size), int(size))
        kw.setdefault("in_shape", shape)
    elif dataset == "folder":  # any ImageFolder tree: classes from the connectome, size from its dataset_kw
        kw.setdefault("in_shape", (3, int(size or 224), int(size or 224)))
    for k in ("num_classes", "in_shape"):
        if k in cfg and k not in kw:
            kw[k] = cfg[k]
        if isinstance(cfg.get("data"), dict) and k in cfg["data"] and k not in kw:
            kw[k] = cfg["data"][k]
    if args.num_classes is not None:
        kw["num_classes"] = args.num_classes
    if args.in_shape:
        kw["in_shape"] = tuple(int(s) for s in args.in_shape.split(","))
    return name, kw


def _dataset_in_shape(cfg: dict):
    """The input shape of the run's dataset (a plugin's or another graphs has no table entry for),
    read from the dataset itself; None when it cannot be (its files are elsewhere, say): the model's
    own default input shape is used then."""
    try:
        from adaptive.data.base import get_source_builder

        src = get_source_builder(str(cfg["dataset"]))(data_dir=cfg.get("data_dir"), download=False, augment=False,
                                                      **(cfg.get("dataset_kw") or {}))
        return tuple(int(s) for s in src.in_shape)
    except Exception:  # noqa: BLE001 - any failure: fall back to the model's default
        return None


def _classes_from(connectome_path: str):
    from safetensors import safe_open

    with safe_open(connectome_path, framework="pt") as f:
        shapes = json.loads((f.metadata() or {}).get("layers", "{}"))
    return int(list(shapes.values())[-1][0]) if shapes else 10


def _state_dict(path: str) -> dict:
    sd = torch.load(path, map_location="cpu", weights_only=False)
    for key in ("model", "state_dict", "model_state"):
        if isinstance(sd, dict) and key in sd and isinstance(sd[key], dict):
            sd = sd[key]
    return {k[len("module."):] if k.startswith("module.") else k: v for k, v in sd.items()}


def _load_plugins(specs) -> None:
    """The run's plugins (config.yaml's ``plugins``) and ``--plugins``: a model a plugin registered
    is rebuilt by name like a built-in one."""
    if not specs:
        return
    from adaptive.plugins import load_plugins

    load_plugins(specs)


def load_run(run: str, model: Optional[str] = None, connectome: Optional[str] = None, weights: Optional[str] = None,
             num_classes=None, in_shape=None, plugins=None):
    """(model, connectome) from a run folder (or a connectome file) with optional overrides;
    ``plugins`` are imported first, after those the run's config.yaml names."""
    ns = argparse.Namespace(model=model, num_classes=num_classes, in_shape=in_shape)
    if not os.path.exists(run):
        raise FileNotFoundError(f"no run folder or connectome file at {run!r}: pass a run folder holding "
                                "connectome.safetensors (or the .safetensors file itself)")
    run_dir = run if os.path.isdir(run) else os.path.dirname(os.path.abspath(run))
    if connectome is None:
        connectome = run if os.path.isfile(run) else os.path.join(run_dir, "connectome.safetensors")
    if not os.path.isfile(connectome):
        raise FileNotFoundError(f"no connectome at {connectome!r}: pass a run folder holding connectome.safetensors or --connectome PATH")
    cfg = _config(run_dir)
    _load_plugins(list(cfg.get("plugins") or []) + list(plugins or []))
    name, kw = _model_spec(cfg, ns)
    if not name:
        where = _config_path(run_dir)
        raise ValueError(f"no model name: {where} has no 'model' key; pass --model NAME (e.g. resnet20)" if where else
                         f"no model name: no config.yaml in {run_dir} or its parent; pass --model NAME (e.g. resnet20)")
    try:
        from adaptive.models import build_model
    except ImportError as e:
        raise RuntimeError(f"adaptive.models.build_model is not available ({e}); it is needed to rebuild {name!r}") from e
    if "num_classes" not in kw:  # the last prunable layer of the saved connectome is the classifier
        kw["num_classes"] = _classes_from(connectome)
    guessed = None
    if "in_shape" not in kw and cfg.get("dataset"):
        guessed = _dataset_in_shape(cfg)  # None: the model's own default input shape
        if guessed is not None:
            kw["in_shape"] = guessed
    try:
        net = build_model(name, **kw)
    except (TypeError, ValueError) as e:
        if "in_shape" in kw and guessed is None:
            raise
        raise ValueError(f"rebuilding model {name!r} with {kw} failed ({type(e).__name__}: {e}); if the input shape "
                         "is wrong or missing, pass --in-shape C,H,W") from e
    if kw.get("in_shape") and getattr(net, "in_shape", None) is None:
        net.in_shape = tuple(int(d) for d in kw["in_shape"])  # the data's shape: what tracing feeds the model
    if weights is None:
        weights = next((os.path.join(run_dir, f) for f in WEIGHT_FILES if os.path.isfile(os.path.join(run_dir, f))), None)
    if weights is not None:
        net.load_state_dict(_state_dict(weights))
    else:
        print(f"note: no weights file ({' or '.join(WEIGHT_FILES)}) in {run_dir}: L1/L2 come from a fresh init",
              file=sys.stderr)
    from adaptive import Connectome

    conn = Connectome.load(connectome, net)
    return net, conn


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m graphs", description=__doc__.split("\n\n")[0], allow_abbrev=False)
    sub = p.add_subparsers(dest="cmd", required=True)
    for cmd in ("export", "report", "compact"):
        s = sub.add_parser(cmd, allow_abbrev=False)
        s.add_argument("run", help="run folder (or a connectome .safetensors file)")
        s.add_argument("--level", default="unit", choices=("synapse", "unit", "layer"))
        s.add_argument("--model", help="model name for adaptive.models.build_model (default: config.yaml 'model')")
        s.add_argument("--connectome", help="connectome file (default RUN/connectome.safetensors)")
        s.add_argument("--weights", help="state dict file (default: the first of model_state.pt, dense_state_dict.pt, pruned_state_dict.pt in RUN)")
        s.add_argument("--num-classes", type=int)
        s.add_argument("--in-shape", help="input shape without batch, e.g. 3,32,32")
        s.add_argument("--out", help="output file (export) or folder (report); default inside the run folder")
        s.add_argument("--plugins", nargs="+", default=[], help=".py files or modules that register the run's model "
                       "(those config.yaml's 'plugins' names are imported anyway)")
        s.add_argument("--contract", action="store_true",
                       help="replace junctions (residual sums) by direct edges from every feeding unit")
        if cmd == "export":
            s.add_argument("--format", default="graphml", choices=("graphml", "gexf", "json", "pt"),
                           help="pt: a torch_geometric Data saved with torch.save")
    a, extra = p.parse_known_args(argv)
    if extra:  # said by the subcommand, with its own usage (the top-level one lists no options)
        sub.choices[a.cmd].error(f"unrecognized arguments: {' '.join(extra)}")
    import graphs

    try:
        model, conn = load_run(a.run, a.model, a.connectome, a.weights, a.num_classes, a.in_shape, a.plugins)
    except (FileNotFoundError, ValueError, RuntimeError, KeyError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    run_dir = a.run if os.path.isdir(a.run) else os.path.dirname(os.path.abspath(a.run))
    if a.cmd == "compact":
        return _compact(model, conn, a, run_dir)
    g = graphs.build(conn, a.level, junctions=not a.contract)
    if a.cmd == "export":
        out = a.out or os.path.join(run_dir, f"connectome_{a.level}.{a.format}")
        if a.format == "pt":
            torch.save(graphs.to_pyg(g), out)
        else:
            graphs.write(g, out)
        print(f"wrote {out}: {g}")
        return 0
    if g.level == "layer":  # dead units and reachability are facts about single units
        print("note: a report counts dead and unreachable units, so it reads the unit-level graph "
              "(--level layer applies to export)", file=sys.stderr)
        g = graphs.build(conn, "unit", junctions=not a.contract)
    out = a.out or os.path.join(run_dir, "graph_report")
    os.makedirs(out, exist_ok=True)
    s = graphs.summary(g)
    print(format_summary(s))
    write_text(os.path.join(out, "summary.json"), json.dumps(s, indent=1))
    for path in graphs.figures.plot_all(g, out):
        print(f"figure: {path}")
    return 0


def _compact(model, conn, a, run_dir) -> int:
    import graphs
    from .trace import default_example_input

    x = default_example_input(model)[0].expand(8, *default_example_input(model)[0].shape[1:]).contiguous()
    small = graphs.compact(model, conn, torch.randn_like(x))
    out = a.out or os.path.join(run_dir, "compact_model.pt")
    torch.save(small, out)
    c = small.compaction
    print(f"removed {c['units_removed']} dead units: {c['params_before']:,} -> {c['params_after']:,} parameters "
          f"(outputs agree to {c['max_abs_diff']:.2g}); wrote {out} (torch.load(..., weights_only=False))")
    for layer, n in c["removed"].items():
        if n:
            print(f"  {layer}: -{n} units")
    return 0


def format_summary(s: dict) -> str:
    lines = [f"{s['level']}-level graph: {s['nodes']:,} nodes, {s['edges']:,} edges, {s['units']:,} units, "
             f"{s['junctions']:,} junctions, {s['live_synapses']:,} live synapses, deepest path {s['depth_max']} layers"]
    d = s["dead"]
    lines.append(f"dead units: {d['dead']} (no live input {d['no_live_input']}, no live output {d['no_live_output']}, "
                 f"unreachable from input {d['unreachable_from_input']}, cannot reach output {d['cannot_reach_output']})")
    lines.append(f"reachability: {s['outputs_reachable']}/{s['outputs']} outputs reached, "
                 f"{s['inputs_reaching_output']}/{s['inputs']} inputs reach an output")
    lines.append("density per layer:")
    w = max((len(k) for k in s["density"]), default=5)
    lines += [f"  {k.ljust(w)}  {v:7.2%}" for k, v in s["density"].items()]
    for c in s["concats"]:
        lines.append(f"concat {c['node']}: channels by signal depth {c['histogram']}")
    for wmsg in s["warnings"]:
        lines.append(f"warning: {wmsg}")
    return "\n".join(lines)
