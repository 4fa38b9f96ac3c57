"""Damaged, cut short or half-deleted saved state is refused with one line naming the file: recipes/
adaptive.py's checkpoint folders (MANIFEST.json), the mask-only stage checkpoint (a digest inside),
connectome files (a sha256 in the metadata); a failed checkpoint write is one line too."""
import errno
import json
import os
import shutil
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import adaptive
from adaptive.training import list_checkpoints

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _scripts import CHILD_TIMEOUT, load_script  # noqa: E402
from _training import fresh_recipe_state  # noqa: E402

torch.set_num_threads(1)
R = load_script("recipes/adaptive.py", "recipe_adaptive_integrity")
TINY = ["--max_steps", "60", "--update_every", "10", "--log_every", "5", "--threads", "1", "--progress", "false",
        "--figures", "false", "--checkpoint_every", "20"]


_fresh_accelerate_state = pytest.fixture(autouse=True)(fresh_recipe_state)  # a fresh Accelerator per in-process run


def run(out, *extra, on_step=None):
    return R.main(TINY + ["--output_dir", str(out), *extra], on_step=on_step)


def flip(path: Path, at: float = 0.5) -> None:
    b = bytearray(path.read_bytes())
    b[int(len(b) * at)] ^= 1
    path.write_bytes(bytes(b))


def refused(capsys, out, *extra) -> str:
    AcceleratorState_reset()
    with pytest.raises(SystemExit) as e:
        run(out, *extra)
    assert e.value.code == 2
    err = capsys.readouterr().err
    lines = err.splitlines()  # one error line (after a warning that a checkpoint cannot be verified)
    assert lines[-1].startswith("recipes/adaptive.py: error:") and "Traceback" not in err, err
    assert all(x.startswith("warning: ") for x in lines[:-1]), err
    return lines[-1]


