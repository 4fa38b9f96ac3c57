"""graphs.shape_reads in value: what a traced shape read depends on (the channel counts it reads, whether it varies
with the input size, and whether it is exactly one tensor's channel count)."""
import torch
from torch import fx
from graphs import shape_reads


class _Record(fx.Interpreter):
    def __init__(self, gm):
        super().__init__(gm)
        self.env_out = {}

    def run_node(self, n):
        v = super().run_node(n)
        self.env_out[n] = v
        return v


def _shape_values(fn, x):
    gm = fx.symbolic_trace(fn)
    rec = _Record(gm)
    rec.run(x)
    inp = next(n for n in gm.graph.nodes if n.op == "placeholder")
    axis, shapes = {inp: 1}, {}
    for n in gm.graph.nodes:
        v = shape_reads.value(n, rec.env_out, axis, shapes)
        if v is not None:
            shapes[n] = v
    return inp, {n.name: v for n, v in shapes.items()}


class _SizeAtCount(torch.nn.Module):
    def forward(self, x):
        return x.size(x.shape[1] - 1)  # the dimension index is computed from the channel count


class _Numel(torch.nn.Module):
    def forward(self, x):
        return x.numel()


def test_a_size_at_a_dimension_computed_from_a_count_is_no_count_of_its_own():
    inp, shapes = _shape_values(_SizeAtCount(), torch.zeros(2, 2, 5, 7))  # size(1): the channel count itself
    (last,) = [v for k, v in shapes.items() if k.startswith("size")]
    assert last.counts == frozenset({inp}) and last.count_of is None  # reading it where the count changes is unsafe


def test_numel_depends_on_the_count_and_varies_with_the_input_size():
    inp, shapes = _shape_values(_Numel(), torch.zeros(2, 3, 4, 4))
    (n,) = [v for k, v in shapes.items() if k.startswith("numel")]
    assert n.counts == frozenset({inp}) and n.varies and n.count_of is None
