"""graphs.compact of a model with a layer whose weight a torch.nn.utils hook computes (old-style
weight_norm, torch.nn.utils.prune): compacted where torch can copy it, else refused naming the fix."""
import warnings

import pytest
import torch
import torch.nn.utils.prune
from torch import nn

import adaptive
import graphs

torch.set_num_threads(1)


def _model_with(hook):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 3))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # weight_norm's deprecation
        hook(model[2])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the Connectome's "holds no synapses" warning for model[2]
        conn = adaptive.Connectome(model, ensemble="neuron")
    conn.set_ensemble_masks({"0.weight": torch.arange(8) % 2 == 0, "4.weight": torch.ones(3, dtype=torch.bool)})
    return model, conn


@pytest.mark.parametrize("hook,fix", [
    (lambda m: nn.utils.prune.l1_unstructured(m, "weight", 0.5), r"2\.weight \(torch\.nn\.utils\.prune\).*prune\.remove"),
    (lambda m: nn.utils.weight_norm(m), r"2\.weight \(weight_norm\).*remove_weight_norm"),
])
def test_a_model_torch_cannot_copy_is_refused_naming_the_layer_and_the_fix(hook, fix):
    """Right after torch.nn.utils.prune, its weight is a non-leaf tensor that deepcopy refuses: compact
    raised torch's RuntimeError, which names weight_norm only, instead of naming prune.remove."""
    model, conn = _model_with(hook)
    with pytest.raises(ValueError, match=fix):
        graphs.compact(model, conn, torch.randn(4, 8))


def test_a_layer_torch_nn_utils_prune_masks_is_compacted_as_a_layer_outside_the_connectome():
    """Once called under no_grad (a weight torch can copy), the model compacts, as the refusal above says:
    the pruned layer counts as fully live with the weight it computes, weight_orig * weight_mask."""
    model, conn = _model_with(lambda m: nn.utils.prune.l1_unstructured(m, "weight", 0.5))
    x = torch.randn(4, 8)
    with torch.no_grad():
        want = model(x)
    small = graphs.compact(model, conn, x)
    assert small.compaction["params_after"] < small.compaction["params_before"]
    with torch.no_grad():
        assert torch.allclose(small(x), want, atol=1e-5)
