"""recipes/benchmarks/mask_only.py refuses nonsense settings before it reads data or runs a method."""

import pytest
import torch
from _scripts import load_script  # noqa: E402


def _bench():
    return load_script("recipes/benchmarks/mask_only.py", "mask_only_bench")


@pytest.mark.parametrize("argv, msg", [
    (["--ep-lr", "0"], "--ep-lr must be > 0"),
    (["--step", "-0.03"], "--step must be > 0"),
    (["--passes", "0"], "--passes must be > 0"),
    (["--batch-size", "0"], "at least 1"),
    (["--targets", "0.2,half"], "comma-separated removal fractions"),
    (["--targets", "0.2,1.5"], "in (0, 1)"),
    (["--targets", "0.2,0.2"], "distinct"),
])
def test_bad_settings_fail_before_any_work(argv, msg, capsys, monkeypatch, tmp_path):
    mod = _bench()
    read = []
    monkeypatch.setattr(mod, "get_dataloaders", lambda *a, **k: read.append(1))  # reading data = too late
    with pytest.raises(SystemExit) as info:
        mod.main(argv + ["--output", str(tmp_path / "t.md")])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert msg in err, err
    assert not read and not (tmp_path / "t.md").exists()


def test_edge_popup_reads_the_train_data_in_the_order_ours_read_it(monkeypatch, tmp_path):
    """Both learned methods start from the same shuffle: edge-popup's rows must not depend on how
    many passes ours took (they did: it went on from where ours left the loader's generator)."""
    from types import SimpleNamespace

    from torch.utils.data import DataLoader, TensorDataset

    mod = _bench()
    x = torch.arange(64, dtype=torch.float32)[:, None]
    ds = TensorDataset(x, torch.zeros(64, dtype=torch.long))
    g = torch.Generator().manual_seed(0)
    dl = SimpleNamespace(train=DataLoader(ds, batch_size=8, shuffle=True, generator=g),
                         holdout=DataLoader(ds, batch_size=8))
    monkeypatch.setattr(mod, "get_dataloaders", lambda *a, **k: dl)
    monkeypatch.setattr(mod, "resolve_data_dir", lambda d: tmp_path)
    monkeypatch.setattr(mod, "build_model", lambda *a, **k: torch.nn.Linear(1, 1))
    seen = {}

    class Stop(Exception):
        pass

    def ours(model, train, holdout, targets, passes, **kw):
        # three passes over the data, as ours would take over three targets
        orders = [torch.cat([b[0][:, 0] for b in train]) for _ in range(3)]
        seen["ours"] = orders[0]
        assert not torch.equal(orders[0], orders[1])  # the loader does reshuffle each pass
        return SimpleNamespace(conn=None, snapshots={f"{t:g}": SimpleNamespace(masks={}, holdout_acc=0.0,
                                                                               cpu_seconds=0.0) for t in targets})

    def ep(model, train, holdout, targets, **kw):
        seen["edge-popup"] = torch.cat([b[0][:, 0] for b in train])
        raise Stop

    monkeypatch.setattr(mod, "optimize_connectome", ours)
    monkeypatch.setattr(mod, "edge_popup", ep)
    with pytest.raises(Stop):
        mod.main(["--targets", "0.1,0.2,0.5", "--no-progress", "--output", str(tmp_path / "t.md")])
    assert torch.equal(seen["ours"], seen["edge-popup"])


@pytest.mark.parametrize("script", ["mask_only", "mask_only_ceiling"])
def test_a_too_small_subset_is_named_as_the_option_and_the_fixed_holdout_is_not_offered(script, monkeypatch, tmp_path):
    """The data errors said 'subset=20' and suggested 'a larger holdout' (or 'holdout=0'), which
    these scripts fix at 0.1 with no option: they name --subset, and only --subset as the fix."""
    import adaptive.data

    mod = load_script(f"recipes/benchmarks/{script}.py", f"{script}_bench")
    real = adaptive.data.get_dataloaders
    monkeypatch.setattr(mod, "get_dataloaders", lambda name, **k: real("digits", **k))  # digits: no files needed
    for subset, why in (("20", "the held-out part of digits is empty: the 20 train examples of --subset 20 with its "
                                "holdout of 0.1 hold out round(0.1 x its examples of a class) = 0 of every class; "
                                "give a --subset of at least "),
                        ("5", "--subset 5 cannot hold one train example of each of the 10 classes of digits: give a "
                              "--subset of at least 10 (or leave it out)")):
        with pytest.raises(ValueError) as info:
            mod.main(["--subset", subset, "--output", str(tmp_path / "t.md")])
        msg = str(info.value)
        assert msg.startswith(why), msg
        assert "holdout" not in msg.split(";")[-1] and "subset=" not in msg, msg


def test_magnitude_rows_prune_the_weights_file_and_targets_run_in_increasing_order(monkeypatch, tmp_path):
    """Given --targets out of order, the magnitude row of 20% was a 20% drawn from the weights the 50% row had
    already zeroed (the loop reused the masked model): each row now starts from the weights file, and the
    learned methods are given the targets in increasing order, as the table's note says they visit them."""
    from types import SimpleNamespace

    from torch.utils.data import DataLoader, TensorDataset

    mod = _bench()
    ds = TensorDataset(torch.randn(16, 4), torch.zeros(16, dtype=torch.long))
    dl = SimpleNamespace(train=DataLoader(ds, batch_size=8, shuffle=True, generator=torch.Generator().manual_seed(0)),
                         holdout=DataLoader(ds, batch_size=8))

    def build(*a, **k):  # the "weights file": the same weights every time
        torch.manual_seed(0)
        return torch.nn.Linear(4, 2)

    monkeypatch.setattr(mod, "get_dataloaders", lambda *a, **k: dl)
    monkeypatch.setattr(mod, "resolve_data_dir", lambda d: tmp_path)
    monkeypatch.setattr(mod, "build_model", build)
    given, seen = {}, []

    class Stop(Exception):
        pass

    def ours(model, train, holdout, targets, passes, **kw):
        given["ours"] = list(targets)
        return SimpleNamespace(conn=None, snapshots={f"{t:g}": SimpleNamespace(masks={}, holdout_acc=0.0,
                                                                               cpu_seconds=0.0) for t in targets})

    def ep(model, train, holdout, targets, **kw):
        given["edge-popup"] = list(targets)
        return None, {f"{t:g}": {"masks": {}, "holdout_acc": 0.0, "cpu_seconds": 0.0} for t in targets}

    real = mod.magnitude_masks

    def magnitude(model, conn, fraction):
        seen.append(model.weight.detach().clone())
        if len(seen) == 2:
            raise Stop
        return real(model, conn, fraction)

    monkeypatch.setattr(mod, "optimize_connectome", ours)
    monkeypatch.setattr(mod, "edge_popup", ep)
    monkeypatch.setattr(mod, "magnitude_masks", magnitude)
    with pytest.raises(Stop):
        mod.main(["--targets", "0.5,0.25", "--no-progress", "--output", str(tmp_path / "t.md")])
    assert given == {"ours": [0.25, 0.5], "edge-popup": [0.25, 0.5]}
    assert torch.equal(seen[1], build().weight) and bool((seen[1] != 0).all())  # no earlier row's zeros in it