def AcceleratorState_reset():
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(True)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A run of 60 steps with checkpoints at steps 20 and 40, and its outputs."""
    out = tmp_path_factory.mktemp("integrity") / "run"
    AcceleratorState_reset()
    res = run(out)
    AcceleratorState_reset()
    return out, {k: v.clone() for k, v in res.model.state_dict().items()}


def copy_of(finished_run, tmp_path) -> Path:
    out = tmp_path / "run"
    shutil.copytree(finished_run[0], out)
    return out


# ----------------------------------------------------------------------------- checkpoint folders

def test_every_checkpoint_folder_has_a_manifest_and_its_settings(finished_run):
    import json

    cks = list_checkpoints(finished_run[0] / "checkpoints")
    assert [c.name for c in cks] == ["step_00000020", "step_00000040"]
    for c in cks:
        files = json.loads((c / "MANIFEST.json").read_text())["files"]
        assert set(files) == {p.name for p in c.iterdir()} - {"MANIFEST.json"}
        assert {"model.safetensors", "custom_checkpoint_0.pkl", "random_states_0.pkl", "config.yaml"} <= set(files)
        assert (c / "config.yaml").read_bytes() == (finished_run[0] / "config.yaml").read_bytes()
    assert not list((finished_run[0] / "checkpoints").glob(".tmp-*"))


@pytest.mark.parametrize("name", ["custom_checkpoint_0.pkl", "model.safetensors", "optimizer.bin",
                                  "random_states_0.pkl", "config.yaml"])
def test_a_flipped_bit_in_a_checkpoint_is_refused_naming_the_file(finished_run, tmp_path, capsys, name):
    out = copy_of(finished_run, tmp_path)
    ck = out / "checkpoints" / "step_00000040"
    flip(ck / name)
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    err = refused(capsys, out, "--resume", "latest")
    assert f"checkpoint {ck} is damaged: {name}" in err
    assert f"--resume {out / 'checkpoints' / 'step_00000020'}" in err  # the run's other checkpoint
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before  # nothing written


def test_a_missing_or_added_file_is_refused(finished_run, tmp_path, capsys):
    out = copy_of(finished_run, tmp_path)
    ck = out / "checkpoints" / "step_00000040"
    (ck / "random_states_0.pkl").unlink()
    err = refused(capsys, out, "--resume", "latest")
    assert "random_states_0.pkl is missing" in err
    shutil.rmtree(out)
    out = copy_of(finished_run, tmp_path)
    (ck / "stray.bin").write_bytes(b"x")  # added later: never read, so no reason to refuse the checkpoint
    (ck / ".DS_Store").write_bytes(b"x")  # (hidden files are not even named)
    res = run(out, "--resume", "latest")
    err = capsys.readouterr().err
    assert "holds file(s) it was not written with (stray.bin); they are not read" in err and ".DS_Store" not in err
    assert all(torch.equal(v, finished_run[1][k]) for k, v in res.model.state_dict().items())


def test_a_checkpoint_of_another_process_count_is_not_called_damaged(finished_run, tmp_path, capsys):
    """Resumed under another process count, an intact checkpoint was called damaged (a random-state
    file missing) with advice to delete it; it is the process-count refusal again."""
    from adaptive.integrity import write_manifest

    out = copy_of(finished_run, tmp_path)
    ck = out / "checkpoints" / "step_00000040"
    shutil.copy(ck / "random_states_0.pkl", ck / "random_states_1.pkl")  # as a 2-process run writes it
    write_manifest(ck)
    err = refused(capsys, out, "--resume", "latest")
    assert "was written by a run of 2 process(es)" in err and "--num_processes 2" in err
    assert "damaged" not in err and "delete" not in err


def test_an_optimizer_state_of_another_model_is_refused_not_a_traceback_at_the_first_step(finished_run, tmp_path,
                                                                                           capsys):
    """An optimizer.bin of another model (its MANIFEST.json rewritten to match) loaded silently, torch
    checking only the parameter counts, and the first step failed deep in SGD with a traceback of
    mismatched tensor sizes: refused at the load, naming the parameter and the checkpoint."""
    from adaptive.integrity import write_manifest

    out = copy_of(finished_run, tmp_path)
    ck = list_checkpoints(out / "checkpoints")[-1]
    opt = torch.load(ck / "optimizer.bin", weights_only=False)
    first = next(iter(opt["state"]))
    opt["state"][first]["momentum_buffer"] = opt["state"][first]["momentum_buffer"][:-1].clone()  # one unit fewer
    torch.save(opt, ck / "optimizer.bin")
    write_manifest(ck)
    line = refused(capsys, out, "--resume", "latest")
    assert f"checkpoint {ck} cannot be read" in line and "optimizer state momentum_buffer of " in line, line
    assert "was it saved from another model?" in line, line
    assert "resume from an earlier one" in line or "run without --resume" in line, line  # the recipe's fix


def test_load_checkpoint_names_the_fix_for_an_optimizer_state_of_another_model(tmp_path):
    """adaptive.training.load_checkpoint (the library call, no recipe around it to add one) named the
    mismatched moment but no fix: its ValueError says what to load instead."""
    from accelerate import Accelerator

    from adaptive.training import load_checkpoint, save_checkpoint

    def prepared(width):  # (a fresh Accelerator each)
        AcceleratorState_reset()
        acc = Accelerator(cpu=True)
        torch.manual_seed(0)
        model = torch.nn.Linear(width, 2)
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        model, opt = acc.prepare(model, opt)
        return acc, model, opt

    from adaptive.integrity import write_manifest

    acc, model, opt = prepared(4)
    model(torch.randn(3, 4)).sum().backward()
    opt.step()
    ck = save_checkpoint(acc, tmp_path, step=1)
    state = torch.load(ck / "optimizer.bin", weights_only=False)
    first = next(iter(state["state"]))
    state["state"][first]["momentum_buffer"] = state["state"][first]["momentum_buffer"][:-1].clone()  # another model's
    torch.save(state, ck / "optimizer.bin")
    write_manifest(ck)
    acc, model, opt = prepared(4)
    with pytest.raises(ValueError, match=r"another model\? Load a checkpoint of this model"):
        load_checkpoint(acc, ck)


class _LowRankMomentum(torch.optim.Optimizer):
    """An optimizer whose ``exp_avg`` has another shape than its parameter by design (a low-rank
    optimizer's moment of the projected gradient, as GaLore keeps)."""

    def __init__(self, params):
        super().__init__(params, dict(lr=0.1))

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            for p in group["params"]:
                st = self.state[p]
                st.setdefault("exp_avg", torch.zeros(1)).mul_(0.9).add_(p.grad.sum())
                p.sub_(group["lr"] * st["exp_avg"] * p.grad.sign())


def test_an_optimizer_whose_moments_have_other_shapes_by_design_resumes(tmp_path):
    """The check that refuses another model's moments knew only torch's optimizers' state names, so an
    optimizer of one's own keeping an ``exp_avg`` of another shape by design was refused at every resume."""
    from accelerate import Accelerator

    from adaptive.training import load_checkpoint, save_checkpoint

    def step_once():
        AcceleratorState_reset()
        acc = Accelerator(cpu=True)
        torch.manual_seed(0)
        model = torch.nn.Linear(3, 2)
        model, opt = acc.prepare(model, _LowRankMomentum(model.parameters()))
        model(torch.ones(4, 3)).sum().backward()
        opt.step()
        return acc, opt

    acc, _ = step_once()
    save_checkpoint(acc, tmp_path, 1)
    acc, opt = step_once()
    load_checkpoint(acc, tmp_path / "checkpoints" / "step_00000001")
    assert [st["exp_avg"].shape for st in opt.optimizer.state.values()] == [(1,), (1,)]


def test_a_checkpoint_that_lost_its_manifest_is_refused_and_the_advice_works(finished_run, tmp_path, capsys):
    """A checkpoint written with a settings copy was written with a manifest: without one it was
    taken for an older checkpoint and a flipped byte went through. With no other checkpoint, the
    advice was 'start afresh (without --resume)', which the same folder refuses."""
    out = copy_of(finished_run, tmp_path)
    ck = out / "checkpoints" / "step_00000040"
    (ck / "MANIFEST.json").unlink()
    for other in (out / "checkpoints").iterdir():
        if other != ck:
            shutil.rmtree(other)
    err = refused(capsys, out, "--resume", "latest")
    assert "its MANIFEST.json is missing" in err and "another --output_dir or with --overwrite" in err


def test_a_checkpoint_without_a_manifest_loads_with_a_warning_but_needs_its_random_states(finished_run, tmp_path,
                                                                                          capsys):
    out = copy_of(finished_run, tmp_path)
    ck = out / "checkpoints" / "step_00000040"
    (ck / "MANIFEST.json").unlink()  # as written by older code
    (ck / "config.yaml").unlink()
    res = run(out, "--resume", "latest")
    err = capsys.readouterr().err
    assert f"warning: checkpoint {ck} has no MANIFEST.json" in err and err.count("warning:") == 1
    assert all(torch.equal(v, finished_run[1][k]) for k, v in res.model.state_dict().items())  # still bit-exact
    shutil.rmtree(out)
    out = copy_of(finished_run, tmp_path)
    for n in ("MANIFEST.json", "config.yaml", "random_states_0.pkl"):
        (ck / n).unlink()
    assert "random_states_0.pkl is missing" in refused(capsys, out, "--resume", "latest")


def test_a_checkpoint_whose_manifest_is_cut_short_is_refused_not_trusted(tmp_path):
    """A MANIFEST.json that cannot be read must refuse the checkpoint (its files cannot be checked),
    not let a damaged weights file load as verified."""
    from adaptive.integrity import CheckpointDamagedError, check_manifest, write_manifest
    from adaptive.training import verify_checkpoint

    ck = tmp_path / "checkpoints" / "step_00000020"
    ck.mkdir(parents=True)
    (ck / "model.safetensors").write_bytes(b"weights" * 100)
    (ck / "random_states_0.pkl").write_bytes(b"rng")
    (ck / "config.yaml").write_text("model: mlp\n")
    m = write_manifest(ck)
    (ck / "model.safetensors").write_bytes(b"WEIGHTS" * 100)  # damaged after it was written
    m.write_bytes(m.read_bytes()[:-20])  # and the manifest cut short
    assert check_manifest(ck) == "its MANIFEST.json cannot be read (JSONDecodeError)"
    with pytest.raises(CheckpointDamagedError, match=r"step_00000020 is damaged: its MANIFEST.json cannot be read"):
        verify_checkpoint(ck)


def test_a_checkpoint_whose_manifest_is_of_an_unknown_format_is_refused(tmp_path):
    """A MANIFEST.json of another format (a newer version's, whose checks this one does not know) was read as this
    version's, its format never looked at."""
    import json

    from adaptive.integrity import CheckpointDamagedError, check_manifest, write_manifest
    from adaptive.training import verify_checkpoint

    ck = tmp_path / "checkpoints" / "step_00000020"
    ck.mkdir(parents=True)
    (ck / "random_states_0.pkl").write_bytes(b"rng")
    (ck / "config.yaml").write_text("model: mlp\n")
    m = write_manifest(ck)
    assert check_manifest(ck) == ""
    m.write_text(json.dumps({**json.loads(m.read_text()), "format": 99}))
    with pytest.raises(CheckpointDamagedError, match=r"its MANIFEST.json is of format 99, which this version of "
                                                     r"adaptive does not know \(it writes format 1"):
        verify_checkpoint(ck)


# ----------------------------------------------------------------------------- mask-only stage checkpoint

def _stage_file(tmp_path):
    from test_mask_only_checkpoint import interrupted
    from test_mask_only import tiny

    path = tmp_path / "ck.pt"
    interrupted(tiny(), [0.2, 0.5, 0.7], path, at_stage=2)
    return path


def _resume_stage(path):
    from test_mask_only_checkpoint import KW, ordered_loaders
    from test_mask_only import tiny
    from adaptive.mask_only import optimize_connectome

    return optimize_connectome(tiny(), *ordered_loaders(), [0.2, 0.5, 0.7], checkpoint=path, **KW)


def test_a_flipped_mask_byte_in_a_stage_checkpoint_is_refused(tmp_path):
    import struct
    import zipfile

    from adaptive.mask_only_checkpoint import CheckpointMismatchError

    path = _stage_file(tmp_path)
    with zipfile.ZipFile(path) as z:  # the first tensor's bytes (a mask)
        info = next(i for i in z.infolist() if i.filename.endswith("/data/0"))
    b = bytearray(path.read_bytes())
    fnl, exl = struct.unpack("<HH", b[info.header_offset + 26: info.header_offset + 30])
    b[info.header_offset + 30 + fnl + exl] ^= 1
    path.write_bytes(bytes(b))
    with pytest.raises(CheckpointMismatchError, match="is damaged: its content does not match the sha256") as e:
        _resume_stage(path)
    assert str(path) in str(e.value) and "\n" not in str(e.value)
    assert "It cannot be resumed" in str(e.value.with_fix("To continue it, give that run's settings again"))


def test_a_stage_checkpoint_with_damaged_structure_or_no_bytes_is_refused(tmp_path):
    from adaptive.mask_only_checkpoint import CheckpointMismatchError

    path = _stage_file(tmp_path)
    state = torch.load(path, weights_only=True)
    state.pop("sha256", None)  # written before checksums: its entries are checked before use
    state["history"] = [tuple(r.items()) if i == 1 else r for i, r in enumerate(state["history"])]
    torch.save(state, path)
    with pytest.raises(CheckpointMismatchError, match=r"is damaged \('history' holds something other than records\)"):
        _resume_stage(path)
    path.write_bytes(b"")
    with pytest.raises(CheckpointMismatchError, match=r"is empty \(0 bytes") as e:
        _resume_stage(path)
    assert "()" not in str(e.value)


def test_a_stage_checkpoint_whose_format_entry_was_hit_is_called_damaged(tmp_path, monkeypatch):
    """A flipped byte in the format entry read as 'not a mask-only stage checkpoint' with advice to
    give the run's settings again; an unpickling failure advised weights_only=False."""
    import pickle

    from adaptive.mask_only_checkpoint import CheckpointMismatchError

    path = _stage_file(tmp_path)
    state = torch.load(path, weights_only=True)
    state["format"] = 3  # as a flipped bit leaves it; the stored sha256 is the original's
    torch.save(state, path)
    with pytest.raises(CheckpointMismatchError, match="is damaged: its content does not match the sha256") as e:
        _resume_stage(path)
    assert "It cannot be resumed" in str(e.value.with_fix("give that run's settings again"))

    def unpickling(*a, **kw):
        raise pickle.UnpicklingError("Weights only load failed. In PyTorch 2.6, we changed the default value of the "
                                     "`weights_only` argument ... Re-running `torch.load` with `weights_only` set to "
                                     "`False` will likely succeed\n\nmore lines")

    monkeypatch.setattr(torch, "load", unpickling)
    with pytest.raises(CheckpointMismatchError, match=r"not a readable mask-only checkpoint \(UnpicklingError: its "
                                                      r"pickled data is damaged\)") as e:
        _resume_stage(path)
    assert "weights_only" not in str(e.value)


def _rename_mask(s):
    s["masks"] = {"fc9.weight": s["masks"]["fc1.weight"]}


def _reshape_mask(s):
    s["masks"]["fc1.weight"] = s["masks"]["fc1.weight"].reshape(4)


def _retype_mask(s):
    s["masks"]["fc1.weight"] = s["masks"]["fc1.weight"].to(torch.uint8)


def _change_moment(s):
    s["controller"]["moment"] = torch.tensor(99.0)


@pytest.mark.parametrize("tamper", [_rename_mask, _reshape_mask, _retype_mask, _change_moment],
                         ids=["renamed_key", "reshaped", "retyped", "one_element_tensor"])
def test_a_stage_checkpoint_changed_in_a_name_shape_dtype_or_scalar_is_refused(tmp_path, tamper):
    """The stored sha256 covers dict keys, each tensor's dtype and shape, and one-element tensors:
    a mask renamed, reshaped or retyped (same bytes) or a changed controller moment is damage."""
    from adaptive.mask_only_checkpoint import CheckpointMismatchError, load_stage, save_stage

    path = tmp_path / "ck.pt"
    save_stage(path, {"fingerprint": {"targets": [0.5]}, "stage": 1, "step": 10, "since_best": 0,
                      "masks": {"fc1.weight": torch.tensor([[True, False], [True, True]])},
                      "controller": {"moment": torch.tensor(0.25)}, "snapshots": {}, "history": [{"stage": 1}],
                      "data": None, "cpu_seconds": 1.0, "wall_seconds": 1.0})
    assert torch.equal(load_stage(path, {"targets": [0.5]})["controller"]["moment"], torch.tensor(0.25))  # intact
    state = torch.load(path, weights_only=True)
    tamper(state)  # its stored sha256 kept
    torch.save(state, path)
    with pytest.raises(CheckpointMismatchError, match="is damaged: its content does not match the sha256 stored in it"):
        load_stage(path, {"targets": [0.5]})


def test_a_stage_checkpoint_written_before_checksums_still_resumes(tmp_path, capsys):
    path = _stage_file(tmp_path)
    state = torch.load(path, weights_only=True)
    state.pop("sha256", None)
    torch.save(state, path)
    resumed = _resume_stage(path)
    assert [h["kind"] for h in resumed.history].count("resume") == 1
    assert "carries no checksum" in capsys.readouterr().err


# ----------------------------------------------------------------------------- connectome files

def test_a_damaged_connectome_file_is_refused_by_load_and_by_graphs(finished_run, tmp_path, capsys):
    from graphs.cli import main

    out = copy_of(finished_run, tmp_path)
    f = out / "connectome.safetensors"
    model = adaptive.models.build_model("mlp", num_classes=10, in_shape=(1, 8, 8))
    adaptive.Connectome.load(f, model)  # intact: loads
    b = bytearray(f.read_bytes())
    b[len(b) - 200] ^= 1  # a bit of a packed mask, near the end
    f.write_bytes(bytes(b))
    with pytest.raises(ValueError, match="is damaged: its content does not match the sha256"):
        adaptive.Connectome.load(f, model)
    capsys.readouterr()
    assert main(["export", str(out), "--level", "layer", "--format", "json"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{f} is damaged" in err
    assert not (out / "connectome_layer.json").exists()


def test_a_connectome_file_saved_before_checksums_still_loads(tmp_path):
    from safetensors.torch import load_file, save_file
    from safetensors import safe_open

    model = adaptive.models.build_model("mlp", num_classes=10, in_shape=(1, 8, 8))
    c = adaptive.Connectome(model)
    c.set_masks({k: torch.rand(v.shape) < 0.5 for k, v in c.masks.items()})
    c.save(tmp_path / "c.safetensors")
    with safe_open(str(tmp_path / "c.safetensors"), framework="pt") as f:
        meta = f.metadata()
    assert "sha256" in meta
    meta.pop("sha256")
    save_file(load_file(tmp_path / "c.safetensors"), str(tmp_path / "old.safetensors"), metadata=meta)
    back = adaptive.Connectome.load(tmp_path / "old.safetensors", model)
    assert all(torch.equal(back.masks[n], c.masks[n]) for n in c.masks)


def test_a_connectome_file_whose_metadata_changed_is_refused(tmp_path):
    """The sha256 in a connectome file covers its metadata too: a mode re-saved as mask_only (the
    tensors and the sha256 entry kept) is refused, not loaded as a mask-only connectome."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    def model():
        torch.manual_seed(0)
        return torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))

    f = tmp_path / "c.safetensors"
    adaptive.Connectome(model(), mode="train").save(f)
    assert adaptive.Connectome.load(f, model()).mode == "train"  # intact: loads
    with safe_open(str(f), framework="pt") as g:
        meta, tensors = g.metadata(), {k: g.get_tensor(k) for k in g.keys()}
    meta["mode"] = "mask_only"
    save_file(tensors, str(f), metadata=meta)
    with pytest.raises(ValueError, match="is damaged: its content does not match the sha256"):
        adaptive.Connectome.load(f, model())


@pytest.mark.parametrize("ensembles", ["{not json", "[1, 2]", "\"neuron\""])
def test_a_connectome_file_with_malformed_per_layer_granularities_is_called_corrupt(tmp_path, ensembles):
    """A file (written before checksums, so no sha256 catches the edit) whose 'ensembles' entry is not a
    JSON mapping is refused as corrupt before a Connectome is built, not with a bare JSONDecodeError or
    AttributeError."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    f = tmp_path / "c.safetensors"
    adaptive.Connectome(model, ensemble="0=neuron;synapse").save(f)
    with safe_open(str(f), framework="pt") as g:
        meta, tensors = g.metadata(), {k: g.get_tensor(k) for k in g.keys()}
    assert "ensembles" in meta
    meta.pop("sha256")
    meta["ensembles"] = ensembles
    save_file(tensors, str(f), metadata=meta)
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(ValueError, match="metadata is missing or malformed.*corrupt"):
        adaptive.Connectome.load(f, model)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


# ----------------------------------------------------------------------------- --overwrite and config.yaml

def test_a_checkpoint_carries_its_settings_when_the_run_folder_lost_config_yaml(finished_run, tmp_path, capsys):
    """An --overwrite killed after config.yaml went and before the checkpoints did: --resume latest
    with new settings resumed them unchecked and recorded settings the run never had."""
    out = copy_of(finished_run, tmp_path)
    (out / "config.yaml").unlink()
    err = refused(capsys, out, "--resume", "latest", "--density", "0.05")
    assert "density: run 0.2, now 0.05" in err
    assert f"{out / 'checkpoints' / 'step_00000040' / 'config.yaml'} records other settings" in err
    assert not (out / "config.yaml").exists()


def test_overwrite_deletes_the_checkpoints_before_config_yaml(finished_run, tmp_path, monkeypatch, capsys):
    out = copy_of(finished_run, tmp_path)
    real = Path.unlink

    def killed_at_config(self, *a, **kw):
        if self.name == "config.yaml" and self.parent == out:
            raise KeyboardInterrupt
        return real(self, *a, **kw)

    monkeypatch.setattr(Path, "unlink", killed_at_config)
    with pytest.raises(SystemExit):
        run(out, "--overwrite", "--density", "0.05")
    monkeypatch.undo()
    capsys.readouterr()
    assert (out / "config.yaml").exists() and not list_checkpoints(out / "checkpoints")
    assert not (out / "metrics.csv").exists()


@pytest.mark.parametrize("content,what", [(b"", "empty"), (b"- 1\n- 2\n", "not a mapping of settings"),
                                          (b"density: [0.2\n", "not valid YAML at line"),
                                          (b"density: 0.2\n\xff\xfe\n", "not UTF-8 text")])
def test_a_damaged_config_yaml_is_refused_on_resume(finished_run, tmp_path, capsys, content, what):
    out = copy_of(finished_run, tmp_path)
    for ck in list_checkpoints(out / "checkpoints"):  # checkpoints written before they carried their settings
        (ck / "config.yaml").unlink()
        (ck / "MANIFEST.json").unlink()
    (out / "config.yaml").write_bytes(content)
    err = refused(capsys, out, "--resume", "latest", "--density", "0.05")
    assert f"{out / 'config.yaml'} is damaged ({what}" in err


def test_a_damaged_config_yaml_is_no_obstacle_when_the_checkpoint_has_its_copy(finished_run, tmp_path, capsys):
    out = copy_of(finished_run, tmp_path)
    (out / "config.yaml").write_bytes(b"")
    assert "density: run 0.2, now 0.05" in refused(capsys, out, "--resume", "latest", "--density", "0.05")
    AcceleratorState_reset()
    res = run(out, "--resume", "latest")
    assert all(torch.equal(v, finished_run[1][k]) for k, v in res.model.state_dict().items())
    import yaml

    a, b = (yaml.safe_load((d / "config.yaml").read_text()) for d in (out, finished_run[0]))
    assert {k: v for k, v in a.items() if k != "output_dir"} == {k: v for k, v in b.items() if k != "output_dir"}


# ----------------------------------------------------------------------------- failed writes

def test_a_full_disk_while_saving_a_checkpoint_is_one_line_and_keeps_the_earlier_one(finished_run, tmp_path, capsys,
                                                                                     monkeypatch):
    from accelerate import Accelerator

    out = tmp_path / "run"
    real = Accelerator.save_state

    def full(self, output_dir=None, **kw):
        if "step_00000040" in str(output_dir):
            Path(output_dir).mkdir(parents=True, exist_ok=True)
            (Path(output_dir) / "model.safetensors").write_bytes(b"half")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(self, output_dir, **kw)

    monkeypatch.setattr(Accelerator, "save_state", full)
    err = refused(capsys, out)
    monkeypatch.undo()
    ck = out / "checkpoints"
    assert f"writing checkpoint {ck / 'step_00000040'} failed (No space left on device" in err
    assert f"{ck / 'step_00000020'} is intact" in err and "free disk space" in err and "--resume latest" in err
    assert [c.name for c in list_checkpoints(ck)] == ["step_00000020"] and not list(ck.glob(".tmp-*"))
    AcceleratorState_reset()
    res = run(out, "--resume", "latest")
    assert all(torch.equal(v, finished_run[1][k]) for k, v in res.model.state_dict().items())


def test_a_file_size_limit_while_saving_is_one_line(tmp_path):
    """The real thing: RLIMIT_FSIZE makes the writer fail (EFBIG) part-way through."""
    import resource
    import subprocess

    script = Path(__file__).resolve().parents[1] / "recipes" / "adaptive.py"
    # (no bytecode written under the limit: Python's writer does not check for a short write, and a truncated
    # .pyc of a large module in a shared cache stopped every later process importing it, "marshal data too short")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(script.parents[1]), "PYTHONDONTWRITEBYTECODE": "1"}
    lim = 150 * 1024  # model.safetensors (~200 KiB) does not fit

    def limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (lim, lim))

    r = subprocess.run([sys.executable, str(script), *TINY, "--output_dir", str(tmp_path / "run")], env=env,
                       capture_output=True, text=True, preexec_fn=limit, timeout=CHILD_TIMEOUT)
    assert r.returncode == 2, r.stderr[-2000:]
    lines = [x for x in r.stderr.splitlines() if x.strip()]
    assert "Traceback" not in r.stderr and lines[-1].startswith("recipes/adaptive.py: error: writing checkpoint")
    assert "the run has no earlier checkpoint" in lines[-1]
    assert not list((tmp_path / "run" / "checkpoints").glob(".tmp-*"))


def test_a_failed_stage_checkpoint_write_keeps_the_earlier_file(tmp_path, monkeypatch):
    from adaptive import mask_only_checkpoint as ck
    from adaptive.integrity import CheckpointWriteError

    path = tmp_path / "ck.pt"
    ck.save_stage(path, {"stage": 0})
    before = path.read_bytes()

    def full(obj, f, *a, **kw):
        f.write(b"half")  # (an open temporary file: atomic_torch_save)
        raise RuntimeError("[enforce fail at inline_container.cc:595] . PytorchStreamWriter failed writing file")

    monkeypatch.setattr(ck.torch, "save", full)
    with pytest.raises(CheckpointWriteError, match=r"writing the stage checkpoint .* failed \(RuntimeError: \[enforce "
                                                   r"fail.*still holds the previous stage.s record, so the run can continue.*: free disk space"):
        ck.save_stage(path, {"stage": 1})
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["ck.pt"]


def test_run_cli_prints_a_failed_write_as_one_line(capsys):
    from adaptive.cli import run_cli
    from adaptive.integrity import CheckpointWriteError

    def main():
        raise CheckpointWriteError("writing checkpoint X failed (No space left on device); free disk space")

    with pytest.raises(SystemExit) as e:
        run_cli(main, "prog")
    assert e.value.code == 2 and capsys.readouterr().err == (
        "prog: error: writing checkpoint X failed (No space left on device); free disk space\n")


def test_load_checkpoint_raises_the_error_of_what_is_wrong(finished_run, tmp_path):
    """load_checkpoint gathered every process's refusal as text and raised the base class, so a
    caller's `except CheckpointDamagedError` missed a damaged checkpoint."""
    from accelerate import Accelerator

    from adaptive.integrity import CheckpointDamagedError, CheckpointRefusedError
    from adaptive.training import load_checkpoint

    out = copy_of(finished_run, tmp_path)
    ck = out / "checkpoints" / "step_00000040"
    flip(ck / "model.safetensors")
    AcceleratorState_reset()
    with pytest.raises(CheckpointDamagedError, match="model.safetensors"):
        load_checkpoint(Accelerator(cpu=True), ck)
    shutil.copytree(finished_run[0] / "checkpoints" / "step_00000020", tmp_path / "two")
    shutil.copy(tmp_path / "two" / "random_states_0.pkl", tmp_path / "two" / "random_states_1.pkl")
    from adaptive.integrity import write_manifest

    write_manifest(tmp_path / "two")
    with pytest.raises(CheckpointRefusedError, match="written by a run of 2") as e:
        load_checkpoint(Accelerator(cpu=True), tmp_path / "two")
    assert not isinstance(e.value, CheckpointDamagedError)


def test_a_model_file_with_a_non_zero_weight_where_the_masks_prune_is_refused(finished_run, tmp_path, capsys):
    """A model.safetensors of another run of the same shapes (its MANIFEST.json rewritten to match)
    loaded, and the connectome's load zeroed the pruned weights: the run went on from one run's weights
    under the other's masks. In train mode a pruned synapse's weight is saved as exactly 0, so one
    non-zero weight there is refused, naming the checkpoint, the file and the count; the intact
    checkpoint resumes (every pruned weight 0, -0.0 too)."""
    from safetensors.torch import load_file, save_file

    from adaptive.integrity import write_manifest

    out = copy_of(finished_run, tmp_path)
    ck = list_checkpoints(out / "checkpoints")[-1]
    masks = torch.load(ck / "custom_checkpoint_0.pkl", weights_only=False)["masks"]
    name = next(n for n, m in masks.items() if not m.all())
    weights = load_file(ck / "model.safetensors")
    assert all(torch.equal(weights[n][~m], torch.zeros_like(weights[n][~m])) for n, m in masks.items())
    w = weights[name].clone()
    w[~masks[name]] = -0.0  # still a zero: not refused
    save_file({**weights, name: w}, ck / "model.safetensors", metadata={"format": "pt"})
    write_manifest(ck)
    AcceleratorState_reset()
    res = run(out, "--resume", str(ck))
    assert all(torch.equal(v, finished_run[1][k]) for k, v in res.model.state_dict().items())
    shutil.rmtree(out)
    out = copy_of(finished_run, tmp_path)
    w = weights[name].clone()
    w.view(-1)[(~masks[name]).reshape(-1).nonzero()[0]] = 0.25  # one pruned synapse holds a weight
    save_file({**weights, name: w}, ck / "model.safetensors", metadata={"format": "pt"})
    write_manifest(ck)
    line = refused(capsys, out, "--resume", "latest")
    assert f"checkpoint {ck} is damaged: model.safetensors holds 1 non-zero weight(s) at synapses the connectome " \
           f"(custom_checkpoint_0.pkl) prunes, in 1 layer(s), first {name!r}" in line, line
    assert "come from different runs (or steps)" in line and f"--resume {ck.parent / 'step_00000020'}" in line, line


def _api_run(scheduler: bool = False):
    """A connectome at density 0.5 whose controller is attached to SGD, prepared and registered with a fresh
    Accelerator (the Python API's loop, not the recipe's): ``(acc, model, opt, conn)``; with ``scheduler``, a
    StepLR prepared beside them and the controller too, ``(acc, model, opt, sched, conn, ctrl)``."""
    from accelerate import Accelerator

    AcceleratorState_reset()
    torch.manual_seed(0)
    acc = Accelerator(cpu=True)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    conn = adaptive.Connectome(model)
    ctrl = adaptive.Controller(conn, opt, density=0.5, update_every=2, seed=0)
    if scheduler:
        sched = torch.optim.lr_scheduler.StepLR(opt, 2)
        model, opt, sched = acc.prepare(model, opt, sched)
    else:
        model, opt = acc.prepare(model, opt)
    acc.register_for_checkpointing(conn, ctrl)
    return (acc, model, opt, sched, conn, ctrl) if scheduler else (acc, model, opt, conn)


def test_a_checkpoint_saved_right_after_an_in_place_write_of_the_weights_resumes(tmp_path):
    """Weights written in place between steps (model.load_state_dict, an nn.init re-init) are re-masked
    only at the next step's pre-hook (docs/python_api.md), so a checkpoint one's own loop saves then holds
    non-zero weights where the masks prune: it was refused as a model file of another run, and no flag
    let it resume. save_checkpoint records which connectomes held 0 at every pruned weight
    (pruned_weights.json); only those are read against the model file, which still refuses another
    run's weights beside masks saved with zeros."""
    from safetensors.torch import load_file

    from adaptive.checkpoint_weights import RECORD
    from adaptive.integrity import CheckpointRefusedError, write_manifest
    from adaptive.training import load_checkpoint, save_checkpoint

    def step(model, opt):
        model(torch.randn(4, 8)).pow(2).mean().backward()
        opt.step()
        opt.zero_grad()

    acc, model, opt, conn = _api_run()
    dense = {k: v.clone() for k, v in model.state_dict().items()}
    for _ in range(3):
        step(model, opt)
    model.load_state_dict(dense)  # pruned weights non-zero until the next step
    assert any(bool((p.detach()[~conn.masks[n]] != 0).any()) for n, p in conn.params.items())
    lazy = save_checkpoint(acc, tmp_path / "lazy", 3)
    assert json.loads((lazy / RECORD).read_text()) == {"zero_at_pruned": []}
    step(model, opt)  # the pre-hook masks them: this checkpoint's weights are 0 wherever pruned
    masked = save_checkpoint(acc, tmp_path / "masked", 4)
    assert json.loads((masked / RECORD).read_text()) == {"zero_at_pruned": [0]}
    acc, model, opt, conn = _api_run()
    load_checkpoint(acc, lazy)  # was refused: "model.safetensors holds 29 non-zero weight(s) ..."
    assert all(torch.equal(v, dense[k]) for k, v in load_file(lazy / "model.safetensors").items())
    acc, model, opt, conn = _api_run()
    load_checkpoint(acc, masked)
    # the lazy checkpoint's model file beside the masked one's masks: still refused
    shutil.copy(lazy / "model.safetensors", masked / "model.safetensors")
    write_manifest(masked)
    acc, model, opt, conn = _api_run()
    with pytest.raises(CheckpointRefusedError, match=r"at synapses the connectome \(custom_checkpoint_0.pkl\) prunes, "
                       r"in 2 layer\(s\), first '0.weight': its pruned weights were exactly 0 when the checkpoint was "
                       r"saved \(pruned_weights.json\)"):
        load_checkpoint(acc, masked)


def _bits(x):
    """``x`` (a state_dict, nested) with every tensor as its raw bytes: equal only where bit-identical."""
    if torch.is_tensor(x):
        return (x.dtype, tuple(x.shape), x.detach().cpu().contiguous().reshape(-1).view(torch.uint8).tolist())
    if isinstance(x, dict):
        return {k: _bits(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_bits(v) for v in x]
    return x


def _in_memory(model, opt, conn):
    return _bits({"model": model.state_dict(), "masks": dict(conn.masks), "optimizer": opt.state_dict()})


@pytest.mark.parametrize("spoil", ["moment", "groups", "weight"])
def test_a_refused_checkpoint_leaves_the_model_masks_and_optimizer_as_they_were(tmp_path, spoil):
    """The checks that refuse another model's optimizer state and another run's model file ran after
    accelerator.load_state had loaded the model, optimizer and connectome: a Python caller who caught the
    refusal went on with a half-loaded run (the other checkpoint's weights, masks and moments, or moments of
    other shapes). They read the files before anything loads now: every weight, mask and moment is
    bit-identical to before the call."""
    from safetensors.torch import load_file, save_file

    from adaptive.integrity import CheckpointRefusedError, write_manifest
    from adaptive.training import load_checkpoint, save_checkpoint

    def step(model, opt):
        model(torch.randn(4, 8)).pow(2).mean().backward()
        opt.step()
        opt.zero_grad()

    acc, model, opt, conn = _api_run()
    for _ in range(3):
        step(model, opt)
    ck = save_checkpoint(acc, tmp_path / "run", 3)
    if spoil == "weight":  # another run's model file beside these masks (pruned weights saved as 0)
        name, m = next((n, m) for n, m in conn.masks.items() if not m.all())
        weights = load_file(ck / "model.safetensors")
        weights[name].view(-1)[(~m).reshape(-1).nonzero()[0]] = 0.25
        save_file(weights, ck / "model.safetensors", metadata={"format": "pt"})
        refusal = (CheckpointRefusedError, "non-zero weight")
    else:  # another model's optimizer state: a moment of another shape, or groups of other sizes
        sd = torch.load(ck / "optimizer.bin", weights_only=False)
        if spoil == "moment":
            sd["state"][0]["momentum_buffer"] = sd["state"][0]["momentum_buffer"][:-1].clone()
        else:
            sd["param_groups"][0]["params"] = sd["param_groups"][0]["params"][:-1]
        torch.save(sd, ck / "optimizer.bin")
        refusal = (ValueError, "was it saved from another model?")
    write_manifest(ck)
    acc, model, opt, conn = _api_run()
    step(model, opt)  # a run of its own: other weights and moments than the checkpoint's
    before = _in_memory(model, opt, conn)
    assert before["model"] != _bits(load_file(ck / "model.safetensors"))
    with pytest.raises(refusal[0], match=refusal[1]):
        load_checkpoint(acc, ck)
    assert _in_memory(model, opt, conn) == before


def test_an_optimizer_state_adapted_by_a_load_pre_hook_resumes(tmp_path):
    """torch's documented way to load an optimizer state whose parameters differ from the optimizer's
    (here: one group saved, the bias given a group of its own since) is a load_state_dict pre-hook that
    adapts the state_dict. load_checkpoint's check read the file as saved, before the hook ran, and refused
    a checkpoint the load takes ("groups of [2] parameter(s) ... [1, 1] here"); such an optimizer's state is
    checked as loaded, after its hooks, and a moment of another shape is still refused."""
    from accelerate import Accelerator

    from adaptive.integrity import write_manifest
    from adaptive.training import load_checkpoint, save_checkpoint

    def build(split):
        AcceleratorState_reset()
        torch.manual_seed(0)
        acc = Accelerator(cpu=True)
        model = torch.nn.Linear(4, 3)
        groups = [{"params": [model.weight]}, {"params": [model.bias], "lr": 0.01}] if split else model.parameters()
        opt = torch.optim.SGD(groups, lr=0.1, momentum=0.9)
        model, opt = acc.prepare(model, opt)
        if split:
            def split_groups(_, sd):
                (g,) = sd["param_groups"]
                return {**sd, "param_groups": [{**g, "params": g["params"][:1]},
                                               {**g, "params": g["params"][1:], "lr": 0.01}]}
            opt.optimizer.register_load_state_dict_pre_hook(split_groups)  # (after prepare, which reloads its own)
        model(torch.randn(2, 4)).sum().backward()
        opt.step()
        return acc, model, opt

    acc, _, opt = build(split=False)
    ck = save_checkpoint(acc, tmp_path / "run", 1)
    saved = opt.state_dict()["state"]
    acc, _, opt = build(split=True)
    load_checkpoint(acc, ck)  # was refused: "optimizer.bin holds the state of parameter groups of [2] ..."
    assert [len(g["params"]) for g in opt.param_groups] == [1, 1]
    assert all(torch.equal(opt.state_dict()["state"][i]["momentum_buffer"], saved[i]["momentum_buffer"]) for i in (0, 1))
    sd = torch.load(ck / "optimizer.bin", weights_only=False)
    sd["state"][0]["momentum_buffer"] = sd["state"][0]["momentum_buffer"][:-1].clone()
    torch.save(sd, ck / "optimizer.bin")
    write_manifest(ck)
    acc, _, opt = build(split=True)
    with pytest.raises(ValueError, match=r"momentum_buffer of 'weight' has shape \(2, 4\), but the parameter is "
                       r"\(3, 4\) here: was it saved from another model\?"):
        load_checkpoint(acc, ck)


def _cut(f: Path) -> None:
    f.write_bytes(f.read_bytes()[:-40])


def _model_file(ck: Path, change) -> None:
    from safetensors.torch import load_file, save_file

    weights = load_file(ck / "model.safetensors")
    change(weights)
    save_file(weights, ck / "model.safetensors", metadata={"format": "pt"})


def _object_file(ck: Path, i: int, change) -> None:
    sd = torch.load(ck / f"custom_checkpoint_{i}.pkl", weights_only=False)
    change(sd)
    torch.save(sd, ck / f"custom_checkpoint_{i}.pkl")


_INSIDE_LOAD = {  # spoil: (what it does to the checkpoint folder, the error, what its message says)
    "model_shape": (lambda ck: _model_file(ck, lambda w: w.update({"2.bias": w["2.bias"][:-1].clone()})), ValueError,
                    "model.safetensors holds '2.bias' of shape (3,), but the model's is (4,) here: was it saved from "
                    "another model?"),
    "model_key": (lambda ck: _model_file(ck, lambda w: w.pop("2.bias")), ValueError,
                  "model.safetensors does not hold this model's tensors (missing 1 of the model's tensor(s), first "
                  "['2.bias'])"),
    "model_cut": (lambda ck: _cut(ck / "model.safetensors"), "damaged", "model.safetensors cannot be read "
                  "(SafetensorError: "),
    "optimizer_cut": (lambda ck: _cut(ck / "optimizer.bin"), "damaged", "optimizer.bin cannot be read (RuntimeError: "),
    "scheduler_cut": (lambda ck: _cut(ck / "scheduler.bin"), "damaged", "scheduler.bin cannot be read (RuntimeError: "),
    "controller_cut": (lambda ck: _cut(ck / "custom_checkpoint_1.pkl"), "damaged",
                       "custom_checkpoint_1.pkl cannot be read (RuntimeError: "),
    "connectome_other": (lambda ck: _object_file(ck, 0, lambda sd: sd.update(ensemble="neuron")), ValueError,
                         "custom_checkpoint_0.pkl does not load into the registered Connectome (ValueError: state_dict "
                         "was saved with ensemble 'neuron', this connectome uses 'synapse'"),
    "controller_other": (lambda ck: _object_file(ck, 1, lambda sd: sd.update(policy_name="set")), ValueError,
                         "custom_checkpoint_1.pkl does not load into the registered Controller (ValueError: this "
                         "controller state was saved by a controller with policy='set'"),
    # (these four were refused inside the load, after the model and optimizer had loaded)
    "scheduler_other": (lambda ck: torch.save(["a", "list"], ck / "scheduler.bin"), ValueError,
                        "scheduler.bin does not load into the scheduler AcceleratedScheduler ("),
    "controller_policy": (lambda ck: _object_file(ck, 1, lambda sd: sd.update(policy="not a dict")), ValueError,
                          "custom_checkpoint_1.pkl does not load into the registered Controller (ValueError: controller "
                          "state entry policy does not load"),
    "controller_estimator": (lambda ck: _object_file(ck, 1, lambda sd: sd["estimators"].update(drop=[1])), ValueError,
                             "custom_checkpoint_1.pkl does not load into the registered Controller (ValueError: "
                             "controller state entry estimators['drop'] does not load"),
    "extra_object": (lambda ck: shutil.copy(ck / "custom_checkpoint_1.pkl", ck / "custom_checkpoint_2.pkl"), ValueError,
                     "it holds 3 registered-object file(s) (custom_checkpoint_N.pkl), but 2 object(s) are registered "
                     "with accelerator.register_for_checkpointing here: register the same objects"),
}


@pytest.mark.parametrize("spoil", list(_INSIDE_LOAD))
def test_a_checkpoint_accelerate_would_stop_loading_part_way_is_refused_before_anything_loads(tmp_path, spoil):
    """Accelerate's load_state loads the model, optimizer, scheduler and registered objects one file after
    another and stops at the first that fails: a model file of another shape or missing a tensor (torch
    copies every tensor that fits before it raises), or any file cut short (its MANIFEST.json rewritten, or
    none), one registered-object file too many, or a connectome or controller state its object refuses
    (another run's: another granularity, another policy; the model and optimizer had loaded). A caller who caught the error went on with the
    checkpoint's weights (and moments, masks) mixed with its own. Each is refused from the files before
    anything loads now, naming the checkpoint and the file: the model, masks, optimizer, scheduler and
    controller are bit-identical to before the call."""
    from adaptive.integrity import CheckpointDamagedError, write_manifest
    from adaptive.training import load_checkpoint, save_checkpoint

    def build():
        return _api_run(scheduler=True)

    def steps(model, opt, sched, n):
        for _ in range(n):
            model(torch.randn(4, 8)).pow(2).mean().backward()
            opt.step()
            sched.step()
            opt.zero_grad()

    acc, model, opt, sched, conn, ctrl = build()
    steps(model, opt, sched, 3)
    ck = save_checkpoint(acc, tmp_path / "run", 3)
    change, error, says = _INSIDE_LOAD[spoil]
    change(ck)
    write_manifest(ck)
    acc, model, opt, sched, conn, ctrl = build()
    steps(model, opt, sched, 5)  # a run of its own: other weights, masks, moments and counts than the checkpoint's
    before = _bits({"run": _in_memory(model, opt, conn), "sched": sched.state_dict(), "ctrl": ctrl.state_dict()})
    with pytest.raises(CheckpointDamagedError if error == "damaged" else error) as e:
        load_checkpoint(acc, ck)
    prefix = f"checkpoint {ck} is damaged: " if error == "damaged" else f"checkpoint {ck}: "
    assert str(e.value).startswith(prefix + says), str(e.value)
    assert _bits({"run": _in_memory(model, opt, conn), "sched": sched.state_dict(), "ctrl": ctrl.state_dict()}) == before


def test_a_checkpoint_of_a_model_with_tied_weights_passes_the_model_file_check(tmp_path):
    """The model file holds a tied weight once, under one of its names (Accelerate's save drops the others):
    the check of the model file's keys before the load counts it for every name, as the load does, and a
    tensor of the model missing from the file is still refused."""
    from safetensors import safe_open

    from adaptive.integrity import write_manifest
    from adaptive.training import load_checkpoint

    ck, build = _tied_checkpoint(tmp_path)
    with safe_open(str(ck / "model.safetensors"), "pt") as f:
        assert sorted(f.keys()) == ["0.bias", "0.weight", "2.bias"]
        saved = {k: f.get_tensor(k) for k in f.keys()}
    saved["2.weight"] = saved["0.weight"]
    acc, model, opt = build()
    assert not torch.equal(model.state_dict()["0.weight"], saved["0.weight"])  # the step moved it: a load shows
    load_checkpoint(acc, ck)
    assert all(torch.equal(v, saved[k]) for k, v in model.state_dict().items())
    _model_file(ck, lambda w: w.pop("0.weight"))
    write_manifest(ck)
    acc, model, opt = build()
    with pytest.raises(ValueError, match=r"missing 1 of the model's tensor\(s\), first \['0.weight'\]"):
        load_checkpoint(acc, ck)


def _tied_checkpoint(tmp_path):
    """A checkpoint of a model whose last layer's weight is its first's (saved once), and its builder."""
    from accelerate import Accelerator

    from adaptive.training import save_checkpoint

    def build():
        AcceleratorState_reset()
        torch.manual_seed(0)
        acc = Accelerator(cpu=True)
        model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.ReLU(), torch.nn.Linear(4, 4))
        model[2].weight = model[0].weight
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        model, opt = acc.prepare(model, opt)
        return acc, model, opt

    acc, model, opt = build()
    model(torch.randn(2, 4)).sum().backward()
    opt.step()
    return save_checkpoint(acc, tmp_path / "run", 1), build


def test_the_tied_weights_check_does_not_need_safetensors_private_helper(tmp_path, monkeypatch):
    """The model file check counts a tied weight saved once for all its names as safetensors' load_model does,
    through safetensors' private _remove_duplicate_names: a safetensors without it (or with another
    signature) made every resume fail with an ImportError. Our own reckoning takes over, and refuses what the
    load refuses."""
    import types

    import safetensors.torch

    from adaptive.integrity import write_manifest
    from adaptive.training import load_checkpoint

    def without_helper(replacement=None):  # what `from safetensors.torch import ...` finds (Accelerate's load_model
        fake = types.ModuleType("safetensors.torch")  # keeps the real module's)
        fake.__dict__.update({k: v for k, v in vars(safetensors.torch).items() if k != "_remove_duplicate_names"})
        if replacement:
            fake._remove_duplicate_names = replacement
        return fake

    ck, build = _tied_checkpoint(tmp_path)
    for fake in (without_helper(), without_helper(lambda sd, *, preferred: {})):
        with monkeypatch.context() as m:
            m.setitem(sys.modules, "safetensors.torch", fake)
            acc, model, opt = build()
            load_checkpoint(acc, ck)
    saved = {k: v.clone() for k, v in model.state_dict().items()}
    (tmp_path / "spoilt").mkdir()
    spoilt = tmp_path / "spoilt" / ck.name
    shutil.copytree(ck, spoilt)
    _model_file(spoilt, lambda w: w.pop("0.weight"))
    write_manifest(spoilt)
    monkeypatch.setitem(sys.modules, "safetensors.torch", without_helper())
    acc, model, opt = build()
    fresh = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match=r"missing 1 of the model's tensor\(s\), first \['0.weight'\]"):
        load_checkpoint(acc, spoilt)
    assert all(torch.equal(v, fresh[k]) and not torch.equal(v, saved[k]) for k, v in model.state_dict().items())


def test_our_tied_names_reckoning_is_safetensors():
    """_duplicate_names (used where safetensors lacks _remove_duplicate_names) gives what safetensors' gives:
    tied weights, views covering part of a storage, a transposed view, names the file prefers, a group none of
    whose names covers its storage (refused by both)."""
    from safetensors.torch import _remove_duplicate_names

    from adaptive.checkpoint_files import _duplicate_names

    big = torch.randn(6, 4)
    w = torch.nn.Parameter(torch.randn(3, 3))
    cases = [
        ({"a.weight": w, "b.weight": w, "c": torch.randn(2)}, []),
        ({"z": w, "a": w, "m": w}, ["m"]),
        ({"z": w, "a": w, "m": w}, ["x"]),
        ({"full": big, "top": big[:3], "bottom": big[3:], "t": big.t()}, []),
        ({"full": big, "top": big[:3], "bottom": big[3:]}, ["bottom"]),
        ({"e": torch.empty(0), "f": torch.empty(0), "zero_d": torch.tensor(1.0)}, []),
        ({"top": big[:3], "bottom": big[3:]}, []),
        ({"top": big[:3], "rows": big[1:4]}, []),
    ]
    for sd, preferred in cases:
        try:
            theirs = _remove_duplicate_names(sd, preferred_names=preferred)
        except RuntimeError:
            with pytest.raises(RuntimeError):  # (a non-contiguous view: torch's view(-1) raises in both)
                _duplicate_names(sd, preferred)
            continue
        assert {k: sorted(v) for k, v in _duplicate_names(sd, preferred).items()} == \
            {k: sorted(v) for k, v in theirs.items()}, (sorted(sd), preferred)


class _Noted(torch.nn.Module):
    """A layer whose extra state is a note, not a tensor (torch saves it as the ``_extra_state`` entry)."""

    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(3, 3)
        self.note = "fresh"

    def get_extra_state(self):
        return {"note": self.note}

    def set_extra_state(self, state):
        self.note = state["note"]

    def forward(self, x):
        return self.lin(x)


def test_a_pytorch_model_bin_with_a_modules_extra_state_resumes(tmp_path):
    """A model with a module's non-tensor extra state (get_extra_state) saves through save_state(safe_serialization=False)
    as pytorch_model.bin with an ``_extra_state`` entry, which torch's load hands to set_extra_state. The model
    file check counted only the file's tensors, so it refused that checkpoint as missing '_extra_state' (a
    checkpoint Accelerate loads); an entry that is not a tensor where the model has a tensor is still refused
    before anything loads."""
    from accelerate import Accelerator

    from adaptive.integrity import write_manifest
    from adaptive.training import load_checkpoint

    def build():
        AcceleratorState_reset()
        torch.manual_seed(0)
        acc = Accelerator(cpu=True)
        model = _Noted()
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        model, opt = acc.prepare(model, opt)
        return acc, model, opt

    acc, model, opt = build()
    model.note = "saved"
    ck = tmp_path / "run" / "step_1"
    acc.save_state(str(ck), safe_serialization=False)
    write_manifest(ck)
    acc, model, opt = build()
    load_checkpoint(acc, ck)
    assert model.note == "saved"
    sd = torch.load(ck / "pytorch_model.bin", weights_only=True)
    sd["lin.bias"] = [0.0, 0.0, 0.0]
    torch.save(sd, ck / "pytorch_model.bin")
    write_manifest(ck)
    acc, model, opt = build()
    before = {k: v.clone() for k, v in model.lin.state_dict().items()}
    with pytest.raises(ValueError, match=r"pytorch_model.bin holds 'lin.bias' as a Parameter, not a tensor"):
        load_checkpoint(acc, ck)
    assert model.note == "fresh" and all(torch.equal(v, before[k]) for k, v in model.lin.state_dict().items())


def test_a_checkpoint_whose_models_a_load_state_pre_hook_loads_resumes(tmp_path):
    """Accelerate's save/load state pre-hooks (register_save_state_pre_hook / register_load_state_pre_hook,
    the pattern of diffusers' training scripts) save the models to files of their own and load them from
    there, taking them out of the list load_state loads: the checkpoint holds no model.safetensors, and
    load_state loads it. The model-file check before the load refused it as damaged (pytorch_model.bin
    cannot be read); it now leaves the model files to a load with such a hook."""
    from accelerate import Accelerator

    from adaptive.training import load_checkpoint, save_checkpoint

    def build():
        AcceleratorState_reset()
        torch.manual_seed(0)
        acc = Accelerator(cpu=True)
        model = torch.nn.Linear(3, 3)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        model, opt = acc.prepare(model, opt)

        def save_hook(models, weights, out):
            torch.save(models[0].state_dict(), Path(out) / "own_model.pt")
            weights.clear()

        def load_hook(models, in_dir):
            models.pop().load_state_dict(torch.load(Path(in_dir) / "own_model.pt", weights_only=True))

        acc.register_save_state_pre_hook(save_hook)
        acc.register_load_state_pre_hook(load_hook)
        return acc, model

    acc, model = build()
    with torch.no_grad():
        model.weight.fill_(3.0)
    ck = save_checkpoint(acc, tmp_path / "run", 1)
    assert not any(p.name.startswith(("model", "pytorch_model")) for p in ck.iterdir())
    acc, model = build()
    load_checkpoint(acc, ck)
    assert bool((model.weight == 3.0).all())


def test_the_recipes_registered_train_state_and_schedule_are_checked_before_anything_loads(tmp_path):
    """The recipe registers a TrainState and its LambdaLR schedule beside the connectome and controller:
    a TrainState entry it cannot take (it set the step and epoch before the entry after them raised) and a
    schedule file of another kind (a StepLR's state, no 'lr_lambdas': a KeyError inside the load) stopped
    Accelerate's load part way, after the model, optimizer, connectome and controller had loaded. Both are
    refused before anything loads now: everything is bit-identical to before the call."""
    from adaptive.integrity import write_manifest
    from adaptive.training import TrainState, load_checkpoint, lr_schedule, save_checkpoint

    def build():
        acc, model, opt, conn = _api_run()
        ctrl = acc._custom_objects[1]
        state, sched = TrainState(), lr_schedule(opt, 20, 2)
        acc.register_for_checkpointing(state, sched)
        return acc, model, opt, conn, ctrl, state, sched

    def steps(model, opt, sched, state, n):
        for _ in range(n):
            model(torch.randn(4, 8)).pow(2).mean().backward()
            opt.step()
            sched.step()
            opt.zero_grad()
            state.step += 1

    acc, model, opt, conn, ctrl, state, sched = build()
    steps(model, opt, sched, state, 3)
    ck = save_checkpoint(acc, tmp_path / "run", 3)
    good = {n: (ck / n).read_bytes() for n in ("custom_checkpoint_2.pkl", "custom_checkpoint_3.pkl")}
    step_lr = torch.optim.lr_scheduler.StepLR(torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1), 2)
    for spoil, says in [(lambda: _object_file(ck, 2, lambda sd: sd.update(metrics=5)),
                         "custom_checkpoint_2.pkl does not load into the registered TrainState (ValueError: not a "
                         "TrainState state this run can load"),
                        (lambda: torch.save(step_lr.state_dict(), ck / "custom_checkpoint_3.pkl"),
                         "custom_checkpoint_3.pkl does not load into the registered LambdaLR (KeyError: lr_lambdas)")]:
        for n, b in good.items():
            (ck / n).write_bytes(b)
        spoil()
        write_manifest(ck)
        acc, model, opt, conn, ctrl, state, sched = build()
        steps(model, opt, sched, state, 5)
        snap = lambda: _bits({"run": _in_memory(model, opt, conn), "sched": sched.state_dict(), "ctrl": ctrl.state_dict(),
                              "state": state.state_dict()})
        before = snap()
        with pytest.raises(ValueError) as e:
            load_checkpoint(acc, ck)
        assert str(e.value).startswith(f"checkpoint {ck}: {says}"), str(e.value)
        assert snap() == before
    for n, b in good.items():
        (ck / n).write_bytes(b)
    write_manifest(ck)
    acc, model, opt, conn, ctrl, state, sched = build()
    load_checkpoint(acc, ck)  # the checks take the checkpoint as saved
    assert state.step == 3 and sched.last_epoch == 3


