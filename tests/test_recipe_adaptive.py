"""End-to-end runs of recipes/adaptive.py on tiny settings: outputs, resume equivalence, atomic
checkpoints, two processes, bf16, bad arguments."""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import adaptive
from adaptive import jsonio
from adaptive.config import load_config
from adaptive.models import build_model
from adaptive.training import find_checkpoint, list_checkpoints, read_metrics_csv

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _ports import free_port, launch_two  # noqa: E402
from _scripts import CHILD_TIMEOUT, load_script  # noqa: E402
from _training import fresh_recipe_state  # noqa: E402
from _figures import close_kept_figures  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "recipes" / "adaptive.py"


R = load_script("recipes/adaptive.py", "recipe_adaptive")
from recipes._adaptive import train as recipe_train  # noqa: E402  (the recipe's module that reads the data)
# tiny settings: digits, a short run, one thread
TINY = ["--max_steps", "40", "--update_every", "10", "--log_every", "5", "--threads", "1", "--progress", "false"]


_fresh_accelerate_state = pytest.fixture(autouse=True)(fresh_recipe_state)  # a fresh Accelerator per in-process run


_close_kept_figures = pytest.fixture(autouse=True)(close_kept_figures)


def run(tmp, *extra, on_step=None):
    return R.main(TINY + ["--output_dir", str(tmp), *extra], on_step=on_step)


def same_state(a, b):
    sa, sb = a.model.state_dict(), b.model.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def safetensors_parts(path):
    """A safetensors file's header (parsed) and data bytes: safetensors writes the metadata keys in
    a random order (a Rust HashMap), so two saves of one connectome differ in bytes, not in these."""
    raw = Path(path).read_bytes()
    n = int.from_bytes(raw[:8], "little")
    return json.loads(raw[8:8 + n]), raw[8 + n:]


def outside_text_fields(doc, key=None):
    """The strings of parsed JSON ``doc`` that are not under a text field (adaptive.jsonio.TEXT_FIELDS) nor
    one of the non-finite numbers' strings: what a reader would take for a number if it ever read "NaN"."""
    if jsonio.text_field(key):
        return []
    if isinstance(doc, str):
        return [] if doc in jsonio.NONFINITE else [(key, doc)]
    if isinstance(doc, dict):
        return [s for k, v in doc.items() for s in outside_text_fields(v, k)]
    if isinstance(doc, list):
        return [s for v in doc for s in outside_text_fields(v, key)]
    return []


def test_default_run_writes_every_output(tmp_path, capsys):
    res = run(tmp_path, "--figures", "true")
    out = capsys.readouterr().out
    cfg = res.controller
    # the defaults: digits, a small MLP, the utility controller adapting at a moderate density
    assert (R.RunConfig().dataset, R.RunConfig().model, R.RunConfig().policy) == ("digits", "mlp", "utility")
    names = {"config.yaml", "metrics.csv", "events.jsonl", "connectome.safetensors", "dense_state_dict.pt",
             "loss_accuracy.png", "density.png", "edits.png", "summary.json"}
    assert names <= {p.name for p in tmp_path.iterdir()}
    for png in ("loss_accuracy.png", "density.png", "edits.png"):
        assert (tmp_path / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # metrics: train, holdout and test rows with the connectome's density
    rows = read_metrics_csv(tmp_path / "metrics.csv")
    assert {r["split"] for r in rows} == {"train", "holdout", "test"}
    assert [r["step"] for r in rows if r["split"] == "train"] == list(range(5, 41, 5))
    assert all(abs(r["density"] - 0.2) < 1e-3 and r["removed"] > 0 for r in rows)
    test_row = rows[-1]
    assert test_row["split"] == "test" and test_row["accuracy"] == pytest.approx(res.summary["test_accuracy"])
    assert res.summary["test_accuracy"] > 0.5  # 40 steps on digits learn something
    # events: the init plus one update every 10 steps, each editing the connectome
    events = [json.loads(line) for line in (tmp_path / "events.jsonl").read_text().splitlines()]
    assert [e["step"] for e in events] == [0, 10, 20, 30]  # edits end at 75% of 40 steps
    assert all(e["pruned"] == e["grown"] for e in events[1:]) and all(e["pruned"] > 0 for e in events[1:3])
    assert all(len(e["mask_hash"]) == 64 for e in events[1:])
    assert events == json.loads(json.dumps(cfg.events, default=float))
    # every text the outputs hold is under a text field, which the readers never take for a number (a policy
    # registered as "NaN"): a new text field goes into adaptive.jsonio.TEXT_FIELDS
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert outside_text_fields(events) == [] and outside_text_fields(summary) == []
    # the connectome file rebuilds the same masks on a fresh model
    model = build_model("mlp", num_classes=10, in_shape=(1, 8, 8))
    assert adaptive.Connectome.load(tmp_path / "connectome.safetensors", model).mask_hash() == res.conn.mask_hash()
    # the dense state_dict loads strictly into a vanilla model, zeros where pruned
    sd = torch.load(tmp_path / "dense_state_dict.pt", weights_only=True)
    model.load_state_dict(sd, strict=True)
    for n, m in res.conn.masks.items():
        assert torch.equal(sd[n], res.conn.params[n].detach()) and not bool(sd[n][~m].any())
    # the resolved config reads back
    assert load_config(R.RunConfig, tmp_path / "config.yaml").max_steps == 40
    assert "test accuracy" in out and str(tmp_path) in out and "density 0.2" in out
    # the summary counts nonzero weights too (a live synapse can hold 0.0); the closing line says
    # how many test images the accuracy is of, and the held-out part is named as TRAIN's
    nonzero = sum(int(torch.count_nonzero(sd[n])) for n in res.conn.masks)
    assert res.summary["nonzero"] == nonzero <= res.summary["live"]
    n_test = res.summary["test_examples"]
    assert f"on {n_test:,} test images (the whole test split; held-out part of TRAIN" in out
    assert res.summary["test_split_examples"] == n_test
    cfg_back = load_config(R.RunConfig, tmp_path / "config.yaml")
    labels = R._split_labels(R.get_dataloaders(cfg_back), n_test, "train")
    for subset, want in ((100, "test (100 of 359 images, drawn by --test_subset)"), (5000, f"test ({n_test:,} images)")):
        cfg_back.test_subset = subset  # a draw of 100; 5000 draws the whole split
        loaders = R.get_dataloaders(cfg_back)
        assert R._split_labels(loaders, len(loaders.datasets.test), "train", subset)["test"] == want
    assert labels["holdout"].startswith("held-out (") and labels["holdout"].endswith(" images of TRAIN)")
    assert labels["test"] == f"test ({n_test:,} images)"


@pytest.mark.parametrize("mode", [["--mode", "train"], ["--mode", "mask_only", "--target", "0.5"]])
def test_the_closing_line_says_a_test_subset_is_a_stratified_draw(tmp_path, capsys, mode):
    """With --test_subset 100 the closing line said 'on 100 test images', as if that were the test
    split; loss_accuracy.png's legend said it was a draw of 359."""
    res = R.main(mode + ["--output_dir", str(tmp_path), "--max_steps", "4", "--update_every", "2", "--threads", "1",
                         "--progress", "false", "--figures", "false", "--test_subset", "100"])
    out = capsys.readouterr().out
    assert "on 100 test images (a stratified draw of 359: --test_subset; held-out part of TRAIN " in out, out
    assert (res.summary["test_examples"], res.summary["test_split_examples"]) == (100, 359)


class Stop(Exception):
    pass


@pytest.mark.parametrize("data", [[], ["--dataset", "fake", "--dataset_kw", "{shape: [3, 8, 8], train_size: 1800}"],
                                  ["--dataset", "fake", "--dataset_kw", "{shape: [3, 8, 8], train_size: 1800}", "--num_workers", "2"]],
                         ids=["digits", "fake-augmented", "fake-augmented-workers"])
def test_resume_is_bit_exact(tmp_path, data):
    # 26 steps per epoch: the interruption falls mid-epoch (epoch 1) and mid utility window. digits
    # ignores --augment; the fake images are cropped and flipped from the RNG, so RNG states must be
    # restored too. With loader workers that persisted across epochs, a resumed run's crops differed
    common = ["--max_steps", "70", "--batch_size", "64", "--augment", "true", "--eval_every", "20", *data]
    full = run(tmp_path / "full", *common, "--figures", "false")  # (the resumed run draws its figures)

    def stop(state):
        if state.step == 35:
            raise Stop

    with pytest.raises(Stop):
        run(tmp_path / "cut", *common, "--checkpoint_every", "35", on_step=stop)
    ckpt = find_checkpoint("latest", tmp_path / "cut")
    assert ckpt.name == "step_00000035"
    resumed = run(tmp_path / "cut", *common, "--resume", "latest")
    assert resumed.state.step == 70
    assert load_config(R.RunConfig, tmp_path / "cut" / "config.yaml").resume is None  # --config FILE: a new run
    assert resumed.conn.mask_hash() == full.conn.mask_hash()
    assert same_state(resumed, full)
    # the run's connectome file too (its bytes differ only in the order of the metadata keys)
    name = "connectome.safetensors"
    assert safetensors_parts(tmp_path / "cut" / name) == safetensors_parts(tmp_path / "full" / name)
    assert resumed.controller.events == full.controller.events
    assert resumed.state.metrics == full.state.metrics
    opt_a, opt_b = full.controller.optimizer.state_dict(), resumed.controller.optimizer.state_dict()
    assert all(torch.equal(opt_a["state"][i]["momentum_buffer"], opt_b["state"][i]["momentum_buffer"])
               for i in opt_a["state"])


def test_resume_is_bit_exact_on_an_augmented_image_folder(tmp_path):
    # ImageNet-style folders augment through torchvision transforms: keyed per (seed, epoch, sample)
    # the resumed run crops exactly as the uninterrupted one, with loader workers too
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, n in (("train", 40), ("val", 2)):
        for c in ("n01", "n02"):
            (tmp_path / "data" / "imagenet" / split / c).mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)).save(
                    tmp_path / "data" / "imagenet" / split / c / f"{i}.png")
    common = ["--dataset", "imagenet", "--data-dir", str(tmp_path / "data"), "--dataset_kw", "{image_size: 12, resize: 14}",
              "--max_steps", "24", "--batch_size", "16", "--augment", "true", "--eval_every", "12", "--update_every", "6",
              "--num_workers", "2"]
    full = run(tmp_path / "full", *common, "--figures", "false")  # (the resumed run draws its figures)

    def stop(state):
        if state.step == 11:  # mid-epoch: 72 train images make 4.5 batches of 16
            raise Stop

    with pytest.raises(Stop):
        run(tmp_path / "cut", *common, "--checkpoint_every", "11", on_step=stop)
    resumed = run(tmp_path / "cut", *common, "--resume", "latest")
    assert resumed.state.step == 24
    assert resumed.conn.mask_hash() == full.conn.mask_hash()
    assert same_state(resumed, full)
    assert resumed.state.metrics == full.state.metrics


def test_kill_while_saving_leaves_previous_checkpoint(tmp_path, monkeypatch):
    import accelerate.accelerator as acc_mod

    common = ["--max_steps", "60", "--checkpoint_every", "20"]
    real = acc_mod.save_custom_state
    calls = []

    def dying(obj, path, index, **kw):  # the process "dies" halfway through the second save
        calls.append((path, index))
        if "step_00000040" in str(path) and index == 1:
            raise Stop
        return real(obj, path, index, **kw)

    monkeypatch.setattr(acc_mod, "save_custom_state", dying)
    with pytest.raises(Stop):
        run(tmp_path / "run", *common)
    monkeypatch.setattr(acc_mod, "save_custom_state", real)
    root = tmp_path / "run" / "checkpoints"
    assert [p.name for p in list_checkpoints(root)] == ["step_00000020"]
    partial = root / ".tmp-step_00000040"
    assert (partial / "model.safetensors").exists() and not (partial / "custom_checkpoint_1.pkl").exists()
    resumed = run(tmp_path / "run", *common, "--resume", "latest")  # loads step 20 and finishes
    full = run(tmp_path / "full", "--max_steps", "60", "--figures", "false")  # (the resumed run draws its figures)
    assert resumed.conn.mask_hash() == full.conn.mask_hash() and same_state(resumed, full)
    assert not partial.exists()  # the next save cleaned it up


def test_bf16_keeps_pruned_weights_zero(tmp_path, capsys):
    res = run(tmp_path, "--mixed_precision", "bf16", "--max_steps", "30", "--figures", "false")
    assert res.summary["updates"] == 2
    # the test figure was measured under bf16 autocast, and the summary and the console say so
    assert json.loads((tmp_path / "summary.json").read_text())["mixed_precision"] == "bf16"
    assert "every figure measured under bf16 autocast" in capsys.readouterr().out
    for n, m in res.conn.masks.items():
        w = res.conn.params[n].detach()
        assert w.dtype == torch.float32
        assert torch.count_nonzero(w[~m]) == 0, n
        assert torch.count_nonzero(w[m]) > 0.9 * int(m.sum())


def test_fp16_on_a_cpu_is_refused_naming_bf16(tmp_path, capsys, monkeypatch):
    """Accelerate runs no fp16 autocast on a CPU: the run was float32 bit for bit, yet summary.json
    recorded fp16 and the closing line said every figure was measured under fp16 autocast."""
    for how, given in ((["--mixed_precision", "fp16"], "--mixed_precision fp16 cannot run on the CPU"),
                       ([], "mixed precision fp16 (from accelerate launch or its config) cannot run on the CPU")):
        if not how:  # what `accelerate launch --mixed_precision fp16` hands the process
            monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "fp16")
        with pytest.raises(SystemExit) as e:
            run(tmp_path / "a", "--cpu", "true", *how)
        assert e.value.code == 2
        err = capsys.readouterr().err
        assert given in err and "use --mixed_precision bf16 (the CPU's mixed precision)" in err
        assert not (tmp_path / "a").exists()


def test_adamw_takes_momentum_as_beta1(tmp_path):
    """--momentum was documented as AdamW's beta1 but never reached it: runs with 0.9 and 0.0 were
    bit-identical. The default (0.9) is AdamW's own beta1, so default runs are unchanged."""
    from adaptive.config import parse_config

    model = build_model("mlp", num_classes=10, in_shape=(1, 8, 8))
    assert R.build_optimizer(parse_config(R.RunConfig, ["--optimizer", "adamw"]), model).param_groups[0]["betas"] == \
        (0.9, 0.999) == torch.optim.AdamW(model.parameters()).defaults["betas"]
    adamw = ["--optimizer", "adamw", "--lr", "0.003", "--max_steps", "6", "--update_every", "3", "--figures", "false"]
    heavy = run(tmp_path / "m09", *adamw, "--momentum", "0.9")
    light = run(tmp_path / "m0", *adamw, "--momentum", "0.0")
    assert not same_state(heavy, light)


