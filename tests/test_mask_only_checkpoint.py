"""Stage checkpoints of optimize_connectome: an interrupted run resumes after its last stage."""
import copy
import re

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from adaptive.mask_only import changed_weights, optimize_connectome
from adaptive.mask_only_checkpoint import FORMAT, CheckpointMismatchError, fingerprint, load_stage, save_stage, \
    weights_checksum

from test_mask_only import _refused_before_a_batch_is_read, tiny

torch.set_num_threads(1)


def ordered_loaders(n=96, bs=16):
    """No shuffling: every stage of one pass starts at the same batch, interrupted or not."""
    g = torch.Generator().manual_seed(0)
    y = torch.arange(n) % 4
    x = torch.randn(n, 3, 6, 6, generator=g) + y.view(-1, 1, 1, 1).float() * 0.3
    return (DataLoader(TensorDataset(x, y), batch_size=bs),
            DataLoader(TensorDataset(x[:32], y[:32]), batch_size=16))


KW = dict(passes=1.0, window=2, edit_fraction=0.3, progress=False, estimator="presence")


class Stop(Exception):
    pass


def interrupted(model, target, path, at_stage, **kw):
    """Run until the first update of stage ``at_stage``, then fail as a crash would."""
    def cb(rec):
        if rec["kind"] == "update" and rec["stage"] == at_stage:
            raise Stop

    tr, ho = ordered_loaders()
    with pytest.raises(Stop):
        optimize_connectome(model, tr, ho, target, checkpoint=path, callback=cb, **{**KW, **kw})


def test_resumed_run_equals_the_uninterrupted_one(tmp_path):
    tr, ho = ordered_loaders()
    straight = optimize_connectome(tiny(), tr, ho, [0.2, 0.5, 0.7], **KW)

    path = tmp_path / "ck.pt"
    model = tiny()
    original = copy.deepcopy(model.state_dict())
    interrupted(model, [0.2, 0.5, 0.7], path, at_stage=2)
    assert all(torch.equal(v, original[k]) for k, v in model.state_dict().items())  # given back whole
    resumed = optimize_connectome(model, *ordered_loaders(), [0.2, 0.5, 0.7], checkpoint=path, **KW)

    kinds = [h["kind"] for h in resumed.history]
    assert kinds.count("resume") == 1
    i = kinds.index("resume")
    assert resumed.history[i]["stage"] == 2 and {h["stage"] for h in resumed.history[i + 1:]} == {2}
    for label in ("0.2", "0.5", "0.7"):
        a, b = straight.snapshots[label], resumed.snapshots[label]
        assert a.removed == b.removed
        assert all(torch.equal(a.masks[n], b.masks[n].to(a.masks[n].device)) for n in a.masks), label
        assert a.holdout_acc == b.holdout_acc
    assert changed_weights(resumed.conn) == 0


def test_climb_resumes_and_does_not_rerun_finished_rungs(tmp_path):
    kw = dict(ladder=(0.2, 0.4, 0.6, 0.8), patience=4)
    straight = optimize_connectome(tiny(), *ordered_loaders(), "best", **KW, **kw)
    path = tmp_path / "best.pt"
    interrupted(tiny(), "best", path, at_stage=1, **kw)
    resumed = optimize_connectome(tiny(), *ordered_loaders(), "best", checkpoint=path, **KW, **kw)
    assert [h["kind"] for h in resumed.history].count("eval") == [h["kind"] for h in straight.history].count("eval")
    a, b = straight.snapshots["best"], resumed.snapshots["best"]
    assert a.removed == b.removed and a.holdout_acc == b.holdout_acc
    # a checkpoint of a finished climb: nothing runs again
    again = optimize_connectome(tiny(), *ordered_loaders(), "best", checkpoint=path, **KW, **kw)
    assert [h["kind"] for h in again.history][-1] == "resume"
    assert again.snapshots["best"].removed == b.removed


@pytest.mark.parametrize("change, match", [
    (dict(target=[0.2, 0.6]), "targets"),
    (dict(window=4), "window"),
    (dict(seed_model=1), "weights"),
    # each field of the data that differs named, with its two values
    (dict(data=dict(bs=12)), r"train_data: batches \(checkpoint 6, this run 8\) and batch size \(checkpoint 16, "
                             r"this run 12\)[;.]"),
    (dict(data=dict(n=80)), r"train_data: examples \(checkpoint 96, this run 80\) and batches \(checkpoint 6, this run 5\)"
                            r"[;.]"),
    (dict(data=dict(bs=17)), r"train_data: batch size \(checkpoint 16, this run 17\)[;.]"),  # same batch count
    # settings that change which synapses an update edits: a resume with others would mix two runs
    (dict(seed=5), "seed: checkpoint 0, this run 5"),
    (dict(edit_fraction=0.9), "edit_fraction: checkpoint 0.3, this run 0.9"),
    (dict(margin=0.5), "margin: checkpoint 0.0, this run 0.5"),
    (dict(approach=0.5), "approach: checkpoint 0.0, this run 0.5"),
])
def test_a_checkpoint_of_another_run_is_refused_before_anything_changes(tmp_path, change, match):
    path = tmp_path / "ck.pt"
    interrupted(tiny(), [0.2, 0.5], path, at_stage=1)
    before = path.read_bytes()
    model = tiny(change.get("seed_model", 0))
    original = copy.deepcopy(model.state_dict())
    kw = {**KW, **{k: v for k, v in change.items() if k not in ("target", "seed_model", "data")}}
    with pytest.raises(ValueError, match=match):
        optimize_connectome(model, *ordered_loaders(**change.get("data", {})), change.get("target", [0.2, 0.5]),
                            checkpoint=path, **kw)
    assert all(torch.equal(v, original[k]) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())
    assert path.read_bytes() == before


@pytest.mark.parametrize("first, then, match", [
    (dict(estimator="evidence"), dict(estimator=__import__("adaptive").utility.get_estimator("evidence", step=0.5)),
     r"estimator: checkpoint 'Evidence\(step=0.003.*this run 'Evidence\(step=0.5"),
    (dict(), dict(precision="bf16"), r"precision: checkpoint 'float32', this run 'autocast bfloat16'"),
])
def test_a_resume_with_other_estimator_settings_or_precision_is_refused(tmp_path, first, then, match):
    path = tmp_path / "ck.pt"
    interrupted(tiny(), [0.2, 0.5], path, at_stage=1, **first)
    kw = {**KW, **{k: v for k, v in then.items() if k != "precision"}}
    with pytest.raises(ValueError, match=match), torch.autocast("cpu", dtype=torch.bfloat16,
                                                                enabled="precision" in then):
        optimize_connectome(tiny(), *ordered_loaders(), [0.2, 0.5], checkpoint=path, **kw)


@pytest.mark.parametrize("first, then", [
    (dict(approach=__import__("numpy").float32(0.5)), dict(approach=0.5)),
    (dict(edit_fraction=torch.tensor(0.25)), dict(edit_fraction=0.25)),
    (dict(margin=torch.tensor(0.0)), dict(margin=0.0)),
])
def test_a_numpy_or_tensor_setting_resumes_with_the_equal_plain_number(tmp_path, first, then):
    """The checkpoint recorded a numpy or tensor setting by its repr ('np.float32(0.5)'), so a
    resume with the equal plain number was refused as another run."""
    path = tmp_path / "ck.pt"
    interrupted(tiny(), [0.2, 0.5], path, at_stage=1, **first)
    resumed = optimize_connectome(tiny(), *ordered_loaders(), [0.2, 0.5], checkpoint=path, **{**KW, **then})
    assert [h["kind"] for h in resumed.history].count("resume") == 1


