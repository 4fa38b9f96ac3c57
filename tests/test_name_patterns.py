"""adaptive.name_patterns: exact names looked up, wildcard patterns fnmatch-ed, the same answers as
fnmatchcase for every pattern, and a connectome load that matches each layer's name once, not
against every saved layer (quadratic in the layers before)."""
import fnmatch
import glob
import itertools
import random

import pytest
import torch
from torch import nn

import adaptive
from adaptive.name_patterns import PatternSet, literal

TRICKY = ["", "fc", "fc.weight", "fc*", "f?", "fc[1]", "fc[[]1]", "fc[*]", "fc[?]", "a]b", "[!a]", "[]]", "[a-c]",
          "x[[]", "x[", "*", "?", "[*]", "[[]", "a.b.c", "!", "-"]


def test_a_pattern_set_answers_as_fnmatchcase_for_every_pattern_and_name():
    names = ["", "fc", "f1", "fc1", "fc[1]", "fc*", "fc?", "a]b", "b", "]", "x[", "*", "?", "[", "a.b.c", "!", "-"]
    rng = random.Random(0)
    pattern_lists = [TRICKY, [glob.escape(n) for n in names]] + [rng.sample(TRICKY + names, 6) for _ in range(50)]
    for pats in pattern_lists:
        ps = PatternSet(pats)
        for pair in itertools.combinations(names, 2):
            want = {p for p in pats if any(fnmatch.fnmatchcase(n, p) for n in pair)}
            assert ps.hits(*pair) == want, (pats, pair)
            assert ps.any(*pair) == bool(want)


def test_literal_names_the_one_name_an_escaped_pattern_spells_and_none_for_a_wildcard():
    assert literal(glob.escape("fc[1]*?")) == "fc[1]*?"
    assert literal("layer1.0.conv1") == "layer1.0.conv1"
    assert literal("fc*") is None and literal("f?") is None and literal("fc[12]") is None and literal("[!a]") is None


def test_loading_a_connectome_matches_each_layer_once_not_against_every_saved_layer(tmp_path, monkeypatch):
    """Connectome.load passes one exact name per saved layer as include=: each weight was fnmatch-ed
    against all of them (60 layers: about 7,200 calls; 1,000 layers took 4 s), now looked up."""
    torch.manual_seed(0)
    layers = 60
    model = nn.Sequential(*[nn.Linear(3, 3) for _ in range(layers)])
    conn = adaptive.Connectome(model)
    conn.set_masks({n: torch.rand(m.shape) < 0.5 for n, m in conn.masks.items()})
    conn.save(tmp_path / "c.safetensors")
    calls = []
    real = fnmatch.fnmatchcase
    monkeypatch.setattr(fnmatch, "fnmatchcase", lambda n, p: calls.append(p) or real(n, p))
    loaded = adaptive.Connectome.load(tmp_path / "c.safetensors", model)
    assert all(torch.equal(loaded.masks[n], m) for n, m in conn.masks.items())
    assert len(calls) < layers, f"{len(calls)} fnmatchcase calls to load {layers} layers"


def test_protecting_many_layers_by_name_matches_each_layer_once(monkeypatch):
    """protect= with one exact name per layer: a look-up per layer, not every name against every layer."""
    layers = 60
    model = nn.Sequential(*[nn.Linear(3, 3) for _ in range(layers)])
    conn = adaptive.Connectome(model)
    calls = []
    real = fnmatch.fnmatchcase
    monkeypatch.setattr(fnmatch, "fnmatchcase", lambda n, p: calls.append(p) or real(n, p))
    names = [str(i) for i in range(0, layers, 2)]
    ctrl = adaptive.Controller(conn, None, policy="set", density=0.9, protect=names + ["1*"])
    assert ctrl.protected == [f"{i}.weight" for i in range(layers) if i % 2 == 0 or str(i).startswith("1")]
    assert len(calls) < 4 * layers, f"{len(calls)} fnmatchcase calls to protect {len(names)} of {layers} layers"


NAMES = ["?:fc", "//a*/b", "a[b]", "x:fc", "//ab/b", "ab", "C:*", "\\\\a?\\b", "fc", "[*]", "[", "]", ""]


def test_escape_makes_a_pattern_that_matches_its_name_alone_on_every_platform():
    """glob.escape is for paths: on Windows it keeps a drive-like prefix as it is, so '?:fc' stayed a
    pattern that matches 'x:fc' too, and '//a*/b' one that matches '//ab/b'. escape brackets every
    '*', '?' and '['; the pattern spells its one name (literal) and fnmatchcase agrees."""
    from adaptive.name_patterns import escape

    assert escape("?:fc") == "[?]:fc" and escape("//a*/b") == "//a[*]/b" and escape("a[b]") == "a[[]b]"
    for n in NAMES:
        p = escape(n)
        assert literal(p) == n
        assert [m for m in NAMES if fnmatch.fnmatchcase(m, p)] == [n]
        assert PatternSet([p]).hits(*NAMES) == {p}


class _Named(nn.Module):
    """Linear layers at the top of the model, under ``names`` (a module's name may hold any character
    but '.')."""

    def __init__(self, names):
        super().__init__()
        for n in names:
            self.add_module(n, nn.Linear(3, 3))

    def forward(self, x):
        return sum(m(x) for m in self.children())


@pytest.mark.parametrize("kept, other", [("?:fc", "x:fc"), ("//a*/b", "//ab/b"), ("a[b]", "ab")])
def test_a_saved_layer_named_like_a_windows_drive_loads_alone(tmp_path, monkeypatch, kept, other):
    """Connectome.load and graphs' rebuild from a checkpoint's state_dict named each saved layer by
    glob.escape, which on Windows keeps a drive-like start as it is: '?:fc' matched 'x:fc' too, and a
    file saved without that layer could not be loaded (a layer it has no mask for). Windows' drive
    reading is given to glob here, as it reads it there; escape does not read it."""
    import ntpath

    from adaptive.name_patterns import escape
    from graphs.cli import _connectome

    torch.manual_seed(0)
    model = _Named([kept, other])
    conn = adaptive.Connectome(model, include=[escape(kept)])
    assert list(conn.masks) == [f"{kept}.weight"]
    conn.set_masks({n: torch.rand(m.shape) < 0.5 for n, m in conn.masks.items()})
    conn.save(tmp_path / "c.safetensors")
    torch.save(conn.state_dict(), tmp_path / "c.pt")
    monkeypatch.setattr(glob.os.path, "splitdrive", ntpath.splitdrive)  # what glob.escape reads on Windows
    for loaded in (adaptive.Connectome.load(tmp_path / "c.safetensors", model), _connectome(str(tmp_path / "c.pt"), model)):
        assert list(loaded.masks) == [f"{kept}.weight"]
        assert torch.equal(loaded.masks[f"{kept}.weight"], conn.masks[f"{kept}.weight"])
