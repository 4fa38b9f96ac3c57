"""FoldedConv: a convolution that adds back the constant channels compaction took from its input.

``graphs.compact`` removes a dead unit whose output is a constant ``k`` (its bias after BatchNorm and the
activation) and folds ``k`` into what reads it. A zero-padded convolution sees that constant only inside the
image, so its contribution varies at the borders: :class:`FoldedConv` adds it exactly, as a one-channel
convolution of ones. A compacted model holding FoldedConvs can be traced by graphs (it is a leaf, taken as its
inner convolution's call: ``conv.weight`` holds the synapses, the folded term is a constant like a bias), pruned
with a Connectome (which finds ``<name>.conv.weight``) and compacted again.
"""

from typing import Final, List, Optional

import torch
import torch.nn.functional as F
from torch import nn


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

    # read by TorchScript as constants, so that torch.jit.script compiles a copy holding one (its forward took
    # *args and **kwargs, which TorchScript refuses)
    transposed: Final[bool]
    dims: Final[int]

    def __init__(self, conv: nn.Module, const_weight: torch.Tensor):
        super().__init__()
        self.conv = conv
        self.register_buffer("const_weight", const_weight)
        self.transposed = isinstance(conv, nn.modules.conv._ConvTransposeNd)
        self.dims = len(conv.kernel_size)

    def __setstate__(self, state):  # a copy saved before these were attributes
        super().__setstate__(state)
        conv = self._modules["conv"]
        self.__dict__.setdefault("transposed", isinstance(conv, nn.modules.conv._ConvTransposeNd))
        self.__dict__.setdefault("dims", len(conv.kernel_size))

    def forward(self, input: torch.Tensor, output_size: Optional[List[int]] = None) -> torch.Tensor:
        # named as nn.Conv*'s is: a layer called conv(input=x) is too; output_size: a transposed convolution's
        x = input
        c = self.conv
        if self.transposed:
            y = c(x, output_size)
        else:
            y = c(x)
        d = self.dims
        # one channel of x's map, unbatched: its term (outputs, *map) adds alike to a batched y and to an unbatched
        # one (x (C, *map), which nn.Conv*d takes too); shapes read from the end, where both have the map
        ones = x.new_ones(x.shape[-d:]).unsqueeze(0)
        if not self.transposed:
            if d == 1:
                return y + F.conv1d(ones, self.const_weight, None, c.stride, c.padding, c.dilation)
            if d == 2:
                return y + F.conv2d(ones, self.const_weight, None, c.stride, c.padding, c.dilation)
            return y + F.conv3d(ones, self.const_weight, None, c.stride, c.padding, c.dilation)
        # the output padding y has: its size past the one a transposed convolution of x's size gives without
        stride, padding, dilation, kernel = list(c.stride), list(c.padding), list(c.dilation), list(c.kernel_size)
        extra = [y.shape[i - d] - ((x.shape[i - d] - 1) * stride[i] - 2 * padding[i]
                                   + dilation[i] * (kernel[i] - 1) + 1) for i in range(d)]
        if d == 1:
            return y + F.conv_transpose1d(ones, self.const_weight, None, stride, padding, extra, 1, dilation)
        if d == 2:
            return y + F.conv_transpose2d(ones, self.const_weight, None, stride, padding, extra, 1, dilation)
        return y + F.conv_transpose3d(ones, self.const_weight, None, stride, padding, extra, 1, dilation)


def unfolded(m: nn.Module) -> nn.Module:
    """The convolution a :class:`FoldedConv` wraps; any other module as it is."""
    return m.conv if isinstance(m, FoldedConv) else m