def test_a_dataloader_file_of_another_kind_is_refused_before_anything_loads(tmp_path):
    """A sampler file holding another object than a sampler (Accelerate sets whatever it holds as the
    sampler) and a stateful dataloader's dl_state_dict.bin holding no dict were taken or refused inside the
    load, after the model and optimizer loaded: the files are read against the dataloaders first now."""
    from accelerate.data_loader import IterableDatasetShard, SeedableRandomSampler

    from adaptive.checkpoint_files import checkpoint_files_problem
    from adaptive.training import save_checkpoint

    class Loader:  # what the checks read of a prepared dataloader
        def __init__(self, shard, stateful):
            self.dataset = IterableDatasetShard(range(8)) if shard else list(range(8))
            self.use_stateful_dataloader = stateful
            self._sampler = SeedableRandomSampler(range(8))

        def get_sampler(self):
            return self._sampler

    acc, model, opt, conn = _api_run()
    ck = save_checkpoint(acc, tmp_path / "run", 0)
    acc._dataloaders[:] = [Loader(shard=False, stateful=True)]
    torch.save({"any": "state"}, ck / "dl_state_dict.bin")
    assert checkpoint_files_problem(acc, ck) is None
    torch.save([1, 2], ck / "dl_state_dict.bin")
    damaged, why = checkpoint_files_problem(acc, ck)
    assert not damaged and why.startswith("dl_state_dict.bin holds a list, not the state dict of dataloader 0"), why
    acc._dataloaders[:] = [Loader(shard=True, stateful=False)]
    torch.save({"not": "a sampler"}, ck / "sampler.bin")  # (readable as Accelerate reads it: weights only)
    assert checkpoint_files_problem(acc, ck) == (False, "sampler.bin holds a dict, not a SeedableRandomSampler as "
                                                 "dataloader 0's sampler is: was it saved from another data pipeline? "
                                                 "Load a checkpoint of this one")


