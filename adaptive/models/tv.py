"""Any torchvision classifier by name: ``torchvision:mobilenet_v3_large``.

Weights never download: pass a weights file through ``build_model(..., weights=PATH)``.
"""
from __future__ import annotations

import functools
import time

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
    # a weights file that does not fit: load_weights names the network of this family it fits, if one does
    net.weights_mismatch_hint = functools.partial(fitting_relatives, arch, dict(kw, num_classes=int(num_classes)))
    if in_shape is not None:
        _check_input(net, arch, tuple(int(d) for d in in_shape), _fixed_size(net, kw))
    return net


def _weights_transform(weights) -> dict:
    """``{"resize": ..., "image_size": ..., "interpolation": ...}``, the evaluation transform torchvision's
    ``weights`` (a Weights member) were made with, as ``--dataset-kw`` names them ({} where it says none)."""
    tf = weights.transforms() if callable(getattr(weights, "transforms", None)) else None
    crop, resize = getattr(tf, "crop_size", None), getattr(tf, "resize_size", None)
    if not (crop and resize):
        return {}
    return {"resize": int(resize[0]), "image_size": int(crop[0]),
            "interpolation": str(getattr(getattr(tf, "interpolation", None), "value", "bilinear"))}


def weights_of_file(path) -> object:
    """torchvision's Weights member whose file ``path`` is, known by its name (``mobilenet_v3_large-5c1a4163.pth``,
    as torch.hub saves it); None for any other name. Nothing is read."""
    import os

    import torchvision

    name = os.path.basename(str(path))
    for arch in torchvision.models.list_models(module=torchvision.models):
        for weights in torchvision.models.get_model_weights(arch):
            if os.path.basename(getattr(weights, "url", "") or "") == name:
                return weights
    return None


def transform_mismatch(path, dataset_kw: dict, defaults=None) -> str:
    """Where the weights file ``path`` is one of torchvision's (:func:`weights_of_file`) and ``dataset_kw`` (over
    ``defaults``: the dataset's resize 256, image size 224, bilinear) resizes or crops otherwise than those weights
    were evaluated, what differs and the ``--dataset-kw`` values that match; else "". The accuracies of a network
    fed otherwise are not its weights' own (MobileNetV3-Large's V2 weights lose ~0.5 points at resize 256)."""
    weights = weights_of_file(path)
    want = _weights_transform(weights) if weights is not None else {}
    if not want:
        return ""
    have = {"resize": 256, "image_size": 224, "interpolation": "bilinear", **(defaults or {}), **dict(dataset_kw)}
    differ = [k for k in want if str(_as_one(k, have.get(k))) != str(want[k])]
    if not differ:
        return ""
    return (f"--weights {path} is torchvision's {type(weights).__name__}.{weights.name}, evaluated with "
            f"{', '.join(f'{k} {want[k]}' for k in want)}, and the images here are given "
            f"{', '.join(f'{k} {have.get(k)}' for k in differ)}: give "
            + " ".join(f"--dataset-kw {k}={want[k]}" for k in differ) + " (its accuracies are otherwise not the "
            "weights' own)")


def warn_transform_mismatch(path, dataset: str, dataset_kw: dict) -> None:
    """Warn (:func:`adaptive.warn.warn_user`) where the weights file ``path`` (None: none) is torchvision's own
    and the ``dataset`` (``imagenet`` or ``folder``; any other is left alone) is given with ``dataset_kw``
    that resize or crop its images otherwise than those weights were evaluated (:func:`transform_mismatch`).
    The recipes call it while reading their settings, so that it shows once under several processes."""
    import os

    if path is None or dataset not in ("imagenet", "folder") or not os.path.isfile(path):
        return
    mismatch = transform_mismatch(path, dataset_kw or {})
    if mismatch:
        from adaptive.warn import warn_user

        warn_user(mismatch)


