"""Review of the keyed ImageNet-folder augmentation: a keyed sample leaves every global RNG alone,
the accelerators' ones included (torch.manual_seed would reseed them all, and fork_rng(devices=[])
restores only the CPU's)."""
import numpy as np
import pytest
import torch
from PIL import Image

from adaptive.data.imagenet import FolderView, transforms

torch.set_num_threads(1)


@pytest.fixture()
def keyed_view(tmp_path):
    from torchvision.datasets import ImageFolder

    rng = np.random.default_rng(0)
    for c in ("n01", "n02"):
        (tmp_path / c).mkdir()
        for i in range(3):
            Image.fromarray(rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)).save(tmp_path / c / f"{i}.png")
    view = FolderView(ImageFolder(str(tmp_path)), None, transforms(True, 12, 14))
    view.set_epoch(1, seed=3)
    return view


def test_a_keyed_sample_does_not_reseed_the_accelerator_generators(keyed_view, monkeypatch):
    # On a GPU with num_workers=0 the transforms run in the training process: reseeding CUDA there
    # would set dropout's generator from the last sample of every batch (not restored after).
    reseeded = []
    for name in ("cuda", "xpu", "mtia"):
        mod = getattr(torch, name, None)
        if mod is not None and hasattr(mod, "manual_seed_all"):
            monkeypatch.setattr(mod, "manual_seed_all", lambda s, name=name: reseeded.append(name))
    monkeypatch.setattr(torch.mps, "manual_seed", lambda s: reseeded.append("mps"))
    cpu = torch.random.get_rng_state()
    a = keyed_view[2][0]
    assert reseeded == []
    assert torch.equal(torch.random.get_rng_state(), cpu)
    torch.rand(10)  # other use of the global RNG between fetches changes nothing
    assert torch.equal(keyed_view[2][0], a)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_a_keyed_sample_leaves_the_cuda_rng_state_alone(keyed_view):
    torch.cuda.init()
    before = torch.cuda.get_rng_state()
    keyed_view[0]
    assert torch.equal(torch.cuda.get_rng_state(), before)
