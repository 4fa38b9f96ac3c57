"""The Connectome object: editing, hooks, persistence (safetensors, state_dict, dense export), summary."""
import json
import math
import struct

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

import adaptive

torch.set_num_threads(1)


def mlp(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(20, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 3))


def random_masks(conn, density=0.5, seed=1):
    g = torch.Generator().manual_seed(seed)
    gran = conn.granularity
    return {
        n: gran.expand(torch.rand(gran.ensemble_shape(m.shape), generator=g) < density, m.shape).contiguous()
        for n, m in conn.masks.items()
    }


@pytest.fixture(scope="module")
def resnet18_pair():
    """A pruned resnet18 (10 classes) and its connectome: built once, read by several tests."""
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None, num_classes=10).eval()
    conn = adaptive.Connectome(model, ensemble="kernel")
    conn.set_masks(random_masks(conn, 0.5))
    return model, conn


# ------------------------------------------------------------------------------ editing basics
def test_masks_density_and_layer_density():
    model = mlp()
    conn = adaptive.Connectome(model)
    assert set(conn.masks) == {"0.weight", "2.weight", "4.weight"}
    assert all(m.dtype == torch.bool and m.shape == conn.params[n].shape for n, m in conn.masks.items())
    assert conn.density() == 1.0
    m = torch.zeros(16, 20, dtype=torch.bool)
    m[:4] = True
    changed = conn.set_masks({"0.weight": m})
    assert list(changed) == ["0.weight"] and int(changed["0.weight"].sum()) == 12 * 20
    assert conn.layer_density()["0.weight"] == pytest.approx(0.25)
    assert conn.num_live() == 80 + 256 + 48
    assert conn.density() == pytest.approx((80 + 256 + 48) / (320 + 256 + 48))
    assert bool((model[0].weight[4:] == 0).all()) and bool((model[0].weight[:4] != 0).all())
    assert conn.set_masks({"0.weight": m}) == {}  # no change, nothing reported
    # set_masks copies: editing the caller's tensor afterwards does not reach the connectome
    m[:] = False
    assert conn.layer_density()["0.weight"] == pytest.approx(0.25)


def test_set_ensemble_masks_expands_to_constant_ensembles():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.LazyLinear(2))
    model(torch.zeros(1, 3, 5, 5))
    conn = adaptive.Connectome(model, ensemble="neuron")
    conn.set_ensemble_masks({"0.weight": torch.tensor([True, False, True, False])})
    w = model[0].weight
    assert bool((w[1] == 0).all()) and bool((w[3] == 0).all()) and bool((w[0] != 0).all())
    assert conn.ensemble_masks()["0.weight"].tolist() == [True, False, True, False]


def test_observers_see_dense_gradients_then_the_step_sees_masked_ones():
    model = mlp()
    conn = adaptive.Connectome(model)
    conn.set_masks(random_masks(conn))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    conn.attach(opt)
    handles = len(conn._handles)
    conn.attach(opt)  # attaching twice is a no-op
    assert len(conn._handles) == handles
    seen = {}

    def observe():
        seen.update({n: p.grad.clone() for n, p in conn.params.items()})

    conn.add_observer(observe)
    edits = []
    conn.add_edit_listener(lambda changed: edits.append(sorted(changed)))
    nn.functional.cross_entropy(model(torch.randn(5, 20)), torch.tensor([0, 1, 2, 0, 1])).backward()
    opt.step()
    for n, p in conn.params.items():
        pruned = ~conn.masks[n]
        assert bool((seen[n][pruned] != 0).any()), "observers must see gradients at pruned positions"
        assert bool((p.grad[pruned] == 0).all()), "the optimizer must see masked gradients"
    conn.set_masks({"4.weight": torch.ones(3, 16, dtype=torch.bool)})
    assert edits == [["4.weight"]]
    conn.detach()
    assert conn._handles == []