# the settings of the two-process run below, which the tests that need a finished two-process run share
TWO = [*TINY, "--checkpoint_every", "20", "--figures", "false"]


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory):
    """A finished run of ``TWO`` under ``accelerate launch`` with 2 processes: its folder and the launch's
    result. One launch for the tests that check its outputs and those that resume copies of it."""
    out = tmp_path_factory.mktemp("two_process_run") / "run"
    env = dict(os.environ, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="", MPLBACKEND="Agg")
    return out, launch_two([SCRIPT, *TWO, "--output_dir", out], env=env, cwd=ROOT)


def test_two_processes_agree(two_process_run):
    tmp_path, r = two_process_run  # (the shared run's folder)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["processes"] == 2
    assert summary["test_examples"] == 359  # gathered from both shards, the padding dropped
    hashes = summary["mask_hash_per_process"]
    assert len(hashes) == 2 and hashes[0] == hashes[1]
    events = [json.loads(line) for line in (tmp_path / "events.jsonl").read_text().splitlines()]
    assert [e["step"] for e in events if e["kind"] == "update"] == [10, 20, 30]
    assert all(e["pruned"] > 0 for e in events[1:3])  # checked across ranks at every update (verify=True)
    model = build_model("mlp", num_classes=10, in_shape=(1, 8, 8))
    assert adaptive.Connectome.load(tmp_path / "connectome.safetensors", model).mask_hash() == hashes[0]
    ckpt = find_checkpoint("latest", tmp_path)
    assert {"random_states_0.pkl", "random_states_1.pkl"} <= {p.name for p in ckpt.iterdir()}
    assert r.stdout.count("test accuracy") == 1  # the summary is printed by the main process only
    assert "started this one alone" not in r.stderr  # (a launch that started two is no lone process)


def test_a_checkpoint_copy_one_process_cannot_read_stops_every_process_with_one_error(tmp_path, two_process_run):
    """--resume where each process reads its own copy of the checkpoint (machines of their own) and process
    1's optimizer.bin is damaged (the main process alone hashes the files): process 1 stopped loading it
    while process 0 went on into training, its next collective. Every process now stops together, with
    one line naming process 1 and its file."""
    import shutil

    env = dict(os.environ, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="", MPLBACKEND="Agg")
    run_folder, r = two_process_run  # a copy of a finished two-process run for each process
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    for p in ("p0", "p1"):
        shutil.copytree(run_folder, tmp_path / p / "run")
    damaged = find_checkpoint("latest", tmp_path / "p1" / "run") / "optimizer.bin"
    damaged.write_bytes(b"not a checkpoint")
    r = launch_two([ROOT / "tests" / "scripts" / "per_process_cwd.py", tmp_path / "p0", tmp_path / "p1", SCRIPT,
                    *TWO, "--output_dir", "run", "--resume", "latest"], env=env, cwd=ROOT)
    out = r.stdout + r.stderr
    assert r.returncode != 0 and out.count("recipes/adaptive.py: error:") == 1, out[-3000:]
    line = next(x for x in out.splitlines() if "recipes/adaptive.py: error:" in x)
    # refused before anything loads (it stopped part-way into Accelerate's load before: the model loaded)
    assert f"error: checkpoint {damaged.parent} is damaged: optimizer.bin cannot be read (" in line, line
    assert "(found by process 1 of 2)" in line and "process 0 of 2 found no such problem" in line, line
    assert "resumed from" not in out, out[-3000:]
    assert "Connection closed" not in out and "[rank0]: Traceback" not in out, out[-3000:]


@pytest.mark.parametrize("args, message", [
    (["--densty", "0.1"], "did you mean 'density'"),
    (["--density", "lots"], "config key 'density' (from the command line) expects"),
    (["--density", "1.5"], "density must be in (0, 1]"),
    (["--density", "10"], "density must be in (0, 1], got 10.0 (a fraction of the synapses, not a percentage: 10% is "
                          "--density 0.1)"),
    (["--policy", "rigl2"], "unknown policy 'rigl2'"),
    (["--policy", "thresold"], "--plugins; did you mean 'threshold' for 'thresold'?"),
    (["--estimator", "obdd"], "unknown estimator 'obdd'"),
    (["--model", "Lenet3000"], "--plugins; did you mean 'lenet300' for 'lenet3000'?"),
    (["--epochs", "2.5"], "expects Optional[int], got '2.5'"),
    (["--mode", "mask_only", "--checkpoint_every", "5"], "mask_only checkpoints after every target on its own"),
    (["stray"], "unexpected argument 'stray'"),
    (["--edit_fraction", "1.5"], "edit_fraction must be in [0, 1], got 1.5"),
    (["--model_kw", "num_classes=5"], "--model_kw num_classes: the recipe sets num_classes from the dataset's class count"),
    (["--mode", "mask_only", "--policy", "set"], "mode mask_only does not use policy (got 'set')"),
    (["--mode", "mask_only", "--protect", "fc3*"], "does not use protect (got ['fc3*']): keep a layer out"),
    (["--mode", "mask_only", "--budget", "uniform"], "does not use budget"),
    (["--mode", "mask_only", "--min_density", "0.1"], "does not use min_density"),
    (["--mode", "mask_only", "--lr", "0.01"], "does not use lr (got 0.01): mask_only trains no weight"),
    (["--ensemble", "fc1=neurons;synapse"], "ensemble 'fc1=neurons;synapse': ensemble rule for 'fc1': unknown"),
    (["--policy", "rigl", "--estimator", "obd"], "policy 'rigl' fixes its scores, so estimator 'obd' would be ignored"),
    # a plugin's policy whose plugin is not loaded (a resume without it) is unknown, not one that 'fixes its scores'
    (["--policy", "skip_set", "--estimator", "obd"], "unknown policy 'skip_set': use one of balanced"),
    (["--eval_every", "-1"], "eval_every must be >= 0"),
    (["--log_every", "-1"], "log_every must be >= 0"),
    (["--warmup_steps", "-5"], "warmup_steps must be >= 0"),
    (["--keep_checkpoints", "-1"], "keep_checkpoints must be >= 0"),
    (["--eval_batch_size", "0"], "eval_batch_size must be an integer >= 1"),
    (["--threads", "0"], "threads must be >= 1"),
])
def test_bad_arguments_fail_clearly(args, message, capsys):
    with pytest.raises(SystemExit) as e:
        R.main(args)
    assert e.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("value", ["2", "-0.1", "nan"])
def test_a_min_density_outside_0_1_is_refused_as_the_settings_are_read(value, capsys):
    """--min_density 2 (or nan) passed the settings' checks and was refused by the controller only once the
    data had loaded (an ImageNet index: minutes), without naming the option's meaning."""
    with pytest.raises(SystemExit) as e:
        R.parse_args(["--min_density", value])
    assert e.value.code == 2
    assert f"min_density must be in [0, 1] (each layer's density floor; 0: none), got {float(value)}" in \
        capsys.readouterr().err


def test_an_estimator_a_config_file_gives_is_refused_for_rigl_naming_the_file_and_the_option_that_drops_it(
        tmp_path, capsys):
    """--policy rigl over a --config file that names an estimator: the error names the file and the
    fix (--estimator none), not "drop --estimator", an option the command does not hold."""
    cfg = tmp_path / "utility.yaml"
    cfg.write_text("policy: utility\nestimator: curvature\n")
    with pytest.raises(SystemExit):
        R.main(["--config", str(cfg), "--policy", "rigl"])
    assert f"{cfg} gives it: add --estimator none" in capsys.readouterr().err
    assert R.parse_args(["--config", str(cfg), "--policy", "rigl", "--estimator", "none"]).estimator is None


def test_estimator_kw_a_config_file_gives_is_refused_for_rigl_naming_the_file(tmp_path, capsys):
    """Past the estimator's refusal (--estimator none), the file's estimator_kw is refused too: the error
    said "drop --estimator_kw", an option the command does not hold (and a file's mapping the command
    line only adds to); it names the file, and the command line's own --estimator_kw still reads "drop"."""
    cfg = tmp_path / "utility.yaml"
    cfg.write_text("policy: utility\nestimator: curvature\nestimator_kw: {damping: 1}\n")
    with pytest.raises(SystemExit):
        R.main(["--config", str(cfg), "--policy", "rigl", "--estimator", "none"])
    err = capsys.readouterr().err
    assert f"{cfg} gives it: delete its estimator_kw" in err and "drop --estimator_kw" not in err
    with pytest.raises(SystemExit):
        R.main(["--policy", "rigl", "--estimator_kw", "damping=1"])
    assert "runs none here: drop --estimator_kw (it takes no estimator)" in capsys.readouterr().err


def test_runtime_problems_fail_with_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit):
        R.main(["--output_dir", str(tmp_path / "a"), "--resume", "latest"])
    err = capsys.readouterr().err  # (it advised --checkpoint_every to a run that had it and stopped before one)
    # (it said "start it afresh with --overwrite": added to the same command, --resume and --overwrite are refused)
    assert "no complete checkpoint found in" in err and "start it afresh (drop --resume, add --overwrite)" in err
    with pytest.raises(SystemExit):
        R.main(["--output_dir", str(tmp_path / "b"), "--dataset", "mnist", "--data-dir", str(tmp_path / "nowhere")])
    err = capsys.readouterr().err
    assert "dataset 'mnist' not found" in err and "nowhere" in err and "Traceback" not in err


@pytest.mark.parametrize("precision", ["no", "bf16"])
def test_mask_only_mode_changes_no_weight(tmp_path, precision, capsys):
    from adaptive.mask_only import changed_weights

    torch.manual_seed(123)
    weights = build_model("mlp", num_classes=10, in_shape=(64,)).state_dict()
    torch.save(weights, tmp_path / "w.pt")
    res = R.main(["--output_dir", str(tmp_path / "run"), "--mode", "mask_only", "--target", "0.3", "--epochs", "1",
                  "--update_every", "8", "--threads", "1", "--progress", "false", "--figures", "false",
                  "--mixed_precision", precision, "--weights", str(tmp_path / "w.pt")])
    assert res.conn.mode == "mask_only" and changed_weights(res.conn) == 0
    assert ("surviving weights that differ from the original: 0 (every tensor of the model, biases and "
            "normalisation statistics too, compared bit for bit with the weights as loaded)") in capsys.readouterr().out
    assert res.summary["mixed_precision"] == precision  # the precision its figures were measured at
    # against the weights file itself, not the copy the run kept: every live weight bit-identical,
    # every pruned one exactly 0.0, every other tensor (biases, ...) untouched
    final = res.model.state_dict()
    for k, w in weights.items():
        m = res.conn.masks.get(k)
        if m is None:
            assert torch.equal(final[k].cpu(), w), k
        else:
            assert torch.equal(final[k].cpu()[m.cpu()], w[m.cpu()]) and not final[k].cpu()[~m.cpu()].any(), k
    assert all(p.dtype == torch.float32 for p in res.conn.params.values())
    assert res.conn.density() == pytest.approx(0.7, abs=1e-3)
    rows = read_metrics_csv(tmp_path / "run" / "metrics.csv")
    assert {r["split"] for r in rows} == {"train", "holdout", "test"}
    assert (tmp_path / "run" / "connectome.safetensors").exists() and (tmp_path / "run" / "events.jsonl").read_text()


class _EveryOtherBatchIgnored:
    """A train loader whose every second batch holds only the ignored label (-100: padding positions, say)."""

    def __init__(self, loader):
        self.loader = loader

    def __len__(self):
        return len(self.loader)

    def __iter__(self):
        for i, (x, y) in enumerate(self.loader):
            yield x, (torch.full_like(y, -100) if i % 2 else y)


def test_mask_only_mode_reports_a_window_whose_every_label_is_ignored_with_no_train_loss(tmp_path, monkeypatch):
    """optimize_connectome gives a training window whose every label is the ignored one (-100) a train_loss of
    None (it scored nothing); the recipe turned each update into a metrics row with float(train_loss) and stopped
    with a bare "float() argument must be ... not 'NoneType'" after the whole optimisation, writing no output.
    Such a window's row now has an empty loss (and accuracy) in metrics.csv, as a regression's accuracy."""
    import adaptive.mask_only as mask_only

    real = mask_only.optimize_connectome
    monkeypatch.setattr(mask_only, "optimize_connectome",  # (the recipe imports it from there as it runs)
                        lambda model, train, holdout, target, **kw: real(model, _EveryOtherBatchIgnored(train), holdout,
                                                                          target, **kw))
    R.main(["--output_dir", str(tmp_path / "run"), "--mode", "mask_only", "--target", "0.3", "--max_steps", "6",
            "--update_every", "1", "--threads", "1", "--progress", "false", "--figures", "true"])
    train = [r for r in read_metrics_csv(tmp_path / "run" / "metrics.csv") if r["split"] == "train"]
    assert len(train) == 6 and [r["loss"] is None for r in train] == [False, True] * 3, train
    assert all(r["accuracy"] is None for r in train[1::2]) and (tmp_path / "run" / "loss_accuracy.png").exists()


def _mask_only_from_saved_weights(tmp_path):
    """A tiny --mode mask_only run (mlp on digits, 30% removed) from a weights file saved here."""
    torch.manual_seed(123)
    torch.save(build_model("mlp", num_classes=10, in_shape=(64,)).state_dict(), tmp_path / "w.pt")
    return R.main(["--output_dir", str(tmp_path / "run"), "--mode", "mask_only", "--target", "0.3", "--epochs", "1",
                   "--update_every", "8", "--threads", "1", "--progress", "false", "--figures", "false",
                   "--weights", str(tmp_path / "w.pt")])


def test_mask_only_differ_line_counts_a_surviving_weight_moved_by_one_bit(tmp_path, capsys, monkeypatch):
    """--mode mask_only's 'surviving weights that differ from the original' compares with a copy of
    the weights taken at load: a surviving weight moved by one ulp after the optimisation, in the model
    and in the connectome's own copy alike, prints 1 (a self-comparison would print 0)."""
    import adaptive.mask_only as mo

    real = mo.optimize_connectome

    def moved(model, *a, **kw):
        r = real(model, *a, **kw)
        name = next(iter(r.conn.params))
        live = r.conn.masks[name].flatten().nonzero()[0, 0]
        with torch.no_grad():
            for t in (r.conn.params[name], r.conn.original[name]):
                t.view(-1)[live] = torch.nextafter(t.view(-1)[live], torch.full_like(t.view(-1)[live], float("inf")))
        return r

    monkeypatch.setattr(mo, "optimize_connectome", moved)
    _mask_only_from_saved_weights(tmp_path)
    assert "surviving weights that differ from the original: 1 " in capsys.readouterr().out


