"""adaptive.label_checks: targets that do not fit the model's output are refused before the loss runs,
naming what the model gives, what the data holds, and the fix."""
import functools

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from adaptive.label_checks import guarded_batch_targets, refuse_labels_outside, refuse_mismatched_targets
from adaptive.metrics import takes_reduction
from _syncs import count_syncs


def test_labels_beyond_the_heads_classes_name_both_counts_and_the_fix():
    out, y = torch.zeros(4, 10), torch.tensor([0, 3, 99, 7])
    for loss in (F.cross_entropy, nn.CrossEntropyLoss(), F.nll_loss, functools.partial(F.cross_entropy, label_smoothing=0.1)):
        with pytest.raises(ValueError, match=r"gives 10 classes.*go up to 99.*at least 100 classes.*num_classes=100"):
            refuse_mismatched_targets(out, y, loss)


def test_the_ignored_label_is_no_class_and_other_negative_labels_are_refused():
    out = torch.zeros(4, 10)
    refuse_mismatched_targets(out, torch.tensor([0, -100, 9, -100]), F.cross_entropy)  # -100: ignored, fine
    refuse_mismatched_targets(out, torch.tensor([0, -1, 9, -1]), functools.partial(F.cross_entropy, ignore_index=-1))
    refuse_mismatched_targets(out, torch.tensor([-100, -100]).repeat(2), F.cross_entropy)  # nothing scored
    with pytest.raises(ValueError, match=r"labels include -1.*ignore_index=-1"):
        refuse_mismatched_targets(out, torch.tensor([0, -1, 9, 2]), F.cross_entropy)
    with pytest.raises(ValueError, match=r"go up to 12"):  # a module's own ignore_index is read too
        refuse_mismatched_targets(out, torch.tensor([12, -1, 0, 1]), nn.CrossEntropyLoss(ignore_index=-1))


def test_targets_of_the_wrong_shape_for_the_loss_are_refused_naming_the_loss_to_pass():
    out = torch.zeros(4, 10)
    with pytest.raises(ValueError, match=r"class probabilities of the output's shape.*F\.mse_loss.*3 outputs"):
        refuse_mismatched_targets(out, torch.randn(4, 3), F.cross_entropy)  # regression values under cross-entropy
    with pytest.raises(ValueError, match=r"one class index per example.*\(4,\).*targets are \(4, 3\)"):
        refuse_mismatched_targets(out, torch.randint(0, 2, (4, 3)), F.cross_entropy)
    with pytest.raises(ValueError, match=r"output is \(4, 1\) and the targets \(4,\).*reshape\(4, 1\)"):
        refuse_mismatched_targets(torch.zeros(4, 1), torch.randn(4), F.mse_loss)  # torch would broadcast to (4, 4)
    with pytest.raises(ValueError, match=r"output is \(4, 10\) and the targets \(4, 3\).*3 output\(s\) per example"):
        refuse_mismatched_targets(out, torch.randn(4, 3), nn.MSELoss())


def test_fitting_targets_and_unknown_losses_pass():
    """Targets the loss takes as they are are not refused: the check raises nothing (a refusal fails this
    test) and returns nothing, and each loss does compute a finite value on them."""
    out = torch.zeros(4, 10, 5)
    for y, loss in ((torch.randint(0, 10, (4, 5)), F.cross_entropy),  # a tagger: (B, C, T), (B, T)
                    (torch.rand(4, 10, 5), F.cross_entropy),  # probabilities
                    (torch.rand(4, 10, 5), F.mse_loss),
                    (torch.randn(7), lambda o, t: o.sum())):  # not a loss known here: the caller's
        assert refuse_mismatched_targets(out, y, loss) is None
        assert torch.isfinite(loss(out, y))


def test_takes_reduction_checks_the_labels_before_calling_the_loss():
    called = []

    def ce(o, t, reduction="mean"):
        called.append(1)
        return F.cross_entropy(o, t, reduction=reduction)

    with pytest.raises(ValueError, match="gives 10 classes"):
        takes_reduction(nn.CrossEntropyLoss(), torch.zeros(2, 10), torch.tensor([1, 10]))
    takes_reduction(ce, torch.zeros(2, 10), torch.tensor([1, 9]))
    assert called


