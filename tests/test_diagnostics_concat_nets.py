"""Diagnostics of a concatenation net of one's own (a DenseNet-style block), as a new user runs them.

A BandGradientScaler over many traced layers traces the model once, not once per layer: DenseNet-121
takes about a second to trace, and a scaler of its 121 layers traced it for each and took over two
minutes to build, printing nothing; with one trace it takes a few seconds, with the same scales.
"""
import re
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import graphs
from adaptive.diagnostics import BandGradientScaler, resolve_depths


class TinyDense(nn.Module):
    """A DenseNet-style block: each conv reads the concatenation of every earlier output."""

    def __init__(self, growth=3, n=3):
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.convs = nn.ModuleList(nn.Conv2d(4 + growth * i, growth, 3, padding=1) for i in range(n))
        self.fc = nn.Linear(4 + growth * n, 5)

    def forward(self, x):
        feats = [F.relu(self.stem(x))]
        for conv in self.convs:
            feats.append(F.relu(conv(torch.cat(feats, 1))))
        return self.fc(torch.cat(feats, 1).mean((2, 3)))


LAYERS = ["stem", "convs.0", "convs.1", "convs.2", "fc"]


def _counting_trace(monkeypatch):
    calls = []
    real = graphs.trace

    def counting(*a, **k):
        calls.append(1)
        return real(*a, **k)

    monkeypatch.setattr(graphs, "trace", counting)
    return calls


def test_a_scaler_of_several_traced_layers_traces_the_model_once(monkeypatch):
    torch.manual_seed(0)
    model, example = TinyDense(), torch.randn(2, 3, 8, 8)
    calls = _counting_trace(monkeypatch)
    scaler = BandGradientScaler(model, layers=LAYERS, example=example)
    assert len(calls) == 1
    model(example).square().mean().backward()  # a hooked layer's scales exist from its first gradient
    # the same bands as each layer traced on its own
    for layer in LAYERS:
        assert list(scaler.scales()[layer]) == sorted(set(resolve_depths(model, layer, example=example).tolist()))
    assert list(scaler.scales()["fc"]) == [1, 2, 3, 4]
    scaler.remove()


def test_a_scaler_on_a_model_without_input_depths_asks_for_layers_only():
    with pytest.raises(ValueError, match=r"pass layers=\[\.\.\.\] \(their depths are then traced"):
        BandGradientScaler(TinyDense())


def test_gradient_by_depth_of_a_generator_says_it_read_fewer_batches_than_asked():
    """A generator (``((x.cuda(), y) for x, y in loader)``) cannot be restarted: gradient_by_depth, which cycles its
    loader up to batches=50, read its 3 batches once and returned a result resting on 3, saying nothing."""
    import warnings

    from adaptive.diagnostics import gradient_by_depth

    torch.manual_seed(0)
    model = TinyDense()
    data = [(torch.randn(4, 3, 6, 6), torch.randint(0, 5, (4,))) for _ in range(3)]
    with pytest.warns(UserWarning, match=r"asked for 50 batches but the loader ran out after 3.*not a generator or iterator"):
        bands = gradient_by_depth(model, (b for b in data), layer="fc")
    assert bands.batches == 3
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert gradient_by_depth(model, data, layer="fc").batches == 50  # a list restarts: as asked, nothing to say
        assert gradient_by_depth(model, (b for b in data), layer="fc", batches=5, cycle=False).batches == 3  # a cap


@pytest.mark.parametrize("options, said", [
    (["--grad_batch_size", "800"], r"--split train: its 1,295 examples \(1,280 of them read, in whole --batch_size "
                                   r"batches\) make 1 gradient batch of 800 \(--grad_batch_size\).*at most 640\)(?! or more)"),
    (["--grad_batch_size", "5000"], r"make 0 gradient batches of 5000 \(--grad_batch_size\).*at most 640"),
    (["--split", "holdout", "--batch_size", "200"], r"--split holdout: its 143 examples make 1 gradient batch of 200 "
                                                    r"\(--batch_size\).*at most 142\) or more data \(--holdout\)"),
    # more data: --subset only where one cuts TRAIN (without it, all of TRAIN is read already)
    (["--subset", "500", "--grad_batch_size", "400"], r"make 0 gradient batches of 400 \(--grad_batch_size\).*at most "
                                                      r"[\d,]+\) or more data \(--subset\)"),
    (["--split", "holdout", "--subset", "500", "--batch_size", "60"], r"--split holdout: its 50 examples make 1 "
                                                                      r".*or more data \(--subset, --holdout\)"),
    (["--batch_size", "800"], r"its 1,295 examples \(800 of them read.*make 1 gradient batch of 800 \(--batch_size\).*"
                              r"at most 647\)"),
])
def test_the_collinearity_command_refuses_a_split_of_one_gradient_batch_naming_the_option(options, said, capsys, tmp_path):
    """A --grad_batch_size (or --batch_size) that cut the measured split into a single batch gave cosines of 1
    everywhere behind a warning naming the API's batch_size=, and one larger than the split an error naming
    batch_size= too, both after the brief training; now refused before it, naming the option and the largest size
    that makes 2 batches."""
    from _scripts import load_script

    script = load_script("recipes/diagnostics.py", "diagnostics_recipe")
    with pytest.raises(SystemExit) as e:
        script.main(["collinearity", "--train_steps", "300", *options, "--output_dir", str(tmp_path / "out")])
    assert e.value.code not in (0, None)
    err = capsys.readouterr()
    assert re.search(said, str(e.value) + err.err), str(e.value) + err.err
    assert "training mlp from scratch" not in err.out  # refused before the training


