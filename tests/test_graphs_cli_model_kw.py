"""``python -m graphs --model-kw KEY=VALUE``: a run whose model was built with non-default arguments (a
wider MLP) could not be rebuilt by the command line, which ended in a shape mismatch that named no fix;
and a command read a checkpoint's connectome file several times."""
import json

import pytest
import torch

import adaptive
import graphs
from graphs.cli import main

models = pytest.importorskip("adaptive.models")

SHAPE = (1, 4, 4)


def _run(folder, **kw):
    """A run folder of an MLP built with ``kw`` (not its defaults) whose config.yaml records the model's
    name, classes and input shape but not ``kw``, as a user's own loop might write it."""
    torch.manual_seed(0)
    conn = adaptive.Connectome(models.build_model("mlp", in_shape=SHAPE, **kw))
    conn.set_masks({k: torch.rand(v.shape) < 0.5 for k, v in conn.masks.items()})
    folder.mkdir(parents=True)
    conn.save(folder / "connectome.safetensors")
    torch.save(conn.dense_state_dict(), folder / "model_state.pt")
    (folder / "config.yaml").write_text("model: mlp\nnum_classes: 10\nin_shape: [1, 4, 4]\n")
    return conn


@pytest.fixture(scope="module")
def wide(tmp_path_factory):
    """(run folder, its connectome): an MLP with one hidden layer of 16, not the default (256, 128)."""
    run = tmp_path_factory.mktemp("model_kw") / "run"
    return run, _run(run, hidden=(16,))


def _error_line(capsys):
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err  # one line, no traceback
    return err


def test_export_report_and_compact_rebuild_a_model_built_with_other_arguments(wide, tmp_path, capsys):
    run, conn = wide
    ref = graphs.build(conn, "unit")
    kw = ["--model-kw", "hidden=[16]"]
    assert main(["export", str(run), "--out", str(tmp_path / "g.json"), *kw]) == 0
    back = graphs.read_json(tmp_path / "g.json")
    assert torch.equal(back.src, ref.src) and torch.equal(back.dst, ref.dst)
    assert torch.allclose(back.edge_attrs["l1"], ref.edge_attrs["l1"])  # the run's weights, loaded
    assert main(["report", str(run), "--out", str(tmp_path / "r"), *kw]) == 0
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert summary["live_synapses"] == graphs.summary(ref)["live_synapses"] == sum(int(m.sum()) for m in conn.masks.values())
    # the mapping spelling, the dotted one and num_classes (--num-classes) given through --model-kw
    assert main(["compact", str(run), "--out", str(tmp_path / "c.pt"), "--model-kw", "{hidden: [16], num_classes: 10}",
                 "--model-kw.in_shape", "[1, 4, 4]"]) == 0
    small = torch.load(tmp_path / "c.pt", weights_only=False)
    assert small.compaction["params_before"] == sum(p.numel() for p in conn.model.parameters())
    x = torch.randn(3, *SHAPE)
    conn.model.eval()
    assert torch.allclose(small(x), conn.model(x), atol=1e-5)
    net, _ = graphs.cli.load_run(str(run), model_kw={"hidden": [16]})  # the Python entry point takes them too
    assert [m.out_features for m in net.modules() if isinstance(m, torch.nn.Linear)] == [16, 10]


def test_the_arguments_config_yaml_records_are_used_and_model_kw_wins_over_them(tmp_path, capsys):
    run = tmp_path / "run"
    _run(run, hidden=(16,))
    (run / "config.yaml").write_text("model: mlp\nmodel_kw: {hidden: [8]}\nnum_classes: 10\nin_shape: [1, 4, 4]\n")
    assert main(["export", str(run), "--out", str(tmp_path / "a.json")]) == 2
    assert "with hidden=[8]" in _error_line(capsys)
    assert main(["export", str(run), "--out", str(tmp_path / "a.json"), "--model-kw", "hidden=[16]"]) == 0


@pytest.mark.parametrize("cmd", ["export", "report", "compact"])
def test_a_model_rebuilt_with_the_wrong_arguments_names_the_layer_and_the_option(wide, tmp_path, capsys, cmd):
    run, _ = wide
    out = tmp_path / "out"
    assert main([cmd, str(run), "--out", str(out)]) == 2
    err = _error_line(capsys)
    assert ("the connectome's layer fc1.weight has shape (16, 16), the rebuilt model's (256, 16): the model was "
            "rebuilt as mlp with no model arguments, which is not the run's: pass the arguments it was built with, "
            "--model-kw KEY=VALUE (repeatable; mlp takes activation, bias, hidden)") in err
    assert not out.exists() and sorted(p.name for p in run.iterdir()) == ["config.yaml", "connectome.safetensors",
                                                                          "model_state.pt"]