def test_a_loss_module_subclass_with_its_own_forward_is_the_callers_to_check():
    """Review of s53_mo: a subclass of nn.CrossEntropyLoss (nn.MSELoss) whose forward reshapes the targets
    or the output has its own contract; it was checked as the stock loss and legal targets were refused.
    A subclass that keeps the stock forward is still checked."""
    class SqueezedCE(nn.CrossEntropyLoss):
        def forward(self, input, target):
            return super().forward(input, target.squeeze(1))

    class FlatMSE(nn.MSELoss):
        def forward(self, input, target):
            return super().forward(input.squeeze(1), target)

    class WeightedCE(nn.CrossEntropyLoss):  # the stock forward: the stock contract
        pass

    out = torch.zeros(4, 10)
    refuse_mismatched_targets(out, torch.tensor([[0], [3], [9], [7]]), SqueezedCE())
    refuse_mismatched_targets(torch.zeros(4, 1), torch.randn(4), FlatMSE())
    takes_reduction(SqueezedCE(), out, torch.tensor([[0], [3], [9], [7]]))
    with pytest.raises(ValueError, match="gives 10 classes"):
        refuse_mismatched_targets(out, torch.tensor([0, 3, 99, 7]), WeightedCE())


@pytest.mark.parametrize("where", ["train", "later", "holdout"])
def test_a_label_refused_on_one_process_stops_every_process_with_the_same_error(tmp_path, where):
    """Two plain processes (a gloo group of their own, no launcher): only process 1's first training batch (its second,
    or a held-out batch) holds a label beyond the head. That process alone refused it while process 0 went on into its
    next collective and waited there; now both raise one ValueError naming the process and the problem (a later
    training batch's labels, checked on the device, at the update of its window, agreed by both processes)."""
    import os
    import sys

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from _ports import two_rank_records

    got = two_rank_records("two_process_labels.py", tmp_path, where)
    for rec in got:
        assert rec["error"] == "ValueError", got
        assert "process 1 of 2: the model gives 3 classes" in rec["message"] and "go up to 7" in rec["message"], got
        assert "process 0 of 2 found no such problem" in rec["message"], got
    if where == "train":
        assert "its own first training batch" in got[0]["message"]
    if where == "later":
        assert "its own training batches" in got[0]["message"], got
        assert all("adaptive: found in training batch 2 of the run (stage 0.5)" in r["notes"] for r in got), got


def test_nll_float_targets_are_no_class_probabilities():
    """F.nll_loss takes class indices only: float targets of the output's shape passed the check (called class
    probabilities, which NLL does not take) and failed inside the loss; any float targets are refused, naming it."""
    out = torch.zeros(4, 10)
    for loss in (F.nll_loss, nn.NLLLoss(), functools.partial(F.nll_loss, ignore_index=-1)):
        for y in (torch.rand(4, 10), torch.rand(4, 3), torch.tensor([1.0, 2.0, 3.0, 4.0])):
            with pytest.raises(ValueError, match=r"negative log-likelihood\) takes integer class indices.*torch\.float32"
                                                 r".*shape \(4,\) \(y\.long\(\)") as refused:
                refuse_mismatched_targets(out, y, loss)
            assert "class probabilities of the output's shape use F.cross_entropy" in str(refused.value)
    refuse_mismatched_targets(out, torch.rand(4, 10), F.cross_entropy)  # cross-entropy takes probabilities


def test_a_negative_labels_fix_names_the_loss_in_the_form_given():
    """The fix for a negative label named functools.partial(F.cross_entropy, ...) for a loss module (or NLL)."""
    out, y = torch.zeros(4, 10), torch.tensor([0, -1, 9, 2])
    for loss, form in ((F.cross_entropy, "functools.partial(F.cross_entropy, ignore_index=-1)"),
                       (nn.CrossEntropyLoss(), "nn.CrossEntropyLoss(ignore_index=-1)"),
                       (F.nll_loss, "functools.partial(F.nll_loss, ignore_index=-1)"),
                       (nn.NLLLoss(), "nn.NLLLoss(ignore_index=-1)")):
        with pytest.raises(ValueError, match="labels include -1") as refused:
            refuse_mismatched_targets(out, y, loss)
        assert f"({form})" in str(refused.value), (loss, str(refused.value))


