"""Audit of ensembles, schedules, selection and the connectome file: each test failed before its fix."""
import json
import warnings

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

import adaptive
from adaptive import bitpack
from adaptive.policies.base import highest, lowest
from adaptive.schedules import CubicDensity, get_decay


def _max_live_per_group(mask, m):
    x = mask.reshape(mask.shape[0], -1).int()
    x = nn.functional.pad(x, (0, (-x.shape[1]) % m))
    return int(x.reshape(x.shape[0], -1, m).sum(-1).max())


@pytest.mark.parametrize("policy", ["utility", "balanced"])
def test_a_shrunk_line_search_plan_keeps_n_m_and_the_density(policy):
    """A halved plan used to keep a prefix of prunes and a prefix of grows apart: a grow kept without
    the prune it pairs with left 4 live synapses in a group of 4 under 2:4, and the next rollback
    failed validation with the trial edit still applied."""
    torch.manual_seed(0)
    X, Y = torch.randn(64, 16), torch.randint(0, 4, (64,))
    net = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))
    conn = adaptive.Connectome(net, ensemble="2:4")
    opt = torch.optim.SGD(net.parameters(), lr=0.05)
    calls = [0]

    def holdout():  # the loss before, then the full plan rejected, then the halved plan accepted
        calls[0] += 1
        return 1.0 if calls[0] % 3 == 2 else 0.0

    ctrl = adaptive.Controller(conn, opt, policy=policy, update_every=5, end_step=40, holdout_loss=holdout,
                               line_search_tolerance=0.0)
    for _ in range(45):
        opt.zero_grad()
        nn.functional.cross_entropy(net(X), Y).backward()
        opt.step()
        assert max(_max_live_per_group(m, 4) for m in conn.masks.values()) <= 2
    shrunk = [e for e in ctrl.events if e.get("line_search_fraction") == 0.5]
    assert shrunk and all(e["pruned"] > 0 for e in shrunk)
    assert conn.density() == pytest.approx(0.5)  # a shrunk swap stays a swap


@pytest.mark.parametrize("every,end", [(3, 20), (7, 20), (5, 22)])
def test_gmp_reaches_its_target_when_end_step_falls_between_updates(every, end):
    torch.manual_seed(0)
    X, Y = torch.randn(32, 20), torch.randint(0, 5, (32,))
    net = nn.Sequential(nn.Linear(20, 30), nn.ReLU(), nn.Linear(30, 5))
    conn = adaptive.Connectome(net)
    opt = torch.optim.SGD(net.parameters(), lr=0.01)
    adaptive.Controller(conn, opt, policy="gmp", density=0.1, update_every=every, end_step=end)
    for _ in range(end + 10):
        opt.zero_grad()
        nn.functional.cross_entropy(net(X), Y).backward()
        opt.step()
    assert conn.density() == pytest.approx(0.1, abs=1e-3)


def test_gmp_warns_of_a_window_without_an_update():
    net = nn.Sequential(nn.Linear(20, 30), nn.ReLU(), nn.Linear(30, 5))
    conn = adaptive.Connectome(net)
    opt = torch.optim.SGD(net.parameters(), lr=0.01)
    with pytest.warns(UserWarning, match="no update falls between"):
        adaptive.Controller(conn, opt, policy="gmp", density=0.1, update_every=30, end_step=20)
    assert conn.density() == 1.0


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_lowest_never_returns_an_ineligible_index(bad):
    x = torch.tensor([0.0, bad, 5.0, 3.0])
    ok = torch.tensor([False, True, True, True])
    assert sorted(lowest(x, ok, 3).tolist()) == [1, 2, 3]
    assert sorted(highest(-x, ok, 3).tolist()) == [1, 2, 3]