def test_hot_path_follows_mask_edits_and_skips_dense_layers():
    model = mlp()
    conn = adaptive.Connectome(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
    conn.attach(opt)
    conn.set_masks({"2.weight": torch.eye(16, dtype=torch.bool)})
    x, y = torch.randn(8, 20), torch.randint(0, 3, (8,))
    for step in range(3):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        if step == 1:
            conn.set_masks({"2.weight": ~torch.eye(16, dtype=torch.bool)})
    assert conn._hot[0] == ["2.weight"]  # dense layers cost nothing
    assert bool((model[2].weight.diagonal() == 0).all())
    assert bool((model[2].weight[~torch.eye(16, dtype=torch.bool)] != 0).any())  # grown synapses learn
    # moving the model keeps parameter identity; the cached masks follow its dtype
    model.double()
    opt.zero_grad()
    nn.functional.cross_entropy(model(x.double()), y).backward()
    opt.step()
    assert conn._hot[2][0].dtype == torch.int64  # 0/1 integers of the weight's width (adaptive.exact_masking)
    assert bool((model[2].weight.diagonal() == 0).all())


def test_resident_bytes_counts_masks_and_caches():
    model = mlp()
    conn = adaptive.Connectome(model)
    assert conn.resident_bytes() == 2 * conn.num_synapses()  # a bool byte per synapse, and its copy as last set
    conn.set_masks(random_masks(conn))
    conn.attach(opt := torch.optim.SGD(model.parameters(), lr=0.1))
    model(torch.randn(2, *next(model.parameters()).shape[1:])).sum().backward()
    opt.step()  # a step builds the hot-path cache
    assert conn.resident_bytes() == conn.num_synapses() * (2 + 4)  # + the float32 hot-path masks


def test_summary_lists_every_layer_and_the_totals(resnet18_pair):
    _, conn = resnet18_pair
    text = conn.summary()
    lines = text.splitlines()
    assert lines[0].split() == ["layer", "shape", "synapses", "live", "density", "ensemble"]
    for n, layer in conn.layers.items():
        row = next(line for line in lines if line.startswith(n + " "))
        assert "x".join(map(str, layer.shape)) in row
        assert f"{layer.numel:,}" in row and f"{int(conn.masks[n].sum()):,}" in row and "kernel" in row
    total = lines[-1].split()
    assert total[0] == "total" and total[1] == f"{conn.num_synapses():,}" and total[2] == f"{conn.num_live():,}"
    assert total[3] == f"{conn.density():.2%}" and total[4] == "mode=train"
    assert len(lines) == len(conn.layers) + 4
    assert repr(conn).startswith("Connectome(ResNet, layers=21")


def test_mask_hash_tracks_masks():
    a, b = adaptive.Connectome(mlp(0)), adaptive.Connectome(mlp(1))
    assert a.mask_hash() == b.mask_hash()  # weights differ, masks agree
    a.set_masks(random_masks(a, seed=3))
    assert a.mask_hash() != b.mask_hash()
    b.set_masks(random_masks(b, seed=3))
    assert a.mask_hash() == b.mask_hash()


# ------------------------------------------------------------------------------ persistence
def _safetensors_layout(path):
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    return len(raw), n, header


def test_save_load_round_trip_with_one_bit_per_synapse(tmp_path, resnet18_pair):
    model, conn = resnet18_pair
    path = tmp_path / "run" / "connectome.safetensors"
    conn.save(path)
    size, header_len, header = _safetensors_layout(path)
    data = sum(math.ceil(m.numel() / 8) for m in conn.masks.values())
    assert size == 8 + header_len + data  # the payload is exactly the packed bits
    assert size * 8 <= conn.num_synapses() + 8 * (8 + 160 * len(conn.layers))  # <= 1 bit + a small header
    assert all(v["dtype"] == "U8" for k, v in header.items() if k != "__metadata__")
    assert header["__metadata__"]["ensemble"] == "kernel"
    assert not list(tmp_path.joinpath("run").glob("*.tmp"))  # atomic write leaves no temp file

    fresh = torchvision.models.resnet18(weights=None, num_classes=10)
    fresh.load_state_dict(model.state_dict())
    with torch.no_grad():  # pruned positions hold junk: loading the connectome must zero them
        for n, m in conn.masks.items():
            fresh.get_parameter(n).masked_fill_(~m, 0.5)
    conn2 = adaptive.Connectome.load(path, fresh)
    assert conn2.ensemble == "kernel" and conn2.mode == "train"
    assert conn2.mask_hash() == conn.mask_hash()
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(fresh.eval()(x), model(x))


def test_load_into_a_model_of_different_shape_names_the_parameter(tmp_path, resnet18_pair):
    _, conn = resnet18_pair
    path = tmp_path / "c.safetensors"
    conn.save(path)
    other = torchvision.models.resnet18(weights=None, num_classes=7)
    before = other.fc.weight.detach().clone()
    with pytest.raises(ValueError, match=r"shape mismatch for 'fc.weight': saved \(10, 512\), model has \(7, 512\)"):
        adaptive.Connectome.load(path, other)
    assert torch.equal(other.fc.weight, before)
    other, before = mlp(), {n: p.detach().clone() for n, p in mlp().named_parameters()}
    with pytest.raises(KeyError, match=r"has masks for \['conv1.weight', .*\.\.\., which the model does not have \(its "
                                       r"prunable weights: \['0.weight', '2.weight', '4.weight'\]\).*nothing was loaded; "
                                       "load it into the model it was saved from"):
        adaptive.Connectome.load(path, other)
    assert all(torch.equal(p, before[n]) for n, p in other.named_parameters())
    # a connectome over a subset of layers (exclude=...) loads back over the same subset
    part = adaptive.Connectome(mlp(), exclude="4")
    part.set_masks({"2.weight": torch.eye(16, dtype=torch.bool)})
    part.save(tmp_path / "mlp.safetensors")
    back = adaptive.Connectome.load(tmp_path / "mlp.safetensors", mlp())
    assert back.names == ["0.weight", "2.weight"] and back.mask_hash() == part.mask_hash()
    (tmp_path / "junk.safetensors").write_bytes(b"not a file")
    with pytest.raises(ValueError, match=r"junk\.safetensors is not a readable connectome file"):
        adaptive.Connectome.load(tmp_path / "junk.safetensors", mlp())


def test_load_names_a_saved_layer_that_is_an_embedding_in_the_model(tmp_path):
    """A saved Linear that the model holds as an nn.Embedding (or another layer without synapses) was
    refused as "include pattern(s) ['0'] matched no prunable layer" (same shape) or as a shape mismatch."""
    torch.manual_seed(0)
    conn = adaptive.Connectome(nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 3)))
    conn.save(tmp_path / "c.safetensors")
    for first in (nn.Embedding(4, 4), nn.Embedding(10, 4), nn.LayerNorm(4)):
        other = nn.Sequential(first, nn.Linear(4, 3))
        before = {k: v.clone() for k, v in other.state_dict().items()}
        with pytest.raises(ValueError, match=rf"synapses in '0.weight', but in this model '0' is of type "
                                             rf"{type(first).__name__}.*load the file into a model of the architecture"):
            adaptive.Connectome.load(tmp_path / "c.safetensors", other)
        assert all(torch.equal(v, before[k]) for k, v in other.state_dict().items())


def test_load_with_its_arguments_swapped_says_the_order(tmp_path):
    """Connectome.load(model, path) failed inside os.stat ("path should be string ... not Sequential")."""
    conn = adaptive.Connectome(mlp())
    conn.save(tmp_path / "c.safetensors")
    with pytest.raises(TypeError, match=r"takes the file first and the model second: Connectome.load\(path, model\)"):
        adaptive.Connectome.load(mlp(), tmp_path / "c.safetensors")
    with pytest.raises(TypeError, match=r"needs the nn.Module to rebuild the connectome on, got str"):
        adaptive.Connectome.load(tmp_path / "c.safetensors", "mlp")


def test_save_refuses_a_folder_as_load_does(tmp_path):
    """save(folder) failed inside its atomic rename with IsADirectoryError on a temporary file's name."""
    conn = adaptive.Connectome(mlp())
    folder = tmp_path / "run"
    folder.mkdir()
    for call in (lambda: conn.save(folder), lambda: adaptive.Connectome.load(folder, mlp())):
        with pytest.raises(ValueError, match=r"run is a folder, not a connectome file"):
            call()
    assert list(tmp_path.iterdir()) == [folder] and list(folder.iterdir()) == []  # nothing written
    with pytest.raises(ValueError, match=r"e\.g\. .*run/connectome\.safetensors"):
        conn.save(str(folder))
    conn.save(folder / "connectome.safetensors")  # the path the error names round-trips
    assert adaptive.Connectome.load(folder / "connectome.safetensors", mlp()).mask_hash() == conn.mask_hash()


def test_mask_only_save_with_original_restores_bit_identical(tmp_path):
    model = mlp()
    orig = {n: p.detach().clone() for n, p in model.named_parameters()}
    conn = adaptive.Connectome(model, mode="mask_only", ensemble="2:4")
    conn.set_masks({n: conn.granularity.select(torch.randn(m.shape)) for n, m in conn.masks.items()})
    conn.save(tmp_path / "m.safetensors", with_original=True)
    pruned_model = mlp()
    with torch.no_grad():  # a model that only has the pruned weights
        for (n, p), q in zip(pruned_model.named_parameters(), model.parameters()):
            p.copy_(q)
    conn2 = adaptive.Connectome.load(tmp_path / "m.safetensors", pruned_model)
    assert conn2.mode == "mask_only" and conn2.mask_hash() == conn.mask_hash()
    conn2.set_masks({n: torch.ones_like(m) for n, m in conn2.masks.items()})
    for n, p in pruned_model.named_parameters():
        assert torch.equal(p.detach().view(torch.int32), orig[n].view(torch.int32)), n
    with pytest.raises(ValueError, match="with_original=True needs original weights"):
        adaptive.Connectome(mlp()).save(tmp_path / "x.safetensors", with_original=True)


