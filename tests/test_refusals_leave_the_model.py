"""Every refusal of the mask-only optimisation, the edge-popup baseline and the diagnostics leaves the
model exactly as it was (:func:`_model_state.changed_state`): a bad input fails clearly and never leaves
a half-edited model behind. The model has a frozen bias, a submodule in another mode than its parent and
a hook of the caller's own, so that a call restoring only the top-level mode or blanket flags shows, and
gradients of the caller's (accumulated in the middle of training), which every exit gives back."""
import pytest
import torch
from torch import nn

import adaptive
from adaptive import diagnostics
from adaptive.baselines import edge_popup
from adaptive.mask_only import evaluate, optimize_connectome
from adaptive.mask_only_checkpoint import save_stage

from _model_state import changed_state, model_state


class Net(nn.Module):
    def __init__(self, out=4):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(3, 8), nn.BatchNorm1d(8), nn.ReLU())
        self.classifier = nn.Linear(8, out)

    def forward(self, x):
        return self.classifier(self.body(x))


class TwoArguments(Net):
    def forward(self, x, y):
        return self.classifier(self.body(x + y))


def _prepared(model):
    """The caller's model as a refusal must give it back: a frozen bias, a submodule in eval mode under
    a module in train mode, hooks of its own, and gradients accumulated by training (on a weight and on the
    frozen bias; the other parameters' are None)."""
    model.body[0].bias.requires_grad_(False)
    model.body[1].eval()
    model.register_forward_hook(lambda m, i, o: None)
    model.classifier.weight.register_hook(lambda g: g)
    with torch.random.fork_rng():  # the test's own draws are not the call's
        model.classifier.weight.grad = torch.randn_like(model.classifier.weight)
        model.body[0].bias.grad = torch.randn_like(model.body[0].bias)
    return model


def _data(n=2, two=False, nan=False):
    g = torch.Generator().manual_seed(0)
    out = []
    for _ in range(n):
        x = torch.randn(8, 3, generator=g)
        if nan:
            x[0, 0] = float("nan")
        out.append(((x, x.clone()) if two else x, torch.randint(0, 4, (8,), generator=g)))
    return out


def _foreign_checkpoint(tmp_path):
    path = tmp_path / "ck.pt"
    save_stage(path, {"fingerprint": {"weights": "another model"}, "stage": 0, "step": 1, "since_best": 0, "masks": {},
                      "controller": {}, "snapshots": {}, "history": [], "cpu_seconds": 0.0, "wall_seconds": 0.0})
    return path


def _other_connectome(model):
    with torch.random.fork_rng():  # the test's own draws are not the call's
        return adaptive.Connectome(Net(), mode="mask_only")


