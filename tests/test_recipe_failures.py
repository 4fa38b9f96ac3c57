"""recipes/adaptive.py where something fails during training on one process of a two-process launch (the
set-up's checks are agreed elsewhere: tests/test_recipe_adaptive.py): a write only the main process makes
(metrics.csv, the final outputs, summary.json) on a full disk, a checkpoint write, an error in one
process's training step. Faults are injected by a --plugins module that every process imports and that
acts on one rank only (FAULT, FAULT_RANK)."""
import errno
import os
import sys
import textwrap
from pathlib import Path

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _ports import launch_two  # noqa: E402
from _scripts import load_script  # noqa: E402
from _training import fresh_recipe_state  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "recipes" / "adaptive.py"
R = load_script("recipes/adaptive.py", "recipe_adaptive_failures")
# tiny: a checkpoint at step 5, an evaluation (and metrics.csv) after it, the outputs at step 12
TINY = ["--max_steps", "12", "--update_every", "5", "--log_every", "5", "--checkpoint_every", "5", "--threads", "1",
        "--progress", "false", "--figures", "false"]

FAULTS = textwrap.dedent('''
    """Inject one fault on the process FAULT_RANK (all: every process): FAULT is config, interrupt, metrics,
    summary, checkpoint or step."""
    import errno
    import os

    FULL = (errno.ENOSPC, "No space left on device")
    if os.environ.get("FAULT") and os.environ.get("FAULT_RANK", "0") in ("all", os.environ.get("RANK", "0")):
        kind = os.environ["FAULT"]
        if kind == "config":  # config.yaml, the main process's first write
            import recipes._adaptive.folder as folder

            def save_config(cfg, path, *args, **kwargs):
                raise OSError(*FULL, str(path))
            folder.save_config = save_config
        elif kind == "interrupt":  # Ctrl-C reaching every process (FAULT_RANK all) at the same step
            import signal
            import torch.nn.functional as F
            real_loss, calls = F.cross_entropy, []

            def cross_entropy(*args, **kwargs):
                calls.append(1)
                if len(calls) == 7:
                    os.kill(os.getpid(), signal.SIGINT)
                return real_loss(*args, **kwargs)
            F.cross_entropy = cross_entropy
        elif kind == "metrics":  # metrics.csv, written by the main process after a checkpoint or an evaluation
            import recipes._adaptive.train as train

            def write_metrics_csv(rows, path):
                raise OSError(*FULL, str(path))
            train.write_metrics_csv = write_metrics_csv
        elif kind == "summary":  # summary.json, the main process's last write
            import recipes._adaptive.report as report
            real = report.write_text

            def write_text(path, *args, **kwargs):
                if str(path).endswith("summary.json"):
                    raise OSError(*FULL, str(path))
                return real(path, *args, **kwargs)
            report.write_text = write_text
        elif kind == "checkpoint":  # this process's part of a checkpoint
            import accelerate

            def save_state(self, *args, **kwargs):
                raise OSError(*FULL)
            accelerate.Accelerator.save_state = save_state
        elif kind == "step":  # a corrupt file one process's shard reads, mid-epoch
            import torch.nn.functional as F
            real_loss, calls = F.cross_entropy, []

            def cross_entropy(*args, **kwargs):
                calls.append(1)
                if len(calls) == 7:
                    raise OSError(errno.EIO, "image file is truncated", "/data/train/7.png")
                return real_loss(*args, **kwargs)
            F.cross_entropy = cross_entropy
''')


@pytest.fixture
def faults(tmp_path):
    path = tmp_path / "faults_ext.py"
    path.write_text(FAULTS)
    return path


def launch_with_fault(faults, out, fault, rank, args=TINY):
    env = dict(os.environ, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="", MPLBACKEND="Agg", FAULT=fault,
               FAULT_RANK=str(rank))
    r = launch_two([SCRIPT, "--plugins", faults, *args, "--output_dir", out], env=env, cwd=ROOT)
    return r, r.stdout + r.stderr


@pytest.mark.parametrize("fault, rank, message", [
    ("metrics", 0, "writing metrics.csv into {out} failed (No space left on device [errno 28]: {out}/metrics.csv)"),
    ("summary", 0, "writing summary.json into {out} failed (No space left on device [errno 28]: {out}/summary.json)"),
    ("checkpoint", 1, "writing checkpoint {out}/checkpoints/step_00000005 failed (No space left on device [errno 28])"),
])
def test_a_failed_write_during_the_run_stops_every_process_with_one_error_line(faults, tmp_path, fault, rank, message):
    """A full disk while the main process alone wrote metrics.csv or summary.json: it died with an OSError
    traceback, and the other process with gloo's "Connection closed by peer" traceback in its next
    collective. A checkpoint write that failed on one process was agreed, but both processes printed
    its line. Now every process stops at the write together, and process 0 prints one line naming the
    file, the reason and how to continue."""
    out = tmp_path / "run"
    r, text = launch_with_fault(faults, out, fault, rank)
    assert r.returncode != 0 and text.count("recipes/adaptive.py: error:") == 1, text[-3000:]
    assert message.format(out=out) in text, text[-3000:]
    assert "Connection closed" not in text and "[rank0]: Traceback" not in text and "[rank1]: Traceback" not in text
    if fault != "checkpoint":  # how to continue: from the run's last checkpoint
        last = "step_00000005" if fault == "metrics" else "step_00000010"
        assert f"free disk space (or make the run folder writable); add --resume latest --output_dir {out} to the " \
               f"same command to continue from {last}" in text, text[-3000:]


