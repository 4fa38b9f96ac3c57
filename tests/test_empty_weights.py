"""Weights with no entries (nn.Linear(4, 0), a conv of 0 input channels): the built-in granularities
pool, expand and check them (neuron's max raised PyTorch's 'Expected reduction dim 1 to have
non-zero size', block's reshape 'cannot reshape tensor of 0 elements'), and a Connectome leaves
such a layer out and measures the others."""
import pytest
import torch

import adaptive
from adaptive.ensembles import get_granularity

SHAPES = [(0, 4), (4, 0), (4, 0, 3, 3), (0, 4, 3, 3), (4, 3, 0, 3)]


@pytest.mark.parametrize("spec", ["synapse", "kernel", "neuron", "block:2x2", "2:4"])
@pytest.mark.parametrize("shape", SHAPES)
def test_the_built_in_granularities_take_a_weight_with_no_entries(spec, shape):
    g = get_granularity(spec)
    ens = tuple(g.ensemble_shape(torch.Size(shape)))
    mask = torch.ones(shape, dtype=torch.bool)
    for how in ("sum", "max", "min", "mean"):
        pooled = g.pool(mask.float(), how)
        assert tuple(pooled.shape) == ens and not bool(pooled.any())  # no synapse in any ensemble
    assert g.expand(torch.ones(ens, dtype=torch.bool), torch.Size(shape)).shape == mask.shape
    assert g.violation(mask) is None
    assert int(g.ensemble_sizes(torch.Size(shape)).sum()) == 0


def test_a_connectome_leaves_a_layer_with_no_entries_out_and_prunes_the_others_by_neuron():
    net = torch.nn.Sequential(torch.nn.Linear(4, 0), torch.nn.Linear(0, 3), torch.nn.ReLU(), torch.nn.Linear(3, 5))
    conn = adaptive.Connectome(net, ensemble="neuron")
    assert conn.names == ["3.weight"] and conn.num_synapses() == 15
