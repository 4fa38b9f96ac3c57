"""What a connectome's load keeps and refuses: the frozen originals in the dtype they were saved in, nothing
changed by a refused load_state_dict, originals that are no real weights refused by name, a file without its
checksum loaded with a warning, a shape mismatch naming the fix."""
import json
import struct
import warnings

import pytest
import torch
from torch import nn

import adaptive

torch.set_num_threads(1)


def _cast_after_building(tmp_path):
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(8, 4))
    ref = m[0].weight.detach().clone()
    conn = adaptive.Connectome(m, mode="mask_only")
    m.half()  # cast after building: the originals stay float32, apply() casts them as it goes
    conn.set_masks({"0.weight": torch.rand(4, 8, generator=torch.Generator().manual_seed(1)) < 0.5})
    path = tmp_path / "c.safetensors"
    conn.save(str(path), with_original=True)
    return conn, ref, path


@pytest.mark.parametrize("how", ["file", "state_dict"])
def test_originals_load_in_the_dtype_they_were_saved_in(tmp_path, how):
    """A mask_only connectome built before its model was cast to half keeps float32 originals; its file and its
    state_dict loaded them cast to the model's half, so the loaded connectome, its model cast back to float32
    and every synapse restored, held other weights than the original ones."""
    conn, ref, path = _cast_after_building(tmp_path)
    m = nn.Sequential(nn.Linear(8, 4)).half()
    if how == "file":
        loaded = adaptive.Connectome.load(str(path), m)
    else:
        loaded = adaptive.Connectome(m, mode="mask_only")
        loaded.load_state_dict(conn.state_dict())
    assert loaded.original["0.weight"].dtype == torch.float32
    assert torch.equal(loaded.original["0.weight"], conn.original["0.weight"])
    assert torch.equal(loaded.masks["0.weight"], conn.masks["0.weight"])
    m.float()
    loaded.set_masks({"0.weight": torch.ones(4, 8, dtype=torch.bool)})
    assert torch.equal(m[0].weight.detach(), ref)  # bit for bit the weights the connectome was built on


def test_a_refused_load_state_dict_leaves_the_originals_as_they_were():
    """The originals were taken before the check that refuses a model whose parameters were replaced: the
    refused load left the masks as they were and the originals the refused state's."""
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(6, 3))
    conn = adaptive.Connectome(m, mode="mask_only")
    sd = conn.state_dict()
    sd["original"] = {"0.weight": torch.full((3, 6), 7.0)}
    before = conn.original["0.weight"].clone()
    m.load_state_dict({k: v.clone() for k, v in m.state_dict().items()}, assign=True)  # parameters replaced
    with pytest.raises(RuntimeError, match="are no longer the ones this Connectome masks"):
        conn.load_state_dict(sd)
    assert torch.equal(conn.original["0.weight"], before)


@pytest.mark.parametrize("bad", ["meta", "complex", "integer"])
def test_originals_that_are_no_real_weights_are_refused_by_name_before_anything_loads(bad):
    """A meta original was accepted by check_state_dict and failed the load with torch's bare NotImplementedError;
    a complex one was loaded as its real part."""
    conn = adaptive.Connectome(nn.Sequential(nn.Linear(6, 3)), mode="mask_only")
    sd = conn.state_dict()
    o = {"meta": torch.empty(3, 6, device="meta"), "complex": torch.ones(3, 6, dtype=torch.complex64),
         "integer": torch.ones(3, 6, dtype=torch.int64)}[bad]
    sd["original"] = {"0.weight": o}
    before = conn.original["0.weight"].clone()
    for call in (conn.check_state_dict, conn.load_state_dict):
        with pytest.raises(TypeError, match=r"original weight for '0\.weight' is a torch\.\w+ tensor on \w+: originals "
                                            r"are real floating-point weights"):
            call(sd)
    assert torch.equal(conn.original["0.weight"], before)


def test_a_connectome_file_without_its_checksum_loads_with_a_warning(tmp_path):
    """A file whose sha256 entry is gone (its name altered by one byte) loaded unverified and unsaid, whatever its
    masks held."""
    conn = adaptive.Connectome(nn.Sequential(nn.Linear(8, 4)))
    conn.set_masks({"0.weight": torch.rand(4, 8, generator=torch.Generator().manual_seed(0)) < 0.5})
    path = tmp_path / "c.safetensors"
    conn.save(str(path))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an intact file: no warning
        adaptive.Connectome.load(str(path), nn.Sequential(nn.Linear(8, 4)))
    b = bytearray(path.read_bytes())
    n = struct.unpack("<Q", b[:8])[0]
    i = b.index(b'"sha256"')
    b[i + 6] = ord("7")
    off = json.loads(b[8:8 + n])["mask/0.weight"]["data_offsets"][0]
    b[8 + n + off] ^= 0xFF
    path.write_bytes(bytes(b))
    with pytest.warns(UserWarning, match=r"carries no sha256 .*its content cannot be verified"):
        adaptive.Connectome.load(str(path), nn.Sequential(nn.Linear(8, 4)))


