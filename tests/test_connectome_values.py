"""The connectome's numbers, edits and state round-trips in value: each test guards against one careless edit
no other test noticed (the comment names it)."""
import os

import pytest
import torch
from torch import nn

import adaptive
from adaptive.metrics import batch_sums, default_accuracy

torch.set_num_threads(1)


def _mlp(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 4), nn.ReLU(), nn.Linear(4, 3))


def _half(shape):
    m = torch.ones(shape, dtype=torch.bool)
    m[: shape[0] // 2] = False
    return m


def test_layer_density_counts_live_synapses_whose_weight_is_zero():  # Q4
    model = _mlp()
    conn = adaptive.Connectome(model)
    with torch.no_grad():
        model[0].weight[0, 0] = 0.0  # a live synapse may hold 0.0 (one grown at zero does)
    assert conn.layer_density()["0.weight"] == 1.0


def test_summary_lists_synapses_before_live():  # Q6
    conn = adaptive.Connectome(_mlp())
    conn.set_masks({"0.weight": _half((4, 6))})
    row = next(l for l in conn.summary().splitlines() if l.startswith("0.weight"))
    assert row.split()[2:4] == ["24", "12"]


def test_a_grown_synapse_starts_at_zero_even_where_its_weight_moved_while_pruned():  # E1
    model = _mlp()
    conn = adaptive.Connectome(model)
    conn.set_masks({"0.weight": _half((4, 6))})
    with torch.no_grad():
        model[0].weight[0, 0] = 5.0  # trained while detached, or a dense load
    conn.set_masks({"0.weight": torch.ones(4, 6, dtype=torch.bool)})
    assert model[0].weight[0, 0].item() == 0.0


def test_grow_original_zeroes_the_weights_it_prunes_in_the_same_edit():  # E5
    model = _mlp()
    conn = adaptive.Connectome(model)
    conn.keep_original()
    conn.set_masks({"0.weight": _half((4, 6))})  # rows 0-1 pruned
    new = torch.ones(4, 6, dtype=torch.bool)
    new[3] = False  # grow rows 0-1, prune row 3
    conn.set_masks({"0.weight": new}, grow_init="original")
    assert bool((model[0].weight[3] == 0).all())
    assert torch.equal(model[0].weight[0], conn.original["0.weight"][0])


def test_grow_original_leaves_the_kept_weights_as_trained():  # E6
    model = _mlp()
    conn = adaptive.Connectome(model)
    conn.keep_original()
    conn.set_masks({"0.weight": _half((4, 6))})
    with torch.no_grad():
        model[0].weight[2:] += 1.0  # trained since
    trained = model[0].weight[2:].clone()
    conn.set_masks({"0.weight": torch.ones(4, 6, dtype=torch.bool)}, grow_init="original")
    assert torch.equal(model[0].weight[2:], trained)


def test_keep_original_is_a_copy_that_training_in_place_does_not_move():  # E10
    model = _mlp()
    conn = adaptive.Connectome(model)
    conn.keep_original()
    before = model[0].weight.detach().clone()
    with torch.no_grad():
        model[0].weight.add_(1.0)  # an optimizer step, in place
    assert torch.equal(conn.original["0.weight"], before)


def test_grow_original_restores_a_synapse_switched_off_in_place_and_applied():  # E11
    model = _mlp()
    conn = adaptive.Connectome(model)
    conn.keep_original()
    conn.masks["0.weight"][0, 0] = False  # edited in place, then imposed
    conn.apply()
    assert model[0].weight[0, 0].item() == 0.0
    conn.set_masks({"0.weight": torch.ones(4, 6, dtype=torch.bool)}, grow_init="original")
    assert model[0].weight[0, 0].item() == conn.original["0.weight"][0, 0].item() != 0.0


def test_load_state_dict_resets_optimizer_moments_only_where_a_synapse_is_absent():  # E3
    model = _mlp()
    conn = adaptive.Connectome(model)
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    conn.attach(opt)
    model(torch.randn(8, 6)).sum().backward()
    opt.step()
    sd = conn.state_dict()
    sd["masks"]["0.weight"] = _half((4, 6))
    conn.load_state_dict(sd)
    avg = opt.state[model[0].weight]["exp_avg"]
    assert bool((avg[:2] == 0).all()) and bool((avg[2:] != 0).all())


def test_load_state_dict_keeps_the_checkpoint_weights_of_synapses_it_restores():  # S2
    model = _mlp()
    conn = adaptive.Connectome(model)
    sd_model, sd_conn = {k: v.clone() for k, v in model.state_dict().items()}, conn.state_dict()  # all present
    conn.set_masks({"0.weight": _half((4, 6))})  # since pruned: a resume loads the model, then the connectome
    model.load_state_dict(sd_model)
    conn.load_state_dict(sd_conn)
    assert torch.equal(model[0].weight, sd_model["0.weight"])


def test_dense_state_dict_is_a_snapshot_not_a_view_of_the_model():  # S4
    model = _mlp()
    conn = adaptive.Connectome(model)
    snap = conn.dense_state_dict()
    before = snap["0.bias"].clone()
    with torch.no_grad():
        model[0].bias.add_(1.0)
    assert torch.equal(snap["0.bias"], before)


def test_state_dict_originals_are_copies():  # S5
    conn = adaptive.Connectome(_mlp(), mode="mask_only")
    sd = conn.state_dict()
    sd["original"]["0.weight"].zero_()
    assert bool((conn.original["0.weight"] != 0).any())


def test_load_state_dict_imposes_the_masks_on_a_dense_loaded_model():  # S6
    model = _mlp()
    conn = adaptive.Connectome(model)
    conn.set_masks({"0.weight": _half((4, 6))})
    sd_conn = conn.state_dict()
    model.load_state_dict(_mlp(seed=3).state_dict())  # dense weights, the masks unchanged
    conn.load_state_dict(sd_conn)
    assert bool((model[0].weight[:2] == 0).all())


def test_load_takes_the_mode_it_is_given_over_the_saved_one(tmp_path):  # F1
    conn = adaptive.Connectome(_mlp(), mode="mask_only")
    conn.save(tmp_path / "c.safetensors")
    loaded = adaptive.Connectome.load(tmp_path / "c.safetensors", _mlp(), mode="train")
    assert loaded.mode == "train"


def test_sort_metadata_sorts_a_header_that_needs_no_padding(tmp_path):  # F3
    import struct

    from safetensors.torch import save_file

    from adaptive.connectome_files import _sort_metadata

    for width in range(8):  # one of 8 value lengths gives a header of a multiple of 8 bytes: no padding
        path = tmp_path / f"x{width}.safetensors"
        save_file({"a": torch.zeros(2)}, str(path), metadata={**{k: "v" for k in "zqmbfhxa"}, "pad": "p" * width})
        with open(path, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            unpadded = f.read(n).rstrip(b" ")
        if len(unpadded) == n:
            break
    else:
        raise AssertionError("no value length gave a header without padding: the test builds none")
    _sort_metadata(path)
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        meta = __import__("json").loads(f.read(n))["__metadata__"]
    assert list(meta) == sorted(meta)


def test_batch_sums_count_only_the_labelled_positions():  # MT7
    out = torch.tensor([[2.0, 0.0], [0.0, 2.0], [2.0, 0.0]])
    y = torch.tensor([0, 1, -100])
    units, (correct, count) = batch_sums(default_accuracy, out, y)
    assert int(units) == 2 and int(count) == 2 and int(correct) == 2