def test_a_full_disk_writing_a_mask_only_runs_config_is_one_error_line(faults, tmp_path):
    """A mask_only run's config.yaml was written by the main process alone, not agreed: a full disk there
    ended it with an OSError traceback, and the other process with "stopped because another process of the
    launch stopped first". Every process now stops at the write together, and process 0 prints one line
    naming the file, the reason and the fix."""
    out = tmp_path / "run"
    r, text = launch_with_fault(faults, out, "config", 0, ["--mode", "mask_only", "--max_steps", "4", "--update_every",
                                                           "2", "--threads", "1", "--progress", "false", "--figures",
                                                           "false"])
    assert r.returncode != 0 and text.count("recipes/adaptive.py: error:") == 1, text[-3000:]
    assert (f"error: writing config.yaml into {out} failed (No space left on device [errno 28]: {out}/config.yaml): "
            "free disk space (or make the run folder writable)") in text, text[-3000:]
    assert "stopped because another process" not in text, text[-3000:]
    assert "OSError" not in text and "[rank0]: Traceback" not in text and "[rank1]: Traceback" not in text, text[-3000:]


def test_a_ctrl_c_to_the_whole_launch_and_a_nan_warning_print_once(faults, tmp_path):
    """A Ctrl-C to the whole launch (every process of it) printed "interrupted ..." from each process, and
    the controller's NaN or inf warning (of gradient statistics reduced across the processes: every
    process gives it alike) printed once per process. Each prints once now."""
    r, text = launch_with_fault(faults, tmp_path / "run", "interrupt", "all", [*TINY, "--lr", "1e12"])
    assert r.returncode != 0 and text.count("recipes/adaptive.py: interrupted") == 1, text[-3000:]
    assert text.count("hold NaN or inf") == 1, text[-3000:]
    assert "recipes/adaptive.py: error:" not in text, text[-3000:]


def test_an_error_in_one_processs_training_step_leaves_the_others_one_line(faults, tmp_path):
    """An error in one process's step (a corrupt file only its shard reads) is not agreed (that would take a
    collective per step): that process writes its own error, and the other, whose next collective fails,
    wrote gloo's "Connection closed by peer" traceback; it now writes one line pointing at the first
    (when the launcher has not ended it already)."""
    r, text = launch_with_fault(faults, tmp_path / "run", "step", 1)
    assert r.returncode != 0 and "OSError: [Errno 5] image file is truncated: '/data/train/7.png'" in text, text[-3000:]
    assert "Connection closed" not in text and "[rank0]: Traceback" not in text, text[-3000:]


_fresh_accelerate_state = pytest.fixture(autouse=True)(fresh_recipe_state)


def test_a_full_disk_on_one_process_is_one_line_naming_the_file_and_how_to_continue(tmp_path, monkeypatch, capsys):
    """On one process too: a full disk while writing metrics.csv ended with an OSError traceback."""
    from recipes._adaptive import train

    def write_metrics_csv(rows, path):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))
    monkeypatch.setattr(train, "write_metrics_csv", write_metrics_csv)
    with pytest.raises(SystemExit) as e:
        R.main([*TINY, "--output_dir", str(tmp_path)])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(f"recipes/adaptive.py: error: writing metrics.csv into {tmp_path} failed (No space left on "
                          f"device [errno 28]: {tmp_path}/metrics.csv): free disk space (or make the run folder "
                          f"writable); add --resume latest --output_dir {tmp_path} to the same command to continue "
                          "from step_00000005"), err
    assert (tmp_path / "checkpoints" / "step_00000005").is_dir()  # what the line names to continue from


def test_this_processs_own_error_that_speaks_of_a_closed_connection_is_not_taken_for_a_peers(monkeypatch):
    """peer_stopped read any RuntimeError with "Connection reset by peer" (or "closed", "Broken pipe") in its
    message as a collective's whose peer had stopped: an error of this process's own (a dataset read over the
    network, raised again from a DataLoader worker as a RuntimeError) was printed as "stopped because another
    process of the launch stopped first: its error is written above", while the other process, whose
    collective then failed, said the same: neither wrote the error. Only one raised in torch's collective
    code is the peer's."""
    from adaptive.distributed import peer_stopped

    monkeypatch.setenv("WORLD_SIZE", "2")

    def read_shard(phrase):
        raise RuntimeError("Caught ClientPayloadError in DataLoader worker process 0.\nOriginal Traceback (most recent "
                           "call last):\n  ...\naiohttp.ClientPayloadError: Response payload is not completed: "
                           f"<ConnectionResetError: [Errno 104] {phrase}>")

    for phrase in ("Connection reset by peer", "Connection closed by peer", "Broken pipe"):
        with pytest.raises(RuntimeError) as e:
            read_shard(phrase)
        assert phrase in str(e.value) and not peer_stopped(e.value), phrase