def test_checkpoints_recorded_before_settings_were_fingerprinted_still_resume():
    from adaptive.mask_only_checkpoint import _differences

    old = {"estimator": "Evidence()", "window": 2}
    assert _differences(old, {"estimator": "Evidence(step=0.003, clip=3.0, decay=1.0)", "window": 2,
                              "precision": "float32"}) == []
    assert _differences(old, {"estimator": "Presence(step=0.01)", "window": 2}) != []
    by_name = {"estimator": "presence"}  # a name: its defaults
    assert _differences(by_name, {"estimator": "Presence(step=0.01, beta1=0.9, beta2=0.999)"}) == []
    assert _differences(by_name, {"estimator": "Presence(step=0.5, beta1=0.9, beta2=0.999)"}) != []


def test_an_unreadable_checkpoint_is_named(tmp_path):
    path = tmp_path / "ck.pt"
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a readable mask-only checkpoint"):
        optimize_connectome(tiny(), *ordered_loaders(), 0.3, checkpoint=path, **KW)


def test_a_folder_as_checkpoint_path_fails_before_any_work(tmp_path):
    model = tiny()
    with pytest.raises(ValueError, match="is a folder: give a file path"):
        optimize_connectome(model, *ordered_loaders(), 0.3, checkpoint=tmp_path, **KW)
    assert all(p.grad is None and p.requires_grad for p in model.parameters())


@pytest.mark.parametrize("where", ["a file/ck.pt", "a file/deeper/ck.pt"])
def test_a_checkpoint_path_that_cannot_be_written_is_refused_before_any_work(tmp_path, where):
    """A file where the checkpoint's folder should be: the first stage's record failed, after the
    whole stage had run."""
    (tmp_path / "a file").write_text("not a folder")
    _refused_before_a_batch_is_read([0.2, 0.5], r"checkpoint .*ck\.pt cannot be written: .*a file is a file, not a "
                                                r"folder; give a checkpoint= path", checkpoint=tmp_path / where)
    assert (tmp_path / "a file").read_text() == "not a folder"


def _stage_state(**entries):
    """The entries of a stage checkpoint (what optimize_connectome records), ``entries`` replacing some."""
    return {"fingerprint": {}, "stage": 1, "step": 1, "since_best": 0, "masks": {}, "controller": {}, "snapshots": {},
            "history": [], "cpu_seconds": 0.0, "wall_seconds": 0.0, **entries}


def test_a_resume_with_other_frozen_weights_is_refused(tmp_path):
    """Weights 5% larger are other weights: only the last bits of their sums may differ."""
    w = torch.randn(100, 100, generator=torch.Generator().manual_seed(0))
    path = tmp_path / "ck.pt"
    save_stage(path, _stage_state(fingerprint=fingerprint(weights=weights_checksum({"w": w}))))
    assert load_stage(path, fingerprint(weights=weights_checksum({"w": w.clone()})))["stage"] == 1
    with pytest.raises(CheckpointMismatchError, match=r"written by another run; it differs in weights: the checkpoint "
                                                      r"was made from other weights\. Use the same settings"):
        load_stage(path, fingerprint(weights=weights_checksum({"w": w * 1.05})))


@pytest.mark.parametrize("change", ["negated", "permuted", "one bit"])
def test_a_resume_with_weights_of_the_same_sums_is_refused_naming_the_layer(tmp_path, change):
    """Negated or permuted weights have the per-layer |w| sums of the original (the identity checked
    before): the digest tells them apart, and the refusal names the layer and what to do."""
    path = tmp_path / "ck.pt"
    interrupted(tiny(), [0.2, 0.5], path, at_stage=1)
    before = path.read_bytes()
    model = tiny()
    name, p = next((n, p) for n, p in model.named_parameters() if p.dim() > 1)
    with torch.no_grad():
        if change == "negated":
            p.neg_()
        elif change == "permuted":
            p.copy_(p.flatten().flip(0).view_as(p))
        else:
            p.view(-1)[0] = torch.nextafter(p.view(-1)[0], torch.tensor(float("inf")))
    original = copy.deepcopy(model.state_dict())
    with pytest.raises(CheckpointMismatchError, match=rf"the checkpoint was made from other weights \(layer "
                                                      rf"'{re.escape(name)}' differs: load the weights that run "
                                                      rf"started from\)\. Use the same settings"):
        optimize_connectome(model, *ordered_loaders(), [0.2, 0.5], checkpoint=path, **KW)
    assert all(torch.equal(v, original[k]) for k, v in model.state_dict().items())
    assert path.read_bytes() == before


def test_weights_digest_is_exact_for_bf16_and_ignores_the_memory_layout():
    from adaptive.mask_only_checkpoint import weights_digest

    w = torch.randn(8, 4, 3, 3, generator=torch.Generator().manual_seed(0))
    digest = weights_digest({"w": w})
    assert digest == [["w", weights_digest({"w": w.clone()})[0][1]]]
    assert weights_digest({"w": w.to(memory_format=torch.channels_last)}) == digest  # same values, same identity
    assert weights_digest({"w": -w}) != digest and weights_digest({"w": w.view(4, 8, 3, 3)}) != digest
    b = w.to(torch.bfloat16)
    assert weights_digest({"w": b}) == weights_digest({"w": b.clone()}) != digest  # the dtype is part of it
    assert weights_digest({"w": -b}) != weights_digest({"w": b})


def test_a_checkpoint_recording_the_older_weight_sums_still_resumes(tmp_path):
    """Checkpoints written before the digests recorded per-layer |w| sums: still compared with their
    tolerance, and a mismatch names the layer."""
    path = tmp_path / "ck.pt"
    interrupted(tiny(), [0.2, 0.5], path, at_stage=1)
    state = torch.load(path, weights_only=True)
    state.pop("sha256")
    model = tiny()
    conn = __import__("adaptive").Connectome(tiny(), mode="mask_only")
    assert [n for n, _ in state["fingerprint"]["weights"]] == list(conn.original)
    state["fingerprint"]["weights"] = weights_checksum(conn.original)
    save_stage(path, {k: v for k, v in state.items() if k != "format"})
    resumed = optimize_connectome(model, *ordered_loaders(), [0.2, 0.5], checkpoint=path, **KW)
    assert [h["kind"] for h in resumed.history].count("resume") == 1
    other = tiny()
    name, p = list(other.named_parameters())[-2]
    with torch.no_grad():
        p.mul_(1.05)
    with pytest.raises(CheckpointMismatchError, match=rf"other weights \(layer '{re.escape(name)}' differs"):
        optimize_connectome(other, *ordered_loaders(), [0.2, 0.5], checkpoint=path, **KW)