def test_equal_connectomes_save_byte_identical_files_whose_metadata_keys_are_sorted(tmp_path):
    """safetensors wrote the metadata keys in a random order on each call: two runs with identical masks
    wrote connectome.safetensors files that differed in bytes. A file so written still loads."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    model = mlp()
    conn = adaptive.Connectome(model, mode="mask_only", ensemble="2:4")
    conn.set_masks({n: conn.granularity.select(torch.randn(m.shape)) for n, m in conn.masks.items()})
    blobs = set()
    for i in range(6):
        conn.save(tmp_path / f"c{i}.safetensors", with_original=True)
        blobs.add((tmp_path / f"c{i}.safetensors").read_bytes())
    assert len(blobs) == 1
    blob = blobs.pop()
    (n,) = struct.unpack("<Q", blob[:8])
    assert (8 + n) % 8 == 0  # the data still starts aligned
    meta = json.loads(blob[8:8 + n])["__metadata__"]
    assert list(meta) == sorted(meta)
    assert adaptive.Connectome.load(tmp_path / "c0.safetensors", mlp()).mask_hash() == conn.mask_hash()
    with safe_open(str(tmp_path / "c0.safetensors"), framework="pt") as f:  # as an earlier version wrote it
        save_file({k: f.get_tensor(k) for k in f.keys()}, str(tmp_path / "old.safetensors"), metadata=f.metadata())
    assert adaptive.Connectome.load(tmp_path / "old.safetensors", mlp()).mask_hash() == conn.mask_hash()


def test_state_dict_round_trip():
    model = mlp()
    conn = adaptive.Connectome(model, ensemble="block:2x4", mode="mask_only")
    conn.set_masks(random_masks(conn))
    sd = conn.state_dict()
    assert sd["ensemble"] == "block:2x4" and sd["mode"] == "mask_only" and set(sd["original"]) == set(conn.masks)
    buf = __import__("io").BytesIO()
    torch.save(sd, buf)  # plain tensors and strings: checkpointable
    buf.seek(0)
    sd = torch.load(buf)
    other_model = mlp(seed=5)
    other = adaptive.Connectome(other_model, ensemble="block:2x4", mode="mask_only")
    other.load_state_dict(sd)
    assert other.mask_hash() == conn.mask_hash()
    for n in conn.masks:
        assert torch.equal(other.params[n], conn.params[n])  # originals came along, masks applied
    # a 2:4 connectome that was never pruned (dense) reloads
    dense = adaptive.Connectome(mlp(), ensemble="2:4")
    dense.load_state_dict(dense.state_dict())
    assert dense.density() == 1.0


def test_a_state_dict_of_another_format_is_refused_before_anything_changes():
    """Connectome.load refused a file of another format; load_state_dict read the same dict whatever its "format"
    said and rewrote masks and weights."""
    model = mlp()
    conn = adaptive.Connectome(model)
    sd = {**conn.state_dict(), "masks": random_masks(conn), "format": "adaptive.connectome/99"}
    before, weights = conn.mask_hash(), {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match=r"format 'adaptive.connectome/99', and this version of adaptive reads "
                                         r"'adaptive.connectome/1': .*conn.set_masks\(sd\['masks'\]\)"):
        conn.load_state_dict(sd)
    with pytest.raises(ValueError, match="format 'adaptive.connectome/99'"):
        conn.check_state_dict(sd)
    assert conn.mask_hash() == before and all(torch.equal(v, model.state_dict()[k]) for k, v in weights.items())
    conn.load_state_dict({k: v for k, v in sd.items() if k != "format"})  # no field: the one format there is
    assert conn.mask_hash() != before


def test_dense_state_dict_loads_into_a_vanilla_torchvision_model(resnet18_pair):
    model, conn = resnet18_pair
    sd = conn.dense_state_dict()
    assert list(sd) == list(model.state_dict())
    assert all(isinstance(v, torch.Tensor) for v in sd.values())
    vanilla = torchvision.models.resnet18(weights=None, num_classes=10).eval()
    vanilla.load_state_dict(sd, strict=True)
    for n, m in conn.masks.items():
        assert bool((sd[n][~m] == 0).all())
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(vanilla(x), model(x))
    # a copy: editing the export leaves the model alone
    sd["conv1.weight"].fill_(1.0)
    assert not bool((model.conv1.weight == 1).all())


def test_dense_state_dict_writes_zeros_under_every_key_of_a_shared_weight():
    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(4, 4)
            self.b = nn.Linear(4, 4)
            self.b.weight = self.a.weight

    model = Tied()
    conn = adaptive.Connectome(model)
    conn.set_masks({"a.weight": torch.eye(4, dtype=torch.bool)})
    sd = conn.dense_state_dict()
    assert torch.equal(sd["a.weight"], sd["b.weight"])
    assert int((sd["b.weight"] != 0).sum()) == 4


def test_replaced_parameters_are_refused_and_masks_stay():
    """load_state_dict(assign=True) puts new Parameter objects into the model: a connectome built
    before would mask tensors the model no longer uses. Every entry point that edits says so."""
    m = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 2))
    conn = adaptive.Connectome(m)
    half = {k: torch.rand(v.shape, generator=torch.Generator().manual_seed(0)) < 0.5 for k, v in conn.masks.items()}
    conn.set_masks(half)
    m.load_state_dict({k: v.clone() for k, v in m.state_dict().items()}, assign=True)
    before = {k: v.clone() for k, v in conn.masks.items()}
    for call in (lambda: conn.set_masks({k: torch.ones_like(v) for k, v in conn.masks.items()}),
                 lambda: conn.attach(torch.optim.SGD(m.parameters(), lr=0.1)),
                 conn.apply):
        with pytest.raises(RuntimeError, match=r"no longer the ones this Connectome masks.*new Connectome"):
            call()
    assert all(torch.equal(before[k], conn.masks[k]) for k in before)
    with torch.no_grad():
        for k in half:
            m.get_parameter(k).fill_(1.0)
    fresh = adaptive.Connectome(m)  # the remedy the message gives
    fresh.set_masks(conn.masks)
    assert all((m.get_parameter(k)[~half[k]] == 0).all() for k in half)


def test_apply_remasks_a_weight_written_behind_the_version_counter():
    m = nn.Linear(5, 3)
    conn = adaptive.Connectome(m)
    mask = torch.rand(3, 5, generator=torch.Generator().manual_seed(1)) < 0.5
    conn.set_masks({"weight": mask})
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    conn.attach(opt)
    m.weight.data.copy_(torch.randn(3, 5))  # invisible to autograd's version counter
    conn.apply()
    m(torch.randn(2, 5)).sum().backward()
    opt.step()
    assert (m.weight[~mask] == 0).all()


def _one_layer_attached(sparse_before: bool, mode: str = "train"):
    """A Linear(6, 4) under a connectome (one synapse pruned where ``sparse_before``), attached to SGD with
    momentum: (model, conn, opt)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 4))
    conn = adaptive.Connectome(model, mode=mode)
    if sparse_before:
        mask = torch.ones(4, 6, dtype=torch.bool)
        mask[0, 0] = False
        conn.set_masks({"0.weight": mask})
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    conn.attach(opt)
    return model, conn, opt


@pytest.mark.parametrize("sparse_before", [False, True])
@pytest.mark.parametrize("write", ["in place", "behind the version counter"])
def test_apply_imposes_masks_written_in_place(sparse_before, write):
    """conn.masks written in place, then conn.apply(): the newly masked weights are exactly 0.0 and
    stay so through later steps. apply() skipped a layer that was dense when last set, and the
    steps masked with the hot-path copies of the masks as they were (momentum revived them too)."""
    model, conn, opt = _one_layer_attached(sparse_before)
    x = torch.randn(5, 6)
    model(x).sum().backward()
    opt.step()  # momentum buffers are non-zero at every live synapse
    opt.zero_grad()
    target = conn.masks["0.weight"] if write == "in place" else conn.masks["0.weight"].data
    target[2:, 3:] = False
    conn.apply()
    w, pruned = model[0].weight, ~conn.masks["0.weight"]
    assert int(pruned.sum()) == 6 + sparse_before
    assert bool((w[pruned] == 0).all()) and bool((w[~pruned] != 0).all())
    assert not bool(opt.state[w]["momentum_buffer"][pruned].any())
    for _ in range(2):
        model(x).sum().backward()
        opt.step()
        opt.zero_grad()
    assert bool((w[pruned] == 0).all())


