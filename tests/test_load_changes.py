"""adaptive.mask_only_bits.load_changes: what the load of a weights file changed of its values (the
'surviving weights that differ from the original' line's count), for every format the loader accepts,
read without a second copy of a large model's file in memory."""
import argparse

import pytest
import torch

from adaptive.mask_only_bits import load_changes, loaded_state
from adaptive.models import build_model, load_weights
from adaptive.paths import SHARED_DATA

RESNET20 = SHARED_DATA / "resnet-cifar10" / "resnet20-12fca82f.th"


def _model_and_wide():
    torch.manual_seed(0)
    model = build_model("mlp", num_classes=10, in_shape=(64,))
    wide = {k: v.double() + 1e-12 * torch.randn(v.shape, dtype=torch.float64) if v.is_floating_point() else v
            for k, v in model.state_dict().items()}  # values a float32 cannot hold
    return model, wide


def _save(kind, sd, path):
    if kind == "safetensors":
        from safetensors.torch import save_file

        save_file(sd, str(path))
    elif kind == "reference":  # torchvision's reference scripts: {"model": ..., "args": Namespace(...), ...}
        torch.save({"model": sd, "optimizer": {}, "epoch": 3, "args": argparse.Namespace(lr=0.1)}, path)
    elif kind == "lightning":  # a Lightning module's self.model: every key under "model."
        torch.save({"state_dict": {f"model.{k}": v for k, v in sd.items()}}, path)
    elif kind == "module":  # DataParallel's "module."
        torch.save({f"module.{k}": v for k, v in sd.items()}, path)
    else:
        torch.save(sd, path)


@pytest.mark.parametrize("kind", ["plain", "safetensors", "reference", "lightning", "module"])
def test_load_changes_counts_a_float64_file_cast_to_float32_in_every_format(tmp_path, kind):
    """Every value of a float64 file that a float32 cannot hold is counted, whatever the file's wrapper
    or prefix; the same values saved as float32 change none."""
    model, wide = _model_and_wide()
    path = tmp_path / ("w.safetensors" if kind == "safetensors" else "w.pt")
    _save(kind, wide, path)
    load_weights(model, str(path))
    changed, names = load_changes(str(path), loaded_state(model), model)
    want = {k for k, v in wide.items() if v.is_floating_point()}
    assert set(changed) == want and len(names) == len(want)
    assert all(bool(c.all()) for c in changed.values())  # (every value: 1e-12 off a float32)
    assert all("float64 in the file, float32 in the model" in n for n in names)

    narrow = tmp_path / ("n.safetensors" if kind == "safetensors" else "n.pt")
    _save(kind, {k: v.float() if v.is_floating_point() else v for k, v in wide.items()}, narrow)
    load_weights(model, str(narrow))
    assert load_changes(str(narrow), loaded_state(model), model) == ({}, [])


@pytest.mark.skipif(not RESNET20.is_file(), reason="needs the shared CIFAR ResNet weights")
def test_load_changes_of_no_file_and_of_the_float32_reference_resnet():
    """No --weights (random initial weights): nothing to compare. The CIFAR ResNet-20 .th file (a
    legacy-format file, {'state_dict': ...} with 'module.' prefixes, no num_batches_tracked) loads as it
    is: nothing changed."""
    model = build_model("resnet20", num_classes=10)
    assert load_changes(None, loaded_state(model), model) == ({}, [])
    load_weights(model, str(RESNET20))
    assert load_changes(str(RESNET20), loaded_state(model), model) == ({}, [])


def test_load_changes_reads_a_torch_file_memory_mapped(tmp_path, monkeypatch):
    """It read the whole weights file into memory a second time, beside the model and its copy as
    loaded: a float64 file of a 100M-weight model is 800 MB more. A zip-format torch file is read
    memory-mapped now (its values read from the file as they are compared); the count is the same."""
    model, wide = _model_and_wide()
    path = tmp_path / "w.pt"
    torch.save(wide, path)
    load_weights(model, str(path))
    loaded = loaded_state(model)
    seen, real = [], torch.load

    def spy(*a, **kw):
        seen.append(kw.get("mmap", False))
        return real(*a, **kw)

    monkeypatch.setattr(torch, "load", spy)
    changed, _ = load_changes(str(path), loaded, model)
    assert seen == [True] and set(changed) == {k for k, v in wide.items() if v.is_floating_point()}
