"""The accuracy contract of mask-only optimisation (adaptive.metrics): accuracy only for classification
shapes (None, never 0 or above 1, otherwise), losses averaged over the units they stand for, target
"best" by held-out loss where there is no accuracy, plain two-argument losses, nested inputs."""
import copy
import re

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import adaptive
from adaptive.mask_only import _to_device, evaluate, optimize_connectome
from adaptive.metrics import default_accuracy


def regression_data(n=256, seed=0):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, 6, generator=g)
    Y = X @ torch.randn(6, 1, generator=g) + 0.1 * torch.randn(n, 1, generator=g)
    k = 3 * n // 4
    tr = DataLoader(TensorDataset(X[:k], Y[:k]), batch_size=32, shuffle=True, generator=torch.Generator().manual_seed(0))
    ho = DataLoader(TensorDataset(X[k:], Y[k:]), batch_size=32)
    return tr, ho


def briefly_trained_regressor(tr):
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(6, 32), nn.ReLU(), nn.Linear(32, 1))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(2):
        for x, y in tr:
            F.mse_loss(model(x), y).backward(); opt.step(); opt.zero_grad()
    return model


def test_evaluate_counts_accuracy_only_for_classification_shapes():
    torch.manual_seed(0)
    x = torch.randn(6, 5)
    # regression and one-logit BCE: no accuracy (was 0.0, and 6.0 = 600% for a (B, 1) target)
    y_reg = torch.randn(6, 1)
    loss, acc, n = evaluate(nn.Identity(), [(x[:, :1], y_reg)], F.mse_loss)
    assert acc is None and n == 6 and loss == pytest.approx(float(F.mse_loss(x[:, :1], y_reg)))
    y_bin = (torch.rand(6, 1) > 0.5).float()
    assert evaluate(nn.Identity(), [(x[:, :1], y_bin)], F.binary_cross_entropy_with_logits)[1] is None
    # probability targets with batch == classes: the loss is per example (was divided by the classes)
    p = torch.softmax(torch.randn(5, 5), 1)
    loss, acc, n = evaluate(nn.Identity(), [(x[:5], p)])
    assert acc is None and n == 5 and loss == pytest.approx(float(F.cross_entropy(x[:5], p)))
    # a (B, C, T) tagger: accuracy and loss per position (accuracy was correct tokens / B)
    out = torch.randn(4, 3, 7)
    y = out.argmax(1)
    y[0, :3] = (y[0, :3] + 1) % 3
    loss, acc, n = evaluate(nn.Identity(), [(out, y)])
    assert n == 28 and acc == pytest.approx(25 / 28) and loss == pytest.approx(float(F.cross_entropy(out, y)))
    # -100 (cross_entropy's ignore_index) is neither scored nor counted, in accuracy or loss
    y2 = y.clone()
    y2[0, :3] = -100
    loss, acc, n = evaluate(nn.Identity(), [(out, y2)])
    assert n == 25 and acc == 1.0 and loss == pytest.approx(float(F.cross_entropy(out, y2)))
    # accuracy_fn: your own count, or none at all
    thr = lambda o, t: (int(((o > 0).float() == t).sum()), t.numel())
    assert evaluate(nn.Identity(), [(x[:, :1], y_bin)], F.binary_cross_entropy_with_logits, accuracy_fn=thr)[1] == \
        pytest.approx(float(((x[:, :1] > 0).float() == y_bin).float().mean()))
    assert evaluate(nn.Identity(), [(out, y)], accuracy_fn=None)[1] is None
    with pytest.raises(ValueError, match="accuracy_fn must return"):
        evaluate(nn.Identity(), [(out, y)], accuracy_fn=lambda o, t: 7.0)


def test_evaluate_of_a_classifier_is_bit_for_bit_the_old_formula():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 5))
    batches = [(torch.randn(b, 8), torch.randint(0, 5, (b,))) for b in (16, 16, 7)]
    loss_sum, correct, n = 0.0, 0, 0
    with torch.no_grad():
        for x, y in batches:
            out = model(x)
            loss_sum += float(F.cross_entropy(out, y, reduction="sum"))
            correct += int((out.argmax(1) == y).sum())
            n += int(y.numel())
    assert evaluate(model, batches) == (loss_sum / n, correct / n, n)
    assert default_accuracy(model(batches[0][0]), batches[0][1])[1] == 16