def random_weights_warning(model: str, where: str = "--model") -> str:
    """What a mask-only run of ``model`` (``where`` names the option or file key that gave it) given no
    weights is warned, where ``model`` is torchvision's (``torchvision:ARCH``): its masks would be searched
    on the network's random initial weights (a supermask search), where a torchvision network is almost
    always named for its pretrained weights; the weights file to pass (torchvision's default for ARCH: its
    name and address; nothing is downloaded), and how to ask for the random network on purpose (``--weights
    none``, which the recipes then take without this warning). "" for any other model."""
    import os

    import torchvision

    if not str(model).startswith("torchvision:"):
        return ""
    arch = str(model)[len("torchvision:"):]
    try:
        default = torchvision.models.get_model_weights(arch).DEFAULT
    except (ValueError, KeyError, AttributeError, TypeError):
        default = None
    url = getattr(default, "url", None)
    file = (f", torchvision's {type(default).__name__}.{default.name} file {os.path.basename(url)} (download {url} "
            "where there is internet, or find it in a torch download cache: this project never downloads weights)"
            if url else " (a state_dict of it: this project never downloads weights)")
    return (f"{where} {model} is given no weights, so mask-only optimisation would search the masks of a randomly "
            f"initialised network (a supermask search), not of the pretrained one a torchvision model is almost always "
            f"named for: pass --weights FILE{file}; or give --weights none to search masks of the random network on "
            "purpose (no warning then)")


def warn_random_weights(model: str, where: str = "--model") -> None:
    """Warn (:func:`adaptive.warn.warn_user`) :func:`random_weights_warning`'s message, where it has one. The
    recipes call it while reading their settings, before any data is read, so that it shows at the start of
    the run (once under several processes), not after minutes of loading ImageNet."""
    message = random_weights_warning(model, where)
    if message:
        from adaptive.warn import warn_user

        warn_user(message)


def _as_one(key: str, value):
    """A ``--dataset-kw`` size as torchvision's weights name it: ``[S]`` is ``S`` (torchvision's transforms read
    both alike), and so is an ``image_size`` of ``[S, S]`` (a crop of S x S); anything else as it is."""
    if isinstance(value, (list, tuple)) and (len(value) == 1 or (key == "image_size" and len(value) == 2
                                                                 and value[0] == value[1])):
        return value[0]
    return value


def weights_name_hint(text: str, model: str = "") -> str:
    """Where ``text`` (a ``--weights`` value that is no file) names torchvision's weights instead, an
    enum's member (``MobileNet_V3_Large_Weights.IMAGENET1K_V2``; a member name alone, ``IMAGENET1K_V2`` or
    ``DEFAULT``, for a ``model`` ``torchvision:ARCH``): what to pass instead, as a sentence (the file's name
    and address, its path where torch's download cache holds it, and the evaluation transform the weights
    were made with, as ``--dataset-kw`` values); "" where it names none. Nothing is downloaded."""
    import os

    import torch
    import torchvision

    text = str(text).strip()
    weights = None
    try:
        if "." in text:
            weights = torchvision.models.get_weight(text)
        elif str(model).startswith("torchvision:") and text.isidentifier():
            weights = torchvision.models.get_model_weights(str(model)[len("torchvision:"):])[text]
    except (ValueError, KeyError, AttributeError, TypeError):
        return ""
    if weights is None or not getattr(weights, "url", None):
        return ""
    file = os.path.basename(weights.url)
    cached = os.path.join(torch.hub.get_dir(), "checkpoints", file)
    where = (f"torch's download cache holds it: --weights {cached}" if os.path.isfile(cached) else
             f"download {weights.url} where there is internet, or find {file} in a torch download cache "
             f"({cached} on the machine that downloaded it), and pass its path")
    want = _weights_transform(weights)
    transform = (f"; they were evaluated with resize {want['resize']}, center crop {want['image_size']}: --dataset-kw "
                 f"resize={want['resize']} --dataset-kw image_size={want['image_size']}" if want else "")
    if want and want["interpolation"] != "bilinear":
        transform += f" --dataset-kw interpolation={want['interpolation']}"
    return (f"{text} names torchvision's weights {type(weights).__name__}.{weights.name}, not a file: this project "
            f"never downloads weights; their file is {file}: {where}{transform}")


