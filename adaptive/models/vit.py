"""A small Vision Transformer for CIFAR- and MNIST-sized images: ``build_model("vit_tiny")``.

torchvision's ``VisionTransformer`` (pre-norm encoder blocks of ``nn.MultiheadAttention`` and an MLP,
a class token, learned position embeddings) with a patch embedding for any number of input
channels. Every weight matrix is a synapse of a Connectome, attention projections included.
"""
from __future__ import annotations

from torch import nn

from . import register_model
from ._shape import image_shape


@register_model("vit_tiny")
def vit_tiny(num_classes=10, in_shape=None, patch: int = 4, depth: int = 4, width: int = 64, heads: int = 4,
             mlp: int = 128, dropout: float = 0.0) -> nn.Module:
    """ViT with ``depth`` blocks of ``width`` channels and ``heads`` heads on ``patch`` x ``patch``
    patches (the image side must be a multiple of ``patch``)."""
    from torchvision.models import VisionTransformer

    c, h, w = image_shape(in_shape, (3, 32, 32), "vit_tiny")
    if h != w:
        raise ValueError(f"vit_tiny needs square images, got {h}x{w}")
    if h % int(patch):
        raise ValueError(f"vit_tiny: the image side {h} is not a multiple of patch={patch}; pick a patch that divides it")
    if int(width) % int(heads):
        raise ValueError(f"vit_tiny: width={width} is not a multiple of heads={heads}")
    model = VisionTransformer(image_size=h, patch_size=int(patch), num_layers=int(depth), num_heads=int(heads),
                              hidden_dim=int(width), mlp_dim=int(mlp), dropout=float(dropout),
                              num_classes=int(num_classes))
    if c != 3:  # torchvision's patch embedding reads RGB
        model.conv_proj = nn.Conv2d(c, int(width), kernel_size=int(patch), stride=int(patch))
    nn.init.trunc_normal_(model.heads.head.weight, std=0.02)  # torchvision starts the head at zero
    return model