def test_best_chooses_by_holdout_loss_where_there_is_no_accuracy():
    tr, ho = regression_data()
    model = briefly_trained_regressor(tr)
    res = optimize_connectome(model, tr, ho, target="best", loss_fn=F.mse_loss, passes=1.0, patience=2,
                              ladder=(0.1, 0.2, 0.3, 0.4, 0.5), progress=False)
    evals = [h for h in res.history if h["kind"] == "eval"]
    assert all(e["holdout_acc"] is None for e in evals)  # was 0.0 everywhere
    assert all(h["train_acc"] is None for h in res.history if h["kind"] == "update")
    best = res.snapshots["best"]
    losses = [e["holdout_loss"] for e in evals]
    assert best.selected_by == "holdout_loss" and best.holdout_loss == min(losses)
    assert min(losses) < losses[0] and best.removed > 0  # the old code kept the dense network
    assert res.conn.num_synapses() - res.conn.num_live() == best.removed
    assert adaptive.mask_only.changed_weights(res.conn) == 0


def test_threshold_best_chooses_by_holdout_loss_where_there_is_no_accuracy():
    tr, ho = regression_data()
    model = briefly_trained_regressor(tr)
    res = optimize_connectome(model, tr, ho, target="best", ladder=(), loss_fn=F.mse_loss, passes=1.0,
                              eval_every=1, edit_fraction=0.2, progress=False)
    evals = [h for h in res.history if h["kind"] == "eval"]
    best = res.snapshots["best"]
    assert best.selected_by == "holdout_loss" and best.holdout_loss == min(e["holdout_loss"] for e in evals)


def test_classification_best_records_its_criterion():
    torch.manual_seed(0)
    X = torch.randn(192, 6); Y = X[:, :3].argmax(1)
    tr = DataLoader(TensorDataset(X[:128], Y[:128]), batch_size=32)
    ho = DataLoader(TensorDataset(X[128:], Y[128:]), batch_size=32)
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3))
    res = optimize_connectome(model, tr, ho, target="best", ladder=(0.2, 0.4), passes=0.5, progress=False)
    assert res.snapshots["best"].selected_by == "holdout_acc"


def test_sequence_train_and_holdout_accuracy_count_positions():
    torch.manual_seed(0)
    V, T = 5, 6
    X = torch.randint(0, V, (96, T)); Y = (X + 1) % V

    class Tagger(nn.Module):  # (B, C, T) logits: F.cross_entropy's own layout
        def __init__(self):
            super().__init__(); self.emb = nn.Embedding(V, 8); self.head = nn.Linear(8, V)
        def forward(self, x):
            return self.head(self.emb(x)).transpose(1, 2)

    tr = DataLoader(TensorDataset(X[:64], Y[:64]), batch_size=16)
    ho = DataLoader(TensorDataset(X[64:], Y[64:]), batch_size=16)
    res = optimize_connectome(Tagger(), tr, ho, target=[0.2], passes=1.0, progress=False)
    upd = [h for h in res.history if h["kind"] == "update"]
    assert all(0.0 <= h["train_acc"] <= 1.0 for h in upd)  # was correct tokens / batch, up to T
    assert all(h["train_examples"] == 16 for h in upd)
    assert 0.0 <= res.snapshots["0.2"].holdout_acc <= 1.0