@pytest.mark.parametrize("mode", ["train", "mask_only"])
@pytest.mark.parametrize("sparse_before", [False, True])
def test_a_mask_written_in_place_is_imposed_at_the_next_step_without_apply(sparse_before, mode):
    """conn.masks[n][...] = False (through PyTorch: its version counter moves) without apply(): the step
    masked with the copies it had cached, so the weights kept training while density(), save() and
    mask_hash() counted them pruned; a deep copy taken then zeroed them at its next step."""
    model, conn, opt = _one_layer_attached(sparse_before, mode)
    x = torch.randn(5, 6)
    w = model[0].weight
    before = w.detach().clone()

    def step():
        model(x).sum().backward()
        opt.step()
        opt.zero_grad()

    step()
    conn.masks["0.weight"][2:, 3:] = False
    step()
    step()
    pruned = ~conn.masks["0.weight"]
    assert int(pruned.sum()) == 6 + sparse_before
    assert bool((w[pruned] == 0).all()) and not bool(torch.signbit(w[pruned]).any())
    assert not bool(opt.state[w]["momentum_buffer"][pruned].any())
    if mode == "mask_only":  # the live weights are the originals, bit for bit
        assert torch.equal(w[~pruned], before[~pruned])


@pytest.mark.parametrize("ensemble", ["synapse", "neuron"])
@pytest.mark.parametrize("via", ["ensemble_masks", "masks in place"])
def test_read_modify_write_of_the_masks_prunes_for_real(ensemble, via):
    """Editing the masks one reads back (or conn.masks itself, in place) and passing them to the setter
    prunes those weights and resets their optimizer state, as for a fresh dict."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 3))
    conn = adaptive.Connectome(model, ensemble=ensemble)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    conn.attach(opt)
    model(torch.randn(8, 12)).sum().backward()
    opt.step()  # momentum buffers are non-zero everywhere
    if via == "ensemble_masks":
        em = conn.ensemble_masks()
        em["0.weight"][:5] = False
        changed = conn.set_ensemble_masks(em)
    else:
        conn.masks["0.weight"][:5] = False
        changed = conn.set_masks(conn.masks)
    pruned = ~conn.masks["0.weight"]
    assert int(pruned.sum()) == 60 and int(changed["0.weight"].sum()) == 60
    w = model[0].weight
    assert not bool(w[pruned].any())
    assert not bool(opt.state[w]["momentum_buffer"][pruned].any())
    model(torch.randn(8, 12)).sum().backward()
    opt.step()
    assert not bool(w[pruned].any())
    assert conn.set_masks(conn.masks) == {}  # nothing changed since: nothing to do


@pytest.mark.parametrize("mode", ["train", "mask_only"])
@pytest.mark.parametrize("applied", [False, True])
def test_a_mask_edited_in_place_and_set_back_as_it_was_is_put_back(mode, applied):
    """conn.masks edited in place (and perhaps imposed by apply()), then the mask as it was set
    passed back: the connectome ends consistent, its live weights whole (mask_only: the originals)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 4), nn.ReLU(), nn.Linear(4, 2))
    orig = model[0].weight.detach().clone()
    conn = adaptive.Connectome(model, mode=mode)
    as_set = conn.masks["0.weight"].clone()
    conn.masks["0.weight"][0, :3] = False  # in place, behind the connectome's back
    if applied:
        conn.apply()  # the edited mask was imposed: those weights are 0.0 now
    conn.set_masks({"0.weight": as_set})
    assert bool(conn.masks["0.weight"].all()) and conn.num_live() == conn.num_synapses()
    w = model[0].weight.detach()
    if mode == "mask_only":
        assert torch.equal(w, orig)  # every live synapse at its original value
    else:  # train mode: whatever apply() did, regrown from the value it holds (0.0 if it was pruned)
        assert torch.equal(w[1:], orig[1:]) and bool(((w[0, :3] == orig[0, :3]) | (w[0, :3] == 0)).all())


@pytest.mark.parametrize("how", ["set_masks", "unvalidated", "load_state_dict"])
def test_mask_edits_inside_inference_mode_are_whole(how):
    # Masks made under torch.inference_mode() are inference tensors, which track no version counter:
    # the edit raised after committing its first layer, leaving that layer's pruned weights live
    # for good (even conn.apply() skipped it). An edit there now works, and whole.
    model = mlp()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    conn = adaptive.Connectome(model).attach(opt)
    masks = random_masks(conn)
    sd = {**conn.state_dict(), "masks": masks}
    with torch.inference_mode():
        if how == "load_state_dict":
            conn.load_state_dict({**sd, "masks": {n: m.clone() for n, m in masks.items()}})
        else:
            conn.set_masks({n: m.clone() for n, m in masks.items()}, validate=how == "set_masks")
        conn.apply()
    assert all(torch.equal(conn.masks[n], masks[n]) and not conn.masks[n].is_inference() for n in masks)
    for _ in range(2):
        F.cross_entropy(model(torch.randn(4, 20)), torch.randint(0, 3, (4,))).backward()
        opt.step()
        opt.zero_grad()
    assert all(bool((p[~masks[n]] == 0).all()) and bool(p[masks[n]].ne(0).any()) for n, p in conn.params.items())


def test_a_connectome_of_a_compiled_model_uses_the_plain_models_names(tmp_path):
    # torch.compile(model) wraps the model under "_orig_mod.": a connectome built on the wrapper named
    # its layers so, and its files and dense_state_dict() did not load into the plain model
    model = mlp()
    compiled = torch.compile(model, backend="eager")
    conn = adaptive.Connectome(compiled)
    assert conn.names == ["0.weight", "2.weight", "4.weight"] and conn.model is model
    opt = torch.optim.SGD(compiled.parameters(), lr=0.1, momentum=0.9)
    conn.set_masks(random_masks(conn))
    conn.attach(opt)
    x = torch.randn(4, 20)
    F.cross_entropy(compiled(x), torch.randint(0, 3, (4,))).backward()
    opt.step()
    assert all(bool((p[~conn.masks[n]] == 0).all()) for n, p in conn.params.items())
    with torch.no_grad():
        assert torch.equal(compiled(x), model(x))  # the compiled forward reads the masked weights
    torch._dynamo.reset()
    conn.save(tmp_path / "c.safetensors")
    plain = mlp(seed=1)
    plain.load_state_dict(conn.dense_state_dict())
    for m in (plain, torch.compile(plain, backend="eager")):
        loaded = adaptive.Connectome.load(tmp_path / "c.safetensors", m)
        assert loaded.names == conn.names and all(torch.equal(loaded.masks[n], conn.masks[n]) for n in conn.names)
    assert all(torch.equal(p, conn.params[n]) for n, p in adaptive.Connectome(plain).params.items())


