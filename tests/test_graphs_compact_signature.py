"""A compact copy's forward has the model's signature (``inspect.signature``): its positional-only parameters (a
``/``, which fx's code left out), keyword-only ones, defaults, annotations and return annotation (fx dropped the
return annotation and those of inputs traced at a value; a string one, ``from __future__ import annotations``,
is evaluated where the forward was written), read back by torch.load and deep-copied too; and
``torch.jit.script`` compiles the copy wherever it compiles the model (an input traced as None: fx's check
``_assert_is_none(value: object, ...)`` did not compile; a float parameter whose string annotation was
dropped was taken for a Tensor)."""
import copy
import inspect
from typing import Optional

import pytest
import torch
from torch import Tensor, nn

import graphs


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.fc = nn.Linear(4, 3)


class _Annotated(_Net):
    def forward(self, x: Tensor, scale: float = 2.0) -> Tensor:
        return self.fc(x * scale)


class _Positional(_Net):
    def forward(self, x, /, y=None):
        return self.fc(x if y is None else x + y)


class _PositionalKeyword(_Net):
    def forward(self, x: Tensor, /, y: Tensor, *, z: Tensor) -> Tensor:
        return self.fc(x + y * z)


class _Keyword(_Net):
    def forward(self, x: Tensor, *, mask: Tensor) -> Tensor:
        return self.fc(x * mask)


class _OptionalNone(_Net):
    def forward(self, x: Tensor, y: Optional[Tensor] = None, *, mask: Tensor) -> Tensor:
        if y is not None:
            x = x + y
        return self.fc(x * mask)


class _Strings(_Net):
    """Annotated as ``from __future__ import annotations`` leaves a forward: strings."""

    def forward(self, x: "Tensor", scale: "float" = 1.0, *, mask: "Tensor") -> "Tensor":
        return self.fc(x * mask * scale)


X, M = torch.randn(2, 4), torch.ones(2, 4)
CASES = [(_Annotated, (X,)), (_Positional, (X,)), (_Positional, (X, X)), (_PositionalKeyword, (X, X, M)), (_Keyword, (X, M)),
         (_OptionalNone, (X, None, M)), (_Strings, (X, 2.0, M))]


def _copies(model, example, tmp_path):
    small = graphs.compact(model, example_input=example)
    torch.save(small, tmp_path / "small.pt")
    return small, torch.load(tmp_path / "small.pt", weights_only=False), copy.deepcopy(small)


@pytest.mark.parametrize("cls,example", CASES)
def test_a_compact_copy_has_the_model_s_signature(cls, example, tmp_path):
    model = cls().eval()
    want = inspect.signature(model.forward, eval_str=True)  # a string annotation as the object it names
    for small in _copies(model, example, tmp_path):
        assert inspect.signature(small.forward) == want, (inspect.signature(small.forward), want)


def test_a_positional_only_input_stays_positional_only():
    model = _Positional().eval()
    small = graphs.compact(model, example_input=X)
    assert torch.equal(small(X), model(X))
    with pytest.raises(TypeError, match="positional-only"):
        small(x=X)  # as the model refuses it


@pytest.mark.parametrize("cls,example", [c for c in CASES if c[0] not in (_Positional, _PositionalKeyword)])
def test_torch_jit_scripts_a_copy_of_a_model_it_scripts(cls, example, tmp_path):
    """(TorchScript takes no positional-only parameter: neither the model with one nor its copy.)"""
    model = cls().eval()
    torch.jit.script(model)
    args, kw = (example, {}) if cls is _Annotated else (example[:-1], {"mask": example[-1]})
    for small in _copies(model, example, tmp_path):
        scripted = torch.jit.script(small)
        assert torch.allclose(scripted(*args, **kw), model(*args, **kw), atol=1e-6)
    if cls is _OptionalNone:  # the check that y is None, compiled: another value is refused, by name
        with pytest.raises(torch.jit.Error, match="y has been specialized to have value None"):
            scripted(X, X, mask=M)