@pytest.mark.parametrize("kind", ["squeezed", "soft"])
def test_shapes_without_accuracy_train_instead_of_crashing(kind):
    torch.manual_seed(0)
    X = torch.randn(96, 6)
    if kind == "squeezed":  # (B,) predictions, (B,) float targets: argmax(1) raised IndexError
        Y = X[:, 0].clone()
        model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 1), nn.Flatten(0))
        loss_fn = F.mse_loss
    else:  # label-smoothed probability targets, batch != classes: argmax(1) == y raised RuntimeError
        Y = F.one_hot(X[:, :3].argmax(1), 3).float() * 0.9 + 0.1 / 3
        model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))
        loss_fn = F.cross_entropy
    tr = DataLoader(TensorDataset(X[:64], Y[:64]), batch_size=16)
    ho = DataLoader(TensorDataset(X[64:], Y[64:]), batch_size=16)
    res = optimize_connectome(model, tr, ho, target=[0.2], passes=0.5, loss_fn=loss_fn, progress=False)
    snap = res.snapshots["0.2"]
    assert snap.holdout_acc is None
    with torch.no_grad():
        want = float(loss_fn(model(X[64:]), Y[64:]))
    assert snap.holdout_loss == pytest.approx(want, rel=1e-5)


def test_a_two_argument_loss_fn_works_and_a_bad_one_is_refused_before_training():
    tr, ho = regression_data()
    model = briefly_trained_regressor(tr)

    def plain(out, y):  # no reduction argument (the old code failed at the first held-out evaluation)
        return F.smooth_l1_loss(out, y)

    res = optimize_connectome(copy.deepcopy(model), tr, ho, target=[0.2], loss_fn=plain, passes=0.5, progress=False)
    snap = res.snapshots["0.2"]
    res.use("0.2")
    with torch.no_grad():
        x, y = ho.dataset.tensors
        assert snap.holdout_loss == pytest.approx(float(F.smooth_l1_loss(res.conn.model(x), y)), rel=1e-5)
    seen = []

    def per_example(out, y):  # not a scalar: refused on the first batch, before any update
        return (out - y).pow(2).mean(1)

    with pytest.raises(ValueError, match="scalar loss"):
        optimize_connectome(copy.deepcopy(model), tr, ho, target=[0.2], loss_fn=per_example, passes=0.5,
                            progress=False, callback=lambda r: seen.append(r["kind"]))
    assert "update" not in seen


def test_nested_inputs_follow_the_model_to_its_device():
    a, b, y = torch.randn(4, 6), torch.randn(4, 4), torch.zeros(4, dtype=torch.long)
    (x1, x2), yy = _to_device(((a, b), y), torch.device("meta"))
    assert (x1.device.type, x2.device.type, yy.device.type) == ("meta", "meta", "meta")
    d, _ = _to_device(({"a": a, "b": [b]}, y), torch.device("meta"))
    assert d["a"].is_meta and d["b"][0].is_meta


def test_a_single_logit_with_integer_labels_has_no_accuracy_and_a_weighted_loss_is_averaged_as_trained():
    """A (B, 1) output with 0/1 integer labels was scored as a 1-class argmax (always 0: accuracy =
    the share of 0 labels, whatever the mask); a class-weighted cross-entropy's held-out loss was its
    sum over examples / examples (2.17) while the training window averaged its weighted mean (0.93)."""
    torch.manual_seed(0)
    out1, y = torch.randn(8, 1), torch.randint(0, 2, (8,))
    assert default_accuracy(out1, y) is None
    bce = lambda o, t: F.binary_cross_entropy_with_logits(o.squeeze(1), t.float())  # noqa: E731
    assert evaluate(nn.Identity(), [(out1, y)], bce)[1] is None
    out, y = torch.randn(16, 3), torch.randint(0, 3, (16,))
    w = torch.tensor([0.2, 1.0, 5.0])
    weighted = lambda o, t, **kw: F.cross_entropy(o, t, weight=w, **kw)  # noqa: E731
    loss, acc, _ = evaluate(nn.Identity(), [(out, y)], weighted)
    assert loss == pytest.approx(float(weighted(out, y)), rel=1e-6) and acc == pytest.approx(float((out.argmax(1) == y).float().mean()))
    assert evaluate(nn.Identity(), [(out, y)])[0] == float(F.cross_entropy(out, y, reduction="sum")) / 16  # unweighted: the sum, as before


