"""graphs.compact at the edges of its probe and its links, found by a review's differential fuzz: ops that make a
number of NaN, an InstanceNorm with running statistics, torch.cat's tensors by keyword, a model that draws in its
forward."""
import pytest
import torch
from torch import nn

import adaptive
import graphs


class _NanHiding(nn.Module):
    def __init__(self, how):
        super().__init__()
        self.how = how
        self.a, self.c, self.b = nn.Linear(4, 6), nn.Linear(6, 5), nn.Linear(5, 3)

    def forward(self, x):
        h = self.a(x)
        if self.how == "fmax":  # a ReLU that ignores NaN
            h = torch.fmax(h, torch.zeros_like(h))
        elif self.how == "fmin":
            h = torch.fmin(torch.ones_like(h), h)  # (the data second)
        elif self.how == "nansum":
            h = torch.stack([h, 2 * h], 1).nansum(1)
        else:  # a step gate
            h = h * torch.heaviside(h, torch.zeros_like(h))
        return self.b(torch.relu(self.c(h)))


@pytest.mark.parametrize("how", ["fmax", "fmin", "nansum", "heaviside"])
def test_an_op_that_makes_a_number_of_nan_keeps_the_units_that_read_the_data(how):
    """The probe finds constants by running NaN through the model: fmax, fmin, nansum and heaviside make a number
    of it, so every live unit after them passed for a constant and was removed (a dense model was refused as
    'compaction changed the outputs'). A dense model compacts to itself."""
    torch.manual_seed(0)
    m = _NanHiding(how).eval()
    x = torch.randn(4, 4)
    small = graphs.compact(m, adaptive.Connectome(m), x)
    assert small.compaction["units_removed"] == 0, small.compaction["removed"]
    with torch.no_grad():
        assert torch.allclose(small(x), m(x), atol=1e-6)