@pytest.mark.parametrize("prefix", ["_orig_mod.", "module."])
def test_files_and_state_dicts_saved_under_a_wrapped_models_names_still_load(tmp_path, prefix):
    """Before connectomes of torch.compile(model) (and of DDP(model), accelerator.prepare's) took the
    plain names, their files and state_dicts named layers _orig_mod.NAME (module.NAME); once the names
    changed, such a file loaded into neither the wrapped nor the plain model."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    conn = adaptive.Connectome(mlp())
    conn.set_masks(random_masks(conn))
    conn.save(tmp_path / "c.safetensors")
    with safe_open(str(tmp_path / "c.safetensors"), "pt") as f:  # as the earlier code wrote it: no checksum
        meta = {k: v for k, v in f.metadata().items() if k != "sha256"}
        tensors = {k.replace("/", "/" + prefix, 1): f.get_tensor(k) for k in f.keys()}
    meta["layers"] = json.dumps({f"{prefix}{n}": s for n, s in json.loads(meta["layers"]).items()})
    if "ensembles" in meta:
        meta["ensembles"] = json.dumps({f"{prefix}{n}": s for n, s in json.loads(meta["ensembles"]).items()})
    save_file(tensors, tmp_path / "old.safetensors", metadata=meta)
    for m in (mlp(), torch.compile(mlp(), backend="eager"), nn.DataParallel(mlp())):
        loaded = adaptive.Connectome.load(tmp_path / "old.safetensors", m)
        assert loaded.names == conn.names and all(torch.equal(loaded.masks[n], conn.masks[n]) for n in conn.names)
    sd = conn.state_dict()
    sd["masks"] = {f"{prefix}{n}": m for n, m in sd["masks"].items()}
    if sd.get("ensembles"):
        sd["ensembles"] = {f"{prefix}{n}": s for n, s in sd["ensembles"].items()}
    other = adaptive.Connectome(mlp())
    other.load_state_dict(sd)
    assert all(torch.equal(other.masks[n], conn.masks[n]) for n in conn.names)


class _OwnModule(nn.Module):
    """A model whose own submodule is called ``module``, as a DDP wrapper's is: its layers are
    ``module.fc`` and ``fc``, and under DDP ``module.module.fc`` and ``module.fc``."""

    def __init__(self):
        super().__init__()
        self.module = nn.Sequential()
        self.module.fc = nn.Linear(6, 6)
        self.fc = nn.Linear(6, 6)

    def forward(self, x):
        return self.fc(torch.relu(self.module.fc(x)))


def test_a_model_with_its_own_module_submodule_keeps_its_names_when_wrapper_prefixes_are_taken_off(tmp_path):
    """Wrapper prefixes were taken off name by name until the name was the model's: an old DDP-named
    state of a model with its own ``module`` submodule (module.module.fc, module.fc) became module.fc
    twice, the wrapper's module.fc (the model's fc) overwriting the model's module.fc, and fc's mask
    was missing; its plain state loaded into a connectome leaving module.fc out had module.fc taken as fc."""
    torch.manual_seed(0)
    conn = adaptive.Connectome(_OwnModule())
    conn.set_masks(random_masks(conn))
    sd = conn.state_dict()
    old = {**sd, "masks": {f"module.{n}": m for n, m in sd["masks"].items()}}  # a connectome built on DDP(model)
    for state in (sd, old):
        other = adaptive.Connectome(_OwnModule())
        other.load_state_dict(state)
        assert all(torch.equal(other.masks[n], conn.masks[n]) for n in conn.names)
    from safetensors import safe_open
    from safetensors.torch import save_file
    conn.save(tmp_path / "c.safetensors")
    with safe_open(str(tmp_path / "c.safetensors"), "pt") as f:  # as the earlier code wrote it: no checksum
        meta = {k: v for k, v in f.metadata().items() if k != "sha256"}
        tensors = {k.replace("/", "/module.", 1): f.get_tensor(k) for k in f.keys()}
    meta["layers"] = json.dumps({f"module.{n}": s for n, s in json.loads(meta["layers"]).items()})
    save_file(tensors, tmp_path / "old.safetensors", metadata=meta)
    for path in ("c.safetensors", "old.safetensors"):
        loaded = adaptive.Connectome.load(tmp_path / path, _OwnModule())
        assert all(torch.equal(loaded.masks[n], conn.masks[n]) for n in conn.names)
    fc_only = adaptive.Connectome(_OwnModule(), exclude=["module.*"])
    with pytest.raises(KeyError, match="module.fc.weight"):  # the model's module.fc, left out: no wrapper's fc
        fc_only.load_state_dict({**sd, "masks": {"module.fc.weight": sd["masks"]["module.fc.weight"]}})


def test_a_connectome_of_a_data_parallel_model_uses_the_plain_models_names(tmp_path):
    # accelerator.prepare(model) returns DistributedDataParallel(model), which holds the model under
    # "module." as DataParallel does: a connectome built on the wrapper named its layers so, and its
    # files, state_dict and dense_state_dict() loaded into neither the plain model nor a connectome
    # built before the wrapping (whose mask hash differed too)
    model = mlp()
    plain_hash = adaptive.Connectome(model).mask_hash()  # of the names: every mask all-ones
    for wrapped in (nn.DataParallel(model), torch.compile(nn.DataParallel(model), backend="eager")):
        conn = adaptive.Connectome(wrapped)
        assert conn.names == ["0.weight", "2.weight", "4.weight"] and conn.model is model
        assert conn.mask_hash() == plain_hash
    torch._dynamo.reset()
    conn.set_masks(random_masks(conn))
    conn.save(tmp_path / "c.safetensors")
    other = mlp(seed=1)
    other.load_state_dict(conn.dense_state_dict(device="cpu"))
    assert all(torch.equal(other.get_parameter(n), p.cpu()) for n, p in conn.params.items())
    assert adaptive.Connectome.load(tmp_path / "c.safetensors", other).mask_hash() == conn.mask_hash()
    fresh = adaptive.Connectome(mlp(seed=1))
    fresh.load_state_dict(conn.state_dict())
    assert fresh.mask_hash() == conn.mask_hash()


@pytest.mark.filterwarnings("ignore:Initializing zero-element tensors is a no-op")
def test_files_and_state_dicts_saved_with_an_empty_layer_still_load(tmp_path):
    """Before weights with no entries (nn.Linear(4, 0)) were left out of connectomes, save wrote
    them as layers of 0 synapses; such a file (or state_dict) then failed to load with 'unknown
    parameter name'. The empty layer is skipped: the model holds no synapses there either."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    from adaptive import bitpack
    from adaptive.integrity import tensors_digest

    def model():
        torch.manual_seed(0)
        return nn.ModuleDict({"a": nn.Linear(4, 8), "e": nn.Linear(4, 0), "b": nn.Linear(8, 2)})

    conn = adaptive.Connectome(model(), ensemble={"a": "neuron", "*": "synapse"}, mode="mask_only")
    conn.set_masks({"a.weight": (torch.arange(8) % 3 > 0)[:, None].expand(8, 4), "b.weight": torch.rand(2, 8) > 0.5})
    conn.save(tmp_path / "c.safetensors", with_original=True)
    with safe_open(str(tmp_path / "c.safetensors"), "pt") as f:  # add the empty layer as the earlier save did
        meta = {k: v for k, v in f.metadata().items() if k != "sha256"}
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    empty = torch.ones(0, 4, dtype=torch.bool)
    tensors.update({"mask/e.weight": bitpack.pack(empty), "original/e.weight": torch.empty(0, 4)})
    meta["layers"] = json.dumps({**json.loads(meta["layers"]), "e.weight": [0, 4]})
    meta["ensembles"] = json.dumps({**json.loads(meta["ensembles"]), "e.weight": "synapse"})
    meta["sha256"] = tensors_digest(tensors, meta)
    save_file(tensors, tmp_path / "old.safetensors", metadata=meta)
    loaded = adaptive.Connectome.load(tmp_path / "old.safetensors", model())
    assert loaded.names == conn.names == ["a.weight", "b.weight"]
    assert all(torch.equal(loaded.masks[n], conn.masks[n]) for n in conn.names)
    assert all(torch.equal(loaded.original[n], conn.original[n]) for n in conn.names)
    sd = conn.state_dict()
    sd["masks"]["e.weight"], sd["original"]["e.weight"] = empty, torch.empty(0, 4)
    sd["ensembles"]["e.weight"] = "synapse"
    other = adaptive.Connectome(model(), ensemble={"a": "neuron", "*": "synapse"}, mode="mask_only")
    other.load_state_dict(sd)
    assert all(torch.equal(other.masks[n], conn.masks[n]) for n in conn.names)
    wide = nn.ModuleDict({"a": nn.Linear(4, 8), "e": nn.Linear(4, 3), "b": nn.Linear(8, 2)})
    with pytest.raises(ValueError, match=r"shape mismatch for 'e.weight': saved \(0, 4\), model has \(3, 4\)"):
        adaptive.Connectome.load(tmp_path / "old.safetensors", wide)  # a layer the model does fill is no skip


