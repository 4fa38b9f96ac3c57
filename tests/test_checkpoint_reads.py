"""A checkpoint's optimizer state read against its parameters, and its weights against its masks."""
import pytest
import torch

from adaptive.checkpoint_optimizer import _shape_misfit


@pytest.mark.skipif(not hasattr(torch.optim, "Adafactor"), reason="torch without Adafactor")
def test_an_adafactor_state_of_its_own_parameters_fits():  # CO1
    p = torch.nn.Parameter(torch.randn(3, 5))
    opt = torch.optim.Adafactor([p])
    p.sum().backward()
    opt.step()
    st = opt.state[p]
    assert tuple(st["row_var"].shape) == (3, 1) and tuple(st["col_var"].shape) == (1, 5)
    assert _shape_misfit(st, p) is None
    st["col_var"] = torch.zeros(3, 1)  # another model's column count
    assert _shape_misfit(st, p)[0] == "col_var"


def _mixed_checkpoint(tmp_path, record):
    """A checkpoint folder whose model file holds 3 non-zero weights where its connectome file prunes."""
    from types import SimpleNamespace

    from safetensors.torch import save_file
    from torch import nn

    import adaptive
    from adaptive import checkpoint_weights

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3))
    conn = adaptive.Connectome(model)
    m = torch.ones(3, 4, dtype=torch.bool)
    m[0, :3] = False
    conn.set_masks({"0.weight": m})
    torch.save(conn.state_dict(), tmp_path / "custom_checkpoint_0.pkl")
    dense = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    dense["0.weight"][0, :3] = 1.0  # another run's weights where these masks prune
    save_file(dense, str(tmp_path / "model.safetensors"))
    if record:
        checkpoint_weights.write_record(tmp_path, [0])
    return SimpleNamespace(_custom_objects=[conn], _models=[model])


def test_a_mixed_checkpoint_is_named_with_its_count_of_non_zero_pruned_weights(tmp_path):  # CW3
    from adaptive.checkpoint_weights import nonzero_pruned_weights

    why = nonzero_pruned_weights(_mixed_checkpoint(tmp_path, record=True), tmp_path)
    assert why is not None and "holds 3 non-zero weight(s)" in why


def test_a_checkpoint_without_the_record_is_not_read_against_its_masks(tmp_path):  # CW2
    from adaptive.checkpoint_weights import nonzero_pruned_weights

    assert nonzero_pruned_weights(_mixed_checkpoint(tmp_path, record=False), tmp_path) is None
