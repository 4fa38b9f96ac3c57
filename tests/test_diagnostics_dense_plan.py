"""recipes/_diagnostics/dense_plan.py and memory.py: what dense-gradients says before it starts, and
the malloc setting that keeps its cnn steps from faulting in fresh pages."""
import os
import platform

import pytest
import torch
from _scripts import load_script

from recipes._diagnostics.dense_plan import cnn_forward_macs
from recipes._diagnostics.memory import keep_freed_memory

torch.set_num_threads(1)
os.environ.setdefault("MPLBACKEND", "Agg")


def test_cnn_forward_macs_counts_every_convolution_of_the_net():
    from adaptive.models import build_model

    model = build_model("densecat", num_classes=10, in_shape=(3, 9, 7), depth=4, width=5, kind="cnn")
    counted = []
    for conv in model.layers:
        conv.register_forward_hook(lambda m, i, o: counted.append(o.numel() * m.in_channels * 9))
    model(torch.zeros(6, 3, 9, 7))
    assert cnn_forward_macs((3, 9, 7), depth=4, width=5, batch_size=6) == sum(counted)


def test_dense_gradients_says_its_plan_then_each_net_before_it_trains(tmp_path, capsys):
    recipe = load_script("recipes/diagnostics.py", "diagnostics_recipe_plan")
    recipe.main(["dense-gradients", "--dataset", "digits", "--batch_size", "32", "--output_dir", str(tmp_path),
                 "--kind", "both", "--batchnorm", "off", "--depth", "2", "--width", "3", "--train_steps", "2",
                 "--grad_batches", "1"])
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("dense-gradients: 2 DenseCat nets (mlp, cnn; depth 2 x width 3), each trained 2 SGD steps "
                             "on batches of 32, then its classifier gradients read over 1 batches")
    macs = (3 * 2 + 1) * cnn_forward_macs((1, 8, 8), 2, 3, 32)
    assert out[1].startswith(f"The cnn nets convolve all 8x8 positions at every layer: about {macs / 1e9:.3g} G ")
    announced = [i for i, line in enumerate(out) if line.startswith("[")]
    results = [i for i, line in enumerate(out) if "median |grad| of the first band / last band" in line]
    assert [out[i].split(":")[0] for i in announced] == ["[1/2] mlp", "[2/2] cnn"]
    assert announced[0] < results[0] < announced[1] < results[1]


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc's mallopt")
def test_freed_memory_is_kept_on_glibc():
    assert keep_freed_memory() is True