def test_a_resume_with_an_estimator_setting_whose_repr_starts_alike_is_refused(tmp_path):
    """beta2=0.9995 is another setting than the checkpoint's beta2=0.999, though its repr starts alike."""
    from adaptive.utility import get_estimator

    saved = get_estimator("presence")
    assert repr(saved) == "Presence(step=0.01, beta1=0.9, beta2=0.999)"
    path = tmp_path / "ck.pt"
    save_stage(path, _stage_state(fingerprint=fingerprint(estimator=saved)))
    assert load_stage(path, fingerprint(estimator=get_estimator("presence")))["stage"] == 1
    other = type(saved)(step=0.01, beta1=0.9, beta2=0.9995)
    with pytest.raises(CheckpointMismatchError, match=r"it differs in estimator: checkpoint 'Presence\(step=0.01, "
                                                      r"beta1=0.9, beta2=0.999\)', this run 'Presence\(step=0.01, "
                                                      r"beta1=0.9, beta2=0.9995\)'"):
        load_stage(path, fingerprint(estimator=other))


def test_a_stage_checkpoint_of_another_format_is_refused(tmp_path):
    """A newer version's format 2 (its sha256 intact) is not read as format 1."""
    path = tmp_path / "ck.pt"
    save_stage(path, _stage_state(format=2))
    with pytest.raises(CheckpointMismatchError, match=r"ck.pt is not a mask-only stage checkpoint \(format 1\)\. "
                                                      r"Delete it"):
        load_stage(path, {})


@pytest.mark.parametrize("entries, problem", [
    (dict(optimizer={}), "unknown entry 'optimizer'"),
    (dict(stage=True), "'stage' is a bool"),
    (dict(data={"train": {"epoch": 0}}), "'data' does not hold both loaders' positions"),
    (dict(masks={"fc.weight": [1, 0, 1]}), "'masks' holds something other than tensors"),
], ids=["unknown_entry", "bool_stage", "one_loader_position", "masks_not_tensors"])
def test_a_stage_checkpoint_without_checksum_and_damaged_entries_is_refused(tmp_path, entries, problem):
    """A checkpoint written before checksums is checked entry by entry before anything uses it."""
    path = tmp_path / "ck.pt"
    torch.save({"format": FORMAT, **_stage_state(**entries)}, path)  # no sha256: an older version's file
    with pytest.raises(CheckpointMismatchError, match=rf"ck.pt is damaged \({re.escape(problem)}\)\. Delete it"):
        load_stage(path, {})
    torch.save({"format": FORMAT, **_stage_state()}, path)
    assert load_stage(path, {})["stage"] == 1  # the same without the damage loads


class NoisyImages(torch.utils.data.Dataset):
    """A random transform drawing from the global torch generator, as torchvision's do."""

    def __init__(self, x, y):
        self.x, self.y = x, y

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return self.x[i] + 0.3 * torch.randn(self.x[i].shape), self.y[i]


def shuffled_loaders(own_generator: bool):
    """Shuffled train batches with random noise: what they are depends on the random states."""
    tr, ho = ordered_loaders()
    x, y = tr.dataset.tensors
    g = torch.Generator().manual_seed(5) if own_generator else None
    return DataLoader(NoisyImages(x, y), batch_size=16, shuffle=True, generator=g), ho


def same(a, b):
    """The same masks, and the same batches read: each update's train and verification losses."""
    def losses(r):
        return [(h["train_loss"], h["verify_loss"]) for h in r.history if h["kind"] == "update"]
    return losses(a) == losses(b) and all(torch.equal(a.snapshots[t].masks[n], b.snapshots[t].masks[n])
                                          for t in a.snapshots for n in a.snapshots[t].masks)


@pytest.mark.parametrize("own_generator", [False, True])
def test_resume_reads_the_batches_the_uninterrupted_run_would_have_read(tmp_path, own_generator):
    # half a pass per stage: the resumed stage starts in the middle of a pass over the train loader
    kw = {**KW, "passes": 0.5, "verify_batches": 1}
    targets = [0.2, 0.4, 0.6]
    torch.manual_seed(123)
    straight = optimize_connectome(tiny(), *shuffled_loaders(own_generator), targets, **kw)

    torch.manual_seed(123)
    path = tmp_path / "ck.pt"
    tr, ho = shuffled_loaders(own_generator)

    def crash(rec):
        if rec["kind"] == "update" and rec["stage"] == 2:
            raise Stop
    with pytest.raises(Stop):
        optimize_connectome(tiny(), tr, ho, targets, checkpoint=path, callback=crash, **kw)
    saved = torch.load(path, weights_only=True)
    assert saved["stage"] == 1 and saved["data"]["train"]["offset"] == 2  # 8 batches read of passes of 6

    def resume(ck):
        torch.manual_seed(999)  # a new process: other random states, a fresh loader
        return optimize_connectome(tiny(), *shuffled_loaders(own_generator), targets, checkpoint=ck, **kw)

    assert same(straight, resume(path))
    # the same checkpoint without the loaders' positions resumes on other batches
    del saved["data"]
    del saved["sha256"]  # as written before checkpoints recorded either
    blind = tmp_path / "blind.pt"
    torch.save(saved, blind)
    assert not same(straight, resume(blind))


def test_a_loader_without_a_generator_resumes_as_the_run_went_whatever_the_caller_seeded(tmp_path):
    """A run draws from global generators seeded from its ``seed``, not from the caller's: the
    uninterrupted run, the interrupted one and the resume each start after other draws of the
    caller, and the resume still ends as the uninterrupted run did (the checkpoint's recorded
    states take over from the seeded ones); the caller's generators are put back after it too."""
    kw = {**KW, "passes": 0.5, "verify_batches": 1}
    targets = [0.2, 0.4, 0.6]
    torch.manual_seed(1)
    straight = optimize_connectome(tiny(), *shuffled_loaders(False), targets, **kw)
    path = tmp_path / "ck.pt"

    def crash(rec):
        if rec["kind"] == "update" and rec["stage"] == 2:
            raise Stop
    torch.manual_seed(2)
    with pytest.raises(Stop):
        optimize_connectome(tiny(), *shuffled_loaders(False), targets, checkpoint=path, callback=crash, **kw)
    assert torch.load(path, weights_only=True)["stage"] == 1
    model, loaders = tiny(), shuffled_loaders(False)
    torch.manual_seed(3)
    before = torch.get_rng_state()
    resumed = optimize_connectome(model, *loaders, targets, checkpoint=path, **kw)
    assert [h["kind"] for h in resumed.history].count("resume") == 1  # it did resume
    assert same(straight, resumed)
    assert torch.equal(torch.get_rng_state(), before)


def test_a_resume_with_another_evaluation_cadence_is_refused(tmp_path):
    """eval_every was left out of the fingerprint: a resume evaluated (and chose "best"'s snapshot)
    at other steps than the run it continued, silently. A checkpoint recorded before it was
    fingerprinted still resumes."""
    from adaptive.mask_only_checkpoint import _differences

    path = tmp_path / "ck.pt"
    interrupted(tiny(), [0.2, 0.5], path, at_stage=1, eval_every=1)
    with pytest.raises(CheckpointMismatchError, match="eval_every: checkpoint 1, this run 3"):
        optimize_connectome(tiny(), *ordered_loaders(), [0.2, 0.5], checkpoint=path, **{**KW, "eval_every": 3})
    resumed = optimize_connectome(tiny(), *ordered_loaders(), [0.2, 0.5], checkpoint=path, **{**KW, "eval_every": 1})
    assert [h["kind"] for h in resumed.history].count("resume") == 1
    assert _differences({"window": 2}, {"window": 2, "eval_every": 5}) == []