def test_mask_only_differ_line_counts_what_the_load_changed_of_a_float64_file(tmp_path, capsys):
    """The line compared the model with a copy taken after the load: a float64 weights file, cast to the
    model's float32 as it loaded, printed 'differ from the original: 0' while every surviving weight
    differed from the file. It now counts them, saying the load (not the optimisation) changed them."""
    torch.manual_seed(123)
    sd = {k: v.double() + 1e-12 * torch.randn(v.shape, dtype=torch.float64)  # values a float32 cannot hold
          for k, v in build_model("mlp", num_classes=10, in_shape=(64,)).state_dict().items()}
    torch.save(sd, tmp_path / "w64.pt")
    res = R.main(["--output_dir", str(tmp_path / "run"), "--mode", "mask_only", "--target", "0.3", "--epochs", "1",
                  "--update_every", "8", "--threads", "1", "--progress", "false", "--figures", "false",
                  "--weights", str(tmp_path / "w64.pt")])
    final = res.model.state_dict()
    differ = sum(int(((final[k].cpu().double() != v) & (final[k].cpu() != 0)).sum()) for k, v in sd.items())
    out = capsys.readouterr().out
    assert differ > 0 and (f"surviving weights that differ from the original: {differ:,} ({differ:,} changed by the "
                           "load itself") in out, out
    assert "float64 in the file, float32 in the model" in out and "0 by the optimisation" in out


def test_mask_only_differ_line_reads_the_weights_file_as_it_was_loaded(tmp_path, capsys, monkeypatch):
    """The line's count of what the load changed re-read --weights at the report, after the optimisation:
    a weights file replaced during the run (a new export under the same name) or removed stopped the run
    at its report, or compared with values it never loaded. It is read at the set-up, as it loaded."""
    from recipes._adaptive import mask_only_run

    torch.manual_seed(123)
    sd = {k: v.double() + 1e-12 * torch.randn(v.shape, dtype=torch.float64)  # values a float32 cannot hold
          for k, v in build_model("mlp", num_classes=10, in_shape=(64,)).state_dict().items()}
    path = tmp_path / "w64.pt"
    torch.save(sd, path)
    real = mask_only_run._test_eval

    def replaced_then_scored(*a, **kw):  # the file replaced by its float32 cast while the run went on
        torch.save({k: v.float() for k, v in sd.items()}, path)
        return real(*a, **kw)

    monkeypatch.setattr(mask_only_run, "_test_eval", replaced_then_scored)
    res = R.main(["--output_dir", str(tmp_path / "run"), "--mode", "mask_only", "--target", "0.3", "--epochs", "1",
                  "--update_every", "8", "--threads", "1", "--progress", "false", "--figures", "false",
                  "--weights", str(path)])
    final = res.model.state_dict()
    differ = sum(int(((final[k].cpu().double() != v) & (final[k].cpu() != 0)).sum()) for k, v in sd.items())
    out = capsys.readouterr().out
    assert differ > 0 and f"differ from the original: {differ:,} ({differ:,} changed by the load itself" in out, out


def test_mask_only_mode_reads_the_test_split_only_for_the_report(tmp_path, monkeypatch):
    """--mode mask_only scores its snapshots on the held-out part of TRAIN and leaves the test split
    unread until the final report (README: the holdout used for every choice is a stratified, seeded
    part of TRAIN; the test split is read only when reported)."""
    import adaptive.mask_only as mo
    from adaptive.data.base import LazyDataset

    seen = {}
    real_loaders, real_opt = R.get_dataloaders, mo.optimize_connectome

    def loaders(cfg):
        seen["loaders"] = real_loaders(cfg)
        return seen["loaders"]

    def spy(model, train_loader, holdout_loader, *a, **kw):
        test = seen["loaders"].test.dataset
        assert isinstance(test, LazyDataset) and not test.materialized, "test split built before optimisation"
        assert holdout_loader.dataset is seen["loaders"].holdout.dataset, "snapshots scored on another split"
        r = real_opt(model, train_loader, holdout_loader, *a, **kw)
        assert not test.materialized, "test split read during optimisation"
        seen["optimised"] = True
        return r

    monkeypatch.setattr(recipe_train, "get_dataloaders", loaders)
    monkeypatch.setattr(mo, "optimize_connectome", spy)
    _mask_only_from_saved_weights(tmp_path)
    assert seen.get("optimised")
    assert seen["loaders"].test.dataset.materialized  # and read for the report


def test_mask_only_best_reports_the_held_out_score_of_the_masks_it_keeps(tmp_path):
    """--target best climbs rungs until held-out accuracy stops improving, keeps the best rung,
    and the summary's holdout accuracy is that rung's (not the last, worse, rung tried)."""
    res = R.main(["--output_dir", str(tmp_path), "--mode", "mask_only", "--target", "best", "--epochs", "1",
                  "--update_every", "8", "--threads", "1", "--progress", "false", "--figures", "false",
                  "--mask_only_kw.ladder", "[0.2, 0.5, 0.8, 0.95]", "--mask_only_kw.patience", "1"])
    rungs = [h for h in res.state.metrics if h["split"] == "holdout"]
    kept = res.conn.num_synapses() - res.conn.num_live()  # the model holds the chosen rung's masks
    assert kept > 0 and kept != rungs[-1]["removed"]  # here the climb went past the best rung
    chosen = [r["accuracy"] for r in rungs if r["removed"] == kept]
    assert res.summary["holdout_accuracy"] == pytest.approx(chosen[-1])
    assert res.summary["holdout_accuracy"] > rungs[-1]["accuracy"]


def test_mask_only_best_figures_star_the_masks_it_keeps(tmp_path, monkeypatch):
    """density.png ended at the last rung tried (the climb went past the best one) and nothing said
    which masks the run kept; now a star marks their density and held-out score, with the test point."""
    import adaptive.plots

    figs = []
    monkeypatch.setattr(adaptive.plots, "_save", lambda fig, plt, path: figs.append(fig) or path)
    res = R.main(["--output_dir", str(tmp_path), "--mode", "mask_only", "--target", "best", "--epochs", "1",
                  "--update_every", "8", "--threads", "1", "--progress", "false",
                  "--mask_only_kw.ladder", "[0.2, 0.5, 0.8, 0.95]", "--mask_only_kw.patience", "1"])
    la, dens = figs[0], figs[1]
    lines = {line.get_label(): line.get_xydata().tolist() for line in dens.axes[0].get_lines()}
    assert lines["overall"][-1][1] != pytest.approx(res.conn.density(), abs=1e-6)  # the line ends elsewhere
    ((step, density),) = lines["kept (best on held-out)"]
    assert density == pytest.approx(res.conn.density())
    held = [r for r in res.state.metrics if r["split"] == "holdout" and r["step"] == step]
    assert held and held[-1]["accuracy"] == pytest.approx(res.summary["holdout_accuracy"])
    acc = {line.get_label(): line.get_xydata().tolist() for line in la.axes[1].get_lines()}
    assert acc["kept (best on held-out)"] == [[step, pytest.approx(res.summary["holdout_accuracy"])]]
    test = [v for k, v in acc.items() if k.startswith("test")]
    assert test == [[[step, pytest.approx(res.summary["test_accuracy"])]]]  # the test point sits with the kept masks
    import matplotlib.pyplot as plt

    for fig in figs:
        plt.close(fig)


LEAN_RUN = """
import runpy, sys
sys.argv = [{script!r}, *{argv!r}]
runpy.run_path({script!r}, run_name="__main__")
heavy = ("matplotlib", "torchvision", "networkx", "torch_geometric", "graphs", "sklearn", "scipy")
print("imported:", sorted(m for m in heavy if m in sys.modules))
"""


def test_a_digits_run_without_figures_imports_no_plotting_vision_graph_or_sklearn_package(tmp_path, monkeypatch):
    """Start-up is most of a small run's time (and of this suite's): a digits run with --figures false,
    run as a program, imports neither matplotlib, nor torchvision, nor the graph packages, nor
    scikit-learn and scipy (the digits arrays come from their cache, warmed here as by any earlier run)."""
    from adaptive.data import get_datasets

    monkeypatch.setenv("ADAPTIVE_CACHE", str(tmp_path / "cache"))
    get_datasets("digits")
    argv = ["--max_steps", "1", "--threads", "1", "--progress", "false", "--figures", "false",
            "--output_dir", str(tmp_path / "run")]
    r = subprocess.run([sys.executable, "-c", LEAN_RUN.format(script=str(SCRIPT), argv=argv)], capture_output=True,
                       text=True, timeout=CHILD_TIMEOUT, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.splitlines()[-1] == "imported: []", r.stdout[-3000:]
    assert (tmp_path / "run" / "summary.json").is_file()


MISMATCH = '''
import importlib.util, sys
spec = importlib.util.spec_from_file_location("recipe", {script!r})
R = importlib.util.module_from_spec(spec); sys.modules["recipe"] = R; spec.loader.exec_module(R)
from recipes._adaptive import train  # the recipe's module that builds the controller
build = train.build_controller

def skewed(cfg, conn, *a, **kw):  # a bug that makes the ranks disagree: a per-rank seed
    import torch.distributed as dist
    cfg.seed += dist.get_rank()
    return build(cfg, conn, *a, **kw)

train.build_controller = skewed
R.main(sys.argv[1:])
'''


def test_two_processes_that_disagree_stop_with_a_clear_error(tmp_path):
    script = tmp_path / "mismatch.py"
    script.write_text(MISMATCH.format(script=str(SCRIPT)))
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--main_process_port", free_port(),
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", str(script), *TINY,
           "--output_dir", str(tmp_path / "run"), "--figures", "false"]
    env = dict(os.environ, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="", MPLBACKEND="Agg")
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=CHILD_TIMEOUT, env=env, cwd=ROOT)
    assert r.returncode != 0
    out = r.stdout + r.stderr
    # raised alike by every process: one line, written by process 0, naming the fix (not a traceback from each)
    assert out.count("recipes/adaptive.py: error: connectome masks differ between processes at step 10 (") == 1, out[-3000:]
    assert "Every process must build its controller alike" in out and "[rank0]: Traceback" not in out, out[-3000:]
    assert "[rank1]: Traceback" not in out and "MaskMismatchError" not in out, out[-3000:]
    assert not (tmp_path / "run" / "summary.json").exists()


def _parted(module, monkeypatch):
    """Make ``module``'s gather of every process's mask hash report a second process whose masks differ
    (as two processes whose masks parted after the last update's check would)."""
    monkeypatch.setattr(module, "gather_mask_hashes", lambda accelerator, conn: [conn.mask_hash(), "f" * 64])


def _refused(capsys) -> str:
    """The one error line (and status 2) of a refused ``R.main`` just run under ``pytest.raises(SystemExit)``."""
    err = capsys.readouterr().err
    assert err.count("recipes/adaptive.py: error: ") == 1 and "Traceback" not in err, err
    return err[err.index("recipes/adaptive.py: error: "):]


def test_masks_that_part_after_the_last_update_stop_the_run_before_its_outputs(tmp_path, monkeypatch, capsys):
    """summary.json recorded each process's mask hash without checking them, so masks that parted after
    the last update's check (or in a run with no update left) ended with status 0: the hashes the
    recipe gathers are checked at the run's end, in both modes, before anything is written. The
    MaskMismatchError, raised alike by every process, is one ``error:`` line naming the fix."""
    from recipes._adaptive import mask_only_run

    _parted(recipe_train, monkeypatch)
    with pytest.raises(SystemExit) as e:
        run(tmp_path / "train")
    assert e.value.code == 2
    assert re.match(r"recipes/adaptive.py: error: connectome masks differ between processes at step 40, the run's "
                    r"end \(process 0 of 2 holds masks \w{12}; process 1 of 2 holds masks ffffffffffff\)\. Every "
                    r"process must build its controller alike", _refused(capsys))
    assert not (tmp_path / "train" / "summary.json").exists()
    assert not (tmp_path / "train" / "connectome.safetensors").exists()
    _parted(mask_only_run, monkeypatch)
    with pytest.raises(SystemExit):
        R.main(["--output_dir", str(tmp_path / "mask"), "--mode", "mask_only", "--target", "0.3", "--epochs", "1",
                "--update_every", "8", "--threads", "1", "--progress", "false", "--figures", "false"])
    assert re.match(r"recipes/adaptive.py: error: connectome masks differ between processes at step \d+, the run's "
                    "end", _refused(capsys))
    assert not (tmp_path / "mask" / "summary.json").exists()


def test_masks_that_differ_right_after_a_resume_stop_the_run(tmp_path, monkeypatch, capsys):
    """Each process loads its own copy of the checkpoint (the main process alone hashes its files): copies
    that hold other masks ran on unchecked until the next update, or to the end where none was left.
    They are checked right after the load, naming the checkpoint and what to do."""
    def stop(s):
        if s.step == 21:
            raise Stop

    with pytest.raises(Stop):
        run(tmp_path, "--checkpoint_every", "20", on_step=stop)
    _parted(recipe_train, monkeypatch)
    capsys.readouterr()
    with pytest.raises(SystemExit):
        run(tmp_path, "--checkpoint_every", "20", "--resume", "latest")
    # named alike on every process (each may have resolved --resume in a folder of its own; process 0 writes it)
    line = _refused(capsys)
    assert line.startswith("recipes/adaptive.py: error: connectome masks differ between processes at step 20, right "
                           "after resuming from checkpoint step_00000020 (--resume latest) (process 0 of 2 holds masks ")
    assert "Every process must resume from the same checkpoint: a folder they all see" in line


def test_mask_only_mode_takes_the_mask_only_defaults_unless_told_otherwise():
    """--mode mask_only gets optimize_connectome's estimator and update interval (presence, every
    batch); train mode keeps its own (curvature, every 25 steps); explicit values always win."""
    from adaptive.config import parse_config

    train = parse_config(R.RunConfig, [])
    mask = parse_config(R.RunConfig, ["--mode", "mask_only"])
    told = parse_config(R.RunConfig, ["--mode", "mask_only", "--estimator", "evidence", "--update_every", "4"])
    assert (train.estimator, train.update_every) == ("curvature", 25)
    assert (mask.estimator, mask.update_every) == ("presence", 1)
    assert (told.estimator, told.update_every) == ("evidence", 4)
    assert (train.edit_fraction, mask.edit_fraction) == (0.3, 1.0)
    assert parse_config(R.RunConfig, ["--mode", "mask_only", "--edit_fraction", "0.1"]).edit_fraction == 0.1


