"""Behaviour of ``python -m graphs`` and its input guesses that no other test pinned: which weights file a
run's folder gives, --model-kw's num_classes, config.yaml's model_kw with the same --model, the names of the
files written for a checkpoint, the compact check's batch, the report's reachability line, the first layer."""
import json

import torch
from torch import nn

import adaptive
import graphs
from graphs.cli import format_summary, main

from adaptive import models
SHAPE = (1, 4, 4)


def _conn(classes=10, **kw):
    torch.manual_seed(0)
    conn = adaptive.Connectome(models.build_model("mlp", in_shape=SHAPE, num_classes=classes, hidden=(8,), **kw))
    conn.set_masks({k: torch.rand(v.shape) < 0.5 for k, v in conn.masks.items()})
    return conn


def _run(folder, config, classes=10):
    conn = _conn(classes)
    folder.mkdir(parents=True)
    conn.save(folder / "connectome.safetensors")
    torch.save(conn.dense_state_dict(), folder / "model_state.pt")
    (folder / "config.yaml").write_text(config)
    return conn


def _checkpoint(tmp_path):
    """RUN/checkpoints/step_00000010, as recipes/adaptive.py saves one (connectome state, model.safetensors)."""
    from safetensors.torch import save_file

    conn = _conn()
    run = tmp_path / "run"
    ck = run / "checkpoints" / "step_00000010"
    ck.mkdir(parents=True)
    (ck / "config.yaml").write_text("model: mlp\nnum_classes: 10\nin_shape: [1, 4, 4]\nmodel_kw: {hidden: [8]}\n")
    torch.save(conn.state_dict(), ck / "custom_checkpoint_0.pkl")
    save_file({k: v.contiguous() for k, v in conn.dense_state_dict().items()}, str(ck / "model.safetensors"))
    return run, ck


def test_model_kw_num_classes_counts_as_num_classes(tmp_path, capsys):  # MA1
    run = tmp_path / "run"
    _run(run, "model: mlp\nnum_classes: 10\nin_shape: [1, 4, 4]\nmodel_kw: {hidden: [8]}\n", classes=5)
    assert main(["export", str(run), "--out", str(tmp_path / "g.json"), "--model-kw", "num_classes=5"]) == 0, \
        capsys.readouterr().err


def test_config_model_kw_kept_when_model_names_the_same_model(tmp_path, capsys):  # C2
    run = tmp_path / "run"
    _run(run, "model: mlp\nnum_classes: 10\nin_shape: [1, 4, 4]\nmodel_kw: {hidden: [8]}\n")
    assert main(["export", str(run), "--out", str(tmp_path / "g.json"), "--model", "mlp"]) == 0, \
        capsys.readouterr().err


def test_dense_state_dict_is_read_before_pruned_state_dict(tmp_path):  # C6
    run = tmp_path / "run"
    conn = _run(run, "model: mlp\nnum_classes: 10\nin_shape: [1, 4, 4]\nmodel_kw: {hidden: [8]}\n")
    (run / "model_state.pt").unlink()
    dense = conn.dense_state_dict()
    torch.save(dense, run / "dense_state_dict.pt")
    torch.save({k: 2 * v for k, v in dense.items()}, run / "pruned_state_dict.pt")
    assert main(["export", str(run), "--out", str(tmp_path / "g.json")]) == 0
    back = graphs.read_json(tmp_path / "g.json")
    assert torch.allclose(back.edge_attrs["l1"], graphs.build(conn, "unit").edge_attrs["l1"])


def test_checkpoint_outputs_into_a_given_folder_take_no_step_suffix(tmp_path):  # C7, C11
    run, ck = _checkpoint(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    assert main(["export", str(ck), "--out", str(out)]) == 0
    assert main(["compact", str(ck), "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["compact_model.pt", "connectome_unit.graphml"]


def test_checkpoint_folder_with_a_trailing_slash_names_outputs_by_its_step(tmp_path):  # R1
    run, ck = _checkpoint(tmp_path)
    assert main(["export", str(ck) + "/"]) == 0
    assert (run / "connectome_unit_step_00000010.graphml").is_file()


def test_compact_checks_on_a_batch_of_eight(tmp_path, monkeypatch):  # C9
    run = tmp_path / "run"
    _run(run, "model: mlp\nnum_classes: 10\nin_shape: [1, 4, 4]\nmodel_kw: {hidden: [8]}\n")
    seen = []
    real = graphs.compact

    def spy(model, conn, x, *a, **k):
        seen.append(tuple(x.shape))
        return real(model, conn, x, *a, **k)

    monkeypatch.setattr(graphs, "compact", spy)
    assert main(["compact", str(run), "--out", str(tmp_path / "c.pt")]) == 0
    assert seen == [(8, *SHAPE)]


def test_report_line_says_reached_outputs_of_all_outputs():  # C15
    conn = _conn()
    masks = {k: m.clone() for k, m in conn.masks.items()}
    last = list(masks)[-1]
    masks[last][0] = False  # output 0 has no live input
    conn.set_masks(masks)
    s = graphs.summary(graphs.build(conn, "unit"))
    assert s["outputs"] == 10 and s["outputs_reachable"] < 10
    assert f"reachability: {s['outputs_reachable']}/10 outputs reached" in format_summary(s)


def test_a_layer_the_forward_never_uses_does_not_shape_the_guess():  # E9
    from graphs.example_inputs import default_example_input

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.aux = nn.Linear(7, 3)  # registered first, never called
            self.fc = nn.Linear(5, 2)

        def forward(self, x):
            return self.fc(x)

    assert [tuple(x.shape) for x in default_example_input(Net())] == [(1, 5)]


def test_a_grouped_transposed_heads_class_count_counts_every_group(tmp_path):  # C5
    import torch.nn.functional as F

    from graphs.cli import _classes_used_last

    class Up(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Conv2d(3, 8, 3, padding=1, stride=2)
            self.head = nn.ConvTranspose2d(8, 6, 2, stride=2, groups=2)  # weight stored (8, 3, 2, 2)

        def forward(self, x):
            return self.head(F.relu(self.stem(x)))

    net = Up()
    adaptive.Connectome(net).save(tmp_path / "c.safetensors")
    assert _classes_used_last(net, str(tmp_path / "c.safetensors"), None) == 6


def test_the_model_mappings_num_classes_wins_over_the_top_level_one(tmp_path, capsys):  # C14
    run = tmp_path / "run"
    _run(run, "model: {name: mlp, num_classes: 5, hidden: [8], in_shape: [1, 4, 4]}\nnum_classes: 10\n", classes=5)
    assert main(["export", str(run), "--out", str(tmp_path / "g.json")]) == 0, capsys.readouterr().err


def test_a_checkpoints_report_title_names_its_step(tmp_path, monkeypatch):  # C12
    run, ck = _checkpoint(tmp_path)
    titles = []
    monkeypatch.setattr(graphs.figures, "plot_all", lambda g, out, title: titles.append(title) or [])
    assert main(["report", str(ck), "--out", str(tmp_path / "r")]) == 0
    assert len(titles) == 1 and "step_00000010" in titles[0] and "_step_00000010" not in titles[0]
