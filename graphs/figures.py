"""Figures of the analysis (matplotlib, PNG): density per layer, degree distributions, dead units,
reachability and the signal-depth composition of every concatenation."""
from __future__ import annotations

import os
from typing import List, Optional

import torch

from adaptive.atomic import atomic_path
from adaptive.plots import closed_on_error, tight_artists

from . import analysis


def _plt():
    """matplotlib.pyplot on the backend the user picked (``MPLBACKEND``, ``matplotlib.use``, a
    matplotlibrc's, or the one a pyplot already in use runs on), Agg only where none was picked:
    switching a notebook's backend to Agg would leave its later ``plt.show()`` showing nothing."""
    from adaptive.diagnostics.table import pyplot

    return pyplot()


def _headed(title: Optional[str], own: str) -> str:
    """A figure's ``own`` title under ``title`` (the run: model, dataset, folder), where given."""
    return f"{title}\n{own}" if title else own


def _save(fig, out_dir, name) -> str:
    path = os.path.join(out_dir, name)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        # "tight": the canvas grows to hold a legend beside the axes (:func:`_legend_beside`)
        fig.savefig(tmp, dpi=110, bbox_inches="tight", bbox_extra_artists=tight_artists(fig))
    _plt().close(fig)
    return path


def _legend_beside(ax) -> None:
    """The legend right of the axes, out of tight_layout (the saved canvas grows to hold it): inside ("best"),
    dead_units.png's legend lay over a layer's bar when every corner held one (lenet300 at 5%: fc2's 88%)."""
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0).set_in_layout(False)


def _layer_ticks(ax, names) -> None:
    """Layer names under a per-layer axis: upright and at a readable size where the names fit side by
    side (lenet300's fc1, fc2, fc3 were 6-point text turned on its side), on their side and smaller
    where they would run into each other (eight names such as ``layer1.conv1``, a ResNet's 20), the
    figure made taller where names on their side need more room than it has."""
    names = list(names)
    longest = max((len(n) for n in names), default=0)
    # the axis's width before tight_layout widens it, against 9-point names of ~0.6 em a character
    # and an em's gap between them
    room = ax.figure.get_figwidth() * ax.get_position().width * 72
    few = len(names) * (0.6 * longest + 1) * 9 <= room
    size = 9 if few else (8 if len(names) <= 30 else 6)
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels(names, rotation=0 if few else 90, fontsize=size)
    if not few:  # names on their side as tall as the figure (a ViT's encoder.layers.encoder_layer_3.self_attention.q):
        # tight_layout could not fit them under the axis, warned "Tight layout not applied" and cut them off; the
        # figure grows to hold them, its axis still ~1.6 inches tall under the title and over the labels
        ax.figure.set_figheight(max(ax.figure.get_figheight(), 0.6 * longest * size / 72 + 2.5))


def plot_density(g, out_dir, title: Optional[str] = None) -> str:
    plt = _plt()
    d = analysis.density_per_layer(g)
    fig, ax = plt.subplots(figsize=(max(6, 0.18 * len(d)), 3.5))
    with closed_on_error(fig):
        ax.bar(range(len(d)), list(d.values()), color="tab:blue")
        _layer_ticks(ax, d)
        ax.set_ylabel("live fraction of synapses")
        ax.set_xlabel("layer")
        ax.set_title(_headed(title, "density per layer"))
        return _save(fig, out_dir, "density_per_layer.png")