def test_apply_in_train_mode_inside_an_autocast_region_drops_the_stale_low_precision_weights():
    """autocast keeps one low-precision copy of each weight per region; set_masks and the mask_only
    apply dropped it, the train-mode apply did not: after an in-place mask edit and apply(), the
    next forward in the same region still ran the unpruned weights."""
    torch.manual_seed(0)
    m = nn.Linear(4, 3)
    conn = adaptive.Connectome(m)
    x = torch.randn(2, 4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        before = m(x)
        conn.masks["weight"].data[0] = False  # an edit behind the version counter: apply() imposes it
        conn.apply()
        inside = m(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # a fresh region: fresh copies
        fresh = m(x)
    assert float(m.weight.detach()[0].abs().max()) == 0.0
    assert torch.equal(inside, fresh) and not torch.equal(inside, before)


def test_a_connectome_built_or_loaded_inside_inference_mode_tracks_edits(tmp_path):
    """Connectome(model) and Connectome.load inside torch.inference_mode() raised 'Inference tensors
    do not track version counter' (their masks were inference tensors)."""
    conn = adaptive.Connectome(mlp())
    conn.set_masks(random_masks(conn))
    conn.save(tmp_path / "c.safetensors")
    a, b = mlp(), mlp()  # models built outside: inference mode makes inference-tensor parameters
    with torch.inference_mode():
        built = adaptive.Connectome(a)
        loaded = adaptive.Connectome.load(tmp_path / "c.safetensors", b)
    assert not any(m.is_inference() for c in (built, loaded) for m in c.masks.values())
    built.set_masks(random_masks(built))
    assert all(torch.equal(loaded.masks[n], conn.masks[n]) for n in conn.names)


def test_names_with_pattern_characters_load_exactly(tmp_path):
    """load selected the saved layers with include= patterns, so a ModuleDict key 'fc[1]' matched
    'fc1' (or nothing) instead of itself."""
    for keys in (["fc[1]"], ["fc[1]", "fc1"], ["a*", "a?b"]):
        torch.manual_seed(0)
        model = nn.Module()
        model.d = nn.ModuleDict({k: nn.Linear(4, 4) for k in keys})
        conn = adaptive.Connectome(model)
        conn.set_masks(random_masks(conn))
        conn.save(tmp_path / "c.safetensors")
        again = adaptive.Connectome.load(tmp_path / "c.safetensors", model)
        assert again.names == conn.names and again.mask_hash() == conn.mask_hash()


def test_a_parametrization_registered_after_attach_is_refused_at_the_step_and_by_every_reader(tmp_path):
    """The layer's weight became computed from a new path: training went on with it dense while the
    connectome still reported it pruned, and dense_state_dict zeroed the parametrization's original."""
    model = mlp()
    conn = adaptive.Connectome(model)
    conn.set_masks(random_masks(conn))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    conn.attach(opt)
    nn.utils.parametrizations.orthogonal(model[2])
    model(torch.randn(4, 20)).sum().backward()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    for call in (opt.step, conn.dense_state_dict, conn.summary, lambda: conn.save(tmp_path / "c.safetensors")):
        with pytest.raises(RuntimeError, match=r"\['2.weight'\] are no longer the ones.*parametrization.*"
                                               r"remove_parametrizations"):
            call()
    assert all(torch.equal(before[n], p) for n, p in model.named_parameters())  # the step did not run
    assert not (tmp_path / "c.safetensors").exists()
    nn.utils.parametrize.remove_parametrizations(model[2], "weight")  # the same Parameter, back in place
    opt.step()
    for n, p in conn.params.items():
        assert torch.all(p[~conn.masks[n]] == 0)


def test_a_module_swapped_in_after_attach_is_refused_at_the_step():
    """The old module still held the masked weight, so the per-step check passed and the new layer
    trained dense while the connectome reported it pruned."""
    model = mlp()
    conn = adaptive.Connectome(model)
    conn.set_masks(random_masks(conn))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    conn.attach(opt)
    opt.step()  # the quick check has its cache
    model[2] = nn.Linear(model[2].in_features, model[2].out_features)
    opt.add_param_group({"params": list(model[2].parameters())})
    model(torch.randn(4, 20)).sum().backward()
    with pytest.raises(RuntimeError, match=r"\['2.weight'\] are no longer the ones.*a module swapped in"):
        opt.step()


def test_a_non_callable_edit_listener_is_refused_before_any_edit():
    """add_edit_listener took anything; the next set_masks then raised 'int' object is not callable
    after it had changed masks, weights and momentum."""
    model = mlp()
    conn = adaptive.Connectome(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    conn.attach(opt)
    model(torch.randn(4, 20)).sum().backward()
    opt.step()
    with pytest.raises(TypeError, match="add_edit_listener needs a callable fn\\(changed\\).*got int"):
        conn.add_edit_listener(5)
    assert conn._edit_listeners == []
    conn.set_masks(random_masks(conn))  # edits as usual


def test_a_listener_that_raises_hears_of_an_edit_applied_whole_and_others_hear_too():
    model = mlp()
    conn = adaptive.Connectome(model)
    heard = []

    def broken(changed):
        raise RuntimeError("listener bug")

    conn.add_edit_listener(broken)
    conn.add_edit_listener(lambda changed: heard.append(sorted(changed)))
    masks = random_masks(conn)
    with pytest.raises(RuntimeError, match="listener bug") as e:
        conn.set_masks(masks)
    assert "the mask edit itself was applied whole" in "".join(getattr(e.value, "__notes__", []))
    assert heard == [sorted(masks)]
    for n, p in conn.params.items():
        assert torch.equal(conn.masks[n], masks[n]) and bool((p[~masks[n]] == 0).all())


def test_a_state_dict_with_originals_for_some_layers_names_the_missing_ones():
    """It raised a bare KeyError '2.weight'."""
    sd = adaptive.Connectome(mlp(), mode="mask_only").state_dict()
    sd["original"] = {"0.weight": sd["original"]["0.weight"]}
    conn = adaptive.Connectome(mlp(seed=3), mode="mask_only")
    before = {n: p.detach().clone() for n, p in conn.params.items()}
    with pytest.raises(KeyError, match=r"original weights for some layers but not for \['2.weight', '4.weight'\]"):
        conn.load_state_dict(sd)
    assert all(torch.equal(before[n], p) for n, p in conn.params.items())
    assert all(torch.equal(conn.original[n], before[n]) for n in before)


def test_save_refuses_a_name_that_is_not_a_safetensors_file(tmp_path):
    """conn.save("x.pt") wrote a safetensors file under a torch checkpoint's name, which torch.load
    then failed on ("invalid load key"). Refused before anything is written, naming the extension."""
    conn = adaptive.Connectome(mlp())
    for name, fixed in (("x.pt", "x.safetensors"), ("c.pth", "c.safetensors"), ("connectome", "connectome.safetensors")):
        with pytest.raises(ValueError, match=rf"{name} (has the extension '\.pth?'|has no extension), but "
                                             rf"Connectome.save writes a safetensors file.*name it '.*{fixed}'.*"
                                             r"torch\.save\(conn\.state_dict\(\), path\)"):
            conn.save(tmp_path / name)
    assert list(tmp_path.iterdir()) == []  # nothing written
    conn.save(tmp_path / "C.SafeTensors")
    assert adaptive.Connectome.load(tmp_path / "C.SafeTensors", mlp()).mask_hash() == conn.mask_hash()


def test_load_names_the_prunable_layers_it_leaves_dense(tmp_path):
    """A connectome loaded into a model with more prunable layers than it was saved with left them
    dense, outside the connectome, silently. Layers the saved connectome left out on purpose
    (exclude=) are recorded at save and not named; a file saved before that record says so."""
    import warnings

    from safetensors import safe_open
    from safetensors.torch import save_file

    torch.manual_seed(0)
    small = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    big = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4), nn.ReLU(), nn.Linear(4, 3))
    conn = adaptive.Connectome(small)
    conn.set_masks({n: torch.rand(m.shape) < 0.5 for n, m in conn.masks.items()})
    conn.save(tmp_path / "c.safetensors")
    with pytest.warns(UserWarning, match=r"1 prunable layer\(s\) of this model have no mask in .*c\.safetensors and stay "
                                         r"dense, outside the connectome.*: 4\.weight\. Load the file into the model it "
                                         r"was saved from.*conn\.set_masks\(loaded\.masks\)") as caught:
        loaded = adaptive.Connectome.load(tmp_path / "c.safetensors", big)
    assert "cannot tell" not in str(caught[0].message)
    assert loaded.names == ["0.weight", "2.weight"] and loaded.mask_hash() == conn.mask_hash()
    whole = adaptive.Connectome(big)
    whole.set_masks(loaded.masks)  # the fix named
    assert whole.layer_density()["4.weight"] == 1.0 and all(torch.equal(whole.masks[n], conn.masks[n]) for n in conn.names)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # left out on purpose when saved, or the same model: quiet
        adaptive.Connectome(big, exclude="4").save(tmp_path / "x.safetensors")
        assert adaptive.Connectome.load(tmp_path / "x.safetensors", big).names == ["0.weight", "2.weight"]
        adaptive.Connectome.load(tmp_path / "c.safetensors", small)
    with safe_open(str(tmp_path / "x.safetensors"), framework="pt") as f:  # as saved before the record (unverified)
        meta = {k: v for k, v in f.metadata().items() if k not in ("outside", "sha256")}
        save_file({k: f.get_tensor(k) for k in f.keys()}, str(tmp_path / "old.safetensors"), metadata=meta)
    with pytest.warns(UserWarning, match=r": 4\.weight; this file, saved before .* cannot tell whether exclude= left them"):
        adaptive.Connectome.load(tmp_path / "old.safetensors", big)


class _Untied(nn.Module):
    def __init__(self):
        super().__init__()
        self.enc, self.out = nn.Linear(4, 4), nn.Linear(4, 2)


class _Tied(nn.Module):
    """Another model: a head sharing enc's weight, ahead of it, so the weight is its layer 'head.weight'."""

    def __init__(self):
        super().__init__()
        self.head, self.enc, self.out = nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 2)
        self.head.weight = self.enc.weight