def test_the_one_batch_refusal_names_the_size_to_give_without_separators():
    """The largest size the refusal advises is one to type, so it is written plain ("at most 1300", which
    --grad_batch_size takes), while the split's examples take separators ("its 2,600 examples"): it said
    "at most 1,300", which the option would not parse. (Digits is too small to reach 1,000: the loader is
    built here.)"""
    import types

    from _scripts import load_script

    script = load_script("recipes/diagnostics.py", "diagnostics_recipe")
    data = torch.utils.data.TensorDataset(torch.randn(2600, 2), torch.zeros(2600, dtype=torch.long))
    loader = torch.utils.data.DataLoader(data, batch_size=100, drop_last=True)
    args = types.SimpleNamespace(grad_batch_size=2000, split="train", eval_batch_size=None, subset=None, holdout=0.1)
    with pytest.raises(SystemExit) as e:
        script._refuse_one_batch(args, loader)
    said = str(e.value)
    assert "its 2,600 examples make 1 gradient batch of 2000 (--grad_batch_size)" in said, said
    assert "give a smaller --grad_batch_size (at most 1300)" in said, said
    args.grad_batch_size = None  # the train loader's own batches (drop_last): 1 of 2000
    with pytest.raises(SystemExit) as e:
        script._refuse_one_batch(args, torch.utils.data.DataLoader(data, batch_size=2000, drop_last=True))
    assert "of 2000 (--batch_size), " in str(e.value) and "give a smaller --batch_size (at most 1300)" in str(e.value)


class _Trained(Exception):
    """Raised in place of the brief training: the command got past its refusals."""


@pytest.mark.parametrize("options", [
    [], ["--split", "holdout"], ["--batches", "40", "--grad_batch_size", "32"],  # the defaults, the docs' example
    ["--batch_size", "647"],  # the train loader's own batches (drop_last): 1,295 // 647 = 2
    ["--split", "holdout", "--batch_size", "142"],  # the held-out loader's own: 142 and a last one of 1
    ["--grad_batch_size", "640"], ["--split", "holdout", "--grad_batch_size", "71"],
])
def test_the_collinearity_command_takes_the_largest_batch_sizes_it_advises(options, tmp_path, monkeypatch):
    """The refusal advised 'at most 400' for --batch_size 800 on digits' 1,295 TRAIN examples (and 'at most 71' for the
    143 held-out ones) where 647 (and 142) make 2 batches: it halved the examples the too-large batches read, not the
    split's. The sizes it advises now, and the defaults, are taken (the command goes on to train)."""
    from _scripts import load_script

    script = load_script("recipes/diagnostics.py", "diagnostics_recipe")

    def trained(*_a, **_k):
        raise _Trained

    monkeypatch.setattr(script, "trained_model", trained)
    with pytest.raises(_Trained):
        script.main(["collinearity", *options, "--output_dir", str(tmp_path / "out")])


class TokenCat(nn.Module):
    """Tokens of two depths side by side along the sequence axis, read by one Linear (``mixed``), beside a
    channel concatenation of the same signals read by another (``split``), both after zero padding."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 4)
        self.mixed, self.split = nn.Linear(4, 3), nn.Linear(10, 3)

    def forward(self, x):  # x: (B, 4)
        h = self.b(F.relu(self.a(x)))  # depth 2
        tokens = torch.cat([x.unsqueeze(1), h.unsqueeze(1)], 1)  # (B, 2 tokens, 4): depths 0 and 2 per feature
        return self.mixed(tokens).sum(1) + self.split(F.pad(torch.cat([x, h], 1), (1, 1)))


def test_a_layer_reading_tokens_of_several_depths_is_said_to_mix_them_in_its_deepest_band():
    # found: a Linear reading a concatenation along the token axis (a weight reads depth 0 at one position and
    # depth 2 at the other) had its whole gradient put in band 2, with no word; the bands looked clean
    from adaptive.diagnostics import gradient_by_depth

    net = TokenCat()
    data = [(torch.randn(5, 4), torch.randint(0, 3, (5,))) for _ in range(2)]
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        bands = gradient_by_depth(net, data, layer="mixed", batches=2)
    said = [str(w.message) for w in said]
    assert any(m.startswith("4 of the 4 input units of 'mixed' read signals of several depths ([0, 2]) at different "
                            "positions") for m in said), said
    assert any("one band, nothing to compare" in m for m in said)
    assert bands.depths == [2]  # counted at the deepest, as the warning says
    with warnings.catch_warnings():  # channels of one depth each, zero padding beside them: nothing mixed
        warnings.simplefilter("error")
        split = gradient_by_depth(net, data, layer="split", batches=2)
    assert split.depths == [-1, 0, 2] and [r["weights"] for r in split.table] == [6, 12, 12]