def degree_bins(deg: torch.Tensor, most: int = 50) -> List[float]:
    """Histogram bin edges for integer degrees: degree 0 (a unit with no live edge that way) in a bin
    of its own, then bins of ``w`` whole degrees each, ``w`` the smallest width giving at most ``most``
    bins. Fifty equal bins over 0..max split the integers unevenly (a bin of width 1.28 holds one
    or two of them), so the first bar mixed the dead units with every unit of degree 1. The bin of
    degree 0 is as wide as the others (it reaches below 0, where no degree is): one degree wide, its
    bar was invisible beside bins of thousands of degrees."""
    top = int(deg.max()) if deg.numel() else 0
    width = max(1, -(-top // most))
    return [0.5 - width] + [0.5 + width * i for i in range(-(-top // width) + 1)]


def plot_degrees(g, out_dir, title: Optional[str] = None) -> str:
    plt = _plt()
    unit = g.node_attrs["kind"] == 2
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    with closed_on_error(fig):
        for ax, which in zip(axes, ("in", "out")):
            deg = g.node_attrs[f"{which}_degree"][unit]
            ax.hist(deg.double().numpy(), bins=degree_bins(deg), color="tab:green")
            ax.set_yscale("log")
            ax.set_xlabel(f"{which}-degree ({g.level} level edges)")
            ax.set_ylabel("units")
            ax.set_title(f"{which}-degree distribution")
        if title:
            fig.suptitle(title, fontsize=10)
        return _save(fig, out_dir, "degree_distribution.png")


def plot_dead(g, out_dir, title: Optional[str] = None) -> str:
    plt = _plt()
    dead = analysis.dead_units(g)
    layers = [x for x in g.groups if x.kind == "layer"]
    fig, ax = plt.subplots(figsize=(max(6, 0.18 * len(layers)), 3.5))
    with closed_on_error(fig):
        bottom = torch.zeros(len(layers))
        no_in, no_out = dead["no_live_input"], dead["no_live_output"]
        parts = (  # disjoint, so the stack's height is the layer's fraction of dead units
            ("no live input", no_in, "tab:red"),
            ("live input, no live output", no_out & ~no_in, "tab:orange"),
            ("live in and out, but cut off upstream or downstream", dead["dead"] & ~no_in & ~no_out, "tab:purple"),
        )
        for label, which, color in parts:
            # (a layer of no units, one compacted away: 0, not the NaN of an empty mean)
            frac = torch.tensor([float(which[x.start:x.start + x.count].float().mean()) if x.count else 0.0
                                 for x in layers])
            if float(frac.sum()) > 0 or label == "no live input":
                ax.bar(range(len(layers)), frac.numpy(), bottom=bottom.numpy(), color=color, label=label)
            bottom += frac
        _layer_ticks(ax, [x.name for x in layers])
        ax.set_ylim(0, 1)
        ax.set_ylabel("fraction of the layer's units that are dead")
        ax.set_xlabel("layer")
        ax.set_title(_headed(title, f"dead units: {int(dead['dead'].sum())} of {int((g.node_attrs['kind'] == 2).sum())} (unreachable either way)"))
        _legend_beside(ax)
        return _save(fig, out_dir, "dead_units.png")


def plot_reachability(g, out_dir, title: Optional[str] = None) -> str:
    plt = _plt()
    r = analysis.reachability(g)
    layers = [x for x in g.groups if x.kind in ("layer", "output")]
    fwd = [float(r["from_input"][x.start:x.start + x.count].float().mean()) for x in layers]
    bwd = [float(r["to_output"][x.start:x.start + x.count].float().mean()) for x in layers]
    fig, ax = plt.subplots(figsize=(max(6, 0.18 * len(layers)), 3.5))
    with closed_on_error(fig):
        ax.plot(fwd, "o-", label="reached from the inputs", ms=3)
        ax.plot(bwd, "s-", label="reaches an output", ms=3)
        _layer_ticks(ax, [x.name for x in layers])
        ax.set_ylim(-0.05, 1.05)
        ax.set_ylabel("fraction of units")
        ax.set_xlabel("layer (topological order)")
        ax.set_title(_headed(title, "reachability through live synapses"))
        _legend_beside(ax)
        return _save(fig, out_dir, "reachability.png")


def plot_concats(g, out_dir, title: Optional[str] = None) -> str | None:
    comps = analysis.concat_composition(g)
    if not comps:
        return None
    plt = _plt()
    depths = sorted({d for c in comps for d in c["histogram"]})
    mat = torch.zeros(len(comps), len(depths))
    for i, c in enumerate(comps):
        for d, n in c["histogram"].items():
            mat[i, depths.index(d)] = n
    mat = mat / mat.sum(1, keepdim=True).clamp(min=1)
    fig, ax = plt.subplots(figsize=(max(5, 0.3 * len(depths)), max(3, 0.15 * len(comps))))
    with closed_on_error(fig):
        im = ax.imshow(mat.numpy(), aspect="auto", cmap="viridis")
        ax.set_xticks(range(len(depths)))
        ax.set_xticklabels(depths, fontsize=6)
        ax.set_yticks(range(len(comps)))
        ax.set_yticklabels([c["node"] for c in comps], fontsize=6)
        ax.set_xlabel("signal depth of the joined channel (-1: constant/unreached)")
        ax.set_ylabel("concatenation")
        ax.set_title(_headed(title, "signal-depth composition of each concatenation"))
        fig.colorbar(im, ax=ax, label="fraction of channels")
        return _save(fig, out_dir, "concat_depths.png")


def plot_all(g, out_dir, title: Optional[str] = None) -> List[str]:
    """Write every figure into ``out_dir``; returns the paths. ``title``: a line naming the run (its
    model and dataset, see :func:`adaptive.plots.run_title`) above each figure's own title."""
    os.makedirs(out_dir, exist_ok=True)
    paths = [f(g, out_dir, title) for f in (plot_density, plot_degrees, plot_dead, plot_reachability)]
    c = plot_concats(g, out_dir, title)
    if not c:  # a model that does not concatenate: an earlier report's figure in the folder is not this model's
        stale = os.path.join(out_dir, "concat_depths.png")
        if os.path.isfile(stale):
            os.remove(stale)
    return paths + ([c] if c else [])