def test_a_regression_loss_with_a_reduction_argument_is_its_mean_not_its_sum_over_features():
    """F.mse_loss takes reduction='sum', but for (B, 5) predictions its sum is over features too:
    evaluate must report the mean loss_fn gives, not 5x it."""
    torch.manual_seed(0)
    batches = [(torch.randn(8, 5), torch.randn(8, 5)) for _ in range(2)]
    loss, acc, n = evaluate(nn.Identity(), batches, F.mse_loss)
    assert acc is None and n == 16
    assert loss == pytest.approx(sum(float(F.mse_loss(x, y)) for x, y in batches) / 2, rel=1e-6)


@pytest.mark.parametrize("returned", [(12, 10), (2, 2.5)], ids=["correct_above_count", "fractional_count"])
def test_an_accuracy_fn_returning_more_correct_than_counted_or_a_fractional_count_is_refused(returned):
    from adaptive.metrics import batch_accuracy

    def my_accuracy(out, y):
        return returned

    with pytest.raises(ValueError, match=r"accuracy_fn must return \(correct, count\) with 0 <= correct <= count "
                                         rf"\(an integer\), or None for no accuracy; 'my_accuracy' returned "
                                         rf"{re.escape(repr(returned))}"):
        batch_accuracy(my_accuracy, torch.zeros(10, 3), torch.zeros(10, dtype=torch.long))
    assert batch_accuracy(lambda o, y: (10, 10.0), torch.zeros(10, 3), None) == (10, 10)  # a whole float count is fine


def test_bool_targets_are_not_class_labels():
    """Bool targets are a binary score, not class indices: no accuracy, the loss weighted by examples."""
    from adaptive.metrics import loss_weight

    out, y = torch.tensor([[2.0, 1.0], [0.0, 3.0], [1.0, 0.0]]), torch.tensor([True, False, True])
    assert default_accuracy(out, y) is None and loss_weight(out, y) == 3
    assert default_accuracy(out, y.long()) == (0, 3)  # the same labels as integers are classes


def test_the_training_window_counts_positions_exactly_past_float32s_integers():
    """The window's position count was summed in float32 (0.0 plus a 0-d int64 tensor) from 2**24 on:
    three batches of 2**23 + 1 positions each made 3 * 2**23 + 4, and a constant loss's mean came out
    below it. The units are exact (as the host's Python floats added them)."""
    T = 2 ** 23 + 1

    class Constant(nn.Module):  # the same (1, 2) logits at every position, expanded (no T-sized input)
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.lin = nn.Linear(2, 2)

        def forward(self, x):
            return self.lin(torch.ones(1, 2)).unsqueeze(-1).expand(1, 2, x.shape[-1])

    def batch(t):
        return torch.zeros(1, 1).expand(1, t), torch.zeros(1, 1, dtype=torch.long).expand(1, t)

    def loss_fn(out, y):  # every position's loss is the first's: its mean, at a fraction of the cost
        return F.cross_entropy(out[..., :1], y[..., :1])

    model = Constant()
    with torch.no_grad():
        x, y = batch(1)
        expected = float(loss_fn(model(x), y))
    res = optimize_connectome(model, [batch(T)] * 3, [batch(4)], target=[1], window=3, loss_fn=loss_fn,
                              progress=False)
    first = next(h for h in res.history if h["kind"] == "update")
    assert first["train_examples"] == 3
    assert first["train_loss"] == expected