def _smooth_loss(out, y):
    return torch.nn.functional.cross_entropy(out, y, label_smoothing=0.1)


def _top1_never(out, y):
    return 0, int(y.numel())


@pytest.mark.parametrize("first, then, match", [
    (dict(), dict(loss_fn=_smooth_loss), r"loss_fn: checkpoint 'torch.nn.functional.cross_entropy', this run '.*_smooth_loss'"),
    (dict(loss_fn=torch.nn.CrossEntropyLoss()), dict(loss_fn=torch.nn.CrossEntropyLoss(label_smoothing=0.1)),
     r"loss_fn: checkpoint .*'label_smoothing': 0.0.*this run .*'label_smoothing': 0.1"),
    (dict(loss_fn=__import__("functools").partial(torch.nn.functional.cross_entropy, label_smoothing=0.1)),
     dict(loss_fn=__import__("functools").partial(torch.nn.functional.cross_entropy, label_smoothing=0.2)),
     r"loss_fn: .*0\.1.*this run .*0\.2"),
    (dict(), dict(accuracy_fn=_top1_never), r"accuracy_fn: checkpoint 'adaptive.metrics.default_accuracy'"),
    (dict(), dict(accuracy_fn=None), r"accuracy_fn: checkpoint 'adaptive.metrics.default_accuracy', this run None"),
])
def test_a_resume_with_another_loss_or_accuracy_function_is_refused(tmp_path, first, then, match):
    """The loss ranks the edits and the held-out loss and accuracy choose the snapshots: a resume
    that scores with other functions is another run."""
    path = tmp_path / "ck.pt"
    interrupted(tiny(), [0.2, 0.5], path, at_stage=1, **first)
    with pytest.raises(CheckpointMismatchError, match=match):
        optimize_connectome(tiny(), *ordered_loaders(), [0.2, 0.5], checkpoint=path, **{**KW, **then})


@pytest.mark.parametrize("make", [
    lambda: torch.nn.CrossEntropyLoss(label_smoothing=0.1),
    lambda: __import__("functools").partial(torch.nn.functional.cross_entropy, label_smoothing=0.1),
    lambda: _smooth_loss,
])
def test_the_same_loss_function_built_again_resumes(tmp_path, make):
    """A module or partial made anew for the resume has another address: it is the same function."""
    path = tmp_path / "ck.pt"
    interrupted(tiny(), [0.2, 0.5], path, at_stage=1, loss_fn=make())
    resumed = optimize_connectome(tiny(), *ordered_loaders(), [0.2, 0.5], checkpoint=path, **{**KW, "loss_fn": make()})
    assert [h["kind"] for h in resumed.history].count("resume") == 1


def test_checkpoints_recorded_before_the_loss_function_was_fingerprinted_still_resume():
    from adaptive.mask_only_checkpoint import _differences

    assert _differences({"window": 2}, {"window": 2, "loss_fn": "torch.nn.functional.cross_entropy",
                                        "accuracy_fn": "adaptive.metrics.default_accuracy"}) == []
    assert _differences({"window": 2, "accuracy_fn": None},
                        {"window": 2, "accuracy_fn": "adaptive.metrics.default_accuracy"}) != []


def test_a_tensor_argument_of_a_loss_is_named_by_its_values_not_its_device():
    """Each process of a multi-GPU run holds its class weights on its own device: their repr named
    it (device='cuda:1'), so every process but the first would refuse the resume."""
    import functools

    from adaptive.mask_only_checkpoint import callable_identity

    on_meta = callable_identity(functools.partial(torch.nn.functional.cross_entropy, weight=torch.ones(3, device="meta")))
    on_cpu = callable_identity(functools.partial(torch.nn.functional.cross_entropy, weight=torch.ones(3)))
    assert "device" not in repr(on_meta) and "device" not in repr(on_cpu) and on_cpu != on_meta
    assert callable_identity(functools.partial(torch.nn.functional.cross_entropy, weight=torch.ones(3))) == on_cpu


def test_a_finished_checkpoint_in_a_folder_that_takes_no_new_file_still_resumes(tmp_path, monkeypatch):
    """A checkpoint whose every stage is recorded is only read when resumed (nothing runs again), so
    a read-only copy of it (an archive, a shared folder) resumed to its snapshots; the writability
    check refused it. One with a stage left to record is still refused."""
    import tempfile

    path = tmp_path / "ck.pt"
    done = optimize_connectome(tiny(), *ordered_loaders(), [0.2, 0.5], checkpoint=path, **KW)

    def read_only(*a, **kw):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(tempfile, "TemporaryFile", read_only)  # (as root, chmod cannot make a folder read-only)
    before = path.read_bytes()
    again = optimize_connectome(tiny(), *ordered_loaders(), [0.2, 0.5], checkpoint=path, **KW)
    assert [h["kind"] for h in again.history][-1] == "resume" and path.read_bytes() == before
    assert {k: s.removed for k, s in again.snapshots.items()} == {k: s.removed for k, s in done.snapshots.items()}
    partial = tmp_path / "partial.pt"
    monkeypatch.undo()
    interrupted(tiny(), [0.2, 0.5], partial, at_stage=1)
    monkeypatch.setattr(tempfile, "TemporaryFile", read_only)
    with pytest.raises(ValueError, match=r"partial\.pt cannot be written: no file can be created in"):
        optimize_connectome(tiny(), *ordered_loaders(), [0.2, 0.5], checkpoint=partial, **KW)


def test_load_stage_takes_what_check_readable_read_while_the_file_is_the_same(tmp_path, monkeypatch):
    """A recipe checks its checkpoint before the data loads and loads it once the run starts: it was
    read twice. The check's state, handed to the load, is taken for the file read (renamed is the
    same file) and once; a file replaced since (a new stage saved), or another path, is read afresh."""
    from adaptive import mask_only_checkpoint as ck

    path, moved = tmp_path / "ck.pt", tmp_path / "moved.pt"
    real_load, loads = torch.load, []
    monkeypatch.setattr(torch, "load", lambda f, *a, **kw: loads.append(f) or real_load(f, *a, **kw))
    assert ck.check_readable(tmp_path / "none.pt") is None and not loads  # no file: nothing to hand over
    save_stage(path, _stage_state(stage=1))
    checked = ck.check_readable(path)
    path.rename(moved)  # (as mask_only_checkpoint.begin puts a set-aside checkpoint back)
    assert load_stage(moved, {}, checked=checked)["stage"] == 1 and len(loads) == 1
    assert load_stage(moved, {}, checked=checked)["stage"] == 1 and len(loads) == 2  # taken once
    checked = ck.check_readable(moved)
    save_stage(moved, _stage_state(stage=2))  # replaced after the check: its new content counts
    assert load_stage(moved, {}, checked=checked)["stage"] == 2 and len(loads) == 4
    assert checked.state is None  # let go even where it was not taken
    save_stage(path, _stage_state(stage=0))
    checked = ck.check_readable(moved)
    assert load_stage(path, {}, checked=checked)["stage"] == 0 and len(loads) == 6  # another file