@pytest.mark.parametrize("ensemble", ["neuron", "enc=neuron;synapse"])
def test_load_of_a_file_from_another_model_names_the_layers_before_the_granularities(tmp_path, ensemble):
    """A model with a prunable layer the file has no mask for was refused, with per-layer granularities, as
    "saved with ensemble X, this connectome uses X: build the Connectome with ensemble=X": the granularities
    were compared before the layers. The layers come first, named with the fix, and nothing changes."""
    torch.manual_seed(0)
    adaptive.Connectome(_Untied(), ensemble=ensemble).save(tmp_path / "c.safetensors")
    model = _Tied()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(KeyError, match=r"the model has prunable layer\(s\) \['head\.weight'\] that .*c\.safetensors has "
                                       r"no mask for \(its layers: \['enc\.weight', 'out\.weight'\]\): it was saved "
                                       r"from another model, and nothing was loaded; load it into the model it was saved "
                                       r"from"):
        adaptive.Connectome.load(tmp_path / "c.safetensors", model)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    adaptive.Connectome.load(tmp_path / "c.safetensors", _Untied())  # the model it was saved from loads it


def test_load_state_dict_never_leaves_a_layer_dense_silently():
    """Unlike Connectome.load, which builds the connectome (and warns of the layers it leaves dense),
    load_state_dict fills a connectome that exists over its own layers: a state_dict over fewer layers
    (or more) is refused, changing nothing, and the error names the fix, which carries the masks over."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4), nn.ReLU(), nn.Linear(4, 3))
    small = adaptive.Connectome(model, exclude="4")
    small.set_masks({n: torch.rand(m.shape) < 0.5 for n, m in small.masks.items()})
    sd = small.state_dict()
    small.detach()
    whole = adaptive.Connectome(model)
    before, weights = whole.mask_hash(), {n: p.detach().clone() for n, p in whole.params.items()}
    with pytest.raises(KeyError, match=r"no mask for \['4\.weight'\]: it was saved from a connectome over other "
                                       r"layers.*nothing was loaded.*conn\.set_masks\(sd\['masks'\]\)"):
        whole.load_state_dict(sd)
    assert whole.mask_hash() == before and all(torch.equal(whole.params[n], w) for n, w in weights.items())
    whole.set_masks(sd["masks"])  # the fix named
    assert all(torch.equal(whole.masks[n], small.masks[n]) for n in small.names)
    assert whole.layer_density()["4.weight"] == 1.0
    with pytest.raises(KeyError, match=r"masks for \['4\.weight'\], which this connectome leaves out"):
        adaptive.Connectome(model, exclude="4").load_state_dict(whole.state_dict())


@pytest.mark.parametrize("ensemble", ["neuron", {"0": "kernel", "*": "neuron"}])
def test_load_state_dict_names_the_layers_a_state_has_that_this_connectome_lacks(ensemble):
    """Checked before the granularities: per-layer ones (mixed rules) differ on those layers too, and
    were refused as 'saved with ensemble X, this connectome uses X: build it with X'."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4), nn.ReLU(), nn.Linear(4, 3))
    whole = adaptive.Connectome(model, ensemble=ensemble)
    whole.set_ensemble_masks({n: torch.rand(whole.granularity_of(n).ensemble_shape(m.shape)) < 0.5
                              for n, m in whole.masks.items()})
    sd = whole.state_dict()
    whole.detach()
    small = adaptive.Connectome(model, ensemble=ensemble, exclude="4")
    before, weights = small.mask_hash(), {n: p.detach().clone() for n, p in model.named_parameters()}
    with pytest.raises(KeyError, match=r"masks for \['4\.weight'\], which this connectome leaves out \(the model has them; "
                                       r"include=/exclude=.*nothing was loaded; build this Connectome over the layers it "
                                       r"was saved with.*if n in conn\.masks\}\)"):
        small.load_state_dict(sd)
    assert small.mask_hash() == before and all(torch.equal(p, weights[n]) for n, p in model.named_parameters())
    small.set_masks({n: m for n, m in sd["masks"].items() if n in small.masks})  # the fix named
    assert all(torch.equal(small.masks[n], whole.masks[n]) for n in small.names)
    other = adaptive.Connectome(nn.Sequential(nn.Linear(8, 16)), ensemble=ensemble)
    with pytest.raises(KeyError, match=r"masks for \['2\.weight', '4\.weight'\], of which the model has no "
                                       r"\['2\.weight', '4\.weight'\].*on the model it was saved from"):
        other.load_state_dict(sd)
    if "ensembles" in sd:  # granularities listed for a layer with no mask: malformed, said so
        with pytest.raises(ValueError, match=r"gives granularities for \['4\.weight'\], layers it holds no mask for"):
            small.load_state_dict({**sd, "masks": {n: m for n, m in sd["masks"].items() if n != "4.weight"}})


