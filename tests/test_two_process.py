"""Invariant 4: same seed, different data (and held-out losses) per rank, identical masks at every update."""
import json
import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _ports import launch_two, launched_two_records  # noqa: E402


@pytest.fixture(scope="module")
def controller_run(tmp_path_factory):
    """The records of both ranks of one launch of two_process_controller.py (a launch takes seconds:
    the tests below read the same one). A rank that hung on another would run into the launch's timeout."""
    out = tmp_path_factory.mktemp("two_process_controller")
    return launched_two_records("two_process_controller.py", out)


def test_two_processes_hold_identical_masks(controller_run):
    a, b = controller_run
    assert a["world"] == b["world"] == 2
    assert len(a["train"]) == 8 and a["train"] == b["train"]
    assert a["built_before_prepare"] == a["train"] and b["built_before_prepare"] == b["train"]  # (on the raw optimizer)
    assert a["same_weights"] and b["same_weights"]
    assert a["wrapped_names"] and b["wrapped_names"]  # a connectome of the DDP wrapper: the model's names
    assert a["wrapped_collinearity"] == b["wrapped_collinearity"] == [["0.weight", "2.weight"], True]
    assert a["grad_differs"] and b["grad_differs"]  # the ranks really saw different data
    assert len(a["mask_only"]) == 5 and a["mask_only"] == b["mask_only"]
    assert sum(x[1] for x in a["mask_only"]) > 0  # edits happened
    # the line search decided on the held-out loss averaged over the ranks, not on each rank's own
    ls = a["line_search"]
    assert ls == b["line_search"] and ls["step"] == 4 and ls["calls"] == 4
    assert ls["line_search_fraction"] == 0.25 and ls["pruned"] > 0 and ls["grown"] > 0
    assert abs(ls["holdout_loss"] - 0.9) < 1e-12 and abs(ls["actual_loss_change"] + 0.1) < 1e-12
    # masks parted by a seed offset by the rank are caught at the first update, verify= unset
    for rec in (a, b):
        assert rec["mismatch"][0] == 2 and "masks differ between processes at step 2" in rec["mismatch"][1]
        assert "not offset by the rank" in rec["mismatch"][1]


def test_a_missed_target_is_warned_alike_on_both_ranks(controller_run):
    """Under a line search that decides on the ranks' mean held-out loss (rank 0's own would keep every
    cut), both ranks roll back every cut, end at density 1 and give the same missed-target warning
    once, at the last due update, skipped for want of a gradient; neither waits on the other."""
    a, b = (rec["missed_target"] for rec in controller_run)
    assert a["fractions"] == b["fractions"] == [0.0]  # step 2's cut rolled back; step 4 skipped (no gradient)
    assert a["density"] == b["density"] == 1.0 and a["mask_hash"] == b["mask_hash"]
    assert a["tries"] == b["tries"] > 1
    assert len(a["warnings"]) == 1 and a["warnings"] == b["warnings"]
    assert "ended at step 4" in a["warnings"][0] and "rolled back 1 and halved 0 of the 1 " in a["warnings"][0]