def test_a_cross_entropy_subclass_with_its_own_forward_is_not_refused_for_one_channel():
    """refuse_one_class took any nn.CrossEntropyLoss subclass for the stock loss (isinstance): one whose forward
    makes two classes of a single logit is the caller's, as label_checks' rule has it; the stock one is refused."""
    from adaptive.metrics import refuse_one_class

    class OneLogit(nn.CrossEntropyLoss):
        def forward(self, input, target):
            return super().forward(torch.cat([-input, input], 1), target)

    class Stock(nn.CrossEntropyLoss):
        pass

    out, y = torch.randn(4, 1), torch.tensor([0, 1, 1, 0])
    refuse_one_class(out, "loss", OneLogit())
    assert takes_reduction(OneLogit(), out, y) in (True, False)  # checked, not refused
    for loss in (Stock(), nn.CrossEntropyLoss(), F.cross_entropy):
        with pytest.raises(ValueError, match="one channel on its class axis 1"):
            refuse_one_class(out, "loss", loss)


def test_class_indices_of_a_type_torchs_losses_refuse_are_named_with_the_fix():
    """int32 labels (a dataset built from a NumPy int32 array) failed deep inside cross-entropy with
    'expected target dtype to be Long or Byte, but got Int'; now named with y.long() as the fix, before
    anything runs (through optimize_connectome: the model bit-identical). int64 and uint8 still pass."""
    from torch.utils.data import DataLoader, TensorDataset

    from adaptive.mask_only import optimize_connectome

    out = torch.zeros(4, 10)
    for dtype in (torch.int32, torch.int16, torch.int8):
        for loss in (F.cross_entropy, nn.NLLLoss()):
            with pytest.raises(ValueError, match=rf"class indices as int64 \(torch\.long\), but the targets are "
                                                 rf"{str(dtype)[6:]} \(4,\).*y\.long\(\)"):
                refuse_mismatched_targets(out, torch.tensor([0, 3, 9, 7], dtype=dtype), loss)
    for dtype in (torch.int64, torch.uint8):
        refuse_mismatched_targets(out, torch.tensor([0, 3, 9, 7], dtype=dtype), F.cross_entropy)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 3))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    dl = DataLoader(TensorDataset(torch.randn(16, 6), (torch.arange(16) % 3).int()), batch_size=8)
    with pytest.raises(ValueError, match=r"targets are int32 \(8,\).*y\.long\(\)"):
        optimize_connectome(model, dl, dl, target=0.5, progress=False)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())


def test_a_batchs_labels_checked_on_the_device_read_nothing_and_reach_the_loss_as_the_ignored_label():
    """guarded_batch_targets (mask-only's later training batches): no read on the host; labels outside 0..C-1 (the
    ignored one aside) given back as the ignored label (0 for uint8, which cannot hold -100), the others unchanged,
    with [outside, smallest, largest] scored label on the device, which refuse_labels_outside turns into the error
    refuse_mismatched_targets raises for the batch. Shapes and types are still refused at once, naming the batch."""
    out = torch.zeros(4, 10)
    cases = [(torch.tensor([0, 12, 9, -100]), F.cross_entropy, [0, -100, 9, -100], [1, 0, 12]),
             (torch.tensor([0, -3, 9, -1]), functools.partial(F.cross_entropy, ignore_index=-1), [0, -1, 9, -1], [1, -3, 9]),
             (torch.tensor([200, 3, 9, 1], dtype=torch.uint8), nn.NLLLoss(), [0, 3, 9, 1], [1, 1, 200]),
             (torch.tensor([4, 3, 9, -100]), F.cross_entropy, [4, 3, 9, -100], [0, 3, 9])]
    for y, loss, targets, found in cases:
        with count_syncs() as s:
            got, f = guarded_batch_targets(out, y, loss, "batch 2")
        assert s.count == 0 and got.dtype == y.dtype and got.tolist() == targets and f.tolist() == found
        loss(out, got)  # no error from torch's loss
        if found[0]:
            with pytest.raises(ValueError) as mine:
                refuse_labels_outside(found[1], found[2], tuple(out.shape), loss)
            with pytest.raises(ValueError) as theirs:
                refuse_mismatched_targets(out, y, loss)
            assert str(mine.value) == str(theirs.value)
        else:
            refuse_labels_outside(found[1], found[2], tuple(out.shape), loss)
    assert guarded_batch_targets(out, torch.zeros(4, 10), F.mse_loss, "batch 2")[1] is None
    with pytest.raises(ValueError, match=r"targets are \(4, 3\)") as e:
        guarded_batch_targets(out, torch.zeros(4, 3, dtype=torch.long), F.cross_entropy, "batch 2")
    assert e.value.__notes__ == ["adaptive: found in batch 2"]