def test_mask_only_mode_resumes_after_its_last_target(tmp_path, capsys):
    """A mask_only run records itself after every target; --resume latest continues after a crash
    without redoing finished targets, and ends at the same removal count with no weight changed."""
    from adaptive.mask_only import changed_weights

    base = ["--output_dir", str(tmp_path), "--mode", "mask_only", "--target", "0.3", "--epochs", "1",
            "--threads", "1", "--progress", "false", "--figures", "false"]
    with pytest.raises(SystemExit):
        R.main(base + ["--resume", "latest"])
    assert "no mask_only_checkpoint.pt in" in capsys.readouterr().err
    R.main(base)
    assert (tmp_path / "mask_only_checkpoint.pt").is_file()
    first = json.loads((tmp_path / "summary.json").read_text())
    cfg_file = tmp_path / "config.yaml"  # as written before mask_only read edit_fraction (0.3, unused then):
    assert "edit_fraction: 1.0" in cfg_file.read_text()
    cfg_file.write_text(cfg_file.read_text().replace("edit_fraction: 1.0", "edit_fraction: 0.3"))
    res = R.main(base + ["--resume", "latest"])  # the target was finished: nothing runs again
    assert res.summary["steps"] == first["steps"] and res.summary["mask_hash_per_process"] == first["mask_hash_per_process"]
    assert changed_weights(res.conn) == 0 and res.conn.density() == pytest.approx(0.7, abs=1e-3)
    # a different target cannot continue this run
    with pytest.raises(SystemExit):
        R.main(base[:5] + ["0.5"] + base[6:] + ["--resume", "latest"])
    err = capsys.readouterr().err
    assert "was written by another run; it differs in targets" in err and "Traceback" not in err


