"""Any torchvision classifier by name: ``torchvision:mobilenet_v3_large``.

Weights never download: pass a weights file through ``build_model(..., weights=PATH)``.
"""
from __future__ import annotations

from torch import nn

from . import register_model


# the auxiliary heads of the networks that have them, by the prefix of their state_dict keys
AUX_HEADS = {"googlenet": ("aux1.", "aux2."), "inception_v3": ("AuxLogits.",)}


@register_model("torchvision", prefix=True)
def torchvision_model(arch: str, num_classes=1000, in_shape=None, **kw) -> nn.Module:
    """torchvision's classifier ``arch`` (random initial weights; ``**kw`` go to its builder).
    GoogLeNet and Inception-v3 are built as torchvision builds them to load its weights files
    (``transform_input=True``) but without their auxiliary heads, which only training uses: a weights
    file's heads are skipped (``skipped_weight_prefixes``, read by :func:`load_weights`), and no head
    the forward never runs holds synapses (``aux_logits=True`` keeps them)."""
    import torchvision

    available = torchvision.models.list_models(module=torchvision.models)
    if arch not in available:
        raise ValueError(
            f"torchvision has no classifier {arch!r}; e.g. {', '.join(sorted(available)[:12])} ..."
            f" (see torchvision.models.list_models())"
        )
    if "weights" in kw and kw["weights"] is not None:
        raise ValueError("torchvision models never download weights here: pass a weights file path instead")
    kw.pop("weights", None)
    heads = AUX_HEADS.get(arch)
    if heads:  # built as torchvision builds them for its weights files (googlenet(weights=...))
        kw.setdefault("aux_logits", False)  # one output tensor in training too, as every other classifier
        # the files' networks (ported from TensorFlow) read inputs in [-1, 1]: transform_input maps the
        # ImageNet-normalised images there (off, a pretrained GoogLeNet saw inputs scaled about 2.2x)
        kw.setdefault("transform_input", True)
        kw.setdefault("init_weights", True)
    net = torchvision.models.get_model(arch, weights=None, num_classes=int(num_classes), **kw)
    if heads and not kw["aux_logits"]:  # a weights file's heads (torchvision's own files hold them) are skipped
        net.skipped_weight_prefixes = heads
    if in_shape is not None:
        _check_input(net, arch, tuple(int(d) for d in in_shape))
    return net


def _check_input(net: nn.Module, arch: str, in_shape: tuple) -> None:
    """The data's input shape tried once (batch of one, eval mode, no gradients): torchvision
    classifiers fix their channels and some their size, and a mismatch should be named at build time,
    not in the first training step."""
    import torch

    was = net.training
    net.eval()
    try:
        with torch.no_grad():
            net(torch.zeros(1, *in_shape))
    except (RuntimeError, ValueError, AssertionError, IndexError) as e:
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise ValueError(f"torchvision:{arch} does not take inputs of shape {in_shape} (the dataset's in_shape): "
                         f"{first}; use a dataset or image size it takes (e.g. 3 channels; vit_b_16 needs 224x224)") from None
    finally:
        net.train(was)