def test_what_check_readable_read_reaches_no_load_it_is_not_handed_to(tmp_path):
    """The check kept its state in a module-wide store for whichever load came next: a check whose
    run then stopped (its data refused, say) held the state for the life of the process, and a
    later load of that path by another caller took it even where the file had been rewritten in
    place, same size, within the clock's resolution (stage 1 for a file holding stage 2)."""
    import os

    from adaptive import mask_only_checkpoint as ck

    path, other = tmp_path / "ck1.pt", tmp_path / "ck2.pt"  # names of one length: files of one size
    save_stage(path, _stage_state(stage=1, masks={"w": torch.ones(4, dtype=torch.bool)}))
    save_stage(other, _stage_state(stage=2, masks={"w": torch.ones(4, dtype=torch.bool)}))
    ck.check_readable(path)  # a run that stops before its load (what it read is handed to no load)
    before = os.stat(path)
    assert other.stat().st_size == before.st_size
    path.write_bytes(other.read_bytes())  # rewritten in place, its identity (inode, size, mtime) kept
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert load_stage(path, {})["stage"] == 2  # another caller's load reads the file


def test_a_loss_of_a_plugin_file_resumes_when_the_file_is_loaded_again(tmp_path):
    """A plugin file's module is named after the file's stem and content (adaptive.plugins), so the
    loss it defines has one identity in every process, after the file is loaded afresh, and from a
    copy of the file elsewhere (a moved run): the resume is taken. An edited file is another one."""
    import shutil
    import sys

    import adaptive.plugins as plugins
    from adaptive.mask_only_checkpoint import callable_identity

    source = "import torch.nn.functional as F\n\n\ndef loss(out, y, reduction='mean'):\n" \
             "    return F.cross_entropy(out, y, reduction=reduction)\n"
    (tmp_path / "a").mkdir()
    first = tmp_path / "a" / "my_loss.py"
    first.write_text(source)

    def fresh_load(path):  # as another process would: the file executed again, its module new
        mod = plugins.load_plugin(str(path))
        plugins._LOADED.pop(path.resolve(), None)
        sys.modules.pop(mod.__name__, None)
        return mod.loss

    path = tmp_path / "ck.pt"
    loss = fresh_load(first)
    interrupted(tiny(), [0.2, 0.5], path, at_stage=1, loss_fn=loss)
    (tmp_path / "b").mkdir()
    moved = shutil.copy(first, tmp_path / "b" / "my_loss.py")
    for again in (fresh_load(first), fresh_load(moved)):
        assert again is not loss and callable_identity(again) == callable_identity(loss)
        resumed = optimize_connectome(tiny(), *ordered_loaders(), [0.2, 0.5], checkpoint=path, loss_fn=again, **KW)
        assert "resume" in [h["kind"] for h in resumed.history]  # (the second: the finished run's file, only read)
    first.write_text(source.replace("reduction='mean'", "reduction=\"mean\""))
    with pytest.raises(CheckpointMismatchError, match="loss_fn: checkpoint 'adaptive_plugin_my_loss_"):
        optimize_connectome(tiny(), *ordered_loaders(), [0.2, 0.5], checkpoint=path, loss_fn=fresh_load(first), **KW)


def test_a_resume_with_another_lambda_is_refused():
    """Every lambda of a module was named ``module.<lambda>``, and every function made inside another
    by its qualname alone: a resume given another one (another label smoothing, another loss) passed
    silently. Their code, defaults and closed-over values now tell them apart; the same lambda, or one
    made again with the same values, keeps its identity, and a checkpoint that recorded the bare name
    (before) still resumes."""
    import functools

    import torch.nn.functional as F
    from adaptive.mask_only_checkpoint import _differences, callable_identity

    def smoothed(s):
        return lambda out, y: F.cross_entropy(out, y, label_smoothing=s)

    plain = lambda out, y: F.cross_entropy(out, y)  # noqa: E731
    other = lambda out, y: F.cross_entropy(out, y, label_smoothing=0.1)  # noqa: E731
    with_default = lambda out, y, s=0.1: F.cross_entropy(out, y, label_smoothing=s)  # noqa: E731
    again = lambda out, y, s=0.2: F.cross_entropy(out, y, label_smoothing=s)  # noqa: E731
    ids = [callable_identity(f) for f in (plain, other, smoothed(0.1), smoothed(0.2), with_default, again)]
    assert len({repr(i) for i in ids}) == len(ids), ids
    assert callable_identity(smoothed(0.1)) == callable_identity(smoothed(0.1))
    assert callable_identity(functools.partial(plain)) != callable_identity(functools.partial(other))
    named = ids[0].split(" code ")[0]
    assert _differences({"loss_fn": named}, {"loss_fn": ids[0]}) == []  # recorded before the digest
    assert _differences({"loss_fn": ids[0]}, {"loss_fn": ids[1]}) != []


def test_a_checkpoint_made_with_one_lambda_refuses_a_resume_with_another(tmp_path):
    import torch.nn.functional as F

    path = tmp_path / "ck.pt"
    interrupted(tiny(), [0.2, 0.5], path, at_stage=1, loss_fn=lambda out, y, **kw: F.cross_entropy(out, y, **kw))
    with pytest.raises(CheckpointMismatchError, match="loss_fn: checkpoint .*<lambda> code "):
        optimize_connectome(tiny(), *ordered_loaders(), [0.2, 0.5], checkpoint=path,
                            loss_fn=lambda out, y, **kw: F.cross_entropy(out, y, **kw) * 2.0, **KW)


def test_a_lambdas_identity_holds_across_processes_and_moved_copies(tmp_path):
    """A lambda's digest reads no address, file name, line number or string hash (a set of strings in
    its code is a frozenset, whose order differs by process): the same in a fresh process with another
    hash seed, and from a copy of its plugin file moved elsewhere with lines added above it. So for the
    values a local lambda closes over and its defaults: a set of strings (and a dict holding one) was
    written in its hash order, which differs by process, and a module by its repr, which holds its
    file's path, so that the processes of one run disagreed (and a resume could be refused)."""
    import os
    import subprocess
    import sys

    source = ("import torch.nn.functional as F\n\n"
              "loss = lambda out, y: F.cross_entropy(out, y) if 'a' in {'alpha', 'beta', 'gamma', 'a'} else None\n\n\n"
              "def made():  # closes over a set, a dict holding one, a module and an object; a set default\n"
              "    import torch.nn.functional as G\n"
              "    names, cfg, obj = {'alpha', 'beta', 'gamma', 'delta'}, {'tags': {'x', 'y', 'z'}, 'w': 0.5}, object()\n"
              "    return lambda out, y, s=frozenset({'p', 'q', 'r'}): G.cross_entropy(out, y) if names and cfg and obj and s else 0\n\n\n"
              "closed = made()\n")
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "a" / "lam.py").write_text(source)
    (tmp_path / "b" / "lam.py").write_text("\n\n# moved, and lines above\n" + source)
    code = ("import sys, importlib.util\n"
            "from adaptive.mask_only_checkpoint import callable_identity\n"
            "spec = importlib.util.spec_from_file_location('lam', sys.argv[1])\n"
            "mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(mod)\n"
            "print(callable_identity(mod.loss), callable_identity(mod.closed))\n")
    seen = set()
    for seed, folder in (("1", "a"), ("2", "a"), ("3", "b")):
        r = subprocess.run([sys.executable, "-c", code, str(tmp_path / folder / "lam.py")], capture_output=True,
                           text=True, env={**os.environ, "PYTHONHASHSEED": seed}, timeout=120)
        assert r.returncode == 0, r.stderr[-2000:]
        seen.add(r.stdout.strip())
    assert len(seen) == 1 and seen.pop().count(" code ") == 2