def test_a_checkpoint_reaches_the_disk_whole_before_it_is_renamed_in_place(tmp_path, monkeypatch):
    """save_checkpoint synced its MANIFEST.json alone: the model, optimizer and registered objects' files
    Accelerate wrote were left to the kernel, and the folder holding the renamed checkpoint was not synced,
    while the older checkpoints are removed as soon as it is in place. After a power cut the only checkpoint
    left could hold empty or cut-short files (its manifest then refuses it: nothing to resume from). Every
    file and folder of the checkpoint is synced before the rename now, and the checkpoints' folder after it."""
    import stat

    from adaptive.training import save_checkpoint

    if not os.path.isdir("/proc/self/fd"):
        pytest.skip("needs /proc/self/fd to name the synced file")
    acc, model, opt, conn = _api_run()
    save_checkpoint(acc, tmp_path / "run", 1)  # (an older checkpoint: the second one removes it)
    real, synced = os.fsync, []

    def fsync(fd):
        synced.append((os.path.basename(os.readlink(f"/proc/self/fd/{fd}")), stat.S_ISDIR(os.fstat(fd).st_mode)))
        return real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    ck = save_checkpoint(acc, tmp_path / "run", 2, keep=1)
    files = {p.name for p in ck.rglob("*") if p.is_file()}
    assert {n for n, folder in synced if not folder} == files, synced
    assert (".tmp-step_00000002", True) in synced, synced  # the checkpoint's folder, before the rename
    assert synced[-1] == ("checkpoints", True), synced  # the folder it is renamed in, after the rename
    assert [p.name for p in ck.parent.iterdir()] == [ck.name]