class _TwoArguments(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(3, 4), nn.Linear(2, 4)

    def forward(self, x, y):
        return self.a(x) + self.b(y)


def _refused_as_separate_arguments(entry, model):
    """Runs ``entry`` (a mask-only or diagnostic entry point) on ``model`` with two-input batches and checks
    it refuses the model's separate-argument forward, naming the wrapper to write."""
    from adaptive import diagnostics

    g = torch.Generator().manual_seed(0)
    data = [((torch.randn(8, 3, generator=g), torch.randn(8, 2, generator=g)), torch.randint(0, 4, (8,), generator=g))] * 2
    call = {"optimize_connectome": lambda: optimize_connectome(model, data, data, target=0.5, progress=False),
            "gradient_by_depth": lambda: diagnostics.gradient_by_depth(model, data, layer="a", batches=1),
            "collinearity": lambda: diagnostics.collinearity(model, data, batches=1),
            "knowledge_distribution": lambda: diagnostics.knowledge_distribution(model, data, points=2)}[entry]
    with pytest.raises(TypeError, match=r"model\(inputs\); _TwoArguments\.forward takes them as 2 separate arguments: "
                                        r"wrap it .*self\.net\(\*inputs\)"):
        call()


@pytest.mark.parametrize("entry", ["optimize_connectome", "gradient_by_depth", "collinearity", "knowledge_distribution"])
def test_a_forward_taking_the_inputs_as_separate_arguments_is_refused_naming_the_fix(entry):
    """A batch's inputs go to the model as one argument; a forward(self, x, y) failed inside the call
    with a bare "missing 1 required positional argument" (gradient_by_depth: a tracing error asking for
    depths=), which named neither the contract nor the fix. The model comes back as it was."""
    torch.manual_seed(0)
    model = _TwoArguments()
    before = copy.deepcopy(model.state_dict())
    _refused_as_separate_arguments(entry, model)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    assert all(p.requires_grad for p in model.parameters())


def test_a_forward_taking_one_tuple_still_gets_it_whole():
    class OneTuple(_TwoArguments):
        def forward(self, xy, scale=1.0):  # binds the tuple as one argument: no refusal, called as before
            return super().forward(*xy) * scale

    g = torch.Generator().manual_seed(0)
    data = [((torch.randn(8, 3, generator=g), torch.randn(8, 2, generator=g)), torch.randint(0, 4, (8,), generator=g))]
    loss, _, _ = evaluate(OneTuple(), data)
    assert loss > 0


def test_a_wrapped_forward_taking_separate_arguments_is_refused_naming_the_wrapped_model():
    """nn.DataParallel's and torch.compile's own forwards take ``*args``, which bind the inputs as
    one argument: the wrapped model's forward(self, x, y) failed with the bare 'missing 1 required
    positional argument' instead of the refusal."""
    from adaptive.metrics import call_model

    x = (torch.randn(2, 3), torch.randn(2, 2))
    for wrapped in (nn.DataParallel(_TwoArguments()), torch.compile(_TwoArguments())):
        with pytest.raises(TypeError, match=r"_TwoArguments\.forward takes them as 2 separate arguments"):
            call_model(wrapped, x, "mask-only optimisation")


def test_arguments_a_forward_pre_hook_unpacks_are_not_refused_and_a_forward_bug_surfaces():
    """A forward pre-hook may unpack the inputs (model(inputs) then works): the signature of forward
    tells nothing there, so neither the check made before tracing nor a TypeError raised inside that
    forward (a bug of its own) is turned into the 'separate arguments' refusal."""
    from adaptive.metrics import call_model, refuse_unpacked

    class Buggy(_TwoArguments):
        def forward(self, x, y):
            return self.a(x, y)  # a bug of the forward's own: Linear takes one input

    x = (torch.randn(2, 3), torch.randn(2, 2))
    model = _TwoArguments()
    model.register_forward_pre_hook(lambda module, args: args[0])  # unpacks: model(inputs) is model(*inputs)
    refuse_unpacked(model, x, "gradient_by_depth")  # (gradient_by_depth's check before tracing)
    assert call_model(model, x).shape == (2, 4)
    buggy = Buggy()
    buggy.register_forward_pre_hook(lambda module, args: args[0])
    with pytest.raises(TypeError, match="positional argument") as e:
        call_model(buggy, x)
    assert "separate arguments" not in str(e.value)


@pytest.mark.parametrize("entry", ["optimize_connectome", "gradient_by_depth", "collinearity", "knowledge_distribution"])
@pytest.mark.parametrize("with_kwargs", [False, True])
def test_a_hooked_forward_taking_separate_arguments_is_refused_naming_the_fix(entry, with_kwargs):
    """A forward pre-hook (a plain one or a with_kwargs one) that leaves the inputs as they are: the model's
    forward(self, x, y) got PyTorch's bare "missing 1 required positional argument" (gradient_by_depth: a
    tracing error), since a hook may unpack the inputs and the refusal was skipped for every hooked model."""
    model = _TwoArguments()
    if with_kwargs:
        model.register_forward_pre_hook(lambda module, args, kwargs: None, with_kwargs=True)
    else:
        model.register_forward_pre_hook(lambda module, args: None)
    _refused_as_separate_arguments(entry, model)


def test_a_hooked_forward_taking_one_argument_or_a_hook_error_is_not_refused():
    """Under a hook, a forward that takes the inputs as one tuple runs as before, and a TypeError the hook
    raises itself is not taken for the 'separate arguments' refusal."""
    from adaptive.metrics import call_model

    class OneTuple(_TwoArguments):
        def forward(self, xy):
            return super().forward(*xy)

    x = (torch.randn(2, 3), torch.randn(2, 2))
    model = OneTuple()
    model.register_forward_pre_hook(lambda module, args: None)
    assert call_model(model, x).shape == (2, 4)

    def bad_hook(module, args):
        raise TypeError("the hook's own error")

    hooked = _TwoArguments()
    hooked.register_forward_pre_hook(bad_hook)
    with pytest.raises(TypeError, match="^the hook's own error$"):
        call_model(hooked, x)


def test_a_type_error_a_hook_raises_in_torchs_module_call_is_not_refused():
    """A TypeError raised in torch's module call that is not forward's binding: a forward hook with the wrong
    signature, after a pre-hook unpacked the inputs and forward ran on them (model(inputs) is the right call),
    or a pre-hook calling a submodule wrongly. Both were refused as 'separate arguments', whose fix (wrap the
    model) is wrong there: the error is the hook's, and it is the one raised."""
    from adaptive.metrics import call_model

    x = (torch.randn(2, 3), torch.randn(2, 2))
    model = _TwoArguments()
    model.register_forward_pre_hook(lambda module, args: args[0])  # unpacks: model(inputs) is model(*inputs)
    model.register_forward_hook(lambda module, out: None)  # wrong: forward hooks take (module, args, output)
    with pytest.raises(TypeError, match=r"<lambda>\(\) takes 2 positional arguments but 3 were given$"):
        call_model(model, x)
    model = _TwoArguments()
    model.register_forward_pre_hook(lambda module, args: (module.a(*args[0]),))  # Linear takes one input
    with pytest.raises(TypeError, match=r"^Linear\.forward\(\) takes 2 positional arguments but 3 were given$"):
        call_model(model, x)


def test_removal_scores_names_itself_refusing_separate_arguments():
    """removal_scores (public in adaptive.diagnostics) named knowledge_distribution in the refusal."""
    from adaptive import diagnostics

    g = torch.Generator().manual_seed(0)
    data = [((torch.randn(8, 3, generator=g), torch.randn(8, 2, generator=g)), torch.randint(0, 4, (8,), generator=g))]
    with pytest.raises(TypeError, match=r"^removal_scores passes a batch's inputs to the model as one argument"):
        diagnostics.removal_scores(adaptive.Connectome(_TwoArguments()), data, estimator="presence", batches=1)


class _DetachedCE(nn.CrossEntropyLoss):
    """A loss module with a forward of its own (the label check leaves such a loss to its caller) that
    computes its loss from the output detached."""

    def forward(self, out, y):
        return super().forward(out.detach(), y)


def _count_of_errors(out, y):
    return (out.argmax(1) != y).sum()


@pytest.mark.parametrize("loss_fn, returned, fix", [
    (lambda o, y: F.cross_entropy(o, y).detach(), r"a tensor that is not connected to the model's output",
     r"without output\.detach\(\), torch\.no_grad\(\)"),
    (_DetachedCE(), r"a tensor that is not connected", r"compute it from the output with torch operations"),
    (lambda o, y: F.cross_entropy(o, y).item(), r"a float \(\d", r"not loss\.item\(\)"),
    (lambda o, y: (F.cross_entropy(o, y), o.pow(2).mean()), r"a tuple", r"add them up"),
    (lambda o, y: F.cross_entropy(o, y, reduction="none"), r"a tensor of shape \(8,\)", r"reduce it to the batch's mean"),
    (lambda o, y: F.cross_entropy(o, y).to(torch.complex64), r"a complex64 tensor", r"return a real floating-point loss"),
    (_count_of_errors, r"an? int64 tensor", r"a differentiable loss"),
])
def test_a_loss_the_label_check_does_not_know_is_checked_on_the_first_held_out_batch(loss_fn, returned, fix):
    """A lambda, a function or a loss module with its own forward was not checked at all: a loss of the
    output detached failed in the first backward pass with torch's 'element 0 of tensors does not require
    grad', a complex one with 'grad can be implicitly created only for real scalar outputs'. Now any loss is
    called on the first held-out batch before anything is built: refused naming what it returned and the fix,
    no training batch read, the model bit-identical (weights, buffers, modes, requires_grad)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))
    model.train()
    model[3].weight.requires_grad_(False)
    x, y = torch.randn(32, 6), torch.arange(32) % 3
    ho = DataLoader(TensorDataset(x[:16], y[:16]), batch_size=8)

    class NoTraining:
        def __len__(self):
            return 4

        def __iter__(self):
            raise AssertionError("a training batch was read")

    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match=r"loss_fn .*must return a scalar loss tensor .*real and connected to the "
                                         r"model's output; on the first held-out batch \(output \(8, 3\), targets "
                                         rf"\(8,\)\) it returned {returned}.*{fix}.*Nothing was changed"):
        optimize_connectome(model, NoTraining(), ho, target=0.5, loss_fn=loss_fn, progress=False)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    assert model.training and [p.requires_grad for p in model.parameters()] == [True] * 4 + [False, True]
    assert all(p.grad is None for p in model.parameters())


def test_a_custom_loss_that_works_in_place_on_its_input_still_runs():
    """The first-batch check calls the loss on a copy of the output that is no leaf, as in training: a
    loss that clamps its input in place runs (a leaf that requires grad refuses an in-place operation)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))
    x, y = torch.randn(32, 6), torch.arange(32) % 3
    dl = DataLoader(TensorDataset(x, y), batch_size=8)
    res = optimize_connectome(model, dl, dl, target=[0.25], passes=0.5, progress=False,
                              loss_fn=lambda o, t: F.cross_entropy(o.clamp_(-10, 10), t))
    assert res.snapshots["0.25"].removed == round(0.25 * (6 * 8 + 8 * 3))