def test_apply_in_mask_only_mode_restores_a_layer_with_no_pruned_synapse_too():
    """apply() in mask_only mode restores every weight from its original, the layers left dense as well
    as the pruned ones (a mutation that skipped the dense layers went unnoticed by every other test)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 4))
    conn = adaptive.Connectome(model, mode="mask_only")
    mask = torch.ones_like(conn.masks["0.weight"])
    mask[0, 0] = False
    conn.set_masks({"0.weight": mask})  # layer 0 pruned, layer 2 dense
    with torch.no_grad():
        model[0].weight.add_(1.0)
        model[2].weight.add_(1.0)
    conn.apply()
    assert torch.equal(model[0].weight, conn.original["0.weight"] * mask)
    assert torch.equal(model[2].weight, conn.original["2.weight"])


def test_repr_and_summary_never_show_a_density_of_all_or_none_that_it_is_not():
    """The repr's density (4 decimals) and the summary's percentages (2) rounded one synapse pruned of a million to
    "1.0000" and "100.00%" (every synapse live), and one kept to "0.0000" and "0.00%": they keep the digits that
    say so (adaptive.metrics.fmt_unsaturated); an exact 1 or 0 is written as before."""
    conn = adaptive.Connectome(nn.Sequential(nn.Linear(1000, 1000, bias=False)))
    assert "density=1.0000," in repr(conn) and conn.summary().splitlines()[-1].split()[3] == "100.00%"
    one_off = torch.ones(1000, 1000, dtype=torch.bool)
    one_off[0, 0] = False
    conn.set_masks({"0.weight": one_off})
    assert "density=0.999999," in repr(conn), repr(conn)
    assert [line.split()[-2] for line in conn.summary().splitlines() if line.startswith(("0.weight", "total"))] == \
        ["99.9999%", "99.9999%"]
    conn.set_masks({"0.weight": ~one_off})
    assert "density=0.000001," in repr(conn), repr(conn)
    assert conn.summary().splitlines()[-1].split()[3] == "0.0001%"


class _TiedPair(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(4, 4, bias=False), nn.Linear(4, 4, bias=False)
        self.b.weight = self.a.weight

    def forward(self, x):
        return self.b(self.a(x))


def test_dense_state_dict_zeros_the_pruned_weights_under_every_key_a_tied_weight_has():
    """A weight tied under two names, written in place since the masks were applied (nn.init, a load): both keys of
    the dense state_dict hold the zeros; with one key zeroed, a vanilla model loaded both from the other, unpruned.
    (A mutation zeroing only the connectome's own name passed every test.)"""
    torch.manual_seed(0)
    m = _TiedPair()
    conn = adaptive.Connectome(m)
    (n,) = conn.names
    mask = torch.rand(4, 4) > 0.5
    conn.set_masks({n: mask})
    with torch.no_grad():
        m.a.weight.fill_(1.0)
    sd = conn.dense_state_dict()
    assert set(sd) == {"a.weight", "b.weight"}
    for key in sd:
        assert torch.equal(sd[key] == 0, ~mask), key
    vanilla = _TiedPair()
    vanilla.load_state_dict(sd)
    assert torch.equal(vanilla.a.weight == 0, ~mask)


def test_an_original_of_another_shape_but_as_many_values_is_refused_before_loading():
    """check_state_dict compares each original's shape with its layer's: (6, 4) for a (4, 6) weight passed a
    comparison of counts and failed inside the load with torch's broadcasting error."""
    conn = adaptive.Connectome(nn.Sequential(nn.Linear(6, 4)), mode="mask_only")
    sd = conn.state_dict()
    sd["original"]["0.weight"] = sd["original"]["0.weight"].reshape(6, 4).clone()
    for call in (conn.check_state_dict, conn.load_state_dict):
        with pytest.raises(ValueError, match=r"original weight for '0.weight' has shape \(6, 4\), the model has \(4, 6\)"):
            call(sd)


def test_a_connectome_file_whose_header_names_another_dtype_is_refused_as_damaged(tmp_path):
    """The digest a connectome file stores covers each tensor's dtype, not its bytes only: a header edited from F16
    to BF16 (the same bytes, read as other numbers, off by up to 0.4 here) is refused, not loaded."""
    import struct

    torch.manual_seed(0)
    conn = adaptive.Connectome(nn.Sequential(nn.Linear(6, 4)).half(), mode="mask_only")
    path = tmp_path / "c.safetensors"
    conn.save(path, with_original=True)
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = raw[8:8 + n].decode()
    edited = header.replace('"original/0.weight":{"dtype":"F16"', '"original/0.weight":{"dtype":"BF16"')
    assert edited != header
    edited = edited.encode()
    path.write_bytes(struct.pack("<Q", len(edited)) + edited + raw[8 + n:])
    with pytest.raises(ValueError, match="is damaged: its content does not match the sha256"):
        adaptive.Connectome.load(path, nn.Sequential(nn.Linear(6, 4)).half(), mode="mask_only")