def test_a_copy_whose_model_names_its_own_class_in_an_annotation_loads_with_torch_alone(monkeypatch):
    """An annotation naming the user's class (``cfg: Optional[Config] = None``) is left out of the copy's code,
    whose saved code would import it: the copy loads where the user's module is not (a model of a script's)."""
    import io
    import sys
    import types

    user = types.ModuleType("user_code_of_a_script")

    class Config:
        pass

    class Net(_Net):
        def forward(self, x: Tensor, cfg: Optional[Config] = None) -> Tensor:
            return self.fc(x)

    Config.__module__ = Net.__module__ = user.__name__
    Config.__qualname__, Net.__qualname__ = "Config", "Net"
    user.Config, user.Net = Config, Net
    monkeypatch.setitem(sys.modules, user.__name__, user)
    small = graphs.compact(Net().eval(), example_input=X)
    buf = io.BytesIO()
    torch.save(small, buf)
    monkeypatch.delitem(sys.modules, user.__name__)  # where the copy is read back
    buf.seek(0)
    back = torch.load(buf, weights_only=False)
    assert torch.equal(back(X), small(X))
    sig = inspect.signature(back.forward)
    assert sig.parameters["x"].annotation is Tensor and sig.parameters["cfg"].annotation is inspect.Parameter.empty


def test_a_copy_saved_before_graphs_trace_was_split_still_loads(tmp_path, monkeypatch):
    """A copy saved before graphs.trace was split into modules (e5a9998) names its tracer
    ``graphs.trace.SignatureTracer`` in its pickle, and its check on an input traced as None
    ``graphs.trace.none_only`` in its code's imports: both live in graphs.tracer now, and graphs.trace still
    names them (a re-export that pyflakes calls unused), so the copy loads, runs, and leaves fx tracing."""
    from graphs import tracer
    from test_graphs_compact_saved import saved_as_then

    model = _OptionalNone().eval()
    small = graphs.compact(model, example_input=(X, None, M))
    # saved as that version saved it: the same class and function, under the module they were in then
    pickled = saved_as_then(small, tmp_path / "old.pt", monkeypatch, "graphs.trace", tracer.SignatureTracer,
                            tracer.none_only)
    assert b"graphs.trace\nSignatureTracer" in pickled and b"from graphs.trace import none_only" in pickled
    back = torch.load(tmp_path / "old.pt", weights_only=False)
    assert torch.equal(back(X, mask=M), model(X, mask=M)) and "wrap(" not in back.code
    with pytest.raises(AssertionError, match="y has been specialized to have value None"):  # (torch._assert)
        back(X, X, mask=M)
    torch.fx.symbolic_trace(nn.Linear(2, 2))  # fx still traces


class _SpatialPad(nn.Module):
    """An option-A shortcut that pads the map too (by 1 on each side) around a 3x3 convolution padded by 2."""

    def __init__(self):
        super().__init__()
        self.conv1, self.conv3, self.fc = nn.Conv2d(3, 8, 1), nn.Conv2d(8, 12, 3, padding=2), nn.Linear(12, 2)

    def forward(self, x):
        h = torch.relu(self.conv1(x))
        return self.fc(torch.relu(self.conv3(h) + torch.nn.functional.pad(h, (1, 1, 1, 1, 2, 2))).mean((2, 3)))


@pytest.mark.parametrize("spatial", [False, True], ids=["channels", "channels_and_map"])
def test_torch_jit_scripts_a_copy_with_a_channel_padding(spatial, tmp_path):
    """A copy whose option-A shortcut became a channel padding did not compile ("Could not cast value of type tuple
    to bool" in channel_pad), where the model compiles: saved and read back, or as compact returned it."""
    import adaptive
    from test_graphs_compact_device import _Net

    torch.manual_seed(0)
    model = (_SpatialPad() if spatial else _Net()).eval()
    torch.jit.script(model)
    conn = adaptive.Connectome(model)
    masks = {k: torch.ones_like(v) for k, v in conn.masks.items()}
    masks["conv3.weight"][:, [0, 4, 6]] = False
    masks["fc.weight"][:, [0, 1]] = False
    conn.set_masks(masks)
    x = torch.randn(2, 3, 6, 6)
    small = graphs.compact(model, conn, x)
    assert "channel_pad(" in small.code and (", (1, 1, 1, 1), " in small.code) == spatial
    torch.save(small, tmp_path / "small.pt")
    for copy_ in (small, torch.load(tmp_path / "small.pt", weights_only=False)):
        assert torch.allclose(torch.jit.script(copy_)(x), small(x), atol=1e-6)