def test_closed_over_values_are_known_by_what_they_hold_never_an_address_or_a_path():
    """A value a local lambda closes over was known by its repr: a module's holds its file's path
    (another per install), a repr that fails raised out of the checkpoint's fingerprint, and an
    address the repr writes otherwise than `` at 0x`` was kept (every process differs). A refused
    resume of a lambda with the same name says what else can differ (the Python version)."""
    import types

    import torch.nn.functional as F
    from adaptive.mask_only_checkpoint import _differences, _value_identity, callable_identity

    class Broken:
        def __repr__(self):
            raise RuntimeError("no repr")

    class Handle:
        def __repr__(self):
            return f"<Handle {id(self):#x}>"

    assert _value_identity(F) == "<module 'torch.nn.functional'>"
    assert _value_identity(Broken()).endswith(".Broken") and _value_identity(Handle()).endswith(".Handle")
    assert _value_identity({"b": {3, 1, 2}, "w": torch.tensor([1.0]), "m": types}) == \
        "{'b': {1, 2, 3}, 'w': tensor([1.]), 'm': <module 'types'>}"
    assert _value_identity({"a": 1, "f": frozenset()}) == repr({"a": 1, "f": frozenset()})  # as before
    held = []
    held.append(held)
    assert _value_identity(held) == ["[...]"]  # (a list that holds itself: no endless recursion)

    def made(s):
        return lambda out, y: F.cross_entropy(out, y, label_smoothing=s)

    a, b = callable_identity(made(0.1)), callable_identity(made(0.2))
    assert " code " in a and a != b
    (diff,) = _differences({"loss_fn": a}, {"loss_fn": b})
    assert "Python version" in diff and diff.startswith("loss_fn: checkpoint")


@pytest.mark.parametrize("checkpoint, at_stage, kept", [
    (False, 1, "no snapshot was kept"),  # no checkpoint: the finished target's snapshot went with the run
    (True, 0, "no snapshot was kept"),  # a checkpoint, but no stage had ended
    (True, 2, "the snapshot(s) of the target(s) finished before it (0.2, 0.5) are kept in the checkpoint {path}: "
              "run it again with that checkpoint (a recipe's --resume) to continue from them")])
def test_an_interrupted_runs_note_says_which_snapshots_its_checkpoint_keeps(tmp_path, checkpoint, at_stage, kept):
    """The note an interrupted run adds said "no snapshot was kept" even where its checkpoint held
    the finished targets' snapshots, from which a rerun (--resume) continues."""
    path = tmp_path / "ck.pt"

    def cb(rec):
        if rec["kind"] == "update" and rec["stage"] == at_stage:
            raise Stop

    with pytest.raises(Stop) as info:
        optimize_connectome(tiny(), *ordered_loaders(), [0.2, 0.5, 0.7], checkpoint=path if checkpoint else None,
                            callback=cb, **KW)
    assert info.value.__notes__ == ["adaptive: the mask-only optimisation was interrupted; the model's original weights "
                                    f"(every synapse present) were restored, and {kept.format(path=path)}"]


def test_an_interrupted_climbs_note_names_the_rungs_its_checkpoint_records(tmp_path):
    """A climb (target "best") stopped after two rungs said "the snapshot(s) of the target(s) finished
    before it (best)": target best was not finished; the checkpoint holds the best of the rungs
    climbed, and a resumed run's note counts the rungs of the earlier session too."""
    path = tmp_path / "ck.pt"

    def stop_at(at_stage):
        def cb(rec):
            if rec["kind"] == "update" and rec["stage"] == at_stage:
                raise Stop
        return cb

    def note(at_stage):
        with pytest.raises(Stop) as info:
            optimize_connectome(tiny(), *ordered_loaders(), "best", ladder=(0.2, 0.4, 0.6, 0.8), patience=5,
                                checkpoint=path, callback=stop_at(at_stage), **KW)
        (text,) = info.value.__notes__
        return text

    kept = ("the best snapshot of the ladder's rung(s) climbed before it (removing {}) is kept in the checkpoint "
            f"{path}: run it again with that checkpoint (a recipe's --resume) to continue the climb from there")
    assert note(2).endswith("were restored, and " + kept.format("0.2, 0.4"))
    assert note(3).endswith("were restored, and " + kept.format("0.2, 0.4, 0.6"))  # resumed from the first session's


def test_a_checkpoint_one_process_finds_bad_stops_every_process(tmp_path):
    """Under several processes a load that failed its checks on one process only (each process
    reading its own copy, one damaged or missing) raised there while the others went on into the
    run's next collective and waited for it until gloo's timeout (30 minutes; 20 seconds in the
    script, so that a regression fails, naming the wait, instead of hanging). Now every process
    raises, naming the process that failed and why."""
    from _ports import two_rank_records

    recs = two_rank_records("two_process_stage_checkpoint.py", tmp_path)
    for rec in recs:
        damaged = rec["damaged_on_one"]
        assert damaged["error"] == "CheckpointMismatchError", damaged
        assert f"the stage checkpoint {tmp_path / 'own'}" in damaged["message"]  # (each process's own path)
        assert "failed its checks on process 1 of 2 (process 1: " in damaged["message"]
        assert f"{tmp_path / 'own1.pt'} is not a readable mask-only checkpoint" in damaged["message"]
        assert "while process 0 of 2 read its without fault: every process must read the same file" \
            in damaged["message"]
        missing = rec["missing_on_one"]
        assert missing["error"] == "CheckpointMismatchError", missing
        assert "the processes read different stage checkpoints" in missing["message"]
        assert "(process 0: stage 0 (step 6); process 1: no file)" in missing["message"]
        assert "Give every process the same file" in missing["message"]
        assert rec["same"] == recs[0]["same"] and rec["same"]["resumed"] == 1  # one file: both resume alike


GLOBALS_SOURCE = '''import torch.nn.functional as F

SCALE = {scale}
CALLS = 0


def helper(out):
    return out


loss = lambda out, y: F.cross_entropy(helper(out), y) * SCALE
bare = lambda out, y: (out.logsumexp(1) - out.gather(1, y[:, None])[:, 0]).mean()
picked = lambda out, y: [F.cross_entropy(o, y) * SCALE for o in (out,)][0]


def counting():
    def counted(out, y):
        global CALLS
        CALLS += 1
        return F.cross_entropy(out, y)
    return counted


def made():
    fns = [lambda out, y: F.cross_entropy(out, y) * SCALE]
    return lambda out, y: fns[0](out, y)


closed = made()
'''


