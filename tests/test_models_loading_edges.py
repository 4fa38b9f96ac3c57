"""Models and their weights files at their edges, found by a review: a model whose own names carry a
wrapper's prefix, a file recording no module versions, separate_qkv on stock encoders and frozen attention,
and model sizes that are no sizes."""
import copy
import warnings

import pytest
import torch
from torch import nn

from adaptive.models import build_model, build_model_kw, load_weights, separate_qkv


def test_a_model_whose_own_names_carry_module_loads_its_own_file(tmp_path):
    """An AveragedModel (an EMA copy), a DataParallel model or any wrapper holding its network as ``self.module``
    could not load its own state_dict: every key lost its 'module.' and then named none of the model's. The
    file's keys are taken as they are where they are the model's own; a bare network's file still loads into
    the bare network."""
    from torch.optim.swa_utils import AveragedModel

    torch.manual_seed(0)
    for make in (lambda: AveragedModel(build_model("lenet300")), lambda: nn.DataParallel(build_model("lenet300"))):
        src = make()
        with torch.no_grad():
            for p in src.parameters():
                p.add_(1.0)
        torch.save(src.state_dict(), tmp_path / "own.pt")
        dst = load_weights(make(), tmp_path / "own.pt")
        assert all(torch.equal(v, src.state_dict()[k]) for k, v in dst.state_dict().items())
    net = build_model("lenet300")
    torch.save(nn.DataParallel(net).state_dict(), tmp_path / "dp.pt")  # 'module.' keys into the bare network
    bare = load_weights(build_model("lenet300"), tmp_path / "dp.pt")
    assert all(torch.equal(v, net.state_dict()[k]) for k, v in bare.state_dict().items())


@pytest.mark.parametrize("kind", ["safetensors", "plain dict"])
def test_a_file_recording_no_module_versions_loads_into_torchvisions_mnasnet(tmp_path, kind):
    """torchvision's MNASNet reads its module version from the file's metadata, which a safetensors file or a
    dict built by hand does not carry: the load failed with a bare 'version should be set to 1 or 2 instead of
    None'. Such a file is of the model's own versions."""
    from safetensors.torch import save_file

    torch.manual_seed(0)
    src = build_model("torchvision:mnasnet0_5", num_classes=10)
    path = tmp_path / ("w.safetensors" if kind == "safetensors" else "w.pt")
    if kind == "safetensors":
        save_file({k: v.contiguous() for k, v in src.state_dict().items()}, str(path))
    else:
        torch.save(dict(src.state_dict()), path)
    torch.manual_seed(1)
    dst = load_weights(build_model("torchvision:mnasnet0_5", num_classes=10), path)
    assert all(torch.equal(v, src.state_dict()[k]) for k, v in dst.state_dict().items())


def test_separate_qkv_keeps_a_stock_encoder_working_with_a_padding_mask():
    """nn.TransformerEncoder (enable_nested_tensor=True, the default) passed a padded batch as a nested tensor,
    which only the packed attention's fast path takes: after separate_qkv, eval with a padding mask failed. It
    gives the packed encoder's outputs at every position the mask keeps."""
    torch.manual_seed(0)
    enc = nn.TransformerEncoder(nn.TransformerEncoderLayer(16, 4, 32, batch_first=True), 2).eval()
    ref = copy.deepcopy(enc)
    separate_qkv(enc)
    x = torch.randn(2, 5, 16)
    pad = torch.tensor([[False, False, False, True, True], [False] * 5])
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # (torch's note on its nested tensors' prototype API)
        out, want = enc(x, src_key_padding_mask=pad), ref(x, src_key_padding_mask=pad)
    assert torch.allclose(out[~pad], want[~pad], atol=1e-5)


def test_separate_qkv_keeps_frozen_attention_frozen():
    """The three projections were made trainable whatever the packed weight was: a frozen ViT's attention was
    unfrozen by separate_qkv."""
    from torchvision.models import VisionTransformer

    vit = VisionTransformer(image_size=32, patch_size=8, num_layers=1, num_heads=2, hidden_dim=16, mlp_dim=32,
                            num_classes=10)
    for p in vit.encoder.parameters():
        p.requires_grad_(False)
    separate_qkv(vit)
    names = [n for n, p in vit.named_parameters() if p.requires_grad and n.startswith("encoder.")]
    assert names == [], names
    assert any(n.endswith("q_proj_weight") for n, _ in vit.named_parameters())


