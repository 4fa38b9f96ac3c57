"""Functional dropout in :func:`graphs.compact`: a call ``F.dropout(x, p, self.training)`` is traced with the flag's
value at trace time, and compact traces the model in eval mode, so the copy's graph holds ``training=False`` for
good: ``small.train()`` does not turn it on (an ``nn.Dropout`` module stays a module, which it does). A warning
names such calls, once per :func:`graphs.compact` call; torchvision's ``StochasticDepth`` (ConvNeXt's, Swin's,
EfficientNet's residual dropout), whose forward calls ``stochastic_depth(x, p, mode, self.training)``, alike."""
from __future__ import annotations

import sys
from typing import List

import torch
import torch.nn.functional as F
from torch import fx

from adaptive.warn import warn_user

# target -> (position of p, position and keyword of the training flag, the flag's default)
_DROPOUTS = {
    F.dropout: (1, 2, "training", True), F.dropout1d: (1, 2, "training", True),
    F.dropout2d: (1, 2, "training", True), F.dropout3d: (1, 2, "training", True),
    F.alpha_dropout: (1, 2, "training", False), F.feature_alpha_dropout: (1, 2, "training", False),
    torch.dropout: (1, 2, "train", None), torch.feature_dropout: (1, 2, "train", None),
    torch.alpha_dropout: (1, 2, "train", None), torch.feature_alpha_dropout: (1, 2, "train", None),
}


def _table() -> dict:
    """:data:`_DROPOUTS`, with torchvision's ``stochastic_depth`` where torchvision has loaded it (a model that holds
    it has; importing torchvision here would cost every user of the graphs seconds)."""
    module = sys.modules.get("torchvision.ops.stochastic_depth")
    return _DROPOUTS if module is None else {**_DROPOUTS, module.stochastic_depth: (1, 3, "training", True)}


def _arg(node: fx.Node, position: int, keyword: str, default):
    if len(node.args) > position:
        return node.args[position]
    return node.kwargs.get(keyword, default)


def _fixed_off_dropouts(gm: fx.GraphModule) -> List[str]:
    """Names of ``gm``'s functional dropout calls whose training flag the trace fixed to False while their
    probability is not a literal 0: they drop nothing in the copy, in train mode too."""
    found, table = [], _table()
    for n in gm.graph.nodes:
        if n.op != "call_function" or n.target not in table:
            continue
        p_at, flag_at, flag_kw, default = table[n.target]
        p = _arg(n, p_at, "p", 0.5)
        if _arg(n, flag_at, flag_kw, default) is False and not (isinstance(p, (int, float)) and p == 0):
            found.append(n.name)
    return found


def _warn_fixed_off_dropouts(gm: fx.GraphModule) -> None:
    """One warning naming the functional dropout calls that :func:`_fixed_off_dropouts` finds, if any."""
    names = _fixed_off_dropouts(gm)
    if names:
        shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
        warn_user(f"graphs.compact: dropout node(s) {shown} were traced in eval mode, their training flag fixed to "
                  "False (F.dropout(x, p, self.training), torchvision's StochasticDepth): the copy keeps them off, "
                  "small.train() included. To fine-tune the copy with that dropout, call an nn.Dropout module in "
                  "the model's forward instead (the copy keeps it a module, which small.train() turns on)")