def test_lowest_with_many_nan_and_ineligible_entries_matches_a_reference():
    g = torch.Generator().manual_seed(0)
    n = (1 << 20) + 12345
    x = torch.where(torch.rand(n, generator=g) < 0.1, torch.tensor(float("nan")), torch.randn(n, generator=g))
    ok = torch.rand(n, generator=g) < 0.9
    idx = ok.nonzero().squeeze(1)
    for k in (5000, n // 2):
        ref = idx[torch.argsort(torch.nan_to_num(x[idx], nan=float("inf")), stable=True)[:k]]
        assert torch.equal(lowest(x, ok, k), ref)


def test_every_decay_is_zero_at_end_step_and_a_zero_span_jumps():
    for name in ("constant", "cosine", "linear"):
        d = get_decay(name, 0.3, end_step=20, start_step=0)
        assert d(0) == pytest.approx(0.3) and d(20) == 0.0 and d(21) == 0.0
        z = get_decay(name, 0.3, end_step=5, start_step=5)
        assert z(4) == pytest.approx(0.3) and z(5) == 0.0
    assert CubicDensity(1.0, 0.1, 10, 10)(10) == 0.1
    assert CubicDensity(1.0, 0.1, 10, 10)(9) == 1.0


def test_set_with_constant_decay_edits_nothing_at_end_step():
    torch.manual_seed(0)
    X, Y = torch.randn(32, 20), torch.randint(0, 5, (32,))
    net = nn.Sequential(nn.Linear(20, 30), nn.ReLU(), nn.Linear(30, 5))
    conn = adaptive.Connectome(net)
    opt = torch.optim.SGD(net.parameters(), lr=0.01)
    ctrl = adaptive.Controller(conn, opt, policy="set", density=0.5, update_every=5, end_step=20,
                               edit_decay="constant")
    for _ in range(25):
        opt.zero_grad()
        nn.functional.cross_entropy(net(X), Y).backward()
        opt.step()
    ev = {e["step"]: e for e in ctrl.events if e["kind"] != "init"}
    assert ev[15]["pruned"] > 0 and ev[20]["pruned"] == 0


def test_unpack_refuses_padding_bits_and_names_a_wrong_dimension():
    mask = torch.rand(3, 5) < 0.5
    packed = bitpack.pack(mask)
    assert torch.equal(bitpack.unpack(packed, (3, 5)), mask)
    bad = packed.clone()
    bad[-1] |= 1  # bit 16 of 15
    with pytest.raises(ValueError, match="past its last synapse"):
        bitpack.unpack(bad, (3, 5))
    with pytest.raises(ValueError, match="2-d"):
        bitpack.unpack(packed.view(1, -1), (3, 5))


def _saved(tmp_path):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(5, 3), nn.ReLU(), nn.Linear(3, 2))
    conn = adaptive.Connectome(net)
    conn.set_masks({n: torch.rand(m.shape) < 0.5 for n, m in conn.masks.items()})
    path = tmp_path / "c.safetensors"
    conn.save(path)
    with safe_open(str(path), "pt") as f:  # without its checksum, as a file saved before them: the
        meta = {k: v for k, v in f.metadata().items() if k != "sha256"}  # structure checks are tested here
        return meta, {k: f.get_tensor(k) for k in f.keys()}


def _model():
    return nn.Sequential(nn.Linear(5, 3), nn.ReLU(), nn.Linear(3, 2))


def test_load_refuses_a_mask_missing_from_the_layer_list(tmp_path):
    """A layer left out of the metadata used to load as a connectome without that layer."""
    meta, tensors = _saved(tmp_path)
    meta = dict(meta, layers=json.dumps({"0.weight": [3, 5]}))
    save_file(tensors, tmp_path / "bad.safetensors", metadata=meta)
    with pytest.raises(ValueError, match=r"masks not listed: \['2.weight'\]"):
        adaptive.Connectome.load(tmp_path / "bad.safetensors", _model())


@pytest.mark.parametrize("edit", ["drop", "garbage"])
def test_load_names_malformed_metadata(tmp_path, edit):
    meta, tensors = _saved(tmp_path)
    meta = dict(meta)
    if edit == "drop":
        del meta["layers"]
    else:
        meta["layers"] = "{not json"
    save_file(tensors, tmp_path / "bad.safetensors", metadata=meta)
    with warnings.catch_warnings(), pytest.raises(ValueError, match="metadata is missing or malformed"):
        adaptive.Connectome.load(tmp_path / "bad.safetensors", _model())


def test_load_of_a_folder_names_it(tmp_path):
    with pytest.raises(ValueError, match="is a folder, not a connectome file"):
        adaptive.Connectome.load(tmp_path, _model())