def test_an_instance_norm_with_running_statistics_keeps_its_channels():
    """InstanceNorm2d(track_running_stats=True) after a conv that loses units: its channels were removed but
    not its per-channel running statistics, and the check failed inside torch ('running_mean should contain 8
    elements'). Per-channel state it does not know how to slice pins the channels, as parameters do."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.InstanceNorm2d(6, track_running_stats=True), nn.ReLU(),
                        nn.Conv2d(6, 4, 3, padding=1), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))
    with torch.no_grad():
        net[1].running_mean.uniform_(-1, 1)
        net[1].running_var.uniform_(0.5, 2)
    net.eval()
    conn = adaptive.Connectome(net)
    masks = {n: torch.ones_like(k) for n, k in conn.masks.items()}
    masks["3.weight"][:, :2] = False  # channels 0 and 1 of the first conv feed nothing
    conn.set_masks(masks)
    x = torch.randn(2, 3, 8, 8)
    small = graphs.compact(net, conn, x)
    assert small.get_submodule("1").running_mean.shape == (6,)
    with torch.no_grad():
        assert torch.allclose(small(x), net(x), atol=1e-5)


class _Cat(nn.Module):
    def __init__(self, keyword):
        super().__init__()
        self.keyword = keyword
        self.a, self.b, self.c = nn.Conv2d(3, 4, 1), nn.Conv2d(3, 2, 1), nn.Conv2d(6, 3, 1)
        self.fc = nn.Linear(3, 2)

    def forward(self, x):
        a, b = torch.relu(self.a(x)), torch.relu(self.b(x))
        h = torch.cat(tensors=[a, b], dim=1) if self.keyword else torch.cat([a, b], 1)
        return self.fc(torch.relu(self.c(h)).mean((2, 3)))


def test_torch_cat_with_its_tensors_by_keyword_compacts_as_positionally():
    """torch.cat(tensors=[a, b], dim=1) failed with an IndexError inside compaction, on a dense model too. It
    removes what the positional call removes."""
    x = torch.randn(2, 3, 4, 4)
    removed = []
    for keyword in (False, True):
        torch.manual_seed(0)
        m = _Cat(keyword).eval()
        conn = adaptive.Connectome(m)
        masks = {n: torch.ones_like(k) for n, k in conn.masks.items()}
        masks["c.weight"][:, 1] = False  # channel 1 of a feeds nothing
        conn.set_masks(masks)
        small = graphs.compact(m, conn, x)
        removed.append(small.compaction["removed"])
        with torch.no_grad():
            assert torch.allclose(small(x), m(x), atol=1e-6)
    assert removed[0] == removed[1] and removed[0]["a"] == 1, removed


class _Noisy(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(4, 6), nn.Linear(6, 2)

    def forward(self, x):
        return self.b(torch.relu(self.a(x + 0.1 * torch.randn_like(x))))


def test_a_model_that_draws_in_its_forward_passes_the_check():
    """The check ran the masked model and the copy one after the other on the advancing generators, so a model
    that adds noise in its forward (eval mode) always failed it, nothing pruned. Both calls draw alike now."""
    torch.manual_seed(0)
    m = _Noisy().eval()
    small = graphs.compact(m, adaptive.Connectome(m), torch.randn(3, 4))
    assert small.compaction["units_removed"] == 0


def _with_dead_units():
    net = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 3)).eval()
    conn = adaptive.Connectome(net)
    masks = {n: torch.ones_like(k) for n, k in conn.masks.items()}
    masks["0.weight"][:3] = False  # units 0-2 of layer 0 dead: layer 2 would lose 3 input columns
    conn.set_masks(masks)
    return net, conn


def test_a_layers_hooks_and_the_models_own_stay_in_the_copy():
    """A layer compact shrank was a new module without the hooks of the one it replaced: a hook changing the
    output failed the check as 'please report this model', a feature tap stopped seeing the layer, and a hook on
    the model itself was dropped too. A hooked layer keeps its channels and its hooks; the model's own hooks run
    on the copy; without hooks the same layers shrink."""
    torch.manual_seed(0)
    x = torch.randn(4, 6)
    net, conn = _with_dead_units()
    assert graphs.compact(net, conn, x).compaction["removed"]["0"] == 3  # (no hooks: the dead units go)
    net, conn = _with_dead_units()
    seen = []
    net[2].register_forward_hook(lambda m, i, o: 2 * o)
    net[4].register_forward_hook(lambda m, i, o: seen.append(o.shape))
    net.register_forward_hook(lambda m, i, o: o.softmax(-1))
    small = graphs.compact(net, conn, x)
    seen.clear()
    with torch.no_grad():
        assert torch.allclose(small(x), net(x), atol=1e-6)
    assert len(seen) == 2  # the tap ran in both calls


@pytest.mark.parametrize("transposed", [False, True])
def test_a_copy_holding_a_folded_convolution_compiles_with_torchscript(transposed):
    """docs/graphs.md: torch.jit.script compiles the copy where it compiles the model. A copy holding a FoldedConv
    (a dead unit's constant folded into a padded convolution that reads it) did not: its forward took *args and
    **kwargs, which TorchScript refuses. The scripted copy gives the copy's outputs."""
    import warnings

    from graphs.folded import FoldedConv

    torch.manual_seed(0)
    second = nn.ConvTranspose2d(4, 4, 3, padding=1) if transposed else nn.Conv2d(4, 4, 3, padding=1)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), second, nn.ReLU(),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2)).eval()
    with torch.no_grad():
        net[1].bias.fill_(1.0)  # a dead unit's output after BatchNorm and ReLU: the constant 1
    conn = adaptive.Connectome(net)
    masks = {n: torch.ones_like(k) for n, k in conn.masks.items()}
    masks["0.weight"][0] = False
    conn.set_masks(masks)
    x = torch.randn(2, 3, 8, 8)
    small = graphs.compact(net, conn, x)
    assert isinstance(small.get_submodule("3"), FoldedConv)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # (torch.jit.script's deprecation)
        scripted = torch.jit.script(small)
    with torch.no_grad():
        assert torch.allclose(scripted(x), small(x), atol=1e-6) and torch.allclose(small(x), net(x), atol=1e-5)