def fitting_relatives(arch: str, kw: dict, state_dict: dict) -> str:
    """What to give where ``state_dict`` (a weights file's) does not fit torchvision's ``arch`` built
    with the keywords ``kw`` (``num_classes`` among them, as :func:`torchvision_model` takes them): the
    other classifiers of its family (those its builder's module builds: resnet18 ... wide_resnet101_2
    for resnet50, mobilenet_v3_small for mobilenet_v3_large) whose keys and shapes the file's are,
    but for the outputs' count, named with that count (``"torchvision:mobilenet_v3_large (1000
    classes)"``, ", "-joined); "" where none is. Each is built on the meta device (no memory, no
    initialisation: a second or so for a family); one that cannot be built there (RegNet's) is passed
    over."""
    import warnings

    import torch
    import torchvision

    module = torchvision.models.get_model_builder(arch).__module__
    relatives = [n for n in torchvision.models.list_models(module=torchvision.models)
                 if n != arch and torchvision.models.get_model_builder(n).__module__ == module]
    tries = [(name, kw, "") for name in relatives]
    size = _vit_image_size(state_dict)
    if size is not None and size != kw.get("image_size", 224):  # a ViT file of another image size (SWAG's 384, 518)
        tries += [(name, dict(kw, image_size=size), f" with --model-kw image_size={size}") for name in [arch, *relatives]]
    found = []
    for name, name_kw, extra in tries:
        try:
            with torch.device("meta"), warnings.catch_warnings():
                warnings.simplefilter("ignore")  # (GoogLeNet's and Inception's warnings about their initialisation)
                net = torchvision_model(name, **name_kw)
        except Exception:  # a builder that reads values while building (RegNet's widths), or takes not kw
            continue
        classes = _fits_but_outputs(net, state_dict)
        if classes is not None:
            found.append(f"torchvision:{name}{extra} ({classes} classes)")
    return ", ".join(found)


def _vit_image_size(state_dict: dict):
    """The image size a torchvision ViT's weights ``state_dict`` were made for (its position embeddings, one per
    patch and the class token's, and its patch size), or None where it holds no ViT's (or a non-square grid)."""
    import math

    pos, proj = state_dict.get("encoder.pos_embedding"), state_dict.get("conv_proj.weight")
    if pos is None or proj is None or pos.dim() != 3 or proj.dim() != 4:
        return None
    side = math.isqrt(max(int(pos.shape[1]) - 1, 0))
    return side * int(proj.shape[-1]) if side and side * side == int(pos.shape[1]) - 1 else None


def _fits_but_outputs(net: nn.Module, state_dict: dict):
    """The file's count of outputs where ``state_dict`` holds ``net``'s weights for some count of
    classes (every key, less those ``net`` skips; every shape, or one that differs in its first
    dimension alone, all such by one count), else None. A file whose every key carries one prefix (a Lightning
    module's ``model.``) is read without it where :func:`load_weights` would load it so into ``net``."""
    from .weights import as_model_keys

    own = net.state_dict()
    skipped = tuple(getattr(net, "skipped_weight_prefixes", ()))
    state_dict = as_model_keys(state_dict, own, skipped)  # (the loader's key handling, for this network)
    sd = {k: v for k, v in state_dict.items() if k in own or not k.startswith(skipped)}
    if set(sd) - set(own) or any(k not in sd and not k.endswith("num_batches_tracked") for k in own):
        return None
    wrong = [k for k in own if k in sd and tuple(sd[k].shape) != tuple(own[k].shape)]
    if any(sd[k].dim() != own[k].dim() or sd[k].dim() == 0 or tuple(sd[k].shape[1:]) != tuple(own[k].shape[1:])
           for k in wrong):
        return None
    classes = {int(sd[k].shape[0]) for k in wrong}
    if len(classes) > 1:
        return None
    return classes.pop() if classes else _outputs(net)


def _outputs(net: nn.Module):
    """The number of outputs of ``net``'s last linear layer (None without one)."""
    last = [m for m in net.modules() if isinstance(m, nn.Linear)]
    return last[-1].out_features if last else None