def test_mask_only_mode_scores_the_holdout_every_epoch_or_every_eval_every_steps(tmp_path):
    """Held-out evaluations as in train mode: every epoch by default (the last one is the target's
    end), every --eval_every steps when given."""
    base = ["--mode", "mask_only", "--target", "0.3", "--epochs", "3", "--update_every", "1", "--threads", "1",
            "--progress", "false", "--figures", "false"]
    res = R.main(base + ["--output_dir", str(tmp_path / "epochs")])
    steps_per_epoch = res.state.step // 3
    rows = read_metrics_csv(tmp_path / "epochs" / "metrics.csv")
    held = [r for r in rows if r["split"] == "holdout"]
    assert [int(r["step"]) for r in held] == [steps_per_epoch, 2 * steps_per_epoch, 3 * steps_per_epoch]
    # each row's epoch is the pass over TRAIN its last batch came from
    assert [int(r["epoch"]) for r in held] == [0, 1, 2]
    assert all(int(r["epoch"]) == (int(r["step"]) - 1) // steps_per_epoch for r in rows)
    res = R.main(base + ["--output_dir", str(tmp_path / "every"), "--eval_every", "4"])
    held = [r for r in read_metrics_csv(tmp_path / "every" / "metrics.csv") if r["split"] == "holdout"]
    assert [int(r["step"]) for r in held] == list(range(4, res.state.step, 4)) + [res.state.step]


def test_train_rows_report_the_density_their_batches_ran_at(tmp_path, monkeypatch):
    """A train row was given the density after its last step's controller update: gmp's jump to 0.1
    at step 10 was written on the row of step 10, whose loss the dense network made (the loss rises
    at step 11), and the progress figure drew that dense loss at 45k synapses removed. density.png
    joined the updates with straight lines, from the first update to the last, though the density
    is a step function from the start of the run to its end."""
    import adaptive.plots

    figs = []
    monkeypatch.setattr(adaptive.plots, "_save", lambda fig, plt, path: figs.append(fig) or path)
    res = R.main(["--output_dir", str(tmp_path / "a"), "--policy", "gmp", "--density", "0.1", "--max_steps", "14",
                  "--update_every", "10", "--log_every", "1", "--threads", "1", "--progress", "false"])
    (update,) = [e for e in res.controller.events if e["kind"] == "update"]
    assert update["step"] == 10 and update["removed"] > 0
    train = {r["step"]: r for r in read_metrics_csv(tmp_path / "a" / "metrics.csv") if r["split"] == "train"}
    assert sorted(train) == list(range(1, 15))
    for s in range(1, 11):  # up to and including step 10: trained dense, the update came after its batch
        assert (train[s]["density"], train[s]["removed"]) == (1.0, 0), s
    for s in range(11, 15):
        assert train[s]["removed"] == update["removed"] and train[s]["density"] == pytest.approx(update["density"]), s
    # density.png: a step from the start (dense, step 0) to the run's last step
    lines = {line.get_label(): line for line in figs[1].axes[0].get_lines()}
    overall = lines["overall"]
    assert overall.get_drawstyle() == "steps-post"
    assert overall.get_xydata().tolist() == [[0, 1.0], [10, pytest.approx(update["density"])],
                                             [14, pytest.approx(update["density"])]]
    # a window of log_every steps that spans an update reports its last batch's density (after it)
    R.main(["--output_dir", str(tmp_path / "b"), "--policy", "gmp", "--density", "0.1", "--max_steps", "14",
            "--update_every", "10", "--log_every", "4", "--threads", "1", "--progress", "false", "--figures", "false"])
    train = [r for r in read_metrics_csv(tmp_path / "b" / "metrics.csv") if r["split"] == "train"]
    assert [(r["step"], r["removed"]) for r in train] == [(4, 0), (8, 0), (12, update["removed"])]


def test_a_run_too_short_for_its_schedule_says_it_missed_the_density(tmp_path, capsys):
    # gmp starts dense and prunes on a schedule; three steps end before its first update
    res = R.main(["--output_dir", str(tmp_path / "short"), "--policy", "gmp", "--density", "0.5", "--max_steps", "3",
                  "--threads", "1", "--progress", "false", "--figures", "false"])
    out = capsys.readouterr().out
    assert res.summary["density"] == 1.0 and res.summary["target_density"] == 0.5
    assert "not the requested 0.5" in res.summary["density_note"] and "note: the run ended at density 1.0000" in out
    assert json.loads((tmp_path / "short" / "summary.json").read_text())["density_note"] == res.summary["density_note"]
    # a run that reaches its density says nothing of the kind
    res = R.main(["--output_dir", str(tmp_path / "long"), "--policy", "gmp", "--density", "0.5", "--max_steps", "120",
                  "--update_every", "10", "--threads", "1", "--progress", "false", "--figures", "false"])
    assert abs(res.summary["density"] - 0.5) <= 0.01 and res.summary["density_note"] is None
    assert "note:" not in capsys.readouterr().out


def test_a_density_missed_by_whole_ensembles_says_so_not_that_the_run_was_short(tmp_path, capsys):
    # rigl holds its density from step 0: 32x32 blocks land 0.011 off, and more steps cannot help
    res = R.main(["--output_dir", str(tmp_path / "blocks"), "--policy", "rigl", "--ensemble", "block:32x32",
                  "--density", "0.3", "--max_steps", "20", "--update_every", "10", "--threads", "1",
                  "--progress", "false", "--figures", "false"])
    note = res.summary["density_note"]
    assert abs(res.summary["density"] - 0.3) > 0.01 and "not the requested 0.3" in note
    assert "as near as whole ensembles come" in note and "1,024 synapses" in note and "more steps" not in note
    assert f"note: {note}" in capsys.readouterr().out


@pytest.mark.parametrize("policy", ["balanced", "threshold"])
def test_a_run_without_a_target_density_finishes_with_its_summary(tmp_path, policy):
    # these policies need no density (--density none): the run trained, then crashed on the note
    res = run(tmp_path, "--policy", policy, "--density", "none", "--max_steps", "20", "--figures", "false")
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["target_density"] is None and summary["density_note"] is None
    assert summary["density"] == res.conn.density() and summary["updates"] >= 1


def test_a_diverged_run_blames_its_nan_gradients_not_its_length(tmp_path, capsys):
    # every update window held NaN: the note told the user to give the run more steps
    res = run(tmp_path, "--policy", "rigl", "--density", "0.2", "--lr", "1e8", "--figures", "false")
    note = res.summary["update_note"]
    assert res.summary["updates"] == 0 and res.controller.nonfinite_windows == 3
    assert note.startswith("no controller update ran: the gradients or weights of all 3 update window(s) held NaN or inf")
    assert "more steps" not in note and f"note: {note}" in capsys.readouterr().out
    # some windows skipped, some updates ran: said too
    from types import SimpleNamespace

    cfg = SimpleNamespace(policy="rigl", update_every=10, end_fraction=0.8)
    note = R._update_note(cfg, {"updates": 4}, 100, SimpleNamespace(nonfinite_windows=2))
    assert note.startswith("2 update window(s) held NaN or inf gradients or weights and were skipped (4 update(s) ran)")
    assert R._update_note(cfg, {"updates": 4}, 100, SimpleNamespace(nonfinite_windows=0)) is None


def test_metrics_lr_is_the_rate_each_row_trained_with(tmp_path):
    # warmup over 4 steps to a constant 0.1: steps 1-4 train at 0.025, 0.05, 0.075, 0.1, then 0.1
    R.main(["--output_dir", str(tmp_path / "lr"), "--policy", "set", "--lr", "0.1", "--lr_schedule", "constant",
            "--warmup_steps", "4", "--max_steps", "6", "--log_every", "1", "--update_every", "10", "--threads", "1",
            "--progress", "false", "--figures", "false"])
    rows = read_metrics_csv(tmp_path / "lr" / "metrics.csv")
    train = [(int(r["step"]), r["lr"]) for r in rows if r["split"] == "train"]
    assert [step for step, _ in train] == [1, 2, 3, 4, 5, 6]
    assert [lr for _, lr in train] == pytest.approx([0.025, 0.05, 0.075, 0.1, 0.1, 0.1], rel=1e-12)
    assert [r["lr"] for r in rows if r["split"] in ("holdout", "test")][-1] == pytest.approx(0.1)  # the last step's


def test_mask_only_mode_without_weights_says_it_searches_random_weights(tmp_path, capsys):
    R.main(["--output_dir", str(tmp_path / "a"), "--mode", "mask_only", "--target", "0.3", "--epochs", "1",
            "--threads", "1", "--progress", "false", "--figures", "false", "--subset", "300"])
    assert "no --weights given" in capsys.readouterr().out
    w = tmp_path / "w.pt"
    torch.save(build_model("mlp", num_classes=10, in_shape=(64,)).state_dict(), w)
    R.main(["--output_dir", str(tmp_path / "b"), "--mode", "mask_only", "--target", "0.3", "--epochs", "1",
            "--threads", "1", "--progress", "false", "--figures", "false", "--subset", "300", "--weights", str(w)])
    assert "no --weights given" not in capsys.readouterr().out


def test_per_layer_ensembles_from_the_command_line(tmp_path, capsys):
    res = run(tmp_path, "--ensemble", "fc2=neuron;synapse", "--figures", "false")
    m = res.conn.masks["fc2.weight"]
    assert not bool(m.all()) and bool((m.all(1) | ~m.any(1)).all())  # whole neurons pruned in fc2
    assert res.conn.granularity_of("fc1.weight").spec == "synapse"
    assert adaptive.Connectome.load(tmp_path / "connectome.safetensors",
                                    build_model("mlp", num_classes=10, in_shape=(1, 8, 8))).ensemble == "fc2=neuron;synapse"
    with pytest.raises(SystemExit):
        run(tmp_path / "b", "--ensemble", "fc9=neuron;synapse")
    err = capsys.readouterr().err
    assert "['fc9'] match no prunable layer" in err and "Traceback" not in err


def test_two_processes_agree_with_per_layer_rules_and_random_growth(tmp_path):
    """Invariant 4 with mixed granularities: SET's random growth, drawn per ensemble from the shared
    seed, gives the same masks on both ranks."""
    env = dict(os.environ, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="", MPLBACKEND="Agg")
    r = launch_two([SCRIPT, *TINY, "--output_dir", tmp_path, "--figures", "false", "--policy", "set",
                    "--budget", "global", "--ensemble", "fc2=neuron;fc1=block:4x4;synapse"], env=env, cwd=ROOT)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    hashes = summary["mask_hash_per_process"]
    assert len(hashes) == 2 and hashes[0] == hashes[1]
    events = [json.loads(line) for line in (tmp_path / "events.jsonl").read_text().splitlines()]
    assert sum(e["grown"] for e in events if e["kind"] == "update") > 0


def test_resume_from_the_last_step_of_an_epoch_keeps_its_holdout_row(tmp_path):
    """The epoch's holdout row comes before the checkpoint of its last step (it came after, so a run
    resumed from there never had it)."""
    common = ["--max_steps", "60", "--batch_size", "64"]  # 21 steps per epoch, holdout every epoch
    full = run(tmp_path / "full", *common, "--figures", "false")  # (the resumed run draws its figures)

    def stop(state):
        if state.step == 25:
            raise Stop

    with pytest.raises(Stop):
        run(tmp_path / "cut", *common, "--checkpoint_every", "21", on_step=stop)
    assert find_checkpoint("latest", tmp_path / "cut").name == "step_00000021"
    resumed = run(tmp_path / "cut", *common, "--resume", "latest")
    assert [r["step"] for r in full.state.metrics if r["split"] == "holdout"] == [21, 42, 60]
    assert resumed.state.metrics == full.state.metrics
    assert same_state(resumed, full)


def test_a_fresh_run_into_a_folder_with_checkpoints_is_refused(tmp_path, capsys):
    """A rerun (--config OUTPUT_DIR/config.yaml) would write beside the earlier run's checkpoints and
    a later --resume would splice the two runs."""
    run(tmp_path / "a", "--checkpoint_every", "20", "--figures", "false")
    with pytest.raises(SystemExit):
        R.main(["--config", str(tmp_path / "a" / "config.yaml"), "--density", "0.5"])
    err = capsys.readouterr().err
    assert "holds an earlier run (checkpoints/step_00000020" in err and "--resume latest" in err
    assert load_config(R.RunConfig, tmp_path / "a" / "config.yaml").density != 0.5  # its config is untouched
    res = R.main(["--config", str(tmp_path / "a" / "config.yaml"), "--output_dir", str(tmp_path / "b")])
    assert res.state.step == 40


def test_magnitude_policies_prune_by_magnitude_unless_told_otherwise(tmp_path, capsys):
    run(tmp_path / "m", "--policy", "magnitude", "--density", "0.3", "--figures", "false")
    assert "policy magnitude," in capsys.readouterr().out  # no estimator: |w| order
    assert load_config(R.RunConfig, tmp_path / "m" / "config.yaml").estimator is None


def test_the_final_holdout_score_is_of_the_final_network(tmp_path):
    res = run(tmp_path, "--max_steps", "41", "--eval_every", "20", "--figures", "false")
    last = [r for r in res.state.metrics if r["split"] == "holdout"][-1]
    assert last["step"] == 41 and res.summary["holdout_accuracy"] == last["accuracy"]


def test_a_gmp_run_recorded_with_the_former_default_estimator_resumes_with_it(tmp_path):
    from adaptive.config import save_config

    old = R.RunConfig(policy="gmp", density=0.3, estimator="curvature")
    save_config(old, tmp_path / "config.yaml", resume=None)
    now = R.RunConfig(policy="gmp", density=0.3)
    assert now.estimator is None  # a new gmp run prunes by magnitude
    R._check_resumed_config(now, tmp_path)
    assert now.estimator == "curvature"


def test_a_resume_under_another_process_count_is_refused(tmp_path, capsys):
    """The data position is step // steps_per_epoch of the new run's loader: a checkpoint of a
    2-process run resumed on 1 process went back an epoch and retrained on seen examples."""
    run(tmp_path / "run", "--max_steps", "40", "--checkpoint_every", "20", "--figures", "false")
    ckpt = list_checkpoints(tmp_path / "run" / "checkpoints")[0]
    path = ckpt / "custom_checkpoint_2.pkl"  # the TrainState (registration order: conn, ctrl, state, lr)
    sd = torch.load(path, weights_only=False)
    assert sd["processes"] == 1 and sd["steps_per_epoch"] > 0
    sd["processes"], sd["steps_per_epoch"] = 2, sd["steps_per_epoch"] // 2
    torch.save(sd, path)
    from adaptive.integrity import write_manifest

    write_manifest(ckpt)  # as a 2-process run would have written it (an edit alone is refused as damage)
    with pytest.raises(SystemExit):
        run(tmp_path / "run", "--max_steps", "40", "--checkpoint_every", "20", "--figures", "false",
            "--resume", str(ckpt))
    assert "written by a run of 2 process(es)" in capsys.readouterr().err


def test_a_fresh_run_over_a_finished_run_is_refused_unless_overwrite(tmp_path, capsys):
    """It replaced the earlier run's files and left its figures beside the new run's results."""
    run(tmp_path / "a", "--max_steps", "10", "--figures", "true")
    assert (tmp_path / "a" / "edits.png").exists()
    with pytest.raises(SystemExit):
        run(tmp_path / "a", "--max_steps", "10", "--density", "0.5")
    err = capsys.readouterr().err
    assert "holds an earlier run (config.yaml" in err and "--resume" not in err  # nothing to resume from
    (tmp_path / "a" / "notes.txt").write_text("mine")
    (tmp_path / "a" / "checkpoints" / "my_best").mkdir(parents=True)
    (tmp_path / "a" / "graph_report").mkdir()
    (tmp_path / "a" / "graph_report" / "summary.json").write_text("{}")
    (tmp_path / "a" / "connectome_unit.graphml").write_text("<stale/>")
    (tmp_path / "a" / "connectome_notes.json").write_text("{}")  # a user's file, named alike
    res = run(tmp_path / "a", "--max_steps", "10", "--density", "0.5", "--overwrite", "--figures", "false")
    assert res.summary["density"] == pytest.approx(0.5, abs=0.01)
    for stale in ("edits.png", "graph_report", "connectome_unit.graphml"):  # the earlier run's and derived files
        assert not (tmp_path / "a" / stale).exists()
    assert (tmp_path / "a" / "notes.txt").read_text() == "mine"  # nothing but the run's own files
    assert (tmp_path / "a" / "connectome_notes.json").exists()
    # an input of the new run among the files --overwrite would delete is refused
    with pytest.raises(SystemExit):
        run(tmp_path / "a", "--max_steps", "10", "--mode", "mask_only", "--target", "0.3", "--overwrite",
            "--weights", str(tmp_path / "a" / "dense_state_dict.pt"))
    assert "is one of the files --overwrite deletes" in capsys.readouterr().err
    assert (tmp_path / "a" / "dense_state_dict.pt").exists()
    assert (tmp_path / "a" / "checkpoints" / "my_best").is_dir()
    # its config.yaml does not carry --overwrite: a rerun from it is refused like any other
    run(tmp_path / "b", "--max_steps", "10")
    with pytest.raises(SystemExit):
        R.main(["--config", str(tmp_path / "a" / "config.yaml"), "--output_dir", str(tmp_path / "b")])
    assert "holds an earlier run" in capsys.readouterr().err


def test_resuming_another_runs_checkpoint_checks_that_runs_settings(tmp_path, capsys):
    """Only the new --output_dir's config.yaml was compared: a checkpoint of a density-0.2 run
    continued as 'density 0.05' with config.yaml recording settings neither part used."""
    run(tmp_path / "a", "--max_steps", "40", "--checkpoint_every", "20", "--figures", "false")
    ckpt = list_checkpoints(tmp_path / "a" / "checkpoints")[0]
    with pytest.raises(SystemExit):
        run(tmp_path / "b", "--max_steps", "40", "--density", "0.05", "--resume", str(ckpt), "--figures", "false")
    err = capsys.readouterr().err
    # the settings the checkpoint was made with: its own copy of the run's config.yaml
    assert "density: run 0.2, now 0.05" in err and f"--config {ckpt / 'config.yaml'}" in err
    assert not (tmp_path / "b").exists() or not list((tmp_path / "b").iterdir())


def test_a_second_run_into_a_busy_folder_is_refused(tmp_path, capsys):
    import fcntl

    out = tmp_path / "busy"
    out.mkdir()
    with open(out / ".lock", "a+") as held:  # another run holds the folder
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(SystemExit):
            run(out, "--max_steps", "5")
    assert "another run is writing into" in capsys.readouterr().err
    assert run(out, "--max_steps", "5").state.step == 5  # free again once the other run ended


def test_a_lock_file_that_is_a_folder_is_named_not_the_run_folder(tmp_path, capsys):
    """A folder named .lock in --output_dir was reported as 'cannot write into --output_dir DIR: Is a
    directory', as if the run folder being a folder were the problem."""
    out = tmp_path / "run"
    (out / ".lock").mkdir(parents=True)
    with pytest.raises(SystemExit):
        run(out, "--max_steps", "5")
    err = capsys.readouterr().err
    assert f"{out / '.lock'} is a folder, where a run keeps the lock file of --output_dir {out}: remove it" in err, err
    assert sorted(p.name for p in out.iterdir()) == [".lock"]


@pytest.mark.parametrize("kind", ["link", "dangling_link", "pipe"])
def test_a_lock_file_that_is_a_link_or_a_pipe_is_named_and_nothing_behind_it_is_written(tmp_path, capsys, kind):
    """A .lock that was a link to a file: the run truncated that file to its process id, then took the
    link away; a pipe hung the --resume's look at the lock. Each is named, with the fix, and left alone."""
    out = tmp_path / "run"
    out.mkdir()
    precious = tmp_path / "precious.txt"
    precious.write_text("a user's file")
    if kind == "pipe":
        os.mkfifo(out / ".lock")
    else:
        (out / ".lock").symlink_to(precious if kind == "link" else tmp_path / "nowhere")
    with pytest.raises(SystemExit):
        run(out, "--max_steps", "5")
    err = capsys.readouterr().err
    said = "no plain file" if kind == "pipe" else f"a link (to {os.readlink(out / '.lock')})"
    assert f"{out / '.lock'} is {said}, where a run keeps the lock file of --output_dir {out}: remove it" in err, err
    assert "Traceback" not in err
    assert precious.read_text() == "a user's file" and not (tmp_path / "nowhere").exists()
    assert sorted(p.name for p in out.iterdir()) == [".lock"]


def test_a_lock_file_the_run_may_not_open_is_named_not_the_run_folder(tmp_path, capsys, monkeypatch):
    """A .lock the run may not write (another user's, or made read-only) was reported as 'cannot write
    into --output_dir DIR: Permission denied', a folder the run may well write into: the file is named."""
    from adaptive import run_folder

    out = tmp_path / "run"
    out.mkdir()
    (out / ".lock").write_text("")
    real = run_folder.os.open

    def refuse_writing_the_lock(path, flags, *a):  # (chmod 444 refuses nothing to root: refused here)
        if Path(path) == out / ".lock" and flags & os.O_RDWR:
            raise PermissionError(13, "Permission denied", str(path))
        return real(path, flags, *a)

    monkeypatch.setattr(run_folder.os, "open", refuse_writing_the_lock)
    with pytest.raises(SystemExit):
        run(out, "--max_steps", "5")
    err = capsys.readouterr().err
    assert f"cannot open the lock file {out / '.lock'} of --output_dir {out}: Permission denied: remove it" in err, err
    assert sorted(p.name for p in out.iterdir()) == [".lock"]


def test_a_lock_holder_that_wrote_no_text_is_still_said_busy(tmp_path):
    """The lock file of a holder whose first bytes are not UTF-8 text: busy() raised UnicodeDecodeError."""
    import fcntl

    from adaptive import run_folder

    out = tmp_path / "run"
    out.mkdir()
    with open(out / ".lock", "ab+") as held:
        held.write(b"\xff\xfe 12")
        held.flush()
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        assert run_folder.busy(out).startswith(f"another run is writing into {out} (process ")
    assert run_folder.busy(out) == ""  # let go: a killed run's file blocks nothing


def test_a_run_into_a_folder_whose_run_is_still_running_is_refused_as_busy_before_reading_it(tmp_path, capsys):
    """A --resume into a folder whose run was still running read the checkpoints it was rotating and
    called the one half-deleted 'damaged' (a wrong fix), and a fresh run was told to --resume that live
    run: the folder's lock is asked first, and both are refused as busy, naming the folder."""
    import fcntl

    out = tmp_path / "live"
    run(out, "--max_steps", "20", "--checkpoint_every", "5", "--figures", "false")
    oldest = list_checkpoints(out / "checkpoints")[0]
    (oldest / "random_states_0.pkl").unlink()  # the live run was deleting this checkpoint, its oldest
    before = sorted(str(p.relative_to(out)) for p in out.rglob("*")) + [".lock"]
    with open(out / ".lock", "a+") as held:  # the live run holds the folder
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        held.write("4242")
        held.flush()
        for extra in (("--resume", "latest"), ("--resume", str(oldest)), ()):
            with pytest.raises(SystemExit):
                run(out, "--max_steps", "20", "--checkpoint_every", "5", "--figures", "false", *extra)
            err = capsys.readouterr().err
            assert f"another run is writing into {out} (process 4242): wait for it to finish" in err, (extra, err)
            assert "damaged" not in err and "holds an earlier run" not in err, (extra, err)
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*")) == sorted(before)  # nothing written nor deleted


def test_a_finished_run_leaves_no_lock_file_and_a_killed_runs_lock_blocks_nothing(tmp_path):
    """Every finished run left its .lock in the run folder. A killed run's lock file stays, but the
    system let go of its lock: a --resume (or a fresh run) takes it and takes it away at its end."""
    out = tmp_path / "run"
    run(out, "--max_steps", "20", "--checkpoint_every", "10", "--figures", "false")
    assert not (out / ".lock").exists()
    (out / ".lock").write_text("99999999")  # what a killed run leaves
    resumed = run(out, "--max_steps", "20", "--checkpoint_every", "10", "--figures", "false", "--resume", "latest")
    assert resumed.state.step == 20
    assert not (out / ".lock").exists()


def test_a_run_that_finds_an_earlier_run_once_it_holds_the_lock_is_refused(tmp_path):
    """A run that ended while this one was starting left its summary.json: the recheck made once the
    lock is held refuses the fresh run instead of letting it write beside the earlier one."""
    import types

    from adaptive.run_folder import RunFolderError, RunLock, existing, refuse_earlier_run

    (tmp_path / "summary.json").write_text("{}")
    lock = RunLock(types.SimpleNamespace(num_processes=1, is_main_process=True), tmp_path)
    recheck = lambda: refuse_earlier_run(tmp_path, existing(tmp_path, ["summary.json"]),  # noqa: E731
                                         overwrite=False, weights=None, doomed=[])
    with pytest.raises(RunFolderError, match=r"holds an earlier run \(summary.json\): start afresh in another "
                                             r"--output_dir, or add --overwrite"):
        lock.acquire(recheck=recheck)
    assert lock.fd is None  # the lock is let go
    (tmp_path / "summary.json").unlink()
    lock.acquire(recheck=recheck)
    lock.release()


def test_overwrite_never_follows_a_symbolic_link_to_a_folder(tmp_path):
    """graph_report as a link to the user's own folder: --overwrite's delete_files leaves the link and
    the folder alone (rmtree on it raised OSError with the earlier run half deleted)."""
    from adaptive.run_folder import delete_files

    out, mine = tmp_path / "run", tmp_path / "mine"
    out.mkdir()
    mine.mkdir()
    (mine / "notes.md").write_text("mine")
    (out / "graph_report").symlink_to(mine, target_is_directory=True)
    (out / "summary.json").write_text("{}")
    delete_files(out, ["graph_report", "summary.json"], trees=["graph_report"])
    assert (out / "graph_report").is_symlink() and (mine / "notes.md").read_text() == "mine"
    assert not (out / "summary.json").exists()


def test_the_interrupt_message_points_at_the_checkpoint_or_says_there_is_none(tmp_path, capsys):
    class Stop(KeyboardInterrupt):
        pass

    def stop_at(n):
        def hook(state):
            if state.step == n:
                raise Stop
        return hook

    for folder, extra, expect in (("none", [], "wrote no checkpoint"),
                                  ("some", ["--checkpoint_every", "10"], "continue from step_00000010"),
                                  # it told a run given --checkpoint_every to add --checkpoint_every
                                  ("early", ["--checkpoint_every", "20"], "stopped before its first checkpoint "
                                   "(--checkpoint_every 20: step 20), so it cannot be continued; rerun it with --overwrite"),
                                  # it named a step 50 of a 40-step run as the first checkpoint's
                                  ("never", ["--checkpoint_every", "50"], "wrote no checkpoint (--checkpoint_every 50 "
                                   "is not shorter than its 40 steps, so it writes none)")):
        with pytest.raises(SystemExit) as e:
            R.main(["--output_dir", str(tmp_path / folder), "--max_steps", "40", "--threads", "1", "--progress",
                    "false", "--figures", "false", *extra], on_step=stop_at(15))
        assert e.value.code == 130
        err = capsys.readouterr().err
        assert expect in err and ("N makes a train-mode run resumable" in err) == (folder == "none")


def test_a_damaged_random_state_file_is_refused_on_resume(tmp_path, capsys):
    run(tmp_path / "a", "--max_steps", "40", "--checkpoint_every", "20", "--figures", "false")
    rng = list_checkpoints(tmp_path / "a" / "checkpoints")[0] / "random_states_0.pkl"
    rng.write_bytes(rng.read_bytes()[:100])
    with pytest.raises(SystemExit):
        run(tmp_path / "a", "--max_steps", "40", "--resume", "latest", "--figures", "false")
    err = capsys.readouterr().err  # (its MANIFEST.json finds it cut short before it is read)
    assert "random_states_0.pkl has 100 bytes" in err and "is damaged" in err


def test_an_output_dir_that_is_a_file_is_one_error_line(tmp_path, capsys):
    (tmp_path / "afile").write_text("x")
    with pytest.raises(SystemExit) as e:
        run(tmp_path / "afile", "--max_steps", "5")
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "error:" in err and "afile" in err


def test_resume_accepts_settings_that_mean_the_same_run(tmp_path):
    run(tmp_path / "a", "--max_steps", "40", "--checkpoint_every", "20", "--figures", "false")  # recorded: mixed_precision None, cpu False
    res = run(tmp_path / "a", "--max_steps", "40", "--resume", "latest", "--mixed_precision", "no", "--figures", "false",
              *(["--cpu", "true"] if not torch.cuda.is_available() else []))
    assert res.state.step == 40


def test_a_refused_command_creates_nothing(tmp_path, capsys):
    with pytest.raises(SystemExit):
        run(tmp_path / "q", "--weights", str(tmp_path / "missing.pt"))
    assert not (tmp_path / "q").exists()
    # a refused resume into a new folder leaves that folder free for a fresh run
    run(tmp_path / "a", "--max_steps", "40", "--checkpoint_every", "20", "--figures", "false")
    ckpt = list_checkpoints(tmp_path / "a" / "checkpoints")[0]
    rng = ckpt / "random_states_0.pkl"
    rng.write_bytes(rng.read_bytes()[:100])
    with pytest.raises(SystemExit):
        run(tmp_path / "h", "--max_steps", "40", "--resume", str(ckpt), "--figures", "false")
    assert not (tmp_path / "h").exists() or not any((tmp_path / "h").iterdir())
    assert run(tmp_path / "h", "--max_steps", "5").state.step == 5


def test_an_interrupted_mask_only_overwrite_leaves_no_earlier_checkpoint(tmp_path, monkeypatch, capsys):
    out = tmp_path / "m"
    # (--update_every 4: TINY's 10 is more than the 9 batches of one pass of --subset 300, refused)
    mo = ["--mode", "mask_only", "--max_steps", "4", "--update_every", "4", "--subset", "300", "--figures", "false"]
    run(out, *mo, "--target", "0.3")
    assert (out / R.MASK_ONLY_CHECKPOINT).is_file()

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(R.stage_checkpoint, "save_stage", interrupted)
    with pytest.raises(SystemExit):
        run(out, *mo, "--target", "0.5", "--overwrite")
    err = capsys.readouterr().err
    assert "cannot be continued" in err  # not "continue from mask_only_checkpoint.pt" of the deleted run
    assert not (out / R.MASK_ONLY_CHECKPOINT).exists()
    assert load_config(R.RunConfig, out / "config.yaml").target == 0.5


def test_a_mask_only_resume_names_its_run_folder_over_another_output_dir(tmp_path, capsys):
    out = tmp_path / "m"
    mo = ["--mode", "mask_only", "--max_steps", "4", "--update_every", "4", "--subset", "300", "--figures", "false",
          "--target", "0.3"]
    run(out, *mo)
    with pytest.raises(SystemExit):
        run(tmp_path / "m2", *mo, "--resume", str(out))
    assert f"drop --output_dir {tmp_path / 'm2'}" in capsys.readouterr().err


def test_config_records_the_run_folder_absolute(tmp_path, monkeypatch):
    """A relative --output_dir was recorded as given, so --config RUN/config.yaml from elsewhere wrote
    a new run somewhere else."""
    monkeypatch.chdir(tmp_path)
    run("rel", "--max_steps", "5", "--figures", "false")
    assert load_config(R.RunConfig, tmp_path / "rel" / "config.yaml").output_dir == str(tmp_path / "rel")


def test_mask_only_mode_without_accuracy_writes_its_outputs(tmp_path, capsys):
    """--mask_only_kw '{accuracy_fn: null}' (no held-out or train accuracy) ran the whole optimisation
    and then died writing metrics.csv: float(None)."""
    res = R.main(["--output_dir", str(tmp_path), "--mode", "mask_only", "--target", "0.3", "--epochs", "1",
                  "--update_every", "8", "--threads", "1", "--progress", "false", "--figures", "true",
                  "--mask_only_kw", "{accuracy_fn: null}"])
    rows = read_metrics_csv(tmp_path / "metrics.csv")
    assert all(r["accuracy"] is None for r in rows if r["split"] in ("train", "holdout"))
    assert [r["split"] for r in rows if r["accuracy"] is not None] == ["test"]  # the final report's own
    assert res.summary["holdout_accuracy"] is None and "; held-out part of TRAIN n/a)" in capsys.readouterr().out
    assert (tmp_path / "loss_accuracy.png").is_file()


def test_a_checkpoint_resumed_under_another_process_count_is_refused_by_every_process(tmp_path, capsys):
    """A 1-process checkpoint resumed by 2 processes: the check ran on each process apart (each one
    hashing every file), and rank 1 refused (calling the intact checkpoint damaged, advising to delete
    it) while rank 0 went on alone into its first collective."""
    run(tmp_path, "--checkpoint_every", "20", "--figures", "false")
    capsys.readouterr()
    env = dict(os.environ, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="", MPLBACKEND="Agg")
    r = launch_two([SCRIPT, *TINY, "--output_dir", tmp_path, "--figures", "false", "--resume", "latest"],
                   env=env, cwd=ROOT)
    out = r.stdout + r.stderr  # (the two processes' lines can run together: count messages, not lines)
    assert r.returncode != 0 and out.count("recipes/adaptive.py: error:") == 1, out[-3000:]  # alike: process 0's
    assert out.count("was written by a run of 1 process(es)") == 1 and "--num_processes 1" in out, out[-3000:]
    assert "damaged" not in out and "[rank0]: Traceback" not in out and "Connection closed" not in out, out[-3000:]


def test_a_resume_checkpoint_one_process_misses_stops_every_process_with_one_error(tmp_path):
    """--resume latest with a relative --output_dir that one process resolves elsewhere (processes on
    machines of their own): process 1 printed "no complete checkpoint found" and stopped, while
    process 0 went on into its next collective and died of gloo's "Connection closed by peer" with a
    traceback. Every process now stops at the check together, with one line naming process 1."""
    (tmp_path / "p0" / "run" / "checkpoints" / "step_00000002").mkdir(parents=True)  # (its content is read later)
    (tmp_path / "p1").mkdir()
    env = dict(os.environ, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="", MPLBACKEND="Agg")
    r = launch_two([ROOT / "tests" / "scripts" / "per_process_cwd.py", tmp_path / "p0", tmp_path / "p1", SCRIPT, *TINY,
                    "--output_dir", "run", "--figures", "false", "--resume", "latest"], env=env, cwd=ROOT)
    out = r.stdout + r.stderr
    assert r.returncode != 0 and out.count("recipes/adaptive.py: error:") == 1, out[-3000:]
    assert "error: process 1 of 2: no complete checkpoint found in" in out, out[-3000:]
    assert "process 0 of 2 found no such problem" in out, out[-3000:]
    assert "Connection closed" not in out and "[rank0]: Traceback" not in out, out[-3000:]


def test_one_bad_setting_under_two_processes_prints_one_error_line(tmp_path):
    """Each process of `accelerate launch --num_processes 2` printed the same error line for one bad setting."""
    env = dict(os.environ, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="", MPLBACKEND="Agg")
    r = launch_two([SCRIPT, *TINY, "--output_dir", tmp_path / "run", "--lr", "-1"], env=env, cwd=ROOT)
    out = r.stdout + r.stderr
    assert r.returncode != 0 and out.count("recipes/adaptive.py: error: lr must be") == 1, out[-3000:]


def test_a_setting_refused_after_prepare_under_two_processes_prints_one_error_line(tmp_path):
    """A refusal found once the model and loaders were prepared (--warmup_steps beyond the run's steps,
    which the epoch's length decides) was printed by each process of the launch."""
    env = dict(os.environ, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="", MPLBACKEND="Agg")
    r = launch_two([SCRIPT, *TINY, "--max_steps", "null", "--epochs", "1", "--warmup_steps", "100000", "--output_dir",
                    tmp_path / "run", "--figures", "false"], env=env, cwd=ROOT)
    out = r.stdout + r.stderr
    assert r.returncode != 0 and out.count("recipes/adaptive.py: error:") == 1, out[-3000:]
    assert out.count("warmup_steps (100000) exceeds the run's") == 1 and "[rank0]: Traceback" not in out, out[-3000:]
    assert not (tmp_path / "run" / "config.yaml").exists()


def test_data_of_another_size_on_one_process_is_refused_by_every_process_before_training(tmp_path):
    """A relative --data_dir that each process resolves in its own working directory (machines of their
    own), where process 1's copy of MNIST is smaller: its train loader had fewer batches, so it ran
    other steps than process 0 and the run died of a MaskMismatchError blaming the controller's seed
    (or hung in a collective). Every process now stops before training, with one line naming each
    process's split sizes and the fix, and the run folder is not made."""
    import numpy as np

    rng = np.random.default_rng(0)
    for folder, n in (("p0", 400), ("p1", 200)):  # a tiny stand-in for mnist.npz: the sizes are what counts
        (tmp_path / folder / "data" / "mnist").mkdir(parents=True)
        np.savez(tmp_path / folder / "data" / "mnist" / "mnist.npz", x_train=rng.integers(0, 256, (n, 28, 28), np.uint8),
                 y_train=np.arange(n) % 10, x_test=rng.integers(0, 256, (100, 28, 28), np.uint8),
                 y_test=np.arange(100) % 10)
    env = dict(os.environ, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="", MPLBACKEND="Agg")
    r = launch_two([ROOT / "tests" / "scripts" / "per_process_cwd.py", tmp_path / "p0", tmp_path / "p1", SCRIPT, *TINY,
                    "--dataset", "mnist", "--data_dir", "data", "--batch_size", "32", "--max_steps", "null",
                    "--epochs", "1", "--update_every", "2", "--figures", "false", "--output_dir", tmp_path / "run"],
                   env=env, cwd=ROOT)
    out = r.stdout + r.stderr
    assert r.returncode != 0 and out.count("recipes/adaptive.py: error:") == 1, out[-3000:]
    assert ("error: the processes found different sizes of the mnist data (process 0 of 2: train 360 examples in 6 "
            "batch(es), holdout 40 examples in 1 batch(es) per process; process 1 of 2: "
            "train 180 examples in 3 batch(es)") in out, out[-3000:]
    assert "the same --data_dir contents on every machine" in out, out[-3000:]
    assert "MaskMismatchError" not in out and "[rank0]: Traceback" not in out, out[-3000:]
    assert not (tmp_path / "run").exists()


def test_nonzero_counts_live_weights_only_after_a_run_diverged(tmp_path):
    """nonzero counted NaN at pruned positions (a diverged run leaves NaN there) as nonzero: 50,432 of
    10,086 live synapses, and the closing line printed a negative count of zero weights."""
    res = run(tmp_path, "--lr", "1e12", "--figures", "false")
    assert 0 <= res.summary["nonzero"] <= res.summary["live"]


def test_what_does_not_fit_the_model_is_refused_before_any_data_is_read(tmp_path, monkeypatch):
    """Where the dataset knows its classes and input shape unread (digits does), the model is built,
    its --weights loaded, before the data: a mask_only target beyond its synapses (as --include /
    --exclude select them), a --density that rounds to every one, and weights of another model are
    refused then (the target only once the data had loaded, inside optimize_connectome)."""
    monkeypatch.setattr(recipe_train, "get_dataloaders", lambda cfg: pytest.fail("the data was read"))
    monkeypatch.setenv("ADAPTIVE_TRACEBACK", "1")  # the error itself, not the command line's exit
    mask_only = TINY + ["--output_dir", str(tmp_path / "run"), "--mode", "mask_only"]
    for more, match in ((["--target", "50432"], "50,432 synapses to remove is every one of the model's 50,432 prunable synapses: give a count below 50432"),
                        (["--target", "20000", "--exclude", "fc2"], "is beyond the model's 17,664 prunable synapses"),
                        (["--density", "1e-9"], r"removes round\(0.999999999 x 50,432\) = 50,432 synapses, every one")):
        with pytest.raises(ValueError, match=match):
            R.main(mask_only + more)
    w = tmp_path / "w.pt"
    torch.save(build_model("mlp", num_classes=3, in_shape=(1, 8, 8)).state_dict(), w)  # 3 classes, not 10
    from adaptive.models import WeightsMismatchError

    for mode in ("train", "mask_only"):
        with pytest.raises(WeightsMismatchError, match="does not match model MLP"):
            R.main(TINY + ["--output_dir", str(tmp_path / "run"), "--mode", mode, "--weights", str(w)])
    assert not (tmp_path / "run").exists()


def test_mask_only_rows_give_the_density_summary_json_gives(tmp_path):
    """metrics.csv's density of a mask_only row was 1 - removed / synapses: the held-out row of the
    final masks read 0.30000000000000004 where summary.json's density (live / synapses) and the test
    row read 0.3. Every row now divides its live synapses as summary.json does."""
    res = _mask_only_from_saved_weights(tmp_path)
    rows = read_metrics_csv(tmp_path / "run" / "metrics.csv")
    synapses = res.summary["synapses"]
    assert all(r["density"] == (synapses - r["removed"]) / synapses for r in rows)
    final = [r for r in rows if r["removed"] == synapses - res.summary["live"]]
    assert {r["split"] for r in final} >= {"holdout", "test"} and {r["density"] for r in final} == {res.summary["density"]}


def test_mask_only_opening_line_shows_the_target_a_density_makes_without_float_noise(tmp_path, capsys):
    """--density 0.7 removes the fraction 1 - 0.7: the opening line said 'target 0.30000000000000004'."""
    torch.manual_seed(0)
    torch.save(build_model("mlp", num_classes=10, in_shape=(64,)).state_dict(), tmp_path / "w.pt")
    R.main(["--output_dir", str(tmp_path / "run"), "--mode", "mask_only", "--density", "0.7", "--max_steps", "4",
            "--update_every", "4", "--threads", "1", "--progress", "false", "--figures", "false",
            "--weights", str(tmp_path / "w.pt")])
    out = capsys.readouterr().out
    assert "(mask_only): " in out and ", target 0.3, " in out and "0.30000000000000004" not in out


def test_a_train_part_smaller_than_one_step_gets_a_note():
    """--subset 100 --batch_size 128 trains each epoch as one step of the 90 examples the train part holds,
    without a word: the note says so (the summary's batch_note); a train part that fills a step gets none."""
    from types import SimpleNamespace

    from recipes._adaptive.notes import _batch_note

    cfg = SimpleNamespace(batch_size=128, gradient_accumulation_steps=1)
    assert _batch_note(cfg, 90) == ("the train part holds 90 examples, fewer than one step takes (128: --batch_size "
                                    "128), so each epoch is one step of 90 examples; a smaller --batch_size (or a "
                                    "larger --subset) gives more steps")
    assert _batch_note(cfg, 128) is None and _batch_note(SimpleNamespace(batch_size=32, gradient_accumulation_steps=4),
                                                         200, processes=2).startswith(
        "the train part holds 200 examples, fewer than one step takes (256: --batch_size 32 x 4 accumulated x 2 processes)")


@pytest.mark.parametrize("n, batch, processes, accum", [(18, 32, 2, 1), (49, 32, 2, 1), (90, 8, 3, 4), (64, 32, 2, 2)])
def test_the_small_train_part_note_counts_the_examples_several_processes_step_on(n, batch, processes, accum):
    """On two processes 18 train examples at batch 32 make a step of 64 (Accelerate evens the processes'
    batches with examples from the epoch's start: 10 read four times, 8 three times), yet the note said 'one step
    of 18 examples'. It counts the step as Accelerate's own sharding of the recipe's loader gives it, and the
    examples read again."""
    import re
    from types import SimpleNamespace

    from accelerate.data_loader import BatchSamplerShard
    from torch.utils.data import BatchSampler, SequentialSampler

    from recipes._adaptive.notes import _batch_note

    sampler = BatchSampler(SequentialSampler(range(n)), batch, False)
    shards = [list(BatchSamplerShard(sampler, processes, r, split_batches=False, even_batches=True))
              for r in range(processes)]
    step = sum(len(b) for shard in shards for b in shard[:accum])
    note = _batch_note(SimpleNamespace(batch_size=batch, gradient_accumulation_steps=accum), n, processes=processes)
    again = f", {step - n:,} of them read a second time or more" if step > n else ";"  # (64 of 64: none again)
    assert re.search(rf"each epoch is one step of {step:,} examples{again}", note), (step, note)


def test_a_run_on_a_train_part_smaller_than_one_step_says_so(tmp_path, capsys):
    """The note reaches the run's summary.json and closing lines (it was written but never wired into the run)."""
    R.main(["--dataset", "digits", "--model", "mlp", "--subset", "100", "--batch_size", "128", "--epochs", "1",
            "--threads", "1", "--progress", "false", "--figures", "false", "--output_dir", str(tmp_path / "run")])
    note = json.loads((tmp_path / "run" / "summary.json").read_text())["batch_note"]
    assert note.startswith("the train part holds 90 examples, fewer than one step takes (128: --batch_size 128)")
    assert f"note: {note}" in capsys.readouterr().out


def test_start_up_warnings_under_two_processes_print_once(tmp_path):
    """Each process of `accelerate launch --num_processes 2` printed the warnings of the settings: a
    --plugins module's (shown before the process group exists) and the data loading's (digits with
    --augment, a --data_dir it does not read, a --subset beyond the split). The first process alone
    prints them now."""
    plugin = tmp_path / "warns.py"
    plugin.write_text("import warnings\nwarnings.warn('the plugin warns as it loads')\n")
    env = dict(os.environ, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="", MPLBACKEND="Agg")
    r = launch_two([SCRIPT, *TINY, "--max_steps", "2", "--output_dir", tmp_path / "run", "--figures", "false",
                    "--plugins", plugin, "--augment", "true", "--data_dir", tmp_path, "--subset", "99999"],
                   env=env, cwd=ROOT)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-3000:]
    for warning in ("warning: the plugin warns as it loads", "warning: the digits dataset has no augmentation",
                    "warning: the digits dataset ships with scikit-learn", "warning: --subset 99999 asks for more"):
        assert out.count(warning) == 1, out[-3000:]


