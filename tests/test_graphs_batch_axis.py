"""graphs.build's and graphs.compact's ``batch_axis=``: the caller fixes which axis of the inputs holds the batch
where the inference of graphs/batch_axis.py has nothing to follow."""
import pytest
import torch
from torch import nn

import adaptive
import graphs
from graphs.analysis import reachability


class _HiddenSeqFirst(nn.Module):
    """A [T, B, 2, 3] input flattened (the reshape hides its axes from the inference) into a sequence-first GRU
    that reads its first two steps only: the inputs of later steps reach no output."""

    def __init__(self):
        super().__init__()
        self.gru, self.fc = nn.GRU(6, 5), nn.Linear(5, 4)

    def forward(self, x):
        out, _ = self.gru(x.flatten(2)[:2])
        return self.fc(out[-1])


def _input_reaches(g):
    """Per input node (the elements of one sample): does it reach an output?"""
    grp = next(gr for gr in g.groups if gr.kind == "input")
    return reachability(g)["to_output"][grp.start:grp.start + grp.count]


def test_batch_axis_1_gives_the_graph_a_perturbation_of_the_input_confirms():
    """Inferred, the input was read batch first: its nodes were the elements of x[0], one time step of every
    sample (B * 6 of them), all reaching the output. batch_axis=1 reads one sample's T * 6 elements, and exactly
    those of the two steps the GRU reads reach the output, as perturbing each one shows."""
    torch.manual_seed(0)
    model, x = _HiddenSeqFirst().eval(), torch.randn(4, 3, 2, 3)  # T=4, B=3
    inferred = graphs.build(model=model, example_input=x)
    assert _input_reaches(inferred).numel() == 3 * 6 and bool(_input_reaches(inferred).all())
    assert graphs.build(model=model, example_input=x, batch_axis=0).num_edges == inferred.num_edges
    got = _input_reaches(graphs.build(model=model, example_input=x, batch_axis=1))
    with torch.no_grad():
        y = model(x)
        want = []
        for t, i, j in torch.cartesian_prod(torch.arange(4), torch.arange(2), torch.arange(3)).tolist():
            xp = x.clone()
            xp[t, 1, i, j] += 1.0
            changed = (model(xp) - y).abs().amax(1) > 0
            assert not bool(changed[[0, 2]].any())  # sample 1 alone: axis 1 is the batch
            want.append(bool(changed[1]))
    assert got.tolist() == want and sum(want) == 2 * 6


class _SeqNet(nn.Module):
    def __init__(self, batch_first):
        super().__init__()
        self.inp, self.attn, self.out = nn.Linear(3, 8), nn.MultiheadAttention(8, 2, batch_first=batch_first), nn.Linear(8, 2)

    def forward(self, x):
        h = self.inp(x)
        return self.out(self.attn(h, h, h)[0] + h)


def test_batch_axis_agrees_with_an_inference_that_settles_it_and_overrides_it():
    """A sequence-first attention model the inference reads right: batch_axis=1 is the same graph, batch_axis=0
    reads x[0] (B * 3 nodes) as the default would without the inference."""
    torch.manual_seed(0)
    model, x = _SeqNet(False).eval(), torch.randn(5, 2, 3)
    count = lambda g: next(gr.count for gr in g.groups if gr.kind == "input")
    inferred, one = (graphs.build(model=model, example_input=x, batch_axis=b) for b in (None, 1))
    assert count(inferred) == count(one) == 15 and inferred.num_edges == one.num_edges
    assert count(graphs.build(model=model, example_input=x, batch_axis=0)) == 6


def test_per_channel_inputs_of_a_sequence_first_model_are_not_its_batch():
    """input_nodes='channels': where no layer says which axis holds the channels, axis 1, the batch of a
    sequence-first input: with batch_axis=1, axis 0 (axis 1 of its batch-first twin)."""
    torch.manual_seed(0)
    model, x = _HiddenSeqFirst().eval(), torch.randn(4, 3, 2, 3)
    count = lambda **kw: next(gr.count for gr in graphs.build(model=model, example_input=x, input_nodes="channels",
                                                              **kw).groups if gr.kind == "input")
    assert (count(), count(batch_axis=0), count(batch_axis=1)) == (3, 3, 4)


@pytest.mark.parametrize("bad", [2, -1, True, 1.0, "1"])
def test_a_bad_batch_axis_is_refused_naming_the_allowed_values(bad):
    model, x = _SeqNet(False).eval(), torch.randn(5, 2, 3)
    with pytest.raises(ValueError, match=r"batch_axis must be None .*, 0 .* or 1 .*got"):
        graphs.build(model=model, example_input=x, batch_axis=bad)
    with pytest.raises(ValueError, match=r"batch_axis must be None .*, 0 .* or 1 .*got"):
        graphs.compact(model, example_input=x, batch_axis=bad)