@pytest.mark.parametrize("entries, said", [
    (["hidden"], "--model-kw 'hidden': write KEY=VALUE or a YAML mapping, e.g. --model-kw width=2"),
    (["{hidden: [16], width:2}"], "--model-kw '{hidden: [16], width:2}': YAML read 'width:2' as a key with no value: "
                                  "YAML needs a space after ':' ({width: 2}), or use KEY=VALUE (width=2)"),
    (["hiden=[16]"], "--model-kw hiden=[16]: model 'mlp' takes no keyword 'hiden' (did you mean 'hidden'?)"),
    (["hidden=abc"], "--model-kw hidden=abc: rebuilding model 'mlp' failed (ValueError: hidden sizes must be"),
    (["hidden=[16]", "num_classes=3"], "--model-kw num_classes=3 and --num-classes 10 disagree"),
    (["weights=w.pt"], "--model-kw weights=w.pt: the weights file is given with --weights PATH"),
])
def test_bad_model_kw_is_one_error_naming_the_entry_and_writes_nothing(wide, tmp_path, capsys, entries, said):
    run, _ = wide
    argv = ["export", str(run), "--out", str(tmp_path / "g.json"), "--num-classes", "10"]
    for e in entries:
        argv += ["--model-kw", e]
    assert main(argv) == 2
    assert said in _error_line(capsys)
    assert not list(tmp_path.iterdir())


def test_weights_that_do_not_fit_a_fitting_connectome_name_the_option(tmp_path, capsys):
    """Layers shaped alike, the weights file of a model without biases: its error names --model-kw too."""
    run = tmp_path / "run"
    _run(run, hidden=(16,), bias=False)
    assert main(["export", str(run), "--out", str(tmp_path / "g.json"), "--model-kw", "hidden=[16]"]) == 2
    err = _error_line(capsys)
    assert "missing keys [fc1.bias" in err and "rebuilt as mlp with hidden=[16], which is not the run's" in err
    assert "--model-kw KEY=VALUE" in err and not (tmp_path / "g.json").exists()
    assert main(["export", str(run), "--out", str(tmp_path / "g.json"), "--model-kw", "hidden=[16]",
                 "--model-kw", "bias=false"]) == 0


def _checkpoint(root):
    """A training checkpoint's layout (RUN/checkpoints/step_N): the connectome state in
    custom_checkpoint_0.pkl, the weights in model.safetensors, a config naming no dataset (so the class
    count is guessed from the connectome's layers, another look at the file)."""
    from safetensors.torch import save_file

    torch.manual_seed(0)
    conn = adaptive.Connectome(models.build_model("mlp", hidden=(8,), in_shape=SHAPE))
    conn.set_masks({k: torch.rand(v.shape) < 0.5 for k, v in conn.masks.items()})
    ck = root / "run" / "checkpoints" / "step_00000002"
    ck.mkdir(parents=True)
    torch.save(conn.state_dict(), ck / "custom_checkpoint_0.pkl")
    save_file({k: v.contiguous() for k, v in conn.model.state_dict().items()}, str(ck / "model.safetensors"))
    (ck / "config.yaml").write_text("model: mlp\nmodel_kw: {hidden: [8]}\nin_shape: [1, 4, 4]\n")
    return ck


@pytest.mark.parametrize("cmd", ["export", "report", "compact"])
def test_a_command_reads_the_checkpoints_connectome_file_once(tmp_path, capsys, monkeypatch, cmd):
    """The connectome state was read with torch.load five times per command (finding it, checking it, two
    guesses of the class count, loading it)."""
    ck = _checkpoint(tmp_path)
    real, reads = torch.load, []

    def counting(f, *a, **k):
        reads.append(str(f))
        return real(f, *a, **k)

    monkeypatch.setattr(torch, "load", counting)
    assert main([cmd, str(ck), "--out", str(tmp_path / ("g.json" if cmd == "export" else cmd))]) == 0
    assert [r for r in reads if r.endswith("custom_checkpoint_0.pkl")] == [str(ck / "custom_checkpoint_0.pkl")]
    reads.clear()
    assert main(["export", str(ck), "--out", str(tmp_path / "again.json")]) == 0  # the next command reads it afresh
    assert len([r for r in reads if r.endswith("custom_checkpoint_0.pkl")]) == 1


def test_help_names_model_kw_with_its_spelling():
    import contextlib
    import io

    for cmd in ("export", "report", "compact"):
        text = io.StringIO()
        with contextlib.redirect_stdout(text), pytest.raises(SystemExit):
            main([cmd, "--help"])
        flat = " ".join(text.getvalue().split())
        assert "--model-kw KEY=VALUE, --model_kw KEY=VALUE" in flat and "e.g. width=2" in flat, flat