def test_the_adaptive_data_warning_is_shown_by_the_first_process_alone(tmp_path, monkeypatch):
    """ADAPTIVE_DATA naming no folder is every process's alike (one environment, one data folder): each
    process of a launch printed it, as the data settings' warnings were before they joined the list."""
    import warnings
    from types import SimpleNamespace

    import adaptive.paths as paths

    monkeypatch.setenv("ADAPTIVE_DATA", str(tmp_path / "nowhere"))
    monkeypatch.setattr(paths, "_ENV_WARNED", set())
    for main, shown in ((False, 0), (True, 1)):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with recipe_train._alike_warnings_once(SimpleNamespace(is_main_process=main)):
                paths._warn_env_passed_over(f"mnist{main}", tmp_path)
        assert len([w for w in caught if "ADAPTIVE_DATA" in str(w.message)]) == shown


def test_the_cache_folder_warning_is_shown_by_the_first_process_alone(tmp_path, monkeypatch):
    """A cache folder that takes no new file is every process's alike on a machine (its processes share
    ADAPTIVE_CACHE and the folder): each process of a launch printed the warning, unlike the data settings'."""
    import errno
    import warnings
    from types import SimpleNamespace

    from adaptive.data import folder_cache

    monkeypatch.setattr(folder_cache, "_UNCACHED_WARNED", set())
    for main, shown in ((False, 0), (True, 1)):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with recipe_train._alike_warnings_once(SimpleNamespace(is_main_process=main)):
                folder_cache._warn_uncached(tmp_path / f"c{main}", OSError(errno.EROFS, "Read-only file system"),
                                            explicit=False)
        assert len([w for w in caught if "takes no new file" in str(w.message)]) == shown