def test_batch_axis_without_an_example_input_is_refused():
    with pytest.raises(ValueError, match="batch_axis=1 needs an example_input"):
        graphs.build(model=_SeqNet(False), batch_axis=1)
    with pytest.raises(ValueError, match="batch_axis=1 needs an example_input"):
        graphs.compact(_SeqNet(False), batch_axis=1)


class _Seen(nn.Module):
    """A sequence Linear pair recording the shapes of the inputs it is called on (a hook of the model's own, which
    compaction keeps on the copy; one on fc1 would keep fc1's units, a hooked layer keeping its channels)."""

    def __init__(self, shapes):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(3, 4), nn.Linear(4, 2)
        self.register_forward_pre_hook(lambda m, args: shapes.append(tuple(args[0].shape)))

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x)))


@pytest.mark.parametrize("batch_axis", [None, 1])
def test_compact_probes_one_sample_and_checks_a_doubled_batch_along_batch_axis(batch_axis, monkeypatch):
    """compact's probe took x[:1], one time step of a [T, B, F] input, and its check's "batch of twice the size"
    doubled the steps (and its "more tokens" the batch). With batch_axis=1 they are a sample and the batch."""
    import sys

    gc = sys.modules["graphs.compact"]  # graphs.compact is the function
    probed = []
    real = gc._probe
    monkeypatch.setattr(gc, "_probe", lambda gm, x, w: probed.append(tuple(x.shape)) or real(gm, x, w))
    torch.manual_seed(0)
    shapes = []
    model = _Seen(shapes).eval()
    conn = adaptive.Connectome(model)
    masks = {n: torch.ones_like(v) for n, v in conn.masks.items()}
    masks["fc2.weight"][:, 1] = False  # hidden unit 1: no live output
    conn.set_masks(masks)
    small = graphs.compact(model, conn, torch.randn(5, 3, 3), batch_axis=batch_axis)  # T=5, B=3
    assert small.compaction["units_removed"] == 1
    if batch_axis:
        assert probed[0] == (5, 1, 3) and {(5, 6, 3), (10, 3, 3), (6, 3, 3)} <= set(shapes)
    else:
        assert probed[0] == (1, 3, 3) and {(10, 3, 3), (5, 6, 3), (5, 4, 3)} <= set(shapes)


def test_build_from_a_trace_takes_the_trace_s_batch_axis_and_refuses_another():
    """build(traced=..., batch_axis=1) checked the value and then ignored it: the graph was the trace's, batch first.
    The trace records the batch axis it was made with; build accepts that one and refuses another (or an
    example_input or input_nodes, which a given trace would ignore as well), saying to trace with it."""
    torch.manual_seed(0)
    model, x = _HiddenSeqFirst().eval(), torch.randn(4, 3, 2, 3)
    first, seq = graphs.trace(model, x), graphs.trace(model, x, batch_axis=1)
    assert (first.batch_axis, seq.batch_axis) == (None, 1)
    want = graphs.build(model=model, example_input=x, batch_axis=1)
    got = graphs.build(model=model, traced=seq, batch_axis=1)
    assert torch.equal(got.src, want.src) and torch.equal(got.dst, want.dst)
    with pytest.raises(ValueError, match=r"its batch axes inferred\), so batch_axis would change nothing: pass them "
                                         r"to graphs.trace\(model, example_input, input_nodes, batch_axis\)"):
        graphs.build(model=model, traced=first, batch_axis=1)
    with pytest.raises(ValueError, match=r"batch_axis=1\), so batch_axis would change nothing"):
        graphs.build(model=model, traced=seq, batch_axis=0)
    with pytest.raises(ValueError, match="so example_input, input_nodes would change nothing"):
        graphs.build(model=model, traced=first, example_input=x, input_nodes="channels")


SEQ_FIRST_PLUGIN = '''
import torch
from torch import nn
from adaptive.models import register_model


class HiddenSeqFirst(nn.Module):
    """[T, B, 6] sequences, reshaped to [T, B, 2, 3] and back (the reshape hides their axes), into a
    sequence-first GRU that reads the first two steps only."""

    def __init__(self, num_classes=4, in_shape=(4, 6)):
        super().__init__()
        self.in_shape = tuple(in_shape or (4, 6))
        self.gru, self.fc = nn.GRU(6, 5), nn.Linear(5, num_classes)

    def forward(self, x):
        out, _ = self.gru(x.reshape(x.shape[0], x.shape[1], 2, 3).flatten(2)[:2])
        return self.fc(out[-1])


@register_model("batch_axis_cli_seq_first")
def build(num_classes=None, in_shape=None, **kw):
    return HiddenSeqFirst(num_classes or 4, in_shape)
'''


