"""``python -m graphs`` on a training run's checkpoints (recipes/adaptive.py --checkpoint_every): a
checkpoint folder, the run's ``checkpoints`` folder, and a run folder stopped before its final save."""
import json
import os
import shutil
import sys
from pathlib import Path

import networkx as nx
import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))
from _scripts import load_script  # noqa: E402
from _training import fresh_recipe_state, recipe_runner  # noqa: E402

R = load_script("recipes/adaptive.py", "recipe_adaptive")
TINY = ["--max_steps", "30", "--update_every", "5", "--checkpoint_every", "10", "--keep_checkpoints", "0",
        "--log_every", "0", "--figures", "false", "--threads", "1", "--progress", "false", "--density", "0.3", "--model_kw", "{hidden: [16]}"]
_fresh = pytest.fixture(autouse=True)(fresh_recipe_state)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A finished mlp-on-digits run with checkpoints at steps 10 and 20."""
    from _training import reset_accelerate

    out = tmp_path_factory.mktemp("ck") / "run"
    recipe_runner(R, TINY)(out)
    reset_accelerate()
    assert [p.name for p in sorted((out / "checkpoints").iterdir())] == ["step_00000010", "step_00000020"]
    return out


def _files(folder: Path):
    return sorted(p.name for p in folder.iterdir())


def test_a_checkpoint_folder_exports_its_own_masks_and_weights(run_dir, capsys):
    """`graphs export RUN/checkpoints/step_N` said there was no connectome.safetensors: a checkpoint keeps
    the connectome in custom_checkpoint_0.pkl and the weights in model.safetensors."""
    from safetensors.torch import load_file

    from graphs.cli import main

    ck = run_dir / "checkpoints" / "step_00000010"
    before = _files(ck)
    assert main(["export", str(ck), "--level", "synapse"]) == 0
    out = run_dir / "connectome_synapse_step_00000010.graphml"  # beside the run's own, named by the step
    assert f"wrote {out}" in capsys.readouterr().out
    assert _files(ck) == before  # nothing written into the checkpoint (Accelerate rotates it away; MANIFEST)
    masks = torch.load(ck / "custom_checkpoint_0.pkl", weights_only=True)["masks"]
    weights = load_file(ck / "model.safetensors")
    G = nx.read_graphml(out)
    layers = [entry[1] for entry in json.loads(G.graph["header"])["layers"]]
    live = {}
    for _, _, d in G.edges(data=True):
        if d["kind"] == 0:
            name = layers[d["layer"]]
            live[name] = live.get(name, 0) + 1
            assert d["weight"] == weights[name].flatten()[d["position"]].item()
    assert live == {n: int(m.sum()) for n, m in masks.items()}
    final = torch.load(run_dir / "dense_state_dict.pt", weights_only=True)
    assert any(not torch.equal(final[n], weights[n]) for n in masks)  # the checkpoint's weights, not the final ones


def test_a_checkpoints_connectome_file_reads_as_its_checkpoint(run_dir, tmp_path, capsys):
    """custom_checkpoint_0.pkl given itself: the checkpoint's weights go with it (not a fresh init)."""
    from graphs.cli import main

    ck = run_dir / "checkpoints" / "step_00000020"
    assert main(["export", str(ck / "custom_checkpoint_0.pkl"), "--out", str(tmp_path / "g.json")]) == 0
    err = capsys.readouterr().err
    assert "fresh init" not in err and (tmp_path / "g.json").is_file()


