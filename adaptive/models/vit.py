"""A small Vision Transformer for CIFAR- and MNIST-sized images: ``build_model("vit_tiny")``.

torchvision's ``VisionTransformer`` (pre-norm encoder blocks of ``nn.MultiheadAttention`` and an MLP,
a class token, learned position embeddings) with a patch embedding for any number of input
channels. Every weight matrix is a synapse of a Connectome, attention projections included.

:func:`separate_qkv` (``build_model("vit_tiny", qkv="separate")``, or on any model) gives every
``nn.MultiheadAttention`` three projection parameters instead of one packed ``in_proj_weight``, so
queries, keys and values become three synapse layers, each with its own share of a layer budget.
"""
from __future__ import annotations

from torch import nn

from . import register_model
from ._shape import image_shape, size_option


@register_model("vit_tiny")
def vit_tiny(num_classes=10, in_shape=None, patch: int = 4, depth: int = 4, width: int = 64, heads: int = 4,
             mlp: int = 128, dropout: float = 0.0, qkv: str = "packed") -> nn.Module:
    """ViT with ``depth`` blocks of ``width`` channels and ``heads`` heads on ``patch`` x ``patch``
    patches (the image side must be a multiple of ``patch``). ``qkv="separate"``: see
    :func:`separate_qkv`."""
    if qkv not in ("packed", "separate"):
        raise ValueError(f"vit_tiny: qkv must be 'packed' (one in_proj_weight) or 'separate' (q, k, v apart), got {qkv!r}")
    from torchvision.models import VisionTransformer

    patch, depth, width, heads, mlp = (size_option("vit_tiny", k, v) for k, v in
                                       (("patch", patch), ("depth", depth), ("width", width), ("heads", heads),
                                        ("mlp", mlp)))
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
    return separate_qkv(model) if qkv == "separate" else model


def separate_qkv(model: nn.Module) -> nn.Module:
    """Give every ``nn.MultiheadAttention`` of ``model`` (in place) separate ``q_proj_weight``,
    ``k_proj_weight`` and ``v_proj_weight`` parameters holding the rows of its packed
    ``in_proj_weight``: the same function (PyTorch's path for keys and values of other sizes), but
    three synapse layers, so a budget gives each projection its own density and a policy cannot
    move synapses from one to another. Build the Connectome and optimizer afterwards (one built before
    refuses the replaced parameters). Returns ``model``."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"separate_qkv expects an nn.Module, got {type(model).__name__}")
    separated = []
    for m in model.modules():
        if isinstance(m, nn.MultiheadAttention) and m._qkv_same_embed_dim:
            e = m.embed_dim
            packed = m.in_proj_weight
            w = packed.detach()
            # a frozen packed weight stays frozen in its three parts (they were made trainable)
            m.q_proj_weight = nn.Parameter(w[:e].clone(), requires_grad=packed.requires_grad)
            m.k_proj_weight = nn.Parameter(w[e:2 * e].clone(), requires_grad=packed.requires_grad)
            m.v_proj_weight = nn.Parameter(w[2 * e:].clone(), requires_grad=packed.requires_grad)
            del m.in_proj_weight
            m.register_parameter("in_proj_weight", None)
            m._qkv_same_embed_dim = False
            separated.append(m)
    if separated:
        # an nn.TransformerEncoder built with enable_nested_tensor=True (the default) chose, when it was built,
        # to pass padded batches as nested tensors, which only the packed attention's fast path takes: with a
        # padding mask in eval mode the separated attention failed ("does not support NestedTensor outside of
        # its fast path"); such an encoder passes padded tensors now, the same function
        for enc in model.modules():
            if isinstance(enc, nn.TransformerEncoder) and getattr(enc, "use_nested_tensor", False) and any(
                    a is m for layer in enc.layers for a in layer.modules() for m in separated):
                enc.use_nested_tensor = False
    return model