def test_the_loss_check_on_the_first_held_out_batch_leaves_the_global_generators_where_they_were():
    """refuse_unusable_loss calls loss_fn once more before the run: a loss that draws from torch's global
    generator (random negatives, say) started the run from other states, so the same seed chose other
    masks than the same call before the check was added."""
    import random

    import numpy as np

    from adaptive.mask_only_eval import refuse_unusable_loss

    def drawing(out, y):
        return F.cross_entropy(out, y) + 0.0 * (torch.rand(()) + random.random() + np.random.rand())

    torch.manual_seed(3), random.seed(3), np.random.seed(3)
    refuse_unusable_loss(drawing, torch.randn(4, 3), torch.tensor([0, 1, 2, 0]), "drawing")
    after = (torch.rand(2), random.random(), np.random.rand())
    torch.manual_seed(3), random.seed(3), np.random.seed(3)
    torch.randn(4, 3)
    assert torch.equal(after[0], torch.rand(2)) and after[1:] == (random.random(), np.random.rand())


def test_inputs_of_another_floating_point_type_than_the_weights_are_named_only_where_they_are_the_cause():
    """A float64 model given float32 inputs failed with torch's 'mat1 and mat2 must have the same dtype',
    naming neither the types' owners nor the fix: now a TypeError names both and the fix. A model that
    converts its inputs itself works, and one failing for another reason keeps torch's own error."""
    from adaptive.metrics import call_model

    x = torch.randn(4, 3)
    with pytest.raises(TypeError, match=r"^evaluate: the model's weights are torch.float64 but the batch's inputs are "
                                        r"torch.float32.*\(model.float\(\)\) or the inputs the model's \(x.double\(\)"):
        call_model(nn.Linear(3, 2).double(), x, "evaluate")
    class Pair(nn.Linear):  # a batch's inputs as a tuple
        def forward(self, xs):
            return super().forward(xs[0] + xs[1])

    with pytest.raises(TypeError, match=r"weights are torch.float32 but the batch's inputs are torch.float64.*"
                                        r"\(model.double\(\)\) or the inputs the model's \(x.float\(\)"):
        call_model(Pair(3, 2), (x.double(), x.double()), "evaluate")

    class Converts(nn.Linear):
        def forward(self, x):
            return super().forward(x.to(self.weight.dtype))

    assert call_model(Converts(3, 2).double(), x).dtype == torch.float64

    class Fails(nn.Linear):
        def forward(self, x):
            raise RuntimeError("expected scalar type Long but found Float")  # not the inputs' type against the weights'

    with pytest.raises(RuntimeError, match="expected scalar type Long"):
        call_model(Fails(3, 2), x)