def test_a_schedules_trial_load_copies_no_tensor_and_changes_no_schedule(tmp_path, monkeypatch):
    """The trial load of a schedule's file (checkpoint_files._trial_problem) deep-copied the schedule with
    only the prepared optimizers and models shared: a schedule of an optimizer registered for checkpointing
    itself (not prepared) copied that optimizer, its parameters and Adam moments (three times the model's
    size), and the gradient state copied with it. They are shared now (the copy holds no tensor), and a
    schedule registered beside its prepared wrapper is copied, never loaded into on trial."""
    from accelerate import Accelerator

    from adaptive.checkpoint_files import checkpoint_files_problem
    from adaptive.training import save_checkpoint

    AcceleratorState_reset()
    torch.manual_seed(0)
    acc = Accelerator(cpu=True)
    model, other = torch.nn.Linear(8, 4), torch.nn.Linear(8, 4)
    opt, adam = torch.optim.SGD(model.parameters(), lr=0.1), torch.optim.Adam(other.parameters())
    own, step_lr = torch.optim.lr_scheduler.LambdaLR(adam, lambda s: 0.9 ** s), torch.optim.lr_scheduler.StepLR(opt, 2)
    model, opt, prepared = acc.prepare(model, opt, step_lr)
    acc.register_for_checkpointing(other, adam, own, step_lr)  # (StepLR: registered too, beside its wrapper)
    for _ in range(3):
        model(torch.randn(2, 8)).sum().backward()
        other(torch.randn(2, 8)).sum().backward()
        opt.step(), adam.step(), prepared.step(), own.step()
    ck = save_checkpoint(acc, tmp_path / "run", 3)
    for _ in range(2):
        opt.step(), adam.step(), prepared.step(), own.step()
    copied = []
    for cls in (torch.Tensor, torch.nn.Parameter):
        real = cls.__deepcopy__
        monkeypatch.setattr(cls, "__deepcopy__", lambda self, memo, real=real: copied.append(self.shape) or real(self, memo))
    before = _bits({"own": own.state_dict(), "step_lr": step_lr.state_dict(), "adam": adam.state_dict()})
    assert checkpoint_files_problem(acc, ck) is None
    assert copied == []
    assert _bits({"own": own.state_dict(), "step_lr": step_lr.state_dict(), "adam": adam.state_dict()}) == before
    assert (own.last_epoch, step_lr.last_epoch) == (5, 5)