def _module_with(tmp_path, scale, name="scaled_loss"):
    """GLOBALS_SOURCE with ``SCALE = scale``, loaded afresh as module ``name`` (as another process would)."""
    import importlib.util

    path = tmp_path / f"{name}_{str(scale).replace('.', '_')}.py"
    path.write_text(GLOBALS_SOURCE.format(scale=scale))
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_a_lambdas_identity_holds_the_values_of_the_module_globals_it_reads(tmp_path):
    """Two lambdas ``lambda out, y: F.cross_entropy(out, y) * SCALE`` of modules with another SCALE had one
    identity (their code, defaults and closed-over values are the same): a resume with the other loss was
    taken silently. The values of the module globals a lambda (or a local function, or a lambda among
    the values it takes along) reads now count: a module, or a function, by its name; a global it
    assigns (a counter) does not; one that reads none keeps its identity, and so does a checkpoint that
    recorded one that reads some before."""
    from adaptive.mask_only_checkpoint import _differences, callable_identity

    two, three, again = _module_with(tmp_path, 2.0), _module_with(tmp_path, 3.0), _module_with(tmp_path / "..", 2.0)
    for name in ("loss", "picked", "closed"):
        a, b = callable_identity(getattr(two, name)), callable_identity(getattr(three, name))
        assert a != b and a == callable_identity(getattr(again, name)), (name, a, b)
    assert callable_identity(two.loss).endswith(" (F, SCALE, helper)")  # the globals it reads, by name
    assert " globals " not in callable_identity(two.bare)  # (no global read: its identity as before)
    counted = two.counting()  # a local function that keeps a counter: the same identity as it counts
    first = callable_identity(counted)
    counted(torch.zeros(2, 3), torch.zeros(2, dtype=torch.long))
    assert two.CALLS == 1 and callable_identity(counted) == first == callable_identity(again.counting())

    def helper(out):  # another function under the same name: the same identity (a function by its name)
        return out * 2

    helper.__module__, helper.__qualname__ = "scaled_loss", "helper"
    two.helper = helper
    assert callable_identity(two.loss) == callable_identity(again.loss)
    (diff,) = _differences({"loss_fn": callable_identity(two.loss)}, {"loss_fn": callable_identity(three.loss)})
    assert "with other values of the module globals it reads: F, SCALE, helper; give them the values the run had" \
        in diff
    # a checkpoint that recorded the digest before the globals were: taken, as that version could not tell
    before = callable_identity(three.loss).split(" globals ")[0]
    assert _differences({"loss_fn": before}, {"loss_fn": callable_identity(two.loss)}) == []
    assert _differences({"loss_fn": [before, [], {}]}, {"loss_fn": [callable_identity(two.loss), [], {}]}) == []


def test_a_resume_with_a_lambda_reading_other_module_globals_is_refused(tmp_path):
    from adaptive.integrity import digest

    path = tmp_path / "ck.pt"
    interrupted(tiny(), [0.2, 0.5], path, at_stage=1, loss_fn=_module_with(tmp_path, 2.0).loss)
    with pytest.raises(CheckpointMismatchError, match="with other values of the module globals it reads: F, SCALE"):
        optimize_connectome(tiny(), *ordered_loaders(), [0.2, 0.5], checkpoint=path,
                            loss_fn=_module_with(tmp_path, 3.0).loss, **KW)
    again = optimize_connectome(tiny(), *ordered_loaders(), [0.2, 0.5], checkpoint=path,
                                loss_fn=_module_with(tmp_path / "..", 2.0).loss, **KW)
    assert [h["kind"] for h in again.history].count("resume") == 1
    # a checkpoint written before the globals were digested (its identity without them) resumes
    state = torch.load(path, weights_only=True)
    state["fingerprint"]["loss_fn"] = state["fingerprint"]["loss_fn"].split(" globals ")[0]
    state["sha256"] = digest({k: v for k, v in state.items() if k != "sha256"})
    torch.save(state, path)
    again = optimize_connectome(tiny(), *ordered_loaders(), [0.2, 0.5], checkpoint=path,
                                loss_fn=_module_with(tmp_path, 3.0).loss, **KW)
    assert [h["kind"] for h in again.history][-1] == "resume"  # (the finished run's file: nothing runs again)


SCRIPT_SOURCE = '''import argparse

import torch
import torch.nn.functional as F

args = argparse.Namespace(smoothing={smoothing}, resume={resume}, output_dir="runs/x")
device = torch.device("cuda", {rank})  # each process its own GPU
CFG = {{"ls": {smoothing}}}

smoothed = lambda out, y: F.cross_entropy(out, y, label_smoothing=args.smoothing)
on_device = lambda out, y: F.cross_entropy(out.to(device), y.to(device))
from_dict = lambda out, y: F.cross_entropy(out, y, label_smoothing=CFG.get("ls"))
'''


