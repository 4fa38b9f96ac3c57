"""A BandGradientScaler over many traced layers traces the model once, not once per layer.

DenseNet-121 takes about a second to trace; a scaler of its 121 layers traced it for each and took
over two minutes to build, printing nothing; with one trace it takes a few seconds, the same scales.
"""
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
