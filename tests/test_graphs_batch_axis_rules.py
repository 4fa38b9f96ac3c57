"""graphs/batch_axis.py's inference rules, one small fx graph each, and runnable_example_input's layout."""
import torch
from torch import fx, nn

from graphs.batch_axis import input_batch_axes, input_channel_axes


def _axes(module, rank, batch_axis=None):
    gm = fx.symbolic_trace(module)
    x = next(n for n in gm.graph.nodes if n.op == "placeholder")
    return input_batch_axes(gm, {"x": (x, rank)}, batch_axis)


class _Attn(nn.Module):
    def __init__(self, move, batch_first=False):
        super().__init__()
        self.attn, self.move = nn.MultiheadAttention(4, 1, batch_first=batch_first), move

    def forward(self, x):
        h = self.move(x)
        return self.attn(h, h, h)[0]


def test_movedim_is_followed():  # B8: [B, T, F] moved sequence-first by movedim(0, 1)
    assert _axes(_Attn(lambda x: x.movedim(0, 1)), 3) == {}
    assert _axes(_Attn(lambda x: x), 3) == {"x": 1}


def test_a_negative_transpose_axis_is_followed():  # B10: transpose(-3, -2) is transpose(0, 1)
    assert _axes(_Attn(lambda x: x.transpose(-3, -2), batch_first=True), 3) == {"x": 1}


class _TwoReaders(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.GRU(4, 4)  # sequence first
        self.b = nn.GRU(4, 4, batch_first=True)

    def forward(self, x):
        return self.a(x)[0] + self.b(x)[0]


def test_layers_that_disagree_leave_the_batch_first():  # B5
    assert _axes(_TwoReaders(), 3) == {}


class _Unbatched(nn.Module):
    def __init__(self):
        super().__init__()
        self.gru = nn.GRU(4, 4)

    def forward(self, x):
        return self.gru(x)[0]


def test_an_unbatched_2d_sequence_has_its_batch_first():  # B3
    assert _axes(_Unbatched(), 2) == {}
    assert _axes(_Unbatched(), 3) == {"x": 1}


def test_a_given_batch_axis_leaves_a_1d_input_alone():  # B4
    assert _axes(_Unbatched(), 1, batch_axis=1) == {}
    assert _axes(_Unbatched(), 3, batch_axis=1) == {"x": 1}


def test_a_linear_layer_takes_the_last_axis_as_channels():  # B7
    gm = fx.symbolic_trace(nn.Sequential(nn.Linear(4, 3)))
    x = next(n for n in gm.graph.nodes if n.op == "placeholder")
    assert input_channel_axes(gm, {"x": (x, 3)}) == {"x": 2}


def test_batch_axis_1_lays_out_token_guesses_sequence_first():  # E8
    from graphs.example_inputs import runnable_example_input

    class Tok(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb, self.gru = nn.Embedding(10, 4), nn.GRU(4, 4)

        def forward(self, x):
            return self.gru(self.emb(x))[0]

    assert tuple(runnable_example_input(Tok(), tokens=True, batch=2, batch_axis=1).shape) == (16, 2)


class _ConvThenAttn(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv1d(4, 4, 1)
        self.attn = nn.MultiheadAttention(4, 1, batch_first=True)

    def forward(self, x):
        h = self.conv(x).transpose(0, 1)  # the conv's new channels on axis 0
        return self.attn(h, h, h)[0]


def test_a_convolution_makes_new_channels_on_axis_1():  # B9
    assert _axes(_ConvThenAttn(), 3) == {}
