"""The mask-only modules' internals in value (the update window's sums and refusals, bit comparison, mask_learning's
gradient set-aside, the plan's fingerprint, settings' ranges, snapshot lookup, a loss's identity): each pins one
user-visible number or choice that a careless edit changed unnoticed."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn


def test_the_window_loss_is_the_units_weighted_mean_of_its_batches():
    """A window's training loss (history's train_loss = loss sum / units) weights each batch's mean loss by
    its units: batches of 4 and 2 examples with mean losses 2.0 and 1.0 average (8 + 2) / 6, not their
    means summed over the units."""
    from adaptive.mask_only_window import _Window

    w = _Window()
    w.add(torch.tensor(2.0), torch.tensor(4), None, torch.zeros(4))
    w.add(torch.tensor(1.0), torch.tensor(2), None, torch.zeros(2))
    loss, _, units, _, examples, procs = w.totals()
    assert (units, examples, procs) == (6, 6, 1)
    assert loss / units == pytest.approx(10 / 6)


def test_a_window_names_its_first_batch_with_a_label_beyond_the_head():
    """Two batches of a window hold labels beyond a 10-class head: the refusal names the first (batch 3,
    labels up to 12), not the last."""
    from adaptive.mask_only_window import _Window

    w = _Window()
    w.add_labels(torch.tensor([0, 0, 9]), 2, (4, 10))
    w.add_labels(torch.tensor([1, 0, 12]), 3, (4, 10))
    w.add_labels(torch.tensor([1, 0, 15]), 4, (4, 10))
    with pytest.raises(ValueError, match="labels go up to 12") as e:
        w.refuse_labels(F.cross_entropy, lambda b: f"training batch {b}")
    assert "adaptive: found in training batch 3" in e.value.__notes__


def test_same_bits_reads_a_negative_view_as_it_reads():
    """_same_bits (changed_from, changed_weights) compares a negative view (``z.conj().imag``) by the values it
    reads, as its docstring promises, instead of failing on its view."""
    from adaptive.mask_only_bits import _same_bits

    z = torch.tensor([1 + 2j, -3 - 0.5j], dtype=torch.complex64)
    neg = z.conj().imag
    assert neg.is_neg()
    assert _same_bits(neg, torch.tensor([-2.0, 0.5])).tolist() == [True, True]
    assert _same_bits(neg, torch.tensor([2.0, 0.5])).tolist() == [False, True]


def test_a_backward_inside_mask_learning_leaves_the_callers_gradient_as_it_was():
    """mask_learning sets the caller's .grad aside: a backward inside accumulates into a gradient of the loop's
    own, and the caller gets back its gradient tensor with its values untouched."""
    from adaptive import Connectome
    from adaptive.mask_only import mask_learning

    torch.manual_seed(0)
    model = nn.Linear(3, 2)
    conn = Connectome(model, mode="mask_only")
    g = torch.full_like(model.weight, 5.0)
    model.weight.grad = g
    with mask_learning(model, conn):
        model(torch.randn(4, 3)).sum().backward()
        inner = model.weight.grad
    assert model.weight.grad is g
    assert torch.equal(g, torch.full_like(model.weight, 5.0))
    assert inner is not g


def test_a_window_raises_the_refusal_of_its_earliest_batch():
    """A refusal kept on the host (batch 2: labels of the wrong shape) comes before a later batch's label beyond
    the head (batch 3): the window raises batch 2's, as the run met it first; after it, batch 3's."""
    from adaptive.mask_only_window import _Window

    def window(refused_at):
        w = _Window()
        w.add_refused(ValueError("kept refusal"), refused_at)
        w.add_labels(torch.tensor([1, 0, 12]), 3, (4, 10))
        return w

    with pytest.raises(ValueError, match="kept refusal"):
        window(2).refuse_labels(F.cross_entropy, lambda b: f"batch {b}")
    with pytest.raises(ValueError, match="labels go up to 12"):
        window(4).refuse_labels(F.cross_entropy, lambda b: f"batch {b}")


def test_window_sums_are_read_exactly_beyond_float32():
    """The window's sums are read as float64: a count of 2**24 + 1 positions (a segmentation window) and a
    float64 loss sum come back exact, not rounded to float32."""
    from adaptive.mask_only_window import _on_host

    loss = torch.tensor(1.0 + 2.0 ** -40, dtype=torch.float64)
    assert _on_host(loss, torch.tensor(2 ** 24 + 1), 3) == [1.0 + 2.0 ** -40, float(2 ** 24 + 1), 3.0]


def test_a_resume_with_other_line_search_tries_is_refused(tmp_path):
    """line_search_tries decides which verified updates a "best" threshold run keeps: part of the fingerprint,
    so a resume with another count is another run."""
    from adaptive.mask_only import optimize_connectome
    from adaptive.mask_only_checkpoint import CheckpointMismatchError
    from test_mask_only import tiny
    from test_mask_only_checkpoint import KW, interrupted, ordered_loaders

    path = tmp_path / "ck.pt"
    interrupted(tiny(), [0.2, 0.5], path, at_stage=1)
    with pytest.raises(CheckpointMismatchError, match="line_search_tries: checkpoint 2, this run 1"):
        optimize_connectome(tiny(), *ordered_loaders(), [0.2, 0.5], checkpoint=path, line_search_tries=1, **KW)


def test_a_fixed_target_run_resumes_under_another_ladder_and_patience(tmp_path):
    """The ladder and patience steer target "best" alone: a run of fixed targets resumes whatever they are."""
    from adaptive.mask_only import optimize_connectome
    from test_mask_only import tiny
    from test_mask_only_checkpoint import KW, interrupted, ordered_loaders

    path = tmp_path / "ck.pt"
    interrupted(tiny(), [0.2, 0.5], path, at_stage=1)
    resumed = optimize_connectome(tiny(), *ordered_loaders(), [0.2, 0.5], checkpoint=path, ladder=(0.5,), patience=5,
                                  **KW)
    assert [h["kind"] for h in resumed.history].count("resume") == 1
    assert sorted(resumed.snapshots) == ["0.2", "0.5"]


def test_a_stage_reads_at_least_one_whole_window():
    """passes so small that they round to no batch still give a stage one whole update window, never a part of
    one (a stage of 1 batch with window 4 would end before its first update)."""
    from adaptive.mask_only_settings import stage_batches

    assert stage_batches(1e-12, 8, 4) == 4
    assert stage_batches(1e-12, 8, 1) == 1
    assert stage_batches(0.5, 8, 3) == 6 and stage_batches(1.0, 8, 4) == 8


def test_use_finds_a_snapshot_labelled_in_full_by_its_number():
    """Targets that print alike at 6 figures (0.1000108, 0.10001085) are labelled in full (their repr); use()
    finds each by the number as given."""
    from adaptive import Connectome
    from adaptive.mask_only_result import MaskOnlyResult, Snapshot
    from adaptive.mask_only_targets import _labels

    assert _labels([0.1000108, 0.10001085]) == ["0.1000108", "0.10001085"]
    conn = Connectome(nn.Linear(4, 2), mode="mask_only")
    masks = {n: torch.ones_like(m) for n, m in conn.masks.items()}
    r = MaskOnlyResult(conn, None, snapshots={lab: Snapshot(lab, i, masks, 0.5, None, i)
                                              for i, lab in enumerate(["0.1000108", "0.10001085"])})
    assert r.use(0.1000108).label == "0.1000108" and r.use(0.10001085).label == "0.10001085"


def _settings(**kw):
    """_own_settings with optimize_connectome's defaults, ``kw`` changed (no loader read)."""
    import inspect

    from adaptive.mask_only import optimize_connectome
    from adaptive.mask_only_settings import _own_settings

    defaults = {k: p.default for k, p in inspect.signature(optimize_connectome).parameters.items()
                if p.kind is p.KEYWORD_ONLY and not k.startswith("_")}
    return _own_settings(nn.Linear(4, 2), 0.3, **{**defaults, **kw})


