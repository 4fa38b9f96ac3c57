"""FoldedConv: a convolution that adds back the constant channels compaction took from its input.

``graphs.compact`` removes a dead unit whose output is a constant ``k`` (its bias after BatchNorm and the
activation) and folds ``k`` into what reads it. A zero-padded convolution sees that constant only inside the
image, so its contribution varies at the borders: :class:`FoldedConv` adds it exactly, as a one-channel
convolution of ones. A compacted model holding FoldedConvs can be traced by graphs (it is a leaf, taken as its
inner convolution's call: ``conv.weight`` holds the synapses, the folded term is a constant like a bias), pruned
with a Connectome (which finds ``<name>.conv.weight``) and compacted again.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

_CONV_FN = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
_CONV_T_FN = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}


class FoldedConv(nn.Module):
    """A convolution plus the exact contribution of removed constant input channels:
    ``conv(x) + conv_k(ones)``, where ``conv_k`` has one input channel holding ``sum_c k_c W[:, c]``
    and the same stride, padding and dilation, so zero-padding borders come out right.
    ``const_weight``: that one-channel kernel, ``sum_c k_c W[:, c]`` (a buffer), stored as ``conv``'s weight is:
    ``(outputs, 1, *kernel)``, or ``(1, outputs, *kernel)`` for a transposed convolution, whose constant inputs
    add a pattern of its kernel (its stride's tiling, the cropped borders) that ``conv_k`` reproduces with the
    output padding ``conv``'s output has, from its ``output_padding`` or the ``output_size`` it was called with.
    A model holding one traces with plain ``torch.fx`` too (no Python loop over a traced shape); graphs' tracer keeps it
    whole (:func:`unfolded` gives the convolution it stands for)."""

    def __init__(self, conv: nn.Module, const_weight: torch.Tensor):
        super().__init__()
        self.conv = conv
        self.register_buffer("const_weight", const_weight)

    def forward(self, input, *args, **kwargs):  # named as nn.Conv*'s is: a layer called conv(input=x) is too
        x = input
        c = self.conv
        y = c(x, *args, **kwargs)  # a transposed convolution's output_size, if given
        d = len(c.kernel_size)
        # one channel of x's map, unbatched: its term (outputs, *map) adds alike to a batched y and to an unbatched
        # one (x (C, *map), which nn.Conv*d takes too); shapes read from the end, where both have the map
        ones = x.new_ones(x.shape[-d:]).unsqueeze(0)
        if not isinstance(c, nn.modules.conv._ConvTransposeNd):
            return y + _CONV_FN[d](ones, self.const_weight, None, c.stride, c.padding, c.dilation)
        # the output padding y has: its size past the one a transposed convolution of x's size gives without
        extra = tuple(y.shape[i - d] - ((x.shape[i - d] - 1) * c.stride[i] - 2 * c.padding[i]
                                        + c.dilation[i] * (c.kernel_size[i] - 1) + 1) for i in range(d))
        return y + _CONV_T_FN[d](ones, self.const_weight, None, c.stride, c.padding, extra, 1, c.dilation)


def unfolded(m: nn.Module) -> nn.Module:
    """The convolution a :class:`FoldedConv` wraps; any other module as it is."""
    return m.conv if isinstance(m, FoldedConv) else m