def test_a_connectome_with_layers_the_rebuilt_model_lacks_names_the_option(tmp_path, capsys):
    """A deeper run's layers, shaped as the rebuilt model's where both have them (resnet32 read as resnet20):
    the connectome's own refusal, with the fix on the command line."""
    run = tmp_path / "run"
    run.mkdir()
    adaptive.Connectome(models.build_model("resnet32", in_shape=(3, 8, 8))).save(run / "connectome.safetensors")
    (run / "config.yaml").write_text("model: resnet20\nnum_classes: 10\nin_shape: [3, 8, 8]\n")
    assert main(["export", str(run), "--out", str(tmp_path / "g.json")]) == 2
    note, err = capsys.readouterr().err.splitlines()  # the note: no weights file
    assert err.startswith("error: ") and "saved from another model" in err and "--model-kw KEY=VALUE" in err and "check --model" in err
    assert not (tmp_path / "g.json").exists()


def test_a_run_on_other_inputs_is_told_to_check_in_shape_and_that_fixes_it(tmp_path, capsys):
    """An MLP of the user's own loop on 3x4x4 inputs, read as its 1x28x28 default: the mismatch is in the
    first layer's inputs, which no --model-kw entry mlp names sets; the error named only --model-kw,
    --model and --num-classes, so its advice, followed, never fixed it."""
    torch.manual_seed(0)
    conn = adaptive.Connectome(models.build_model("mlp", hidden=(16,), in_shape=(3, 4, 4)))
    conn.save(tmp_path / "connectome.safetensors")
    argv = ["export", str(tmp_path / "connectome.safetensors"), "--model", "mlp", "--model-kw", "hidden=[16]",
            "--out", str(tmp_path / "g.json")]
    assert main(argv) == 2
    err = _error_line(capsys)
    assert "layer fc1.weight has shape (16, 48), the rebuilt model's (16, 784)" in err
    assert err.rstrip().endswith("or check --model, --num-classes and --in-shape") and not (tmp_path / "g.json").exists()
    assert main(argv + ["--in-shape", "3,4,4"]) == 0


def test_a_model_that_takes_no_arguments_says_so(tmp_path, capsys):
    """resnet20 builds from num_classes and in_shape alone: --model-kw cannot be its fix, and the error says so."""
    adaptive.Connectome(models.build_model("resnet20", num_classes=3, in_shape=(3, 8, 8))).save(tmp_path / "c.safetensors")
    assert main(["export", str(tmp_path / "c.safetensors"), "--model", "resnet20", "--num-classes", "10",
                 "--in-shape", "3,8,8", "--out", str(tmp_path / "g.json")]) == 2
    err = _error_line(capsys)
    assert "layer linear.weight has shape (3, 64), the rebuilt model's (10, 64)" in err
    assert "resnet20 takes none but num_classes and in_shape" in err and "--num-classes and --in-shape" in err


def test_a_damaged_weights_file_is_not_blamed_on_the_model_arguments(wide, tmp_path, capsys):
    """A truncated weights file, with the right --model-kw: its error said the rebuilt model "is not the
    run's" and told the user to pass other --model-kw, which cannot help; it names the file's fault alone."""
    run, _ = wide
    cut = tmp_path / "cut.pt"
    cut.write_bytes((run / "model_state.pt").read_bytes()[:1000])
    assert main(["export", str(run), "--weights", str(cut), "--out", str(tmp_path / "g.json"),
                 "--model-kw", "hidden=[16]"]) == 2
    err = _error_line(capsys)
    assert "cannot be read" in err and "copy it again" in err
    assert "not the run's" not in err and "--model-kw" not in err and not (tmp_path / "g.json").exists()


def test_weights_of_a_network_the_loader_names_keep_the_rebuild_advice(tmp_path, capsys, monkeypatch):
    """Where the loader names the network the file holds (a torchvision file of the model's family), its message
    lacks "Check --model and num_classes against the file.", the text the command looked for: it re-raised the
    loader's error without its own advice about the rebuilt model. It reads the error's keys_differ, not its text."""
    run = tmp_path / "run"
    _run(run, hidden=(16,), bias=False)
    monkeypatch.setattr(models.MLP, "weights_mismatch_hint", lambda self, sd: "mlp (10 classes)", raising=False)
    assert main(["export", str(run), "--out", str(tmp_path / "g.json"), "--model-kw", "hidden=[16]"]) == 2
    err = _error_line(capsys)
    assert "missing keys [fc1.bias" in err and "The file holds the weights of mlp (10 classes)" in err
    assert "rebuilt as mlp with hidden=[16], which is not the run's" in err and "--model-kw KEY=VALUE" in err
    assert not (tmp_path / "g.json").exists()