def test_the_ends_of_the_settings_ranges_are_accepted_and_a_repeated_rung_refused():
    """approach and edit_fraction take [0, 1] ends included (approach=1.0: the whole stage approaches its
    target); line_search_tries=0 (all or nothing) is accepted; a ladder that repeats a rung is refused."""
    assert _settings(approach=1.0).approach == 1.0 and _settings(approach=0).approach == 0.0
    assert _settings(edit_fraction=0.0).edit_fraction == 0.0
    assert _settings(line_search_tries=0).line_search_tries == 0
    with pytest.raises(ValueError, match="ladder must be increasing"):
        _settings(ladder=(0.2, 0.2, 0.4))


def test_weights_checksum_sums_magnitudes_as_older_checkpoints_recorded():
    """Checkpoints written before the digests recorded per-layer sums of |w|: the same sums are compared when
    one is resumed, so weights of mixed signs still match their record."""
    from adaptive.mask_only_checkpoint import _differences, weights_checksum

    w = {"a": torch.tensor([-1.0, 2.0]), "b": torch.tensor([[-0.5]])}
    assert weights_checksum(w) == [3.0, 0.5]
    assert _differences({"weights": [3.0, 0.5]}, {"weights": weights_checksum(w)}) == []


def _scaled(x, y, s=1.0):
    return x * s


def _factory(k):
    def local_loss(out, y):
        return out.sum() * k
    return local_loss


def test_callable_identity_tells_apart_what_a_loss_computes():
    """A partial's positional arguments, a local function's closed-over values and a lambda's constants are
    part of a loss's identity (a resume with another one is another run)."""
    import functools

    from adaptive.mask_only_checkpoint import callable_identity as ident

    assert ident(functools.partial(_scaled, 0.1)) != ident(functools.partial(_scaled, 0.2))
    assert ident(functools.partial(_scaled, 0.1)) == ident(functools.partial(_scaled, 0.1))
    assert ident(_factory(2)) != ident(_factory(3)) and ident(_factory(2)) == ident(_factory(2))
    two, three = [lambda out, y: out.sum() * 2, lambda out, y: out.sum() * 3]
    assert ident(two) != ident(three)