def test_an_error_making_the_outputs_is_not_called_a_full_disk(tmp_path, monkeypatch, capsys):
    """main_writes took every RuntimeError raised while the outputs were made for a failed write (torch.save's
    writer raises one on a full disk): a figure's (matplotlib's tick locator) or a tensor's error ended in
    "writing the run's outputs failed (RuntimeError: ...): free disk space". It is raised as it is; torch's
    writer's own failure is still a failed write."""
    import adaptive.plots
    import torch

    def plot_run(*args, **kwargs):
        raise RuntimeError("Locator attempting to generate 1002 ticks ([-1.0, ..., 1.0]), which exceeds "
                           "Locator.MAXTICKS (1000).")
    monkeypatch.setattr(adaptive.plots, "plot_run", plot_run)
    with pytest.raises(RuntimeError, match="MAXTICKS") as e:
        R.main([*TINY, "--figures", "true", "--output_dir", str(tmp_path / "a")])
    assert not isinstance(e.value, R.RunWriteError)

    real = torch.save

    def save(obj, f, *args, **kwargs):
        if "dense_state_dict.pt" in str(getattr(f, "name", f)):  # (an open temporary file: atomic_torch_save)
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")
        return real(obj, f, *args, **kwargs)
    monkeypatch.setattr(torch, "save", save)
    capsys.readouterr()
    with pytest.raises(SystemExit):
        R.main([*TINY, "--output_dir", str(tmp_path / "b")])
    # (the trained connectome is written first, before the test split is read: its write is the one that fails)
    assert f"error: writing the trained connectome into {tmp_path / 'b'} failed (RuntimeError: [enforce fail at " \
           "inline_container.cc:672] . unexpected pos 704 vs 598): free disk space" in capsys.readouterr().err


def test_ctrl_c_after_a_resume_from_an_earlier_checkpoint_names_that_checkpoint(tmp_path, capsys):
    """A run resumed from an earlier checkpoint (--resume RUN/checkpoints/step_5, while step_10 and step_15
    of the attempt it abandons remain) and interrupted before it saved one of its own was told "add --resume
    latest ... to continue from step_00000015": the abandoned attempt's. The advice names the checkpoint it
    resumed, as a failed checkpoint's does."""
    args = [*TINY, "--max_steps", "17", "--keep_checkpoints", "0", "--output_dir", str(tmp_path)]
    R.main(args)
    ck = tmp_path / "checkpoints"
    assert [p.name for p in sorted(ck.iterdir())] == ["step_00000005", "step_00000010", "step_00000015"]

    def interrupt(state):
        if state.step == 7:
            raise KeyboardInterrupt
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        R.main([*args, "--resume", str(ck / "step_00000005")], on_step=interrupt)
    assert e.value.code == 130
    err = capsys.readouterr().err
    assert f"give --resume {ck / 'step_00000005'} (in place of the command's --resume) to continue from " \
           "step_00000005" in err and "--resume latest would take step_00000015" in err, err
    assert "to continue from step_00000015" not in err, err


def test_ctrl_c_after_a_resume_of_the_newest_checkpoint_named_relative_advises_resume_latest(tmp_path, capsys,
                                                                                                monkeypatch):
    """--resume run/checkpoints/step_00000010 --output_dir run resumes the newest checkpoint, but the recipe
    makes --output_dir absolute while the checkpoint stays as typed: Ctrl-C's advice compared the two as
    spelled and said "give --resume run/checkpoints/step_00000010 (in place of the command's --resume) ...
    --resume latest would take step_00000010", contradicting itself. It is --resume latest, as for any resume
    of the newest checkpoint."""
    monkeypatch.chdir(tmp_path)
    args = [*TINY, "--max_steps", "12", "--keep_checkpoints", "0"]
    R.main([*args, "--output_dir", "run"])

    def interrupt(state):
        if state.step == 11:
            raise KeyboardInterrupt
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        R.main([*args, "--resume", "run/checkpoints/step_00000010", "--output_dir", "run"], on_step=interrupt)
    assert e.value.code == 130
    err = capsys.readouterr().err
    assert f"interrupted; add --resume latest --output_dir {tmp_path / 'run'} to the same command to continue from " \
           "step_00000010" in err, err
    assert "in place of the command's --resume" not in err, err