def _fixed_size(net: nn.Module, kw: dict):
    """``(H, W)`` where the network is built for one input size only, else None: a ViT's position
    embeddings (its ``image_size``) and a MaxViT's attention grids (its ``input_size``, torchvision's
    default 224) are fixed when it is built."""
    import torchvision

    size = getattr(net, "image_size", None)
    if isinstance(net, torchvision.models.MaxVit):
        size = kw.get("input_size", 224)
    if size is None:
        return None
    return (int(size), int(size)) if isinstance(size, int) else tuple(int(d) for d in size)


_PROBE_LIMIT = 512  # the largest square side tried when looking for the size a network needs
# the search's time: a large network runs for seconds at 512x512 on a CPU, and ~17 runs could take minutes
_PROBE_SECONDS = 10.0
_clock = time.monotonic
_ERRORS = (RuntimeError, ValueError, AssertionError, IndexError)  # what a wrongly shaped input raises


def _runs(net: nn.Module, shape: tuple) -> bool:
    import torch

    try:
        with torch.no_grad():
            net(torch.zeros(1, *shape))
    except _ERRORS:
        return False
    return True


def _check_input(net: nn.Module, arch: str, in_shape: tuple, fixed=None) -> None:
    """The data's input shape tried once (batch of one, eval mode, no gradients): torchvision
    classifiers fix their channels and some their size, and a mismatch should be named at build time,
    not in the first training step, with what the network takes (:func:`_what_it_takes`)."""
    import torch

    from ..modes import modes_kept

    with modes_kept(net, train=False):  # _what_it_takes tries sizes in eval mode too
        try:
            with torch.no_grad():
                net(torch.zeros(1, *in_shape))
        except _ERRORS as e:
            first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
            need = _what_it_takes(net, in_shape, fixed)
            raise ValueError(f"torchvision:{arch} does not take inputs of shape {in_shape} (the dataset's in_shape): "
                             f"{first}; use a dataset or image size it takes" + (f": {need}" if need else "")) from None


def _what_it_takes(net: nn.Module, in_shape: tuple, fixed=None) -> str:
    """The inputs ``net`` takes, as far as they can be known: the channels its first convolution
    reads, and the size it is built for (``fixed``), else the smallest square size it runs on
    (searched up to :data:`_PROBE_LIMIT`: the networks that need one shrink their input step by
    step, so a larger image runs where a smaller one does not); "" where nothing is known (no
    convolution to read the channels from). Only a refused input runs this search, and it starts no
    run after :data:`_PROBE_SECONDS`: it then names the bounds found so far."""
    conv = next((m for m in net.modules() if isinstance(m, nn.Conv2d)), None)
    if conv is None:
        return ""
    c = conv.in_channels
    if fixed is not None:
        return f"{c}-channel images of {fixed[0]}x{fixed[1]} exactly (the size it is built for)"
    if len(in_shape) != 3:
        return f"{c}-channel images, shaped ({c}, H, W)"
    if _runs(net, (c, *in_shape[1:])):
        return f"{c}-channel images"
    deadline = _clock() + _PROBE_SECONDS
    stopped = f" (the search for the smallest stopped after {_PROBE_SECONDS:g} s)"
    side, hi = min(in_shape[1:]), None  # a square of the shorter side is too small as well
    while hi is None and side < _PROBE_LIMIT:  # doubling to a size that runs ...
        if _clock() > deadline:
            return f"{c}-channel images larger than {side}x{side}{stopped}"
        size = min(side * 2, _PROBE_LIMIT)
        side, hi = (side, size) if _runs(net, (c, size, size)) else (size, None)
    if hi is None:
        return f"{c}-channel images (no larger square size up to {_PROBE_LIMIT}x{_PROBE_LIMIT} ran)"
    while hi - side > 1:  # ... then halving the gap: side is too small, hi runs
        if _clock() > deadline:
            return f"{c}-channel images larger than {side}x{side}; {hi}x{hi} runs{stopped}"
        mid = (side + hi) // 2
        side, hi = (side, mid) if _runs(net, (c, mid, mid)) else (mid, hi)
    return f"{c}-channel images of at least {hi}x{hi}"