def test_a_trial_load_puts_back_an_estimator_whose_load_writes_into_the_tensors_its_state_dict_gave():
    """Controller.check_state_dict loads each part on trial and puts it back from what its state_dict gave
    before: an estimator whose state_dict hands out its own tensors and whose load copies into them would
    have that saved state overwritten by the load and put back as the loaded one (the checked state taken
    for real). The trial keeps copies (deep), so the estimator is bit-identical after it."""
    from adaptive.utility.base import Estimator

    class InPlace(Estimator):
        def __init__(self):
            self.acc = torch.zeros(3)

        def removal_cost(self, ctx):
            return ctx.weight.abs()

        def restoration_gain(self, ctx):
            return ctx.weight.abs()

        def state_dict(self):
            return {"acc": self.acc}  # its own tensor, not a copy

        def load_state_dict(self, sd):
            self._check_state_keys(sd, ("acc",))
            self.acc.copy_(sd["acc"])

    def build(value):
        torch.manual_seed(0)
        conn = adaptive.Connectome(torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2)))
        est = InPlace()
        est.acc.fill_(value)
        return adaptive.Controller(conn, density=0.5, policy="utility", estimator=est), est

    ctrl, est = build(1.0)
    other, _ = build(2.0)
    ctrl.check_state_dict(other.state_dict())
    assert est.acc.tolist() == [1.0, 1.0, 1.0]


