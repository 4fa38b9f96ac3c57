"""summary.json's "seconds" of recipes/adaptive.py covers every session of a resumed run: a resumed
run reported only its own session's time (the printed "done in 1s" became "done in 0s")."""
import json
import os
import sys

import pytest
import torch

from adaptive.training import find_checkpoint

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _scripts import load_script  # noqa: E402
from _training import fresh_recipe_state  # noqa: E402

R = load_script("recipes/adaptive.py", "recipe_adaptive_seconds")
TINY = ["--max_steps", "40", "--update_every", "10", "--log_every", "0", "--threads", "1", "--progress", "false",
        "--figures", "false"]
EARLIER = 1000.0  # what the edited checkpoints say the earlier sessions took


_fresh_accelerate_state = pytest.fixture(autouse=True)(fresh_recipe_state)  # a fresh Accelerator per in-process run


class Stop(Exception):
    pass


def _interrupted_run(out):
    def stop(state):
        if state.step == 25:
            raise Stop

    with pytest.raises(Stop):
        R.main(TINY + ["--output_dir", str(out), "--checkpoint_every", "20"], on_step=stop)
    ckpt = find_checkpoint("latest", out)
    assert ckpt.name == "step_00000020"
    return ckpt


def _edit_train_state(ckpt, edit):
    from adaptive.integrity import write_manifest

    path = ckpt / "custom_checkpoint_2.pkl"  # the TrainState (registration order: conn, ctrl, state, lr)
    sd = torch.load(path, weights_only=False)
    edit(sd)
    torch.save(sd, path)
    write_manifest(ckpt)  # as the run would have written it (an edit alone is refused as damage)
    return sd


def test_a_resumed_train_run_reports_the_time_of_every_session(tmp_path, capsys):
    out = tmp_path / "run"
    ckpt = _interrupted_run(out)
    recorded = torch.load(ckpt / "custom_checkpoint_2.pkl", weights_only=False)["seconds"]
    assert isinstance(recorded, float) and recorded > 0  # the run's time up to the checkpoint

    def earlier(sd):
        sd["seconds"] = EARLIER

    _edit_train_state(ckpt, earlier)
    capsys.readouterr()
    res = R.main(TINY + ["--output_dir", str(out), "--resume", "latest"])
    summary = json.loads((out / "summary.json").read_text())
    assert EARLIER < summary["seconds"] < EARLIER + 300 and res.summary["seconds"] == summary["seconds"]
    assert summary["seconds_note"] is None
    assert f"done in {summary['seconds']:.0f}s" in capsys.readouterr().out


def test_a_train_checkpoint_without_the_time_resumes_and_says_what_the_seconds_cover(tmp_path, capsys):
    out = tmp_path / "run"
    ckpt = _interrupted_run(out)
    _edit_train_state(ckpt, lambda sd: sd.pop("seconds", None))  # as checkpoints were written before
    capsys.readouterr()
    res = R.main(TINY + ["--output_dir", str(out), "--resume", "latest"])
    assert res.state.step == 40
    summary = json.loads((out / "summary.json").read_text())
    assert summary["seconds"] < EARLIER
    assert "covers only this session, from step 20 on" in summary["seconds_note"]
    assert "note: seconds" in capsys.readouterr().out


def test_a_fresh_train_run_has_no_seconds_note(tmp_path):
    res = R.main(TINY + ["--output_dir", str(tmp_path)])
    assert res.summary["seconds_note"] is None and 0 < res.summary["seconds"] < 300


def test_a_resumed_mask_only_run_reports_the_time_of_every_session(tmp_path):
    from adaptive.integrity import digest

    base = ["--output_dir", str(tmp_path), "--mode", "mask_only", "--target", "0.3", "--max_steps", "4",
            "--subset", "300", "--threads", "1", "--progress", "false", "--figures", "false"]
    first = R.main(base).summary
    path = tmp_path / R.MASK_ONLY_CHECKPOINT
    state = torch.load(path, weights_only=False)
    body = {k: v for k, v in state.items() if k != "sha256"}
    body["wall_seconds"] = EARLIER  # the optimisation's time up to its last recorded target
    torch.save({**body, "sha256": digest(body)}, path)
    res = R.main(base + ["--resume", "latest"])  # every target was done: nothing runs again
    assert res.summary["steps"] == first["steps"]
    assert EARLIER < res.summary["seconds"] < EARLIER + 300