def test_a_shape_mismatch_names_the_fix(tmp_path):
    conn = adaptive.Connectome(nn.Sequential(nn.Linear(5, 3)))
    conn.save(str(tmp_path / "c.safetensors"))
    with pytest.raises(ValueError, match=r"shape mismatch for '0\.weight': saved \(3, 5\), model has \(3, 6\): .* nothing "
                                         r"was loaded; load it into the model it was saved from"):
        adaptive.Connectome.load(str(tmp_path / "c.safetensors"), nn.Sequential(nn.Linear(6, 3)))


def _refused_originals_file(tmp_path, edit, sign=True):
    """A mask_only connectome file saved with its originals, ``edit`` applied to its tensors and (with ``sign``)
    its sha256 written again, as another tool's output or a hand edit would be; and the model it fits."""
    import warnings

    from safetensors import safe_open
    from safetensors.torch import save_file

    from adaptive.integrity import tensors_digest

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 4), nn.ReLU(), nn.Linear(4, 3))
    adaptive.Connectome(model, mode="mask_only").save(tmp_path / "c.safetensors", with_original=True)
    with safe_open(str(tmp_path / "c.safetensors"), "pt") as f:
        meta, tensors = dict(f.metadata()), {k: f.get_tensor(k) for k in f.keys()}
    edit(tensors)
    meta.pop("sha256")
    if sign:
        meta["sha256"] = tensors_digest(tensors, meta)
    save_file(tensors, str(tmp_path / "bad.safetensors"), metadata=meta)
    fresh = nn.Sequential(nn.Linear(6, 4), nn.ReLU(), nn.Linear(4, 3))
    fresh.load_state_dict(model.state_dict())
    warnings.simplefilter("ignore")  # (the unsigned file's warning)
    return fresh


@pytest.mark.parametrize("edit,sign,words", [
    (lambda t: t.update({"original/0.weight": t["original/0.weight"][:1].clone()}), True,
     r"original weight for '0.weight' has shape \(1, 6\), the model has \(4, 6\)"),
    (lambda t: t.update({"original/0.weight": t["original/0.weight"][:1].clone()}), False, r"has shape \(1, 6\)"),
    (lambda t: t.update({"original/0.weight": (t["original/0.weight"] * 100).to(torch.int32)}), True,
     r"original weight for '0.weight' is a torch.int32 tensor"),
    (lambda t: t.pop("original/2.weight"), True, r"original weights for some layers but not for \['2.weight'\]"),
])
def test_a_connectome_file_whose_originals_do_not_fit_is_refused_and_leaves_the_model(tmp_path, edit, sign, words):
    """Connectome.load put a file's originals in place unchecked (load_state_dict checks them): originals of shape
    (1, 6) for a (4, 6) weight broadcast row 0 over every row of the model's weight, int32 ones cut it to integers,
    and a layer without one took the model's current weights, silently."""
    model = _refused_originals_file(tmp_path, edit, sign)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises((ValueError, TypeError, KeyError), match=words):
        adaptive.Connectome.load(tmp_path / "bad.safetensors", model)
    assert all(torch.equal(v, before[k]) and v.dtype == before[k].dtype for k, v in model.state_dict().items())
    assert not model._forward_pre_hooks and not any(m._forward_pre_hooks for m in model.modules())


@pytest.mark.parametrize("entry,words", [
    ({"0.weight": "synapse"}, r"gives no granularity for \['2.weight'\], layers it holds masks for: it is malformed"),
    ({"0.weight": "neuron", "2.weight": "synapse"},
     r"other per-layer granularities than this connectome's \(0.weight: saved 'neuron', here 'synapse'\)"),
])
def test_a_state_whose_per_layer_granularities_differ_is_refused_naming_what_differs(entry, words):
    """A state whose per-layer 'ensembles' entry left a layer out, or named another granularity under the same
    ensemble rule, was refused as "saved with ensemble 'synapse', this connectome uses 'synapse'", with a fix
    (build it with ensemble='synapse') that changes nothing."""
    torch.manual_seed(0)
    sd = adaptive.Connectome(nn.Sequential(nn.Linear(6, 4), nn.ReLU(), nn.Linear(4, 3))).state_dict()
    sd["ensembles"] = entry
    conn = adaptive.Connectome(nn.Sequential(nn.Linear(6, 4), nn.ReLU(), nn.Linear(4, 3)))
    with pytest.raises(ValueError, match=words):
        conn.load_state_dict(sd)
    assert conn.num_live() == conn.num_synapses()