def test_a_model_failing_on_another_type_than_its_inputs_against_its_weights_keeps_torchs_error():
    """Any RuntimeError with 'type' in it, from a float64 model given float32 inputs, became 'the model does not
    convert them' with the fix of a cast: float ids to an embedding, a float index to gather (the model
    converting its inputs itself), a loss inside forward given float labels, bfloat16 autocast. The fix named
    does not help there: torch's error stands where it names another type (or none), or the inputs' device is
    not the weights'. A norm layer's 'expect parameter to have scalar type of Float' is still named."""
    from adaptive.metrics import call_model

    class Ids(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb, self.lin = nn.Embedding(10, 4).double(), nn.Linear(4, 4).double()

        def forward(self, x):
            if self.kind == "embedding":
                return self.emb(x)
            h = self.lin(x.double())  # converts its inputs itself
            return torch.gather(h, 1, x.double()) if self.kind == "gather" else F.nll_loss(h, x[:, 0])

    x = torch.rand(3, 4)
    for kind, torch_says in (("embedding", "'indices' to have one of the following scalar types: Long, Int"),
                             ("gather", "Expected dtype int32/int64 for index"),
                             ("nll", "target dtype|expected scalar type Long but found Float")):  # torch 2.12+ | 2.11
        model = Ids()
        model.kind = kind
        with pytest.raises(RuntimeError, match=torch_says):
            call_model(model, x)
    with torch.autocast("cpu", dtype=torch.bfloat16), pytest.raises(RuntimeError, match="BFloat16 and Double"):
        call_model(nn.Linear(4, 2).double(), x)

    class Elsewhere(nn.Linear):  # weights on another device (meta here; cuda in life): a cast alone is no fix
        def forward(self, x):
            raise RuntimeError("Input type (torch.FloatTensor) and weight type (torch.cuda.DoubleTensor) should be "
                               "the same")

    with pytest.raises(RuntimeError, match="cuda.DoubleTensor"):
        call_model(Elsewhere(4, 2, device="meta", dtype=torch.float64), x)
    with pytest.raises(TypeError, match=r"weights are torch.float64 but the batch's inputs are torch.float32.*torch: "
                                        r"mixed dtype \(CPU\): expect parameter to have scalar type of Float"):
        call_model(nn.LayerNorm(4).double(), x)


def test_evaluate_divides_the_correct_by_the_units_scored_not_by_every_unit():
    """An accuracy_fn may score some batches only (None for the others): accuracy is the correct over the units it
    counted. Divided by every unit of the loss, a model right on every scored label read 50%."""
    torch.manual_seed(0)
    model = nn.Linear(4, 3)
    x = torch.randn(10, 4)
    y = model(x).argmax(1)  # every label right
    calls = []

    def first_batch_only(out, yb):
        calls.append(1)
        return default_accuracy(out, yb) if len(calls) == 1 else None

    loss, acc, n = evaluate(model, [(x[:5], y[:5]), (x[5:], y[5:])], accuracy_fn=first_batch_only)
    assert acc == 1.0 and n == 10
