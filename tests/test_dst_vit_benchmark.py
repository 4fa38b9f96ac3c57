"""recipes/benchmarks/dst_vit.py: the projection densities it reports come from the run's connectome."""
import torch

import adaptive
from adaptive.models import build_model
from _scripts import load_script

torch.set_num_threads(1)


def _masks(conn, dens):
    g = torch.Generator().manual_seed(0)
    return {k: torch.rand(v.shape, generator=g) < dens(k) for k, v in conn.masks.items()}


def test_projection_density_reads_packed_and_separate_runs(tmp_path):
    mod = load_script("recipes/benchmarks/dst_vit.py", "dst_vit_bench")
    # packed: the rows of in_proj_weight split in three (queries all kept, keys ~half, values none)
    conn = adaptive.Connectome(build_model("vit_tiny"))
    masks = {k: torch.ones_like(v) for k, v in conn.masks.items()}
    for k in masks:
        if k.endswith("in_proj_weight"):
            q, kk, v = masks[k].chunk(3, 0)
            kk[::2] = False
            v[:] = False
    conn.set_masks(masks)
    (tmp_path / "packed").mkdir()
    conn.save(tmp_path / "packed" / "connectome.safetensors")
    d = mod.projection_density(tmp_path / "packed", separate=False)
    assert d == {"q": [1.0] * 4, "k": [0.5] * 4, "v": [0.0] * 4}
    # separate: one parameter per projection
    conn = adaptive.Connectome(build_model("vit_tiny", qkv="separate"))
    conn.set_masks(_masks(conn, lambda k: 0.25 if k.endswith("k_proj_weight") else 1.0))
    (tmp_path / "apart").mkdir()
    conn.save(tmp_path / "apart" / "connectome.safetensors")
    d = mod.projection_density(tmp_path / "apart", separate=True)
    assert d["q"] == d["v"] == [1.0] * 4
    assert all(0.15 < x < 0.35 for x in d["k"]) and len(d["k"]) == 4


def test_removal_orders_refuses_bad_settings_before_any_work(tmp_path, capsys):
    import pytest

    mod = load_script("recipes/benchmarks/removal_orders_vit.py", "removal_orders_vit")
    for argv, msg in ((["--fractions", "0.1,x"], "comma-separated"), (["--fractions", "0.1,1.0"], "(0, 1)"),
                      (["--stat-batches", "0"], "at least 1"), (["--run", str(tmp_path)], "holds no finished run")):
        with pytest.raises(SystemExit) as info:
            mod.main(argv + ["--out", str(tmp_path / "t.md")])
        assert info.value.code == 2
        assert msg in capsys.readouterr().err
    assert not (tmp_path / "t.md").exists()


def test_a_cached_run_with_other_settings_is_not_reused(tmp_path):
    import argparse

    import pytest

    mod = load_script("recipes/benchmarks/dst_vit.py", "dst_vit")
    out = tmp_path / "set_e8_s0"
    out.mkdir()
    (out / "summary.json").write_text('{"test_acc": 0.5}')
    (out / "config.yaml").write_text("lr: 0.001\ndensity: 0.2\nepochs: 8\nseed: 0\n")
    args = argparse.Namespace(runs=str(tmp_path), epochs=8, seed=0, lr=0.001)
    assert mod.run("set", ["--density", "0.2", "--policy", "set"], args) == {"test_acc": 0.5}
    with pytest.raises(SystemExit, match="density: 0.2 there, 0.1 here"):
        mod.run("set", ["--density", "0.1", "--policy", "set"], args)
    with pytest.raises(SystemExit, match="lr: 0.001 there, 0.003 here"):
        mod.run("set", ["--density", "0.2", "--policy", "set"], argparse.Namespace(**{**vars(args), "lr": 0.003}))


def test_the_table_never_shows_an_accuracy_of_all_or_none_that_it_is_not(tmp_path, monkeypatch):
    """dst_vit.py wrote its accuracies as ``100 * acc:.2f``, as the other benchmarks did before
    adaptive.metrics.fmt_accuracy: a held-out accuracy of 0.99996 read "100.00" (every example right). It keeps the
    digits that say so; other accuracies are written as before, a missing one "nan" as before."""
    mod = load_script("recipes/benchmarks/dst_vit.py", "dst_vit_table")
    accs = {"dense": (0.99996, 0.5), "set": (0.00004, 1.0)}

    def run(name, extra, args):
        test, held = accs.get(name, (0.25, None))
        return {"density": 1.0, "live_synapses": 10, "synapses": 10, "test_accuracy": test, "holdout_accuracy": held,
                "wall_seconds": 60.0}

    monkeypatch.setattr(mod, "run", run)
    monkeypatch.setattr(mod, "projection_density", lambda *a: {"q": [1.0], "k": [1.0], "v": [1.0]})
    mod.main(["--out", str(tmp_path / "t.md"), "--runs", str(tmp_path)])
    rows = {r[0]: r[3:5] for r in ([c.strip() for c in line.strip("|").split("|")]
                                   for line in (tmp_path / "t.md").read_text().splitlines()[4:9])}
    assert rows["dense"] == ["99.996", "50.00"] and rows["set"] == ["0.004", "100.00"], rows
    assert rows["rigl"] == ["25.00", "nan"], rows


def test_a_cached_run_of_another_estimator_or_controller_option_is_not_reused(tmp_path):
    """The reuse check compared lr, density, epochs and seed only: a finished run with estimator obd and
    zero_cost_order index was returned as the utility/consistency row (the Reproduce command's default --runs
    folder could publish old runs of other settings). Every recorded setting that changes the run is compared;
    a run recorded with these settings is reused."""
    import argparse

    import pytest

    mod = load_script("recipes/benchmarks/dst_vit.py", "dst_vit_settings")
    out = tmp_path / "utility_e8_s0"
    out.mkdir()
    (out / "summary.json").write_text('{"test_acc": 0.5}')
    recorded = "lr: 0.001\ndensity: 0.2\nepochs: 8\nseed: 0\npolicy: utility\nthreads: 4\n"
    args = argparse.Namespace(runs=str(tmp_path), epochs=8, seed=0, lr=0.001, threads=2, data_dir=None)
    row = ["--density", "0.2", "--policy", "utility", "--estimator", "consistency"]
    (out / "config.yaml").write_text(recorded + "estimator: obd\ncontroller_kw: {zero_cost_order: index}\n")
    with pytest.raises(SystemExit, match=r"estimator: obd there, consistency here.*controller_kw: "
                                         r"\{'zero_cost_order': 'index'\} there, \{\} here"):
        mod.run("utility", row, args)
    (out / "config.yaml").write_text(recorded + "estimator: consistency\ncontroller_kw: {}\n")
    assert mod.run("utility", row, args) == {"test_acc": 0.5}  # (its threads, shown only, may differ)
