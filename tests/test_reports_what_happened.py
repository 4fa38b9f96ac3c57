"""What the reports say happened: a layer of millions of synapses with one pruned (one live) is not written as
dense (empty) in events.jsonl, and prune_pretrained's figure draws no edit boundary for an update the line
search rolled back."""
import matplotlib
import pytest
import torch
from torch import nn

import adaptive

matplotlib.use("Agg")
torch.set_num_threads(1)


def test_a_layer_one_synapse_from_dense_or_empty_is_neither_in_the_events():
    """layer_density was rounded to six decimals: 2,097,151 of 2,097,152 live read 1.0 and 1 of them 0.0."""
    conn = adaptive.Connectome(nn.Sequential(nn.Linear(4, 2), nn.ReLU(), nn.Linear(2048, 1024)))
    ctrl = adaptive.Controller(conn, None, policy="magnitude", density=0.5)
    big = "2.weight"
    masks = {n: torch.ones_like(m) for n, m in conn.masks.items()}
    masks[big].view(-1)[0] = False
    conn.set_masks(masks)
    fields = ctrl._density_fields()
    assert 0.999999 < fields["layer_density"][big] < 1.0
    assert fields["layer_density"]["0.weight"] == 1.0  # an exactly dense layer stays 1.0
    masks[big] = torch.zeros_like(masks[big])
    masks[big].view(-1)[0] = True
    conn.set_masks(masks)
    assert 0.0 < ctrl._density_fields()["layer_density"][big] < 1e-6


def test_the_boundaries_panel_draws_only_updates_that_edited(tmp_path, monkeypatch):
    """An update the line search rolled back logs its plan's boundaries (pruned 0, grown 0): the figure drew them
    as 'removal cost of the last pruned' at steps where nothing was pruned."""
    import matplotlib.pyplot as plt

    from recipes._prune_pretrained.plot import _plot

    events = [
        {"kind": "update", "step": 1, "pruned": 5, "grown": 0, "boundaries": {"prune": 0.5, "restore": None}},
        {"kind": "update", "step": 2, "pruned": 0, "grown": 0, "line_search_fraction": 0.0,
         "boundaries": {"prune": 0.7, "restore": 0.8}},
        {"kind": "update", "step": 3, "pruned": 2, "grown": 2, "boundaries": {"prune": 0.6, "restore": 0.65}},
    ]
    history = [{"kind": "update", "step": e["step"], "removed": 5, "pruned": e["pruned"], "restored": e["grown"],
                "train_loss": 1.0, "train_acc": 0.5} for e in events]
    drawn = {}
    close = plt.close

    def keep(fig=None):
        if fig is not None and len(getattr(fig, "axes", [])) >= 4:
            for line in fig.axes[3].get_lines():
                drawn[line.get_label().split(" ")[0]] = sorted(float(x) for x in line.get_xdata())
        return close(fig)

    monkeypatch.setattr(plt, "close", keep)
    _plot(history, [], events, str(tmp_path / "curves.png"))
    assert drawn == {"prune": [1.0, 3.0], "restore": [3.0]}