def test_several_checkpoints_are_refused_naming_each_and_one_is_read(run_dir, tmp_path, capsys):
    """The run's checkpoints folder, or a run stopped before its final save, holds several checkpoints:
    which one is the user's to say; with one left, it is read, with a note naming it."""
    from graphs.cli import main

    steps = [run_dir / "checkpoints" / s for s in ("step_00000010", "step_00000020")]
    assert main(["export", str(run_dir / "checkpoints")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and all(str(s) in err for s in steps) and "in its place" in err
    assert f"or the run folder {run_dir} for the run's final connectome" in err
    cut = tmp_path / "cut"  # killed before the final save: no connectome.safetensors, no weights
    shutil.copytree(run_dir, cut, ignore=shutil.ignore_patterns("connectome*", "dense_state_dict.pt"))
    assert main(["report", str(cut)]) == 2
    err = capsys.readouterr().err
    assert "its run has not finished, or was stopped" in err and str(cut / "checkpoints" / "step_00000020") in err
    assert not (cut / "graph_report").exists()
    shutil.rmtree(cut / "checkpoints" / "step_00000010")
    assert main(["export", str(cut)]) == 0
    err = capsys.readouterr().err
    assert f"reading its only checkpoint, {cut / 'checkpoints' / 'step_00000020'}" in err
    assert (cut / "connectome_unit_step_00000020.graphml").is_file()


def test_a_damaged_checkpoint_is_refused_naming_it(run_dir, tmp_path, capsys):
    from graphs.cli import main

    ck = tmp_path / "step_00000010"
    shutil.copytree(run_dir / "checkpoints" / "step_00000010", ck)
    with open(ck / "custom_checkpoint_0.pkl", "ab") as f:
        f.write(b"x")
    assert main(["export", str(ck)]) == 2
    err = capsys.readouterr().err
    assert f"checkpoint {ck} is damaged" in err and "custom_checkpoint_0.pkl" in err


def test_overwrite_deletes_the_exports_of_the_earlier_runs_checkpoints(run_dir, tmp_path, capsys):
    """An --overwrite rerun deleted connectome_unit.graphml and graph_report but left
    connectome_unit_step_00000010.graphml and graph_report_step_00000010 (DERIVED_FILES are exact
    names): the rerun's folder held a graph of the earlier run's step 10, named as its own would be."""
    from graphs.cli import main

    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    ck = run / "checkpoints" / "step_00000010"
    assert main(["export", str(ck)]) == 0 and main(["report", str(ck)]) == 0
    assert main(["compact", str(ck)]) == 0
    mine = run / "notes_step_00000010.graphml"  # the user's own file: not one of the tools' names
    mine.write_text("mine")
    exports = ["compact_model_step_00000010.pt", "connectome_unit_step_00000010.graphml", "graph_report_step_00000010"]
    assert all((run / n).exists() for n in exports)
    capsys.readouterr()
    recipe_runner(R, TINY)(run, "--checkpoint_every", "0", "--overwrite")
    assert not [n for n in exports if (run / n).exists()] and mine.read_text() == "mine"
    assert not (run / "checkpoints" / "step_00000010").exists()


def test_a_checkpoint_folder_with_connectome_given_writes_into_the_run_folder(run_dir, tmp_path, capsys):
    """`graphs export RUN/checkpoints/step_N --connectome FILE` wrote connectome_unit.graphml into the
    checkpoint folder, which the recipe deletes with the checkpoint and a --resume from it warns of."""
    from graphs.cli import main

    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    ck = run / "checkpoints" / "step_00000010"
    before = _files(ck)
    assert main(["export", str(ck), "--connectome", str(run / "connectome.safetensors")]) == 0
    assert _files(ck) == before and (run / "connectome_unit_step_00000010.graphml").is_file()
    assert "fresh init" not in capsys.readouterr().err  # the checkpoint's weights


def test_a_stopped_mask_only_run_is_refused_naming_the_command_that_continues_it(tmp_path, capsys):
    """A mask-only run stopped before its connectome.safetensors: the refusal said "resume the run
    (--resume)", which recipes/adaptive.py refuses (--resume takes a value, and alone reads the
    defaults' targets); the command it names now continues the run, and graphs then reads it."""
    import shlex

    from graphs.cli import main

    run = tmp_path / "mo"
    recipe_runner(R, ["--mode", "mask_only", "--target", "0.3", "--epochs", "1", "--threads", "1", "--progress",
                      "false", "--figures", "false", "--model_kw", "{hidden: [16]}"])(run)
    (run / "connectome.safetensors").unlink()  # stopped after its stage checkpoint, before the final save
    capsys.readouterr()
    assert main(["export", str(run)]) == 2
    err = capsys.readouterr().err
    command = err.split("continue the run to write its connectome(s) (python recipes/adaptive.py ")[1].split("), or")[0]
    assert shlex.split(command)[-2:] == ["--output_dir", str(run)]
    recipe_runner(R, [])(run, *shlex.split(command)[:-2])  # (the runner gives the --output_dir)
    assert main(["export", str(run)]) == 0 and (run / "connectome_unit.graphml").is_file()
