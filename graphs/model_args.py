"""The model's builder arguments on the ``python -m graphs`` command line, and the check that the model
it rebuilds is the run's.

``--model-kw KEY=VALUE`` (repeatable) is spelt as the recipes' own ``--model-kw``: the value read as
YAML (numbers, ``[lists]``, ``true``/``false``, ``null``, text), or several entries as a YAML mapping
(``'{width: 2, num_classes: 100}'``), later entries winning per key over config.yaml's ``model_kw``.
``num_classes`` and ``in_shape`` there are ``--num-classes`` and ``--in-shape``. An entry the builder
does not take is refused before anything is built, and a rebuilt model whose layers are shaped
otherwise than the connectome's (a run built with other arguments) is refused naming the first such
layer and this option, before any weights are read into it or any output is written.
"""
from __future__ import annotations

OPTION = "--model-kw"
EXAMPLES = ("width=2", "{width: 2, num_classes: 100}")
# build_model's own arguments, each with the command line's option for it
OWN_OPTIONS = {"num_classes": "--num-classes", "in_shape": "--in-shape"}


class ModelArgumentsError(ValueError):
    """The model rebuilt from a run does not fit its connectome or weights, or ``--model-kw`` is wrong."""


def parse(items) -> dict:
    """``--model-kw``'s entries (``KEY=VALUE`` or a YAML mapping each) as one mapping, later entries
    winning per key; a ValueError naming the entry and the spelling to use otherwise."""
    from adaptive.config import merge_key_values

    return merge_key_values(list(items or []), OPTION, examples=EXAMPLES)


def entries(kw: dict) -> str:
    """``kw`` as the command line gives it: ``KEY=VALUE KEY=VALUE``."""
    return " ".join(f"{k}={v}" for k, v in kw.items())


def split_own(kw: dict, num_classes=None, in_shape=None):
    """``(builder keywords, num_classes, in_shape)``: ``--model-kw num_classes=100`` counts as
    ``--num-classes 100`` (and ``in_shape`` as ``--in-shape``); one that disagrees with its option,
    and ``weights`` (the file is ``--weights``), are refused."""
    kw = dict(kw)
    if "weights" in kw:
        raise ModelArgumentsError(f"{OPTION} weights={kw['weights']}: the weights file is given with --weights PATH "
                                  f"(default: the run's own); drop weights from {OPTION}")
    given = {"num_classes": num_classes, "in_shape": in_shape}
    for key, option in OWN_OPTIONS.items():
        if key not in kw:
            continue
        value = kw.pop(key)
        if given[key] is not None and _same(key, given[key]) != _same(key, value):
            raise ModelArgumentsError(f"{OPTION} {key}={value} and {option} {given[key]} disagree: give the {key} "
                                      "once, with either")
        if given[key] is None:
            given[key] = value
    if isinstance(given["in_shape"], (int, list, tuple)):  # [3, 32, 32] or 16: the text --in-shape takes
        shape = given["in_shape"]
        given["in_shape"] = ",".join(str(d) for d in (shape if isinstance(shape, (list, tuple)) else [shape]))
    return kw, given["num_classes"], given["in_shape"]


def _same(key: str, value):
    """``value`` in one spelling, to compare (``3,32,32`` and ``[3, 32, 32]`` are one input shape)."""
    if key == "in_shape" and isinstance(value, str):
        return tuple(s.strip() for s in value.strip("()[] ").split(",") if s.strip())
    if key == "in_shape" and isinstance(value, (list, tuple)):
        return tuple(str(s) for s in value)
    return str(value)


def check(name: str, kw: dict) -> None:
    """Refuse, before anything is built, an entry of ``--model-kw`` that model ``name``'s builder does
    not take (a :class:`~adaptive.config.ConfigError` naming it, a close spelling and what it takes)."""
    if not kw:
        return
    from adaptive.models import check_model_kw

    check_model_kw(name, kw, OPTION, sets={})


def fix(name: str, kw: dict) -> str:
    """What to do about a rebuilt model that is not the run's, naming the arguments ``name`` takes and the
    options that give its class count and input shape."""
    from adaptive.models import model_keywords

    known = model_keywords(name)
    takes = ""
    if known is not None and known[0]:
        takes = f"; {name} takes {', '.join(known[0])}" + (" and passes others on" if known[1] else "")
    elif known is not None and not known[1]:  # resnet20, lenet5: only the class count and input shape differ
        takes = f"; {name} takes none but num_classes and in_shape"
    built = {k: v for k, v in kw.items() if k not in OWN_OPTIONS}
    how = f"with {entries(built)}" if built else "with no model arguments"
    # the input shape sizes a model's first layers (an MLP's inputs): a run on other data needs --in-shape
    return (f"the model was rebuilt as {name} {how}, which is not the run's: pass the arguments it was built with, "
            f"{OPTION} KEY=VALUE (repeatable{takes}), or check --model, --num-classes and --in-shape")


def check_fits(net, shapes: dict, name: str, kw: dict, what: str = "the connectome") -> None:
    """Refuse ``net`` where a layer ``shapes`` records (``{parameter name: shape}``, as the connectome
    file has them) has another shape in it: the run's model was built with other arguments. Names the
    first such layer, both shapes and :func:`fix`. Layers ``net`` lacks are left to the connectome's
    own load, which names them."""
    from torch.nn.parameter import UninitializedParameter

    params = dict(net.named_parameters(remove_duplicate=False))
    for layer, shape in shapes.items():
        p = params.get(layer)
        if p is None or isinstance(p, UninitializedParameter):
            continue
        saved, rebuilt = tuple(int(d) for d in shape), tuple(p.shape)
        if saved != rebuilt:
            raise ModelArgumentsError(f"{what}'s layer {layer} has shape {saved}, the rebuilt model's {rebuilt}: "
                                      + fix(name, kw))