def test_an_n_m_ensemble_with_the_default_density_names_the_density_to_give(tmp_path, capsys):
    """--ensemble 2:4 without --density: the Controller's advice "pass density=0.5 or leave it out"
    named a keyword the recipe does not take, and leaving --density out is what failed (its default 0.2)."""
    with pytest.raises(SystemExit) as e:
        run(tmp_path / "run", "--ensemble", "2:4", "--figures", "false")
    err = capsys.readouterr().err
    assert e.value.code == 2 and "Traceback" not in err
    assert ("error: --ensemble 2:4 fixes the density at 0.5 (n of every m kept), so --density 0.2 (0.2 is the default "
            "where --density is left out) cannot be met: give --density 0.5") in err, err
    assert "leave it out" not in err
    ok = run(tmp_path / "ok", "--ensemble", "2:4", "--density", "0.5", "--max_steps", "4", "--figures", "false")
    assert ok.summary["density"] == 0.5


def test_a_mask_only_resume_of_a_run_started_with_a_window_beyond_one_pass_continues(tmp_path, monkeypatch, capsys):
    """A mask_only run started before --update_every was bounded by one pass of the train part was refused
    on --resume, naming a smaller --update_every, which the stage checkpoint then refuses as another
    window: the run could not be continued. It continues as it ran, with a warning; a new run is refused."""
    from recipes._adaptive import mask_only_run

    out = tmp_path / "m"
    mo = ["--mode", "mask_only", "--max_steps", "4", "--subset", "300", "--figures", "false", "--target", "0.3"]
    with pytest.raises(SystemExit):  # (TINY's --update_every 10: the 9 batches of a pass of --subset 300)
        run(out, *mo)
    assert "--update_every 10 is more than the 9 batches" in capsys.readouterr().err and not out.exists()
    from adaptive import mask_only_settings

    real, real_api = mask_only_run._check_pass_bounds, mask_only_settings._refuse_window_beyond_a_pass
    monkeypatch.setattr(mask_only_run, "_check_pass_bounds", lambda *a: None)  # the recipe before the bound
    monkeypatch.setattr(mask_only_settings, "_refuse_window_beyond_a_pass", lambda s: None)  # and the API's
    first = run(out, *mo)
    monkeypatch.setattr(mask_only_run, "_check_pass_bounds", real)
    monkeypatch.setattr(mask_only_settings, "_refuse_window_beyond_a_pass", real_api)
    res = run(out, *mo, "--resume", "latest")
    assert res.summary["mask_hash_per_process"] == first.summary["mask_hash_per_process"]
    assert "warning: --update_every 10 is more than the 9 batches" in capsys.readouterr().out


def test_the_non_finite_held_out_warning_of_a_thousand_synapses_removed_shows_on_the_first_process_alone():
    """The mask-only warning of non-finite held-out figures counts the synapses removed with thousands
    separators ("with 12,345 synapses removed"), which the pattern that keeps it to the first process of a
    launch (``\\d+ synapses removed``) no longer matched: every process printed it again. The warning comes
    from the stage code itself, so the pattern is checked against what it says."""
    import types
    import warnings

    from adaptive.mask_only_stages import StageRun

    fake = types.SimpleNamespace(conn=types.SimpleNamespace(num_live=lambda: 100), total=12_445, record=lambda rec: None)
    for main, shown in ((True, 1), (False, 0)):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with recipe_train._alike_warnings_once(types.SimpleNamespace(is_main_process=main)):
                StageRun.full_holdout(fake, 7, 1, "0.5", figures=(float("nan"), 0.1))
        said = [str(w.message) for w in caught]
        assert len(said) == shown, said
        assert not said or "with 12,345 synapses removed (step 7)" in said[0]


def test_the_controllers_warnings_are_shown_by_the_first_process_alone():
    """The controller's warnings come from what every process of a launch holds alike (its settings, masks
    that agree, statistics reduced across the processes, held-out losses averaged over them): each process
    printed them (the schedule's missed target twice under --line_search with two processes). Process 0's
    alone are shown now; each warning is made by the controller itself, so the patterns are checked against
    what it says."""
    import itertools
    import types
    import warnings

    from torch import nn

    def warn_all():
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
        with torch.no_grad():
            model[2].weight.mul_(1e-3)  # magnitude's global order empties the last layer first
        adaptive.Controller(adaptive.Connectome(model, ensemble="neuron"), policy="magnitude", density=0.5,
                            budget="global")  # no live synapse left
        adaptive.Controller(adaptive.Connectome(model), policy="utility", estimator="obd", density=0.5,
                            update_every=1)  # a window of one batch for the Fisher
        adaptive.Controller(adaptive.Connectome(model), policy="gmp", density=0.5, update_every=10,
                            end_step=5)  # no update before end_step
        adaptive.Controller(adaptive.Connectome(model), policy="utility", density=0.5, update_every=1).step()  # no gradient
        adaptive.Controller(adaptive.Connectome(model), policy="threshold", estimator="taylor",
                            density=0.5)  # an estimator of first-order costs under threshold
        hand = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
        cut = adaptive.Connectome(hand)
        gmp = adaptive.Controller(cut, policy="gmp", density=0.5, update_every=1, start_step=0, end_step=4)
        cut.set_masks({cut.names[0]: torch.zeros_like(cut.masks[cut.names[0]])})  # hand edits under gmp's target
        for _ in range(2):
            hand.zero_grad()
            nn.functional.cross_entropy(hand(torch.randn(32, 8)), torch.randint(0, 4, (32,))).backward()
            gmp.observe()
            gmp.step()
        conn = adaptive.Connectome(model)
        rising = itertools.count()
        ctrl = adaptive.Controller(conn, policy="threshold", density=0.2, update_every=2, end_step=4,
                                   holdout_loss=lambda: float("nan") if next(rising) < 2 else 1.0,
                                   line_search_tolerance=0.0)
        x, y = torch.randn(32, 8), torch.randint(0, 4, (32,))
        for _ in range(4):  # the held-out NaN, then the missed target
            model.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            ctrl.observe()
            ctrl.step()

    expected = ("have no live synapse left", "recovers the per-sample Fisher", "policy 'gmp': no update falls",
                "step 1: no gradient was observed", "holdout_loss() gave nan before the edit",
                "the controller's schedule ended at step 4", "policy 'threshold' with estimator 'taylor'",
                "policy 'gmp' at step 1: layer 0.weight holds 0 live synapses")
    for main in (True, False):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with recipe_train._alike_warnings_once(types.SimpleNamespace(is_main_process=main)):
                warn_all()
        said = [str(w.message) for w in caught]
        if main:
            assert all(any(e in m for m in said) for e in expected), said
        else:
            assert said == [], said


def test_the_estimator_warnings_are_shown_by_the_first_process_alone():
    """The controller's warnings of an estimator that learns nothing from a window of one batch (evidence's
    t-statistic) or that values absent synapses by g * w0 in train mode (presence, evidence) come from the
    settings every process of a launch holds alike, but joined the controller after the patterns that keep
    its warnings to process 0: each process printed them. The warnings are made by the controller itself."""
    import types
    import warnings

    from torch import nn

    expected = ("learns from the t-statistic of the batch gradients", "values a synapse by its presence derivative")
    for main in (True, False):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with recipe_train._alike_warnings_once(types.SimpleNamespace(is_main_process=main)):
                model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
                adaptive.Controller(adaptive.Connectome(model), policy="utility", estimator="evidence", density=0.5,
                                    update_every=1)
        said = [str(w.message) for w in caught]
        if main:
            assert all(any(e in m for m in said) for e in expected), said
        else:
            assert said == [], said