def test_process_group_helpers_on_two_processes(tmp_path):
    recs = launched_two_records("two_process_helpers.py", tmp_path)
    for i, rec in enumerate(recs):
        assert rec["index"] == rec["rank"] == i and rec["world"] == 2
        assert rec["mean"] == [[1.5, 3.0], [[15.0]], "torch.float32", "torch.float64"]  # the mean, not the sum
        assert rec["buckets_agree"] and rec["bucket_mean"] == 1.0  # small buckets: the one-bucket result
        assert rec["problem"] == "a file only rank 1 reads is missing"  # on rank 0 as well
        assert rec["no_problem"] is None
        # a check that failed on one process only: every process raises one error naming it, marked alike
        assert rec["agreed_one"] == ["FileNotFoundError", "process 1 of 2: no checkpoint in ./run; process 0 of 2 found "
                                     "no such problem: every process must see the same files (a folder they all see, "
                                     "or the same copy on each) and run with the same settings", True]
        # a check the main process makes partly alone: its failure as it is; one of process 1's own copy is named
        # (it was raised as it is too, naming no process: the main process, whose copy is whole, printed it)
        assert rec["alone_0"] == ["ValueError", "checkpoint ./run/step_2 is damaged: random_states_1.pkl is missing",
                                  True]
        assert rec["alone_1"] == ["ValueError", "process 1 of 2: checkpoint ./run/step_2 is damaged: random_states_1.pkl"
                                  " is missing; process 0 of 2 found no such problem: every process must see the same "
                                  "files (a folder they all see, or the same copy on each) and run with the same "
                                  "settings", True]
        assert rec["alone_call"] == ["PermissionError", "cannot write ./run/config.yaml", True]  # (agreed_call's)
        assert rec["agreed_all"] == ["ValueError", "lr must be > 0", True]  # alike everywhere: as on one process
        assert rec["agreed_none"] == ["returned", i]
        assert rec["differing"] == ["the processes found different checkpoints (process 0 of 2: step_0; process 1 of 2: "
                                    "step_1), so they would not run alike: every process must see the same files (a "
                                    "folder they all see, or the same copy on each)", True]
        assert rec["agree"]
        assert rec["mismatch"] is not None and "masks differ between processes at step 2" in rec["mismatch"]
        # every process raises it alike, naming the processes of each hash and the layers that differ
        assert "process 0 of 2 holds masks " in rec["mismatch"] and "process 1 of 2 holds masks " in rec["mismatch"]
        assert "the masks of 0.weight, 2.weight differ" in rec["mismatch"] and rec["mismatch_alike"]
        # the check of hashes gathered already (the recipes' at the run's end): one layer parted is named
        end, alike, (h0, h1) = rec["end_mismatch"]
        assert end.startswith(f"connectome masks differ between processes at step 40, the run's end (process 0 of 2 "
                              f"holds masks {h0}; process 1 of 2 holds masks {h1}; the masks of 2.weight differ). "
                              "Every process must build its controller alike")
        assert alike


def test_band_gradient_scaler_scales_alike_on_every_process(tmp_path):
    """Each process's hook sees its own gradient, before DDP's reduction: the band sizes are reduced across the
    processes, so both ranks apply the same scales, those recomputed from both ranks' gradients together."""
    import torch

    a, b = launched_two_records("two_process_band_scaling.py", tmp_path)
    assert a["world"] == b["world"] == 2 and a["weights"] == b["weights"]
    assert a["scales"] == b["scales"]  # each rank sized its bands by its own gradient, and scaled them apart
    band = torch.tensor([0, 0, 1, 1, 2, 2]).expand(5, 6).reshape(-1)  # the band of each weight entry (by input)
    running, momentum = None, 0.5
    for step, got in enumerate(a["scales"]):
        raw = [torch.tensor(rec["raw"][step], dtype=torch.float64) for rec in (a, b)]
        assert not torch.equal(raw[0], raw[1])
        a_g, bands = torch.cat([g.abs().reshape(-1) for g in raw]), torch.cat([band, band])
        a_g, bands = a_g[a_g > 0], bands[a_g > 0]  # an entry of exactly 0 (a saturated tanh) has no size
        cur = torch.stack([a_g[bands == i].log().mean() for i in range(3)])
        running = cur if running is None else momentum * running + (1 - momentum) * cur
        want = (running.mean() - running).exp()
        assert list(got) == ["0", "1", "2"]
        torch.testing.assert_close(torch.tensor([got[k] for k in "012"], dtype=torch.float64), want, rtol=1e-9, atol=0)
    # DDP's average of the scaled gradients: the scales times the averaged gradient
    mean = sum(torch.tensor(rec["raw"][-1], dtype=torch.float64) for rec in (a, b)) / 2
    scale = torch.tensor([a["scales"][-1][k] for k in "012"], dtype=torch.float64)[band].view(5, 6)
    torch.testing.assert_close(torch.tensor(a["grad"], dtype=torch.float64), mean * scale, rtol=1e-5, atol=1e-7)
    assert a["grad"] == b["grad"]