def test_a_checkpoint_whose_state_raised_is_not_called_a_full_disk(tmp_path):
    """save_checkpoint took every RuntimeError raised inside Accelerate's save_state for a failed write
    (torch.save's writer raises one on a full disk): a registered object whose state_dict() raised (an
    unconsolidated ZeroRedundancyOptimizer did) ended in "... failed (RuntimeError: ...): free disk space (or
    raise the file-size limit)", advice that cannot help. It now says the error came from what is saved, not
    the disk, and to fix its cause; the partial write is removed and the earlier checkpoint kept, as before.
    torch's writer's own failure is still a failed write."""
    from adaptive.integrity import CheckpointWriteError
    from adaptive.training import save_checkpoint

    acc, model, opt, conn = _api_run()
    save_checkpoint(acc, tmp_path, 1)

    class Raising:
        def __init__(self, message):
            self.message = message

        def state_dict(self):
            raise RuntimeError(self.message)

        def load_state_dict(self, sd):
            pass

    acc.register_for_checkpointing(Raising("the object's own error: its state cannot be made"))
    with pytest.raises(CheckpointWriteError) as raised:
        save_checkpoint(acc, tmp_path, 2)
    text = str(raised.value)
    assert "failed while its state was made, not written (RuntimeError: the object's own error" in text, text
    assert "not from the disk" in text and "fix the cause of that error" in text and "free disk space" not in text
    assert [p.name for p in list_checkpoints(tmp_path / "checkpoints")] == ["step_00000001"]
    assert not list((tmp_path / "checkpoints").glob(".tmp-*"))
    acc._custom_objects[-1].message = "[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598"
    with pytest.raises(CheckpointWriteError, match=r"writing checkpoint .* failed \(RuntimeError: \[enforce fail at "
                                                   r"inline_container.*free disk space \(or raise the file-size limit"):
        save_checkpoint(acc, tmp_path, 3)