@pytest.mark.parametrize("where, problem", [("later_shape", "takes one class index per example"),
                                            ("later_dtype", "takes class indices as int64")])
def test_later_labels_of_the_wrong_shape_or_type_on_one_process_stop_every_process_with_the_same_error(
        tmp_path, where, problem):
    """Two plain processes: only process 1's second training batch holds labels of the wrong shape ((8, 1)) or type
    (int32). That process refused them at once (a check on the host, no read) while process 0 went on to the window's
    update and failed in its collective there ("Connection closed by peer"); now the refusal waits for the window's
    update, where both processes agree it, as a label beyond the head: one ValueError on both, naming the process, the
    problem and the batch."""
    import os
    import sys

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from _ports import two_rank_records

    got = two_rank_records("two_process_labels.py", tmp_path, where)
    for rec in got:
        assert rec["error"] == "ValueError", got
        assert "process 1 of 2:" in rec["message"] and problem in rec["message"], got
        assert "process 0 of 2 found no such problem" in rec["message"], got
        assert "its own training batches" in rec["message"], got
        assert "adaptive: found in training batch 2 of the run (stage 0.5)" in rec["notes"], got


def test_later_labels_of_the_wrong_shape_on_one_process_are_refused_at_once_the_model_given_back():
    """On one process a later training batch's labels of the wrong shape are still refused at that batch (no window's
    update waited for: only several processes must agree it), naming the batch, the model's weights given back."""
    from torch.utils.data import DataLoader, TensorDataset

    from adaptive.mask_only import optimize_connectome

    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(32, 4, generator=g), torch.randint(0, 3, (32,), generator=g)
    batches = list(DataLoader(TensorDataset(x, y), batch_size=8))
    batches[1] = (batches[1][0], batches[1][1][:, None])
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    seen = []
    model.register_forward_hook(lambda *a: seen.append(1) if torch.is_grad_enabled() else None)  # (training batches)
    with pytest.raises(ValueError, match="takes one class index per example") as refused:
        optimize_connectome(model, batches, DataLoader(TensorDataset(x, y), batch_size=8), 0.5, window=4,
                            progress=False)
    assert "adaptive: found in training batch 2 of the run (stage 0.5)" in refused.value.__notes__, refused.value.__notes__
    assert len(seen) == 2  # the first two training batches' forward passes: none after the refused one
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_labels_the_loss_ignores_are_not_range_checked_even_above_the_classes():
    """A segmentation loss's void label (CrossEntropyLoss(ignore_index=255)) is no class index: a batch holding it
    is taken, as one holding -100 is (only negative ignored labels were tested)."""
    from torch import nn

    from adaptive.label_checks import refuse_mismatched_targets

    refuse_mismatched_targets(torch.randn(2, 3), torch.tensor([0, 255]), nn.CrossEntropyLoss(ignore_index=255))
    with pytest.raises(ValueError, match="labels go up to"):
        refuse_mismatched_targets(torch.randn(2, 3), torch.tensor([0, 254]), nn.CrossEntropyLoss(ignore_index=255))