def test_a_checkpoint_one_process_cannot_stat_is_refused_by_every_process_alike(tmp_path):
    """load_checkpoint through agreed_call (a --resume of recipes/adaptive.py) where process 1's stat of
    its random-state file raised (PermissionError): it left before load_checkpoint's gather, so its
    agreement's gather met process 0's gather of the random-state check, each read the other's words as
    its own, and the run ended in unrelated errors and a collective's timeout, the PermissionError lost.
    Both now meet in that gather and raise one error alike, naming process 1 and its file."""
    script = os.path.join(os.path.dirname(__file__), "scripts", "two_process_load_checkpoint.py")
    env = dict(os.environ, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    r = launch_two([script, tmp_path], env=env)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    recs = [json.loads((tmp_path / f"rank{i}.json").read_text())["outcome"] for i in range(2)]
    assert recs[0] == recs[1], recs
    kind, message, alike = recs[0]
    assert kind == "OSError" and alike, recs
    assert message.startswith(f"process 1 of 2 cannot read checkpoint {tmp_path / 'copy1' / 'step_3'} (PermissionError: ")
    assert "random_states_1.pkl" in message and "every process must be able to read its copy" in message


def test_a_collective_whose_peer_ended_is_known_and_named_in_one_line(tmp_path):
    """A process whose peer ended mid-run (its error, written by it, or Ctrl-C on it alone) failed in its
    next collective with gloo's "Connection closed by peer" traceback: peer_stopped knows that error, and
    peer_stopped_error is the one line recipes/adaptive.py prints for it instead."""
    script = os.path.join(os.path.dirname(__file__), "scripts", "two_process_peer_stopped.py")
    env = dict(os.environ, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    r = launch_two([script, tmp_path], env=env)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    rec = json.loads((tmp_path / "rank0.json").read_text())
    assert rec["error"] is not None and rec["peer_stopped"] and not rec["unrelated"], rec
    assert rec["message"] == ("process 0 of 2 stopped because another process of the launch stopped first: its error "
                              "(or Ctrl-C) is written above, and the launcher's report names its rank; fix what it "
                              "reports; add --resume latest to continue")


def test_a_checkpoint_the_main_process_cannot_put_in_place_stops_every_process_alike(tmp_path):
    """save_checkpoint's last part is the main process's alone (the finished folder renamed into place, the
    older ones pruned), and it ended in a barrier: a failure there (no permission to rename in the folder)
    raised a PermissionError traceback on the main process, while the other went on and died in its next
    collective. Every process now raises one CheckpointWriteError naming the checkpoint, the one that is
    intact and how to resume; and where a later checkpoint of a timeline a resume abandoned is there,
    a failed write names the intact one to resume from (--resume latest would take the later one)."""
    recs = launched_two_records("two_process_checkpoint_tail.py", tmp_path)
    run, ck = tmp_path / "run", tmp_path / "run" / "checkpoints"
    assert recs[0]["rename"] == recs[1]["rename"], recs
    kind, message, alike = recs[0]["rename"]
    assert kind == "CheckpointWriteError" and alike, recs
    assert message == (f"putting checkpoint {ck / 'step_00000010'} in place failed (Permission denied [errno 13]); its "
                       f"files were removed, and {ck / 'step_00000005'} is intact: make {ck} writable (or free disk "
                       f"space) and resume with --resume latest --output_dir {run}")
    assert recs[0]["rename_left"] == ["step_00000005"]  # (no .tmp-step folder)
    assert recs[0]["write_with_later"] == recs[1]["write_with_later"], recs
    kind, message, _ = recs[0]["write_with_later"]  # (agreed by save_checkpoint's broadcast; the recipe marks it)
    assert kind == "CheckpointWriteError", recs
    assert message.endswith(f"and {ck / 'step_00000005'} is intact: free disk space (or raise the file-size limit) "
                            f"and resume with --resume {ck / 'step_00000005'}"), message
    assert recs[0]["write_left"] == ["step_00000005", "step_00000020"]


def test_settings_refused_or_differing_on_one_process_are_refused_by_every_process_alike(tmp_path):
    """optimize_connectome under two processes took its settings' refusals (targets, ladder, window)
    on each process alone: given settings only process 1's refuses (targets computed from the rank),
    process 1 raised and process 0 went on into the loaders' check, where it met process 1's next
    collective (or waited until gloo's timeout). Such a refusal is now agreed (every process raises one
    error naming process 1's problem), settings both accept but that differ are refused on both naming
    each differing setting, and a later run of the same process group with agreed settings runs."""

    from _ports import two_rank_records

    got = two_rank_records("two_process_settings.py", tmp_path)
    assert got[0] == got[1], got  # one error (or outcome) per case on both
    rec = got[0]
    for case, problem in (("target_refused_on_one", "process 1 of 2: give at least one target"),
                          ("ladder_refused_on_one", "process 1 of 2: ladder must be increasing"),
                          ("window_refused_on_one", "process 1 of 2: window must be an integer >= 1, got 0")):
        assert rec[case]["error"] == "ValueError" and problem in rec[case]["message"], rec[case]
        assert "process 0 of 2 found no such problem: every process must be given the same settings" \
            in rec[case]["message"], rec[case]
    for case, targets in (("targets_differ", "[0.25]"), ("targets_differ_one_out_of_range", "[1.5]")):
        differ = rec[case]["message"]
        assert "the processes were given different settings: targets (process 0 of 2: [0.5]; process 1 of 2: " \
            f"{targets})" in differ and "not computed from the process's rank" in differ, differ
    both = rec["seed_and_passes_differ"]["message"]
    assert "passes (process 0 of 2: 1.0; process 1 of 2: 2.0)" in both and "seed (process 0 of 2: 0; process 1 of 2: 1)" \
        in both and "targets" not in both
    assert rec["agree"] == {"removed": 28}


def test_a_load_refused_by_one_process_names_the_process_the_file_and_the_cause(tmp_path):
    """load_checkpoint through agreed_call where process 1's copy alone is at fault: an optimizer moment
    of another shape was refused naming neither the checkpoint's file nor the process; a check's error
    that is no read error (a TypeError) reached every process as an OSError saying process 1 "cannot read
    checkpoint" its copy; and recipes/adaptive.py's resume cut an error raised inside Accelerate's load to
    its first line, where torch's load errors say nothing but "Error(s) in loading state_dict for X:" (the
    cause is on the next). Every process now raises one error naming the process, the file and the cause."""
    recs = launched_two_records("two_process_load_refusals.py", tmp_path)
    assert recs[0] == recs[1], recs
    rec = recs[0]
    kind, message, alike = rec["moment"]
    assert kind == "ValueError" and alike, rec
    assert message.startswith(f"checkpoint {tmp_path / 'copy1' / 'moment'} (found by process 1 of 2): optimizer.bin: "
                              "optimizer state momentum_buffer of 'weight' has shape (2, 4), but the parameter is "
                              "(3, 4) here: was it saved from another model?"), message
    kind, message, alike = rec["unexpected"]
    assert kind == "TypeError" and alike, rec
    assert message.startswith(f"process 1 of 2 failed checking checkpoint {tmp_path / 'copy1' / 'unexpected'} before "
                              "loading it (TypeError: boom: a check that is no read); process 0 of 2 found no such "
                              "problem"), message
    kind, message, alike = rec["inside_load"]
    assert kind == "CheckpointError" and alike, rec
    assert message.startswith("process 1 of 2: checkpoint ") and "(RuntimeError: Error(s) in loading state for " \
        "Thing: the real cause: x must be 7)" in message, message


def test_loaders_of_uneven_batches_are_refused_in_training_and_evaluated_whole(tmp_path):
    """train_one_epoch and evaluate over loaders prepared with even_batches=False (process 0: two batches,
    process 1: one): process 0 went on alone into its second batch's collective and both died of a bare gloo
    timeout (after 30 minutes by default), and evaluate's per-batch gathers paired other batches first; over
    each process's own batches of other sizes, gloo aborted the gather. train_one_epoch refuses now, on every
    process alike, naming each process's count and even_batches; evaluate adds each process's sums once at
    the end wherever batches may differ, and counts every example once; loaders Accelerate evens out run."""
    a, b = launched_two_records("two_process_uneven_batches.py", tmp_path)
    assert a == b, (a, b)
    assert a["train_uneven"]["error"] == "ValueError", a
    assert ("different numbers of batches to take from the train loader (process 0 of 2: 2 batches; "
            "process 1 of 2: 1 batch)") in a["train_uneven"]["message"], a
    assert "even_batches=True" in a["train_uneven"]["message"]
    assert "mask_hash" in a["train_even"]
    assert a["evaluate_uneven"]["examples"] == a["evaluate_even"]["examples"] == 5
    assert abs(a["evaluate_uneven"]["loss"] - a["evaluate_even"]["loss"]) < 1e-9
    assert a["own_sizes"] == {"examples": 7, "loss_matches": True}
    assert a["own_counts"] == {"examples": 7, "loss_matches": True}


def test_a_holdout_loss_that_raises_on_one_process_is_raised_by_every_process_alike(tmp_path):
    """A line search's holdout_loss() that raised on process 1 alone (a held-out shard only it reads) left
    process 0 waiting in the mean of the held-out losses until the group's timeout, a bare gloo error. Every
    process raises it now, naming the process it came from, and each rolls its edit back; the group stays
    usable (the next case's update runs on both)."""
    from _ports import two_rank_records

    a, b = two_rank_records("two_process_holdout_error.py", tmp_path)
    assert a == b, (a, b)
    for case in ("before_the_edit", "after_the_edit"):
        assert a[case]["error"] == "FileNotFoundError" and a[case]["masks_as_before"], a
        assert "process 1 of 2: process 1's held-out shard is gone" in a[case]["message"], a
        assert "process 0 of 2 found no such problem" in a[case]["message"], a
    assert a["nowhere"]["updates"] == 1 and not a["nowhere"]["masks_as_before"]


def test_uneven_batches_under_accumulation_are_refused_alike_where_the_steps_differ(tmp_path):
    """train_one_epoch with gradient_accumulation_steps 2, sync_with_dataloader=False and a loader prepared with
    even_batches=False (process 0: three batches, process 1: two): process 0 raised its own refusal of an epoch
    ending inside a group before the gather of the processes' batch counts, which process 1 made alone, so the
    next collective of each paired with another (gloo aborted the launch). The counts are compared first now,
    and every process raises the same refusal naming them; max_steps=1, one group of 2 on each, still trains.
    Under sync_with_dataloader=True (Accelerate's default) the loader's end closes each process's last group,
    and four batches and three made two steps on each, which met, but were refused for their batch counts: the
    steps are compared there now (the batches shown beside them), and two steps against one are refused."""
    a, b = launched_two_records("two_process_uneven_accumulation.py", tmp_path)
    assert a == b, (a, b)
    assert a["max_steps"] == {"steps": 1}, a
    assert a["whole"]["error"] == "ValueError", a
    assert ("different numbers of batches to take from the train loader (process 0 of 2: 3 batches; "
            "process 1 of 2: 2 batches)") in a["whole"]["message"], a
    assert a["closed_by_the_end"] == {"steps": 2}, a
    assert ("different numbers of steps to take from the train loader (process 0 of 2: 2 steps (3 batches); "
            "process 1 of 2: 1 step (2 batches))") in a["closed_uneven"]["message"], a
    assert a["evaluate"] == {"examples": 5}, a