def test_the_command_line_lays_the_guessed_input_out_as_batch_axis_says(tmp_path, capsys):
    """The command line guessed a batch-first input [B, T, 6] and built the graph batch first: the GRU read it as
    B steps of T samples, and every input node reached the output. --batch-axis 1 lays the guess out [T, B, 6] and
    builds with batch_axis=1: the T * 6 nodes of one sample, those of the two steps read reaching the output, as
    graphs.build gives it. compact takes it too; an image input (C,H,W) is refused."""
    from adaptive.models import build_model
    from adaptive.plugins import load_plugins
    from graphs.cli import main

    plugin = tmp_path / "seq_first_plugin.py"
    plugin.write_text(SEQ_FIRST_PLUGIN)
    load_plugins([str(plugin)])
    torch.manual_seed(0)
    conn = adaptive.Connectome(build_model("batch_axis_cli_seq_first"))
    run = tmp_path / "run"
    conn.save(run / "connectome.safetensors")
    torch.save(conn.dense_state_dict(), run / "model_state.pt")
    (run / "config.yaml").write_text(f"model: batch_axis_cli_seq_first\nplugins: [{plugin}]\n")

    assert main(["export", str(run), "--out", str(tmp_path / "first.json")]) == 0
    assert bool(_input_reaches(graphs.read_json(str(tmp_path / "first.json"))).all())
    assert main(["export", str(run), "--out", str(tmp_path / "seq.json"), "--batch-axis", "1"]) == 0
    got = graphs.read_json(str(tmp_path / "seq.json"))
    assert _input_reaches(got).tolist() == [True] * 12 + [False] * 12  # steps 0 and 1 of 4, 6 features each
    want = graphs.build(conn, example_input=torch.randn(4, 1, 6), batch_axis=1)
    assert torch.equal(got.src, want.src) and torch.equal(got.dst, want.dst)
    assert main(["compact", str(run), "--out", str(tmp_path / "small.pt"), "--batch-axis", "1"]) == 0
    capsys.readouterr()
    assert main(["report", str(run), "--out", str(tmp_path / "r"), "--batch-axis", "1", "--in-shape", "1,4,6"]) == 2
    err = capsys.readouterr().err
    assert "--batch-axis 1 lays the guessed input out sequence-first" in err and "1,4,6, an image (C,H,W)" in err, err


IMAGE_PLUGIN = '''
import torch
from torch import nn
from adaptive.models import register_model


@register_model("batch_axis_cli_image")
def build(num_classes=None, in_shape=None, **kw):
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(4, num_classes or 3))
'''


@pytest.mark.parametrize("cmd", ["export", "compact"])
def test_the_command_line_refuses_batch_axis_1_for_the_image_it_guesses(tmp_path, capsys, cmd):
    """A model without an input shape whose first layer is a Conv2d gets a guessed image: --batch-axis 1 laid it out
    [C, B, H, W] and every guess failed ('could not guess an input', suggesting --in-shape 3,32,32, which is then
    refused with --batch-axis 1). It is refused as an image shape is."""
    from adaptive.models import build_model
    from adaptive.plugins import load_plugins
    from graphs.cli import main

    plugin = tmp_path / "image_plugin.py"
    plugin.write_text(IMAGE_PLUGIN)
    load_plugins([str(plugin)])
    conn = adaptive.Connectome(build_model("batch_axis_cli_image"))
    run = tmp_path / "run"
    conn.save(run / "connectome.safetensors")
    torch.save(conn.dense_state_dict(), run / "model_state.pt")
    (run / "config.yaml").write_text(f"model: batch_axis_cli_image\nplugins: [{plugin}]\n")
    out = str(tmp_path / ("g.json" if cmd == "export" else "small.pt"))
    assert main([cmd, str(run), "--out", out, "--batch-axis", "1"]) == 2
    err = capsys.readouterr().err
    assert ("--batch-axis 1 lays the guessed input out sequence-first" in err
            and "the input guessed from the model's first layer is 3,32,32, an image (C,H,W)" in err), err
    assert main([cmd, str(run), "--out", out, "--batch-axis", "0"]) == 0