def _script_module(tmp_path, smoothing=0.1, resume=False, rank=0):
    """SCRIPT_SOURCE (a training script's globals) loaded afresh as module ``train_script``."""
    import importlib.util

    path = tmp_path / f"script_{str(smoothing).replace('.', '_')}_{resume}_{rank}.py"
    path.write_text(SCRIPT_SOURCE.format(smoothing=smoothing, resume=resume, rank=rank))
    spec = importlib.util.spec_from_file_location("train_script", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_a_lambdas_globals_count_by_the_attributes_it_reads_and_not_by_the_processs_device(tmp_path):
    """A script's ``lambda out, y: F.cross_entropy(out, y, label_smoothing=args.smoothing)`` was known by
    the whole ``args`` namespace, whose ``resume`` (and every other option) differs between the run and
    its resume: every resume of it was refused. And a lambda reading a global ``device`` (cuda:0 on
    one process, cuda:1 on the next) had another identity on each process, so every resume of a
    multi-GPU run was refused on all but the first. Now a global read through its attributes counts
    by the value read there, and a device by its type."""
    from adaptive.mask_only_checkpoint import callable_identity

    run = _script_module(tmp_path)
    resumed = _script_module(tmp_path, resume=True)
    other = _script_module(tmp_path, smoothing=0.2)
    second = _script_module(tmp_path, rank=1)
    assert callable_identity(run.smoothed) == callable_identity(resumed.smoothed) \
        and callable_identity(run.smoothed).endswith(" (F, args.smoothing)")
    assert callable_identity(run.smoothed) != callable_identity(other.smoothed)  # the value it reads counts
    assert callable_identity(run.on_device) == callable_identity(second.on_device)
    # a method read from a global (CFG.get) counts by the global: the dict's values
    assert callable_identity(run.from_dict).endswith(" (CFG, F)")
    assert callable_identity(run.from_dict) != callable_identity(other.from_dict)


def test_a_data_mismatch_names_each_field_that_differs_and_says_which_are_not_known():
    """A loader without a dataset showed `train_data: checkpoint [None, 8, None], this run [None, 6, None]`."""
    from adaptive.mask_only_checkpoint import _differences

    assert _differences({"train_data": [None, 8, None]}, {"train_data": [None, 6, None]}) == [
        "train_data: batches (checkpoint 8, this run 6)"]
    assert _differences({"holdout_data": [32, 2, 16]}, {"holdout_data": [None, 2, 16]}) == [
        "holdout_data: examples (checkpoint 32, this run not known (no .dataset with a len()))"]
    assert _differences({"train_data": [96, 6, 16]}, {"train_data": [96, 6, 16]}) == []


def test_a_loader_without_a_batch_size_is_said_to_lack_one_not_a_length():
    """A DataLoader given a batch_sampler has a length but no batch_size: the mismatch said its batch size was
    `not known (no len())`."""
    from torch.utils.data import BatchSampler, DataLoader, SequentialSampler

    from adaptive.mask_only_checkpoint import _differences
    from adaptive.mask_only_data import _data_identity

    data = list(range(96))
    now = _data_identity(DataLoader(data, batch_sampler=BatchSampler(SequentialSampler(data), 16, False)))
    assert now == [96, 6, None]
    assert _differences({"train_data": [96, 6, 16]}, {"train_data": now}) == [
        "train_data: batch size (checkpoint 16, this run not known (no .batch_size))"]


def test_a_resume_under_another_process_count_is_refused_naming_it(tmp_path, monkeypatch):
    """A stage checkpoint of a 2-process run resumed on 1 process was refused for other steps per stage and
    other train batches, the consequences, as written "by another run" whose settings were to be given again,
    which they had been. The count of processes is recorded now, and the refusal names it first and says to
    resume under the run's own count; a checkpoint recorded before the count was still resumes."""
    import adaptive.mask_only_plan as plan

    path = tmp_path / "ck.pt"
    monkeypatch.setattr(plan, "world_size", lambda: 2)  # the interrupted run's: 2 processes
    interrupted(tiny(), [0.2, 0.5], path, at_stage=1)
    monkeypatch.undo()
    with pytest.raises(CheckpointMismatchError, match=r"written by another run; it differs in processes: checkpoint "
                                                      r"2, this run 1 \(.*resume it under 2 processes, as it ran\)"):
        optimize_connectome(tiny(), *ordered_loaders(), [0.2, 0.5], checkpoint=path, **KW)
    state = torch.load(path, weights_only=False)
    del state["fingerprint"]["processes"], state["sha256"]  # a checkpoint recorded before the count was
    save_stage(path, state)
    resumed = optimize_connectome(tiny(), *ordered_loaders(), [0.2, 0.5], checkpoint=path, **KW)
    assert [h["kind"] for h in resumed.history].count("resume") == 1


@pytest.mark.parametrize("which", ["bias", "batchnorm running mean", "batchnorm weight"])
def test_a_resume_with_other_biases_or_normalisation_tensors_is_refused_naming_the_tensor(tmp_path, which):
    """The checkpoint fingerprinted the prunable weights alone: a model whose biases or BatchNorm tensors
    changed since (a --weights file replaced) resumed without a word, the finished targets' held-out figures
    from the old tensors beside snapshots evaluated with the new. Every frozen tensor is fingerprinted now and
    a change is refused naming it, before anything changes; the same tensors resume."""
    def model():
        torch.manual_seed(0)
        return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.ReLU(),
                                   torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(4, 4))

    path = tmp_path / "ck.pt"
    first = model()
    first[1].running_mean.uniform_(-0.5, 0.5)
    given = copy.deepcopy(first.state_dict())
    interrupted(first, [0.2, 0.5], path, at_stage=1)
    before = path.read_bytes()
    changed = model()
    changed.load_state_dict(given)
    name = {"bias": "5.bias", "batchnorm running mean": "1.running_mean", "batchnorm weight": "1.weight"}[which]
    with torch.no_grad():
        t = changed.state_dict()[name]
        t.view(-1)[0] = torch.nextafter(t.view(-1)[0], torch.tensor(float("inf")))
    kept = copy.deepcopy(changed.state_dict())
    with pytest.raises(CheckpointMismatchError, match=rf"frozen_tensors: the checkpoint was made from other weights "
                                                      rf"\(tensor '{re.escape(name)}' differs: load the weights"):
        optimize_connectome(changed, *ordered_loaders(), [0.2, 0.5], checkpoint=path, **KW)
    assert all(torch.equal(v, kept[k]) for k, v in changed.state_dict().items()) and path.read_bytes() == before
    same = model()
    same.load_state_dict(given)
    resumed = optimize_connectome(same, *ordered_loaders(), [0.2, 0.5], checkpoint=path, **KW)
    assert [h["kind"] for h in resumed.history].count("resume") == 1


@pytest.mark.parametrize("data", ["tensors", "labelled"])
def test_a_resume_reading_other_data_of_the_same_sizes_is_refused(tmp_path, data):
    """The stage checkpoint knew the data by its sizes only: a resume given the same examples in another order (a
    copy of the data stored otherwise, from which another held-out part is drawn) or other examples of the same
    sizes went on in silence from masks learned on other data. The checkpoint records each loader's content
    fingerprint (a TensorDataset's tensors; a dataset with labels by adaptive.data.dataset_fingerprint), and another
    is refused; the same data, in a new loader over a copy of it, resumes."""
    def loaders(perm=None, shift=0.0):
        tr, ho = ordered_loaders()
        x, y = tr.dataset.tensors
        if perm is not None:
            x, y = x[perm], y[perm]
        if data == "labelled":
            class Labelled(TensorDataset):  # (labels as a dataset of adaptive.data keeps them)
                def __init__(self, *t):
                    super().__init__(*t)
                    self.targets = t[1]
            return DataLoader(Labelled(x.clone() + shift, y.clone()), batch_size=16), ho
        return DataLoader(TensorDataset(x.clone() + shift, y.clone()), batch_size=16), ho

    path = tmp_path / "ck.pt"
    tr, ho = loaders()

    def cb(rec):
        if rec["kind"] == "update" and rec["stage"] == 1:
            raise Stop

    with pytest.raises(Stop):
        optimize_connectome(tiny(), tr, ho, [0.2, 0.5], checkpoint=path, callback=cb, **KW)
    before = path.read_bytes()
    other = [loaders(perm=torch.randperm(96, generator=torch.Generator().manual_seed(1)))]
    if data == "tensors":  # (the labelled dataset's fingerprint reads a few examples' pixels, not every one)
        other.append(loaders(shift=1e-3))
    for tr2, ho2 in other:
        with pytest.raises(ValueError, match=r"train_content: checkpoint [0-9a-f]{16}, this run [0-9a-f]{16} \(other "
                                             r"data of the same sizes"):
            optimize_connectome(tiny(), tr2, ho2, [0.2, 0.5], checkpoint=path, **KW)
        assert path.read_bytes() == before
    resumed = optimize_connectome(tiny(), *loaders(), [0.2, 0.5], checkpoint=path, **KW)
    assert [h["kind"] for h in resumed.history].count("resume") == 1


def test_a_climb_resumed_after_a_rung_that_did_not_improve_stops_where_it_would_have(tmp_path):
    """The rungs without a better held-out score since the best (patience's count) are part of the checkpoint: a
    resume that counted from 0 again climbed past where the uninterrupted run stopped and kept another network.
    (The test above, patience 4 on 4 rungs, never stops early: it passed with the count not restored.)"""
    kw = dict(ladder=(0.1, 0.3, 0.9, 0.95), patience=2)
    straight = optimize_connectome(tiny(), *ordered_loaders(), "best", **KW, **kw)
    evals = [h["removed"] for h in straight.history if h["kind"] == "eval"]
    assert len(evals) < 1 + len(kw["ladder"])  # (the climb stopped early: what the resume must reproduce)
    path = tmp_path / "best.pt"
    interrupted(tiny(), "best", path, at_stage=1, **kw)
    resumed = optimize_connectome(tiny(), *ordered_loaders(), "best", checkpoint=path, **KW, **kw)
    assert [h["removed"] for h in resumed.history if h["kind"] == "eval"] == evals
    a, b = straight.snapshots["best"], resumed.snapshots["best"]
    assert a.removed == b.removed and a.holdout_acc == b.holdout_acc
