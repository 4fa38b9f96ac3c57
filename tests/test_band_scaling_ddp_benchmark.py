"""recipes/benchmarks/band_scaling_ddp.py: a smoke run of its two processes writes the table where --out
says, its rendezvous folder removed after; a failed process stops the run rather than leaving the other waiting;
bad option values are refused before any process starts; its 'previous hook' variant is the hook before
_band_stats, which the library's gives bit for bit (the benchmark's claim)."""
import runpy
import sys
import tempfile

import pytest
import torch
import torch.nn.functional as F

import adaptive.paths as paths
from adaptive import Connectome
from adaptive.diagnostics import BandGradientScaler
from adaptive.models import build_model

SCRIPT = paths.REPO_ROOT / "recipes" / "benchmarks" / "band_scaling_ddp.py"


@pytest.mark.parametrize("argv, match", [(["--rounds", "1"], "--rounds must be at least 2"),
                                         (["--models", "densecat,vgg"], "--models: distinct names"),
                                         (["--models", "densecat,densecat"], "--models: distinct names"),
                                         (["--threads", "0"], "--threads must be a positive integer")])
def test_bad_options_are_refused(argv, match, capsys):
    main = runpy.run_path(str(SCRIPT))["main"]
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2 and match in capsys.readouterr().err


def test_the_library_hook_gives_the_previous_hook_s_scales_and_gradients_bit_for_bit():
    """A pruned DenseCat, three steps (one with zero gradient entries): the same scales, running sizes and
    scaled gradients from the library's hook as from the previous one (5ef8121), which hooked its first layer
    (one band) too: the library leaves that one alone, with no running size."""
    previous = runpy.run_path(str(SCRIPT))["PreviousHook"]
    torch.set_num_threads(1)
    runs = []
    for cls in (BandGradientScaler, previous):
        torch.manual_seed(0)
        model = build_model("densecat", num_classes=4, in_shape=(1, 5, 5), depth=3, width=6)
        conn = Connectome(model)
        g = torch.Generator().manual_seed(3)
        conn.set_masks({n: torch.rand(m.shape, generator=g) < 0.6 for n, m in conn.masks.items()})
        scaler, g, got = cls(model, conn=conn, momentum=0.5), torch.Generator().manual_seed(1), []
        for step in range(3):
            x, y = torch.randn(16, 1, 5, 5, generator=g) * 3, torch.randint(0, 4, (16,), generator=g)
            if step == 1:
                x[:, :, :2] = 0  # the first layer's gradient is exactly 0 at those inputs' entries
            model.zero_grad(set_to_none=True)
            F.cross_entropy(model(x), y).backward()
            got.append(([p.grad.clone() for p in model.parameters()], scaler.scales(), scaler.state_dict()))
        scaler.remove()
        runs.append(got)
    for (grads, scales, state), (grads_0, scales_0, state_0) in zip(*runs):
        assert all(torch.equal(a, b) for a, b in zip(grads, grads_0)) and scales == scales_0
        assert state["layers"]["layers.0"]["log_typical"] is None and state_0["layers"]["layers.0"]["log_typical"] is not None
        for n, layer in state["layers"].items():
            if n != "layers.0":  # (the one-band layer)
                assert all(torch.equal(layer[k], state_0["layers"][n][k]) for k in ("log_typical", "seen"))


def test_a_quick_run_of_two_processes_writes_its_table(tmp_path, monkeypatch):
    main = runpy.run_path(str(SCRIPT))["main"]
    out, scratch = tmp_path / "b.md", tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))  # where the rendezvous folder goes
    main(["--quick", "--models", "densecat", "--no-progress", "--out", str(out)])
    text = out.read_text()
    rows = [line.split("|")[1:-1] for line in text.splitlines() if line.startswith("| DenseCat") or line.startswith("|  |")]
    variants = [r[6].strip() for r in rows[:5]]
    assert variants == ["DDP, second copy (noise floor)", "DDP + scaler", "DDP + scaler, no all-reduce (not exact)",
                        "DDP + scaler, one-band layers hooked too", "DDP + scaler, previous hook"]
    assert [r[-1].strip() for r in rows[:5]] == ["-", "yes", "no", "yes", "yes"]  # the exact variants' scales agree
    assert rows[0][2].strip() == "9 (9)" and rows[0][3].strip() == "8"  # DenseCat's first layer reads one band
    assert all(float(r[7]) > 0 for r in rows[:5]) and float(rows[0][5]) > 0
    assert "Reproduce: `python recipes/benchmarks/band_scaling_ddp.py --quick --models densecat`" in text
    assert list(scratch.iterdir()) == []  # the rendezvous file and its folder are gone


def test_a_failed_process_stops_the_run_and_the_other_is_killed(tmp_path, monkeypatch):
    """One process failing before the other reached the rendezvous (or a collective) left it waiting there, and
    the launcher waiting for it, for gloo's half-hour timeout: the survivor is killed GRACE_S after the failure
    and the run stops with both exit statuses; the rendezvous folder is removed."""
    launch = runpy.run_path(str(SCRIPT))["_launch_two"]
    launch.__globals__["GRACE_S"] = 0.2
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    code = "import os, sys, time; sys.exit(3) if os.environ['RANK'] == '1' else time.sleep(600)"
    with pytest.raises(SystemExit, match=r"exit statuses \[-9, 3\]; negative: killed by that signal, those still running"):
        launch([], 1, command=[sys.executable, "-c", code])
    assert list(tmp_path.iterdir()) == []