OC = dict(progress=False)
# (id, model class, call(model, tmp_path), error type, message)
CASES = [
    ("oc-bad-target", Net, lambda m, t: optimize_connectome(m, _data(), _data(), target=1.5, **OC), ValueError, "target"),
    ("oc-empty-loader", Net, lambda m, t: optimize_connectome(m, [], _data(), target=0.5, **OC), ValueError, "empty"),
    ("oc-seed", Net, lambda m, t: optimize_connectome(m, _data(), _data(), target=0.5, seed=0.5, **OC), ValueError,
     "seed must be an integer"),
    ("oc-separate-arguments", TwoArguments, lambda m, t: optimize_connectome(m, _data(two=True), _data(two=True),
                                                                             target=0.5, **OC), TypeError, "separate"),
    ("oc-one-channel", lambda: Net(out=1), lambda m, t: optimize_connectome(m, _data(), _data(), target=0.5, **OC),
     ValueError, "one channel"),
    ("oc-nan-holdout", Net, lambda m, t: optimize_connectome(m, _data(), _data(nan=True), target=0.5, **OC), ValueError,
     "held-out loss is nan"),
    ("oc-foreign-checkpoint", Net, lambda m, t: optimize_connectome(m, _data(), _data(), target=0.5, **OC,
                                                                    checkpoint=_foreign_checkpoint(t)),
     ValueError, "another run"),
    # a float64 model given float32 data: torch's 'mat1 and mat2 must have the same dtype' named no fix
    ("oc-float64-model", lambda: Net().double(), lambda m, t: optimize_connectome(m, _data(), _data(), target=0.5, **OC),
     TypeError, r"weights are torch.float64 but the batch's inputs are torch.float32.*\(model.float\(\)\).*"
                r"\(x.double\(\) in the data\)"),
    ("ep-float64-model", lambda: Net().double(), lambda m, t: edge_popup(m, _data(), _data(), [0.5], progress=False),
     TypeError, r"edge-popup: the model's weights are torch.float64 but the batch's inputs are torch.float32"),
    ("oc-evaluate-no-examples", Net, lambda m, t: evaluate(m, []), ValueError, "no examples"),
    ("ep-seed", Net, lambda m, t: edge_popup(m, _data(), _data(), [0.5], seed="0", progress=False), ValueError,
     "seed must be an integer"),
    ("ep-empty-loader", Net, lambda m, t: edge_popup(m, _data(), [], [0.5], progress=False), ValueError, "empty"),
    ("ep-best", Net, lambda m, t: edge_popup(m, _data(), _data(), ["best"], progress=False), ValueError, "not 'best'"),
    ("ep-bad-target", Net, lambda m, t: edge_popup(m, _data(), _data(), [1.5], progress=False), ValueError, "target"),
    ("ep-twice", Net, lambda m, t: edge_popup(m, _data(), _data(), [0.5, 0.5], progress=False), ValueError, "once"),
    # a fraction that rounds to no synapse: its snapshot was the dense network, given as a result
    ("ep-removes-nothing", Net, lambda m, t: edge_popup(m, _data(), _data(), [1e-9], progress=False), ValueError,
     r"round\(1e-09 x 56\) = 0 of the model's 56 prunable synapses.*the dense network, unchanged"),
    ("ep-removes-nothing-of-several", Net, lambda m, t: edge_popup(m, _data(), _data(), [0.5, 1e-9], progress=False),
     ValueError, r"target 2 of 2 \(1e-09\) in \[0.5, 1e-09\].*at least 1 \(the least that removes one synapse\)"),
    ("ep-no-target", Net, lambda m, t: edge_popup(m, _data(), _data(), [], progress=False), ValueError,
     "at least one target"),
    ("ep-passes-text", Net, lambda m, t: edge_popup(m, _data(), _data(), [0.5], passes="1", progress=False), ValueError,
     "passes must be a finite number"),
    ("ep-passes-inf", Net, lambda m, t: edge_popup(m, _data(), _data(), [0.5], passes=float("inf"), progress=False),
     ValueError, "passes must be a finite number"),
    ("ep-lr-text", Net, lambda m, t: edge_popup(m, _data(), _data(), [0.5], lr="0.1", progress=False), ValueError,
     "lr must be a finite number"),
    ("ep-separate-arguments", TwoArguments, lambda m, t: edge_popup(m, _data(two=True), _data(two=True), [0.5],
                                                                    progress=False), TypeError, "separate"),
    ("ep-one-channel", lambda: Net(out=1), lambda m, t: edge_popup(m, _data(), _data(), [0.5], progress=False),
     ValueError, "one channel"),
    ("gd-separate-arguments", TwoArguments, lambda m, t: diagnostics.gradient_by_depth(m, _data(two=True), batches=1),
     TypeError, "separate"),
    ("gd-empty-loader", Net, lambda m, t: diagnostics.gradient_by_depth(m, [], batches=1), ValueError, "empty"),
    ("gd-no-layer", Net, lambda m, t: diagnostics.gradient_by_depth(m, _data(), layer="head", batches=1), KeyError,
     "no layer"),
    ("gd-one-channel", lambda: Net(out=1), lambda m, t: diagnostics.gradient_by_depth(m, _data(), batches=1),
     ValueError, "one channel"),
    ("co-separate-arguments", TwoArguments, lambda m, t: diagnostics.collinearity(m, _data(two=True), batches=1),
     TypeError, "separate"),
    ("co-empty-loader", Net, lambda m, t: diagnostics.collinearity(m, [], batches=1), ValueError, "empty"),
    ("co-no-weight", Net, lambda m, t: diagnostics.collinearity(m, _data(), include="head"), ValueError, "matched"),
    ("co-one-channel", lambda: Net(out=1), lambda m, t: diagnostics.collinearity(m, _data(), batches=1), ValueError,
     "one channel"),
    ("kd-separate-arguments", TwoArguments, lambda m, t: diagnostics.knowledge_distribution(m, _data(two=True), points=2),
     TypeError, "separate"),
    ("kd-empty-loader", Net, lambda m, t: diagnostics.knowledge_distribution(m, [], points=2), ValueError, "empty"),
    ("kd-points", Net, lambda m, t: diagnostics.knowledge_distribution(m, _data(), points=0), ValueError, "points"),
    ("kd-other-connectome", Net, lambda m, t: diagnostics.knowledge_distribution(m, _data(), points=2,
                                                                                 conn=_other_connectome(m)),
     ValueError, "another model"),
    ("kd-one-channel", lambda: Net(out=1), lambda m, t: diagnostics.knowledge_distribution(m, _data(), points=2),
     ValueError, "one channel"),
]


@pytest.mark.parametrize("make, call, error, match", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_a_refusal_leaves_the_model_and_the_generators_as_they_were(make, call, error, match, tmp_path):
    torch.manual_seed(0)
    model = _prepared(make())
    before = model_state(model)
    with pytest.raises(error, match=match):
        call(model, tmp_path)
    assert changed_state(model, before) == []


@pytest.mark.parametrize("call", [
    lambda m: optimize_connectome(m, _data(), _data(), target=0.5, **OC),
    lambda m: edge_popup(m, _data(), _data(), [0.5], progress=False),
], ids=["optimize_connectome", "edge_popup"])
def test_a_completed_mask_learning_gives_back_the_callers_gradients(call):
    # mask_learning cleared every .grad on every exit: a call in the middle of training lost the gradients
    # accumulated so far. Each comes back as the same tensor, bit for bit; a None stays None.
    torch.manual_seed(0)
    model = _prepared(Net())
    grads = {n: p.grad for n, p in model.named_parameters()}
    before = model_state(model)
    call(model)
    assert all(p.grad is grads[n] for n, p in model.named_parameters())  # the same objects (None where None)
    assert [c for c in changed_state(model, before) if c.startswith(("grad", "requires_grad", "training"))] == []


@pytest.mark.parametrize("call", [
    lambda m: optimize_connectome(m, _data(), _data(), target=0.5, **OC),
    lambda m: edge_popup(m, _data(), _data(), [0.5], progress=False),
], ids=["optimize_connectome", "edge_popup"])
def test_a_gradient_that_could_not_be_given_back_is_refused_first(call):
    # A .grad that no longer fits its parameter (the parameter's data replaced by another dtype after the
    # gradient was set) was refused by PyTorch only when the exit put it back: the error hid the call's own,
    # the parameters after it kept requires_grad=False and lost their gradients. It is refused up front.
    torch.manual_seed(0)
    model = _prepared(Net())
    model.body[0].bias.data = model.body[0].bias.data.double()
    before = model_state(model)
    with pytest.raises(ValueError, match=r"body\.0\.bias's \.grad no longer fits the parameter .* set body\.0\.bias\.grad "
                                         r"to None"):
        call(model)
    assert changed_state(model, before) == []