def _stand_in_accelerator(model, opt, **more):
    """What saved_optimizer_problem and checkpoint_files_problem read of an Accelerator."""
    import types

    from accelerate.utils import DistributedType

    return types.SimpleNamespace(_optimizers=[opt], _models=[model], unwrap_model=lambda m: m,
                                 distributed_type=DistributedType.NO, _schedulers=[], _dataloaders=[],
                                 _custom_objects=[], scaler=None, **more)


def test_an_optimizer_state_of_as_many_parameters_in_other_groups_is_refused_before_the_load(tmp_path):
    """Groups of [1, 3] parameters saved, [2, 2] here: the same total, which a comparison of totals took (and
    torch's own load then failed); the groups compare one by one."""
    from adaptive.checkpoint_optimizer import saved_optimizer_problem

    a, b = nn.Linear(3, 3), nn.Linear(3, 3)
    saved = torch.optim.SGD([{"params": [a.weight]}, {"params": [a.bias, b.weight, b.bias]}], lr=0.1, momentum=0.9)
    torch.save(saved.state_dict(), tmp_path / "optimizer.bin")
    here = torch.optim.SGD([{"params": [a.weight, a.bias]}, {"params": [b.weight, b.bias]}], lr=0.1, momentum=0.9)
    problem = saved_optimizer_problem(_stand_in_accelerator(nn.ModuleList([a, b]), here), tmp_path)
    assert problem and "groups of [1, 3] parameter(s), but the optimizer's groups have [2, 2] here" in problem


def test_an_lbfgs_run_over_complex_parameters_resumes_its_own_checkpoint(tmp_path):
    """L-BFGS keeps its history as flat real views: a complex parameter of n values is 2n of them. Counted as n, a
    run's own checkpoint was refused as another model's."""
    from adaptive.checkpoint_optimizer import saved_optimizer_problem

    torch.manual_seed(0)
    w = nn.Parameter(torch.randn(3, dtype=torch.cfloat))
    opt = torch.optim.LBFGS([w], max_iter=3)

    def closure():
        opt.zero_grad()
        loss = (w.abs() ** 2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    torch.save(opt.state_dict(), tmp_path / "optimizer.bin")
    m = nn.Module()
    m.w = w
    assert saved_optimizer_problem(_stand_in_accelerator(m, opt), tmp_path) is None


def test_a_damaged_scaler_file_is_refused_before_anything_loads(tmp_path):
    """Where the run has a GradScaler, its scaler.pt is among the files read before the load (a CPU GradScaler
    stands in for the GPU recipe's)."""
    from adaptive.checkpoint_files import checkpoint_files_problem

    (tmp_path / "scaler.pt").write_bytes(b"garbage, not a torch file")
    acc = _stand_in_accelerator(nn.Linear(2, 2), None)
    acc._optimizers, acc._models, acc.scaler = [], [], torch.amp.GradScaler("cpu")
    damaged, why = checkpoint_files_problem(acc, tmp_path)
    assert damaged and why.startswith("scaler.pt cannot be read"), why