def test_a_launch_asked_for_two_processes_that_starts_one_says_so(tmp_path):
    """`accelerate launch --cpu --num_processes 2` starts one process (accelerate starts several only with
    --multi_gpu, which it refuses beside --cpu), and the run trained alone, silently. It says so now,
    naming the launch that starts two."""
    env = dict(os.environ, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="", MPLBACKEND="Agg")
    env.pop("MASTER_ADDR", None)
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--cpu", "--num_processes", "2", "--main_process_port",
           free_port(), "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", SCRIPT, *TINY,
           "--max_steps", "2", "--output_dir", tmp_path / "run", "--figures", "false"]
    r = subprocess.run(list(map(str, cmd)), capture_output=True, text=True, timeout=CHILD_TIMEOUT, env=env, cwd=ROOT)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "warning: accelerate launch was asked for 2 processes and started this one alone" in r.stderr, r.stderr
    assert "accelerate launch --multi_gpu --num_processes 2 recipes/adaptive.py" in r.stderr, r.stderr
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["processes"] == 1


def test_the_lone_process_warning_stays_out_of_other_launches(monkeypatch):
    """Only a launch asked for several processes that started one warns: not one asked for one, not one
    whose launcher sized a process group, not a MASTER_ADDR of the user's own environment."""
    from adaptive import distributed

    launch = {"ACCELERATE_USE_CPU": "True", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"}
    accelerate = ["python", "-m", "accelerate.commands.launch"]
    views = {"two": (accelerate + ["--cpu", "--num_processes", "2", "x.py"], False),
             "two=": (accelerate + ["--num_processes=2", "x.py"], False),
             "one": (accelerate + ["--num_processes", "1", "x.py"], True),
             "users": (accelerate + ["x.py"], True),  # MASTER_ADDR the launcher's own: the user's
             "config": (accelerate + ["x.py"], False),  # --num_processes from accelerate's config file
             "cli": (["/venv/bin/python", "/venv/bin/accelerate", "launch", "--cpu", "--num_processes", "2", "x.py"],
                     True)}
    monkeypatch.setattr(distributed, "_launcher_view", lambda pid: views[pid])
    problem = distributed.lone_launched_process_problem
    assert "asked for 2 processes" in problem("s.py", launch, "two")
    assert "asked for 2 processes" in problem("s.py", launch, "two=")
    assert "asked for 2 processes" in problem("s.py", launch, "cli")
    assert "asked for several processes" in problem("s.py", launch, "config")
    assert problem("s.py", launch, "one") is None and problem("s.py", launch, "users") is None
    assert problem("s.py", dict(launch, WORLD_SIZE="2"), "two") is None  # (a real group: its size counts)
    assert problem("s.py", {k: v for k, v in launch.items() if k != "MASTER_ADDR"}, "two") is None
    assert problem("s.py", {"MASTER_ADDR": "127.0.0.1"}, "two") is None  # (not accelerate's launcher)


def test_the_lone_process_warning_needs_accelerates_launcher_to_say_it_was_asked_for_several(monkeypatch):
    """A MASTER_ADDR and ACCELERATE_USE_CPU that a shell exported (an sbatch script, `export` in a terminal:
    a shell's /proc environ is the one it started with, so its own exports are not there) beside a plain
    `python recipes/adaptive.py` warned "accelerate launch was asked for several processes", with no
    accelerate launch at all; and so did any launch whose parent's /proc entries cannot be read (macOS has
    no /proc; srun's slurmstepd is root's). Only accelerate's own launcher, read, warns."""
    from adaptive import distributed

    launch = {"ACCELERATE_USE_CPU": "true", "MASTER_ADDR": "10.0.0.1"}
    problem = distributed.lone_launched_process_problem
    # real /proc reads: this test process (pytest: no launcher of accelerate's) and a process that does not exist
    assert distributed._launcher_view(os.getpid())[0] is not None or not os.path.isdir("/proc")
    assert problem("s.py", launch, os.getpid()) is None
    assert distributed._launcher_view(2 ** 31 - 1) == (None, None)
    assert problem("s.py", launch, 2 ** 31 - 1) is None
    views = {"shell": (["bash", "-c", "export MASTER_ADDR=10.0.0.1; python recipes/adaptive.py"], False),
             "srun": (["slurmstepd: [42.0]"], None),
             "unreadable": (None, None),
             "environ unreadable": (["python", "-m", "accelerate.commands.launch", "x.py"], None),
             "torchrun": (["python", "/venv/bin/torchrun", "--nproc_per_node", "1", "x.py"], False)}
    monkeypatch.setattr(distributed, "_launcher_view", lambda pid: views[pid])
    for pid in views:
        assert problem("s.py", launch, pid) is None, pid


def test_torchvisions_own_weights_file_fed_other_images_is_warned_once(tmp_path, monkeypatch):
    """The shipped ImageNet config of this recipe (resize 232, IMAGENET1K_V2's) run with the V1 file (evaluated at
    resize 256): only recipes/prune_pretrained.py warned; this recipe says it too, through the same function, on
    the first process of a launch alone."""
    import warnings

    config = str(ROOT / "recipes" / "configs" / "imagenet_mobilenetv3_maskonly_adaptive.yaml")
    for name in ("mobilenet_v3_large-5c1a4163.pth", "mobilenet_v3_large-8738ca79.pth"):
        (tmp_path / name).write_bytes(b"")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the V2 file, as the config says: nothing to say
        R.parse_args(["--config", config, "--num_workers", "0", "--weights",
                      str(tmp_path / "mobilenet_v3_large-5c1a4163.pth")])
    v1 = ["--config", config, "--num_workers", "0", "--weights", str(tmp_path / "mobilenet_v3_large-8738ca79.pth")]
    with pytest.warns(UserWarning, match=r"MobileNet_V3_Large_Weights\.IMAGENET1K_V1, evaluated with resize 256, .* "
                                         r"given resize 232: give --dataset-kw resize=256 "):
        R.parse_args(v1)
    monkeypatch.setenv("WORLD_SIZE", "2")  # the second process of a launch, before its process group exists
    monkeypatch.setenv("LOCAL_RANK", "1")
    shown = []
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.showwarning = lambda *a, **k: shown.append(a)
        R.parse_args(v1)
    assert shown == []


def test_the_training_bar_is_closed_when_the_run_raises(tmp_path, capsys):
    """The recipe closed its training bar only after the last epoch: an error in the loop (here the caller's
    on_step, at step 3) left it open, so the traceback was written onto the bar's line and the bar redrawn after
    it. It is closed however the loop ends, and the error comes through intact."""
    from tqdm import tqdm

    class Stop(Exception):
        pass

    opened, init = [], tqdm.__init__

    def keep(self, *a, **k):
        init(self, *a, **k)
        opened.append(self)

    def stop(state):
        if state.step == 3:
            raise Stop("stopped at step 3")

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(tqdm, "__init__", keep)
        with pytest.raises(Stop) as raised:
            run(tmp_path, "--max_steps", "10", "--progress", "true", on_step=stop)
    assert str(raised.value) == "stopped at step 3"
    bars = [b for b in opened if b.desc == "train"]
    assert len(bars) == 1 and bars[0].n == 3, bars
    assert bars[0] not in tqdm._instances, "the training bar was left open"
    assert capsys.readouterr().err.endswith("\n")  # (its line ended: the traceback starts on a line of its own)


def test_the_density_note_never_shows_a_density_of_all_or_none_that_it_is_not():
    """"the run ended at density 1.0000, not the requested 0.5" was said of a run that had pruned a few synapses
    (0.99996): the note now keeps the digits that say so (fmt_unsaturated), an exact 1.0 written as before."""
    from types import SimpleNamespace

    from recipes._adaptive.notes import _density_note

    cfg = SimpleNamespace(density=0.5, ensemble="synapse", policy="gmp", update_every=10, end_fraction=0.75)
    ctrl = SimpleNamespace(editable=lambda: [], events=[])
    for got, said in ((0.99996, "0.99996"), (1.0, "1.0000"), (0.00004, "0.00004"), (0.7, "0.7000")):
        note = _density_note(cfg, {"density": got, "updates": 0}, 100, ctrl)
        assert note.startswith(f"the run ended at density {said}, not the requested 0.5: policy 'gmp'"), note


@pytest.mark.parametrize("mode", [["--mode", "train"], ["--mode", "mask_only", "--target", "0.5"]])
def test_a_test_split_that_fails_at_the_report_leaves_the_trained_connectome_written(tmp_path, monkeypatch, capsys,
                                                                                     mode):
    """The test split is read for the first time at the report (a test image cut short is found there): its
    failure left a run, of hours, with config.yaml and metrics.csv alone. The connectome and the dense state_dict
    are written before it is read, and are those of the network trained."""
    from recipes._adaptive import report

    def fail(*_a, **_k):
        raise ValueError("a test image cannot be read as an image")

    seen = {}
    real = report._save_trained

    def save(accelerator, output_dir, conn):
        real(accelerator, output_dir, conn)
        seen["masks"] = {n: m.clone() for n, m in conn.masks.items()}

    monkeypatch.setattr(report, "_save_trained", save)
    for module in ("train", "mask_only_run"):
        monkeypatch.setattr(f"recipes._adaptive.{module}._test_eval", fail)
        monkeypatch.setattr(f"recipes._adaptive.{module}._save_trained", save)
    with pytest.raises(SystemExit):
        R.main(mode + ["--output_dir", str(tmp_path), "--max_steps", "4", "--update_every", "2", "--threads", "1",
                       "--progress", "false", "--figures", "false"])
    assert "a test image cannot be read as an image" in capsys.readouterr().err
    import adaptive
    from adaptive.models import build_model

    model = build_model("mlp", num_classes=10, in_shape=(1, 8, 8))
    model.load_state_dict(torch.load(tmp_path / "dense_state_dict.pt", weights_only=True))
    conn = adaptive.Connectome.load(str(tmp_path / "connectome.safetensors"), model)
    assert all(torch.equal(conn.masks[n].cpu(), seen["masks"][n].cpu()) for n in seen["masks"])
    assert 0 < conn.num_live() < conn.num_synapses()


def _edit_train_state(ckpt, **entries):
    """Rewrite the checkpoint's TrainState entries (registration order: conn, ctrl, state, lr), its
    manifest rewritten as a run that recorded them would have written it."""
    from adaptive.integrity import write_manifest

    path = ckpt / "custom_checkpoint_2.pkl"
    sd = torch.load(path, weights_only=False)
    sd.update(entries)
    torch.save(sd, path)
    write_manifest(ckpt)
    return sd


def test_a_resume_reading_other_data_is_refused_and_another_thread_count_warned_of(tmp_path, capsys):
    """Another --data_dir holding data of the same sizes (every MNIST label shifted by one) resumed and
    trained the run on two datasets without a word (only the sizes were compared); a resume under another
    OMP_NUM_THREADS, --threads not given, lost bit-exactness in silence (only the option was recorded).
    The checkpoint records the data's fingerprint and the threads that ran."""
    base = [a for a in TINY if a not in ("--threads", "1")] + ["--figures", "false", "--checkpoint_every", "20"]
    R.main(base + ["--output_dir", str(tmp_path / "run")])
    ckpt = list_checkpoints(tmp_path / "run" / "checkpoints")[0]
    sd = torch.load(ckpt / "custom_checkpoint_2.pkl", weights_only=False)
    assert sd["threads"] == torch.get_num_threads() and sd["data"].startswith("train ") and " holdout " in sd["data"]
    resume = base + ["--output_dir", str(tmp_path / "run"), "--resume", str(ckpt)]
    _edit_train_state(ckpt, threads=sd["threads"] + 1)
    with pytest.warns(UserWarning, match=rf"--resume: the run ran on {sd['threads'] + 1} CPU thread\(s\), this resume on "
                                         rf"{sd['threads']}: .* give --threads {sd['threads'] + 1}"):
        R.main(resume)
    _edit_train_state(ckpt, threads=sd["threads"], data=sd["data"].replace("train ", "train 0"))
    with pytest.raises(SystemExit):
        R.main(resume)
    err = capsys.readouterr().err
    assert f"was written by a run that read other data (train 0" in err and "Give the --data_dir of the data" in err
    _edit_train_state(ckpt, threads=None, data=None)  # a checkpoint written before they were recorded
    R.main(resume)


def test_an_unreadable_checkpoint_names_the_earlier_ones_not_a_placeholder(tmp_path, capsys):
    """The refusal of a checkpoint that cannot be read advised "--resume .../checkpoints/step_N", a
    placeholder no shell runs: it names the latest earlier one."""
    run(tmp_path / "run", "--max_steps", "40", "--checkpoint_every", "10", "--keep_checkpoints", "4",
        "--figures", "false")
    ckpts = sorted(list_checkpoints(tmp_path / "run" / "checkpoints"), key=lambda p: p.name)
    assert len(ckpts) >= 3
    last = ckpts[-1]
    _edit_train_state(last, step="not a step")
    with pytest.raises(SystemExit):
        run(tmp_path / "run", "--max_steps", "40", "--checkpoint_every", "10", "--keep_checkpoints", "4",
            "--figures", "false", "--resume", str(last))
    err = capsys.readouterr().err
    others = ", ".join(p.name for p in ckpts[:-2])
    assert "step_N)" not in err and f"(--resume {ckpts[-2]}; the others: {others}) or run without" in err, err


def test_the_data_fingerprint_is_taken_only_for_a_checkpoint_and_never_fails_a_run(tmp_path, monkeypatch):
    """The fingerprint reads every label and an image folder's file sizes: taken at every start with
    --checkpoint_every, it is now taken at the first checkpoint (or a resume) only; a dataset it cannot read (a
    plugin's) failed the set-up of a one-process run, where it now warns and records none."""
    import adaptive.data

    calls = []
    real = adaptive.data.dataset_fingerprint
    monkeypatch.setattr(adaptive.data, "dataset_fingerprint", lambda ds, *a, **k: calls.append(1) or real(ds, *a, **k))
    run(tmp_path / "none", "--max_steps", "20", "--figures", "false")
    assert calls == []

    def unreadable(ds, *a, **k):
        raise TypeError("a plugin's labels are no tensor")

    monkeypatch.setattr(adaptive.data, "dataset_fingerprint", unreadable)
    with pytest.warns(UserWarning, match=r"the data's content fingerprint could not be taken \(TypeError: a plugin's"):
        run(tmp_path / "ckpt", "--max_steps", "20", "--checkpoint_every", "10", "--figures", "false")
    ckpt = list_checkpoints(tmp_path / "ckpt" / "checkpoints")[0]
    assert torch.load(ckpt / "custom_checkpoint_2.pkl", weights_only=False)["data"] is None
