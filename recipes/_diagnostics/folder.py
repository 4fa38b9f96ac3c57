"""The files each command of ``recipes/diagnostics.py`` writes into its --output_dir, and what
becomes of an earlier run's there.

A command rewrites the files it writes; but an earlier run of it with other settings (another
--kind, --batchnorm or --model, --compare or --svg where this run has none) may have written files
that this run does not, which would be left beside its results as if they were theirs (a figure of
another net beside a band_ratios.md that does not list it). Such a run is refused before any work,
naming those files, unless --overwrite, which deletes them (and nothing else) just before the run
writes its first file, once every check has passed. Each command knows only its own files, by name
(every variant of them): a file it never writes, a user's own or another command's, is never counted
or deleted, and `progress` deletes nothing of the training run whose folder it writes into.
"""
from __future__ import annotations

import os
from typing import List, Tuple

from adaptive import run_folder

FIGURE = (".png", ".svg")
TABLE = (".csv", ".md")

DENSE_TAGS = ("mlp", "mlp_bn", "cnn", "cnn_bn")  # every DenseCat net of dense-gradients (--kind x --batchnorm)
COLLINEARITY_FIGURES = ("collinearity_vs_grad2", "sign_agreement_vs_grad2", "collinearity_by_layer")
COLLINEARITY_TABLES = ("collinearity_layers", "collinearity_fraction_above")
# the options a run was given or defaulted, for tracing a results folder back to its command (knowledge records
# them in its knowledge_summary.json)
SETTINGS = {"dense-gradients": "dense_gradients_settings.json", "collinearity": "collinearity_settings.json"}
KNOWLEDGE_DATA = ("knowledge_curve.csv", "knowledge_curve.md", "knowledge_fit.csv", "knowledge_fit.md",
                  "knowledge_summary.json")


def _figure(stem: str, svg: bool) -> List[str]:
    return [stem + ".png"] + ([stem + ".svg"] if svg else [])


def _table(stem: str) -> List[str]:
    return [stem + ext for ext in TABLE]


def dense_tag(kind: str, batchnorm: bool) -> str:
    """The name part of a DenseCat net's files: ``gradients_by_depth_<tag>.*``."""
    return f"{kind}{'_bn' if batchnorm else ''}"


def knowledge_figure(model: str) -> str:
    """The knowledge figure's name for ``model`` (``knowledge_<model>.png``)."""
    return f"knowledge_{model}.png"


def _knowledge_figures(out: str) -> List[str]:
    """The figure of the earlier knowledge run in ``out``: ``knowledge_MODEL.png`` (and ``.svg``) of
    the model its knowledge_summary.json records (``model`` where it records none, as a --replot of
    such a run names it), which every run writes beside its figure. Nothing where ``out`` holds no
    summary: no knowledge run is there, and a ``knowledge_resnet20.png`` there is a copy (the docs'
    figure in docs/figures) or the user's own. Only that run's figure is its: a name merely like one
    (``knowledge_lenet5.png`` beside a run of resnet20, a user's figure or a copy) is never counted."""
    import json

    summary = os.path.join(out, "knowledge_summary.json")
    if not os.path.isfile(summary):
        return []
    model = "model"
    try:
        with open(summary) as f:
            recorded = json.load(f).get("meta", {}).get("model")
        if isinstance(recorded, str) and recorded:
            model = recorded
    except (OSError, ValueError, AttributeError):
        pass
    stem = os.path.splitext(knowledge_figure(model))[0]
    return [stem + ext for ext in FIGURE if os.path.basename(stem + ext) == stem + ext]  # (no path from a summary)