@pytest.mark.parametrize("model, kw, name", [
    ("vit_tiny", {"depth": 2.5}, "depth"), ("vit_tiny", {"heads": True}, "heads"), ("vit_tiny", {"patch": 0}, "patch"),
    ("vit_tiny", {"mlp": -5}, "mlp"), ("vit_tiny", {"depth": 0}, "depth"), ("densecat", {"width": True}, "width"),
    ("densecat", {"depth": 2.5}, "depth"),
])
def test_a_models_size_that_is_no_size_is_refused_naming_the_option(model, kw, name):
    """int() cut vit_tiny's depth=2.5 to 2 and took heads=True as 1, silently; patch=0 was a ZeroDivisionError,
    mlp=-5 torch's RuntimeError and depth=0 built a network of no blocks. Each is refused naming the option; a
    float holding a whole number is that number."""
    from adaptive.config import ConfigError

    with pytest.raises(ConfigError, match=rf"--model_kw .*{name} must be a whole number >= 1, got "):
        build_model_kw(model, kw, in_shape=(3, 32, 32))
    assert len(build_model_kw("vit_tiny", {"depth": 2.0}, in_shape=(3, 32, 32)).encoder.layers) == 2


def _old_densenet_names(sd):
    """``sd`` under the names torchvision's own DenseNet files use (``denselayer1.norm.1.weight``: its layers' names
    before dots left module names; torchvision's builders rename them on load)."""
    import re

    return {re.sub(r"(denselayer\d+\.(?:norm|relu|conv))([12])\.", r"\1.\2.", k): v for k, v in sd.items()}


def test_torchvisions_own_densenet_files_load_under_their_old_layer_names(tmp_path):
    """torchvision's DenseNet weights files (densenet121-a639ec97.pth, what torchvision downloads) name their layers'
    tensors ``norm.1``/``conv.1``, which torchvision renames on load: load_weights refused them, every layer's key
    missing and unexpected. They load bit-exactly now (with a Lightning prefix too); a file for another count of
    classes names that count, and the mask-only check reads the file as the load does (no value changed)."""
    from adaptive.mask_only_bits import load_changes, loaded_state

    torch.manual_seed(0)
    src = build_model("torchvision:densenet121", num_classes=10)
    old = _old_densenet_names(src.state_dict())
    assert "features.denseblock1.denselayer1.norm.1.weight" in old and "features.denseblock1.denselayer1.norm1.weight" not in old
    torch.save(old, tmp_path / "densenet121-old.pth")
    torch.save({"model." + k: v for k, v in old.items()}, tmp_path / "lightning.pth")
    for name in ("densenet121-old.pth", "lightning.pth"):
        net = load_weights(build_model("torchvision:densenet121", num_classes=10), tmp_path / name)
        assert all(torch.equal(v, src.state_dict()[k]) for k, v in net.state_dict().items())
    changed, names = load_changes(tmp_path / "densenet121-old.pth", loaded_state(net), net)
    assert changed == {} and names == []
    with pytest.raises(Exception, match="10") as e:
        load_weights(build_model("torchvision:densenet121", num_classes=7), tmp_path / "densenet121-old.pth")
    assert "num_classes" in str(e.value) and "norm.1" not in str(e.value)


@pytest.mark.parametrize("prefix", ["_orig_mod.", "module.", "_orig_mod.module.", "module._orig_mod."])
def test_read_state_dict_strips_the_wrappers_prefixes_however_nested(tmp_path, prefix):
    """A file saved from a torch.compile'd model (_orig_mod.), a DataParallel one (module.) or both: read_state_dict
    gives the plain keys (load_weights, which strips any prefix its model lacks, hid a read that kept them)."""
    from adaptive.models.weights import read_state_dict

    m = nn.Linear(3, 2)
    torch.save({prefix + k: v for k, v in m.state_dict().items()}, tmp_path / "w.pt")
    assert set(read_state_dict(str(tmp_path / "w.pt"))) == {"weight", "bias"}


def test_a_file_whose_keys_carry_a_three_part_prefix_loads(tmp_path):
    """strip_model_prefix takes a prefix of up to three parts (a Lightning module's model inside a wrapper inside
    another): one of three was refused as another model's when it looked at two."""
    m = nn.Sequential(nn.Linear(3, 2))
    torch.save({"a.b.c." + k: v for k, v in m.state_dict().items()}, tmp_path / "w.pt")
    fresh = nn.Sequential(nn.Linear(3, 2))
    load_weights(fresh, str(tmp_path / "w.pt"))
    assert all(torch.equal(a, b) for a, b in zip(fresh.state_dict().values(), m.state_dict().values()))
