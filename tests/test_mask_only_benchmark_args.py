"""recipes/benchmarks/mask_only.py refuses nonsense settings before it reads data or runs a method."""

import pytest
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
