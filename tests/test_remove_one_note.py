"""--remove 1 (prune_pretrained) and --target 1 (recipes/adaptive.py --mode mask_only) remove one
synapse: a whole number is a count. A user meaning 100% got no word of it; a note says so now."""
import os
import sys

import pytest
import torch

from adaptive.mask_only_targets import one_synapse_note
from adaptive.models import build_model

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _scripts import load_script  # noqa: E402
from _training import fresh_recipe_state  # noqa: E402

_fresh_accelerate_state = pytest.fixture(autouse=True)(fresh_recipe_state)

NOTE = ("note: --remove 1 removes one synapse (a whole number is a count of synapses); for a fraction give 0.5 and so "
        "on (1.0, every synapse, is no valid target)")


@pytest.mark.parametrize("targets", [1, [1], "1", [torch.tensor(1)], [1, 0.5], ["0.25", "0.5", "1"]])
def test_the_count_1_alone_or_among_fractions_gets_the_note(targets):
    """--remove 0.25 0.5 1 reads as 25%, 50%, 100% and removed one synapse at the last target, silently."""
    assert one_synapse_note(targets, "--remove") == NOTE


@pytest.mark.parametrize("targets", [[1, 100], [1, 0.5, 2], 0.5, 2, "best", 0, [], True, "1.5", [1, "x"]])
def test_other_targets_get_none(targets):
    assert one_synapse_note(targets, "--remove") is None


class Stop(Exception):
    """Raised where the run would start optimising: the note is printed before."""


def test_prune_pretrained_prints_the_note_before_it_optimises(tmp_path, monkeypatch, capsys):
    load_script("recipes/prune_pretrained.py", "prune_pretrained_remove_one")
    from recipes._prune_pretrained import run as pp_run

    def stop(*a, **k):
        raise Stop

    monkeypatch.setattr(pp_run, "_prune", stop)
    torch.manual_seed(0)
    weights = tmp_path / "w.pt"
    torch.save(build_model("mlp", num_classes=10, in_shape=(64,)).state_dict(), weights)
    argv = ["--model", "mlp", "--weights", str(weights), "--dataset", "digits", "--output_dir", str(tmp_path / "run"),
            "--batch-size", "32", "--no-progress", "--threads", "1"]
    for remove, said in (("1", True), ("0.5", False)):
        with pytest.raises(Stop):
            pp_run.main(argv + ["--remove", remove, "--overwrite"])
        assert (NOTE in capsys.readouterr().out) is said


def test_a_mask_only_run_with_target_1_prints_the_note_and_removes_one_synapse(tmp_path, capsys):
    R = load_script("recipes/adaptive.py", "recipe_adaptive_remove_one")
    torch.manual_seed(123)
    torch.save(build_model("mlp", num_classes=10, in_shape=(64,)).state_dict(), tmp_path / "w.pt")
    res = R.main(["--output_dir", str(tmp_path / "run"), "--mode", "mask_only", "--target", "1", "--epochs", "1",
                  "--update_every", "8", "--threads", "1", "--progress", "false", "--figures", "false",
                  "--weights", str(tmp_path / "w.pt")])
    assert NOTE.replace("--remove", "--target") in capsys.readouterr().out
    assert sum(int((~m).sum()) for m in res.conn.masks.values()) == 1  # still a count: one synapse removed
