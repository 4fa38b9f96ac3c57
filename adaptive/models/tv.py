"""Any torchvision classifier by name: ``torchvision:mobilenet_v3_large``.

Weights never download: pass a weights file through ``build_model(..., weights=PATH)``.
"""
from __future__ import annotations

from torch import nn

from . import register_model


@register_model("torchvision", prefix=True)
def torchvision_model(arch: str, num_classes=1000, in_shape=None, **kw) -> nn.Module:
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
    return torchvision.models.get_model(arch, weights=None, num_classes=int(num_classes), **kw)
