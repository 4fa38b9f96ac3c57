"""Graph analysis at its edges, found by a review: a layer of no synapses (what graphs.compact leaves of a layer
whose every unit is dead), a recurrent layer called with an initial state computed from the input, and a report
into a folder an earlier report of another model used."""
import warnings

import pytest
import torch
from torch import nn

import adaptive
import graphs
from graphs.figures import plot_all


def _quiet_build(conn, level, x):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return graphs.build(conn, level, example_input=x)


@pytest.mark.parametrize("level", ["synapse", "unit", "layer"])
def test_a_layer_of_no_synapses_has_density_zero_at_every_level(level, tmp_path):
    """Linear(4, 0) then Linear(0, 2): density NaN at the synapse and unit levels (0.0 at the layer level), so
    the report printed 'nan%' and summary.json stored NaN; the dead-units figure averaged an empty slice."""
    m = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 0), nn.Linear(0, 2))
    g = _quiet_build(adaptive.Connectome(m), level, torch.randn(2, 3))
    assert graphs.density_per_layer(g) == {"0": 1.0, "1": 0.0, "2": 0.0}
    if level != "layer":
        summary = graphs.summary(g)
        from graphs.cli import format_summary

        assert "nan" not in format_summary(summary).lower()
        with warnings.catch_warnings():
            warnings.simplefilter("error", RuntimeWarning)  # (a mean of nothing)
            plot_all(g, tmp_path)


class _Rnn(nn.Module):
    def __init__(self, with_h0):
        super().__init__()
        self.with_h0 = with_h0
        self.a, self.init, self.rnn, self.fc = nn.Linear(3, 5), nn.Linear(5, 5), nn.RNN(3, 5, batch_first=True), \
            nn.Linear(5, 2)

    def forward(self, x):
        h0 = self.init(torch.tanh(self.a(x[:, 0]))).unsqueeze(0) if self.with_h0 else None
        return self.fc(self.rnn(x, h0)[1][0])


def test_a_recurrent_state_reached_by_its_initial_state_is_an_input_of_depth_zero():
    """signal_depth's docs: state nodes count as inputs of depth 0 once reached from a real input 'or when their
    initial state is'. Reached by an h0 two layers deep, they took its depth 2, and the layer's units depth 3
    (1 without h0): a layer's depth changed with whether its call passed h0."""
    depths = []
    for with_h0 in (False, True):
        torch.manual_seed(0)
        g = _quiet_build(adaptive.Connectome(_Rnn(with_h0)), "unit", torch.randn(2, 4, 3))
        at = {grp.name: grp.start for grp in g.groups}
        depths.append({name: (int(g.node_attrs["depth_max"][at[name]]), int(g.node_attrs["depth_min"][at[name]]))
                       for name in ("rnn.l0.state", "rnn.l0.hh")})
    assert depths[0] == depths[1] == {"rnn.l0.state": (0, 0), "rnn.l0.hh": (1, 1)}, depths


def test_a_report_of_a_model_without_concatenations_leaves_no_earlier_concat_figure(tmp_path):
    """Reports into one folder (allowed: an earlier report's files are replaced): one of a model that concatenates
    left its concat_depths.png beside the next report's, of a model that does not, and a summary.json with no
    concatenation."""
    from adaptive.models.densecat import DenseCat

    x = torch.randn(2, 3, 8, 8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        first = plot_all(_quiet_build(adaptive.Connectome(DenseCat((3, 8, 8), 2, depth=2, width=4)), "unit", x),
                         tmp_path)
    assert (tmp_path / "concat_depths.png").is_file() and str(tmp_path / "concat_depths.png") in first
    conv = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 36, 2))
    second = plot_all(_quiet_build(adaptive.Connectome(conv), "unit", x), tmp_path)
    assert not (tmp_path / "concat_depths.png").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.rsplit("/", 1)[-1] for p in second)