def files(args, out: str, model: str = None) -> Tuple[List[str], List[str]]:
    """``(written, known)``: the files this run of ``args.command`` writes into ``out``, and every file
    the command writes in any run (each --kind, --batchnorm, --compare, --model, --svg), as names in
    ``out``. ``model``: the knowledge figure's model (default --model; a --replot's recorded one)."""
    svg = args.svg
    if args.command == "dense-gradients":
        kinds = ["mlp", "cnn"] if args.kind == "both" else [args.kind]
        norms = [False, True] if args.batchnorm == "both" else [args.batchnorm == "on"]
        tags = [dense_tag(k, bn) for k in kinds for bn in norms]
        written = [n for t in tags for n in _figure(f"gradients_by_depth_{t}", svg) + _table(f"gradients_by_depth_{t}")]
        written += _table("band_ratios") + (_table("optimizer_comparison") if args.compare else [])
        written.append(SETTINGS[args.command])
        known = [n for t in DENSE_TAGS for n in _figure(f"gradients_by_depth_{t}", True) + _table(f"gradients_by_depth_{t}")]
        return written, known + _table("band_ratios") + _table("optimizer_comparison") + [SETTINGS[args.command]]
    if args.command == "collinearity":
        tables = [n for s in COLLINEARITY_TABLES for n in _table(s)] + [SETTINGS[args.command]]
        return ([n for s in COLLINEARITY_FIGURES for n in _figure(s, svg)] + tables,
                [n for s in COLLINEARITY_FIGURES for n in _figure(s, True)] + tables)
    if args.command == "knowledge":
        figure = os.path.splitext(knowledge_figure(model or args.model))[0]
        return list(KNOWLEDGE_DATA) + _figure(figure, svg), list(KNOWLEDGE_DATA) + _knowledge_figures(out)
    if args.command == "progress":
        return _figure("progress", svg), _figure("progress", True)
    raise ValueError(f"unknown command {args.command!r}")


def left_over(args, out: str, model: str = None) -> List[str]:
    """The files of an earlier run of this command in ``out`` that this run does not write again
    (plain files and links; a folder of such a name is no file of the command's)."""
    written, known = files(args, out, model)
    new = set(written)
    present = (lambda p: os.path.isfile(p) or os.path.islink(p) and not os.path.isdir(p))
    return [n for n in dict.fromkeys(known) if n not in new and present(os.path.join(out, n))]


def refuse_left_over(args, out: str, model: str = None) -> None:
    """Refuse (SystemExit, one error line naming the fix) a run into ``out`` that would leave files of
    an earlier run of the command beside its own, unless --overwrite (which deletes them later, in
    :func:`delete_left_over`); and one where a folder stands at the name of a file it writes (found
    only at that write, after all the work, with the run's other files half written)."""
    written, _ = files(args, out, model)
    blocked = [n for n in written if os.path.isdir(os.path.join(out, n))]
    if blocked:
        raise SystemExit(
            f"recipes/diagnostics.py: error: {os.path.join(out, blocked[0])} is a folder"
            + (f" (and {len(blocked) - 1} more where {args.command} writes files: {', '.join(blocked[1:6])})"
               if len(blocked) > 1 else "")
            + f", so {args.command} cannot write its file there: move it away, or give another --output_dir")
    stale = left_over(args, out, model)
    if not stale or args.overwrite:
        return
    shown = ", ".join(stale[:6]) + (f" ... ({len(stale)} in all)" if len(stale) > 6 else "")
    svg = " add --svg to write them again," if all(n.endswith(".svg") for n in stale) else ""
    raise SystemExit(
        f"recipes/diagnostics.py: error: {out} holds files of an earlier {args.command} run that this one does not "
        f"write ({shown}), which would be left beside its results as if they were theirs:{svg} add --overwrite to "
        "delete them (only those), or give another --output_dir")


def delete_left_over(args, out: str, model: str = None) -> None:
    """(--overwrite, once every check has passed, just before the run's first write) Delete the
    earlier run's files that this run does not write again, and say which; nothing else."""
    if not args.overwrite:
        return
    stale = left_over(args, out, model)
    if stale:
        run_folder.delete_files(out, stale)
        print(f"--overwrite: deleted {len(stale)} file{'' if len(stale) == 1 else 's'} of an earlier {args.command} "
              f"run in {out} that this one does not write: {', '.join(stale)}", flush=True)
