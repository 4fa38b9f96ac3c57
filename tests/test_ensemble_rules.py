"""Per-layer ensemble granularities: rules, the connectome, the controller, mask-only, persistence."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import adaptive
from adaptive.ensemble_rules import parse_rules, resolve
from adaptive.mask_only import optimize_connectome

torch.set_num_threads(1)


def net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
                         nn.Linear(32, 16), nn.ReLU(), nn.Linear(16, 4))


NAMES = ["0.weight", "4.weight", "6.weight"]


@pytest.mark.parametrize("rules", [
    {"0": "kernel", "4.weight": "neuron", "*": "synapse"},
    "0=kernel;4.weight=neuron;synapse",
    " 0 = kernel ; 4.weight=neuron ; *=synapse ;",
])
def test_rules_resolve_first_match_on_module_or_parameter_name(rules):
    per_layer, spec = resolve(rules, NAMES)
    assert {n: g.spec for n, g in per_layer.items()} == {"0.weight": "kernel", "4.weight": "neuron", "6.weight": "synapse"}
    assert spec == "0=kernel;4.weight=neuron;synapse"
    assert resolve(spec, NAMES)[1] == spec  # the canonical string reads back to itself


def test_rules_that_end_up_uniform_read_as_one_spec():
    assert resolve({"0": "neuron", "*": "neuron"}, NAMES)[1] == "neuron"
    assert resolve("synapse", NAMES)[1] == "synapse"
    assert resolve("*=kernel", NAMES)[1] == "kernel"
    assert [p for p, _ in parse_rules("6=neuron;kernel")] == ["6", None]


@pytest.mark.parametrize("rules, exc, match", [
    ({"0": "kernel"}, ValueError, r"no granularity for 2 layer\(s\) \(4.weight, 6.weight\).*default"),
    ({"0": "kernel", "fc*": "neuron", "*": "synapse"}, ValueError, r"\['fc\*'\] match no prunable layer"),
    ({"*": "synapse", "0": "kernel"}, ValueError, r"\['0'\] match no prunable layer.*earlier rule"),
    ({"0": "2:4", "*": "synapse"}, ValueError, r"mix '2:4'.*every layer or to none"),
    ("0=kernel;4=neurons;synapse", ValueError, r"rule for '4'.*unknown ensemble spec 'neurons'"),
    ({}, ValueError, "rules are empty"),
    ({"": "kernel"}, ValueError, "pattern must be a non-empty string"),
    (3, TypeError, "mapping of layer patterns"),
    ({"0;4": "neuron", "*": "synapse"}, ValueError, "cannot hold ';'"),
    ("0=neuron;synapse;kernel", ValueError, r"more than one default \('synapse', 'kernel'\)"),
    ("neuron;synapse", ValueError, r"more than one default \('neuron', 'synapse'\)"),
    ("0=2:4;1:4", ValueError, r"different n:m specs \['1:4', '2:4'\]"),
])
def test_bad_rules_fail_clearly_and_build_nothing(rules, exc, match):
    model = net()
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(exc, match=match):
        adaptive.Connectome(model, ensemble=rules)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_granularity_of_an_unknown_name_says_which_names_there_are():
    # was a bare KeyError('4'), naming neither the known layers nor the fix
    conn = adaptive.Connectome(net(), ensemble="0=kernel;4=neuron;synapse")
    with pytest.raises(KeyError, match=r"'4' is not a prunable weight.*did you mean '4.weight'\?.*"
                                       r"\['0.weight', '4.weight', '6.weight'\].*conn.names"):
        conn.granularity_of("4")
    with pytest.raises(KeyError, match=r"'4.bias' is not a prunable weight.*: give a parameter name, one of \['0.weight'"):
        conn.granularity_of("4.bias")
    assert conn.granularity_of("4.weight").spec == "neuron"
    with pytest.raises(KeyError, match=r"ensemble_mask: '4' is not a prunable weight.*did you mean '4.weight'\?"):
        conn.ensemble_mask("4")  # was a bare KeyError('4') too
    assert conn.ensemble_mask("4.weight").shape == (conn.masks["4.weight"].shape[0],)


def test_connectome_checks_and_expands_each_layer_with_its_own_granularity():
    conn = adaptive.Connectome(net(), ensemble="0=kernel;4=neuron;synapse")
    assert [conn.granularity_of(n).spec for n in NAMES] == ["kernel", "neuron", "synapse"]
    with pytest.raises(AttributeError, match="different granularities.*granularity_of"):
        conn.granularity
    shapes = {n: tuple(e.shape) for n, e in conn.ensemble_masks().items()}
    assert shapes == {"0.weight": (8, 3), "4.weight": (16,), "6.weight": (4, 16)}
    partial = {n: m.clone() for n, m in conn.masks.items()}
    partial["4.weight"][0, 0] = False  # half a neuron
    with pytest.raises(ValueError, match="4.weight"):
        conn.set_masks(partial)
    ok = {n: m.clone() for n, m in conn.masks.items()}
    ok["6.weight"][0, 0] = False  # one synapse: fine for a synapse layer
    ok["4.weight"][3] = False  # a whole neuron
    conn.set_masks(ok)
    assert int((~conn.masks["4.weight"]).sum()) == 32 and int((~conn.masks["6.weight"]).sum()) == 1
    assert "neuron" in conn.summary() and "kernel" in conn.summary()


@pytest.mark.parametrize("policy, budget", [("rigl", "erk"), ("utility", "global"), ("set", "uniform")])
def test_controller_keeps_each_layer_structured_at_the_target_density(policy, budget):
    model = net()
    X, Y = torch.randn(64, 3, 6, 6), torch.randint(0, 4, (64,))
    conn = adaptive.Connectome(model, ensemble={"4": "neuron", "0": "kernel", "*": "synapse"})
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4)
    ctrl = adaptive.Controller(conn, opt, policy=policy, density=0.4, budget=budget, update_every=2, end_step=16,
                               edit_fraction=0.5, seed=0)
    for _ in range(16):
        F.cross_entropy(model(X), Y).backward()
        opt.step()
        opt.zero_grad()
        m4, m0 = conn.masks["4.weight"], conn.masks["0.weight"]
        assert bool((m4.all(1) | ~m4.any(1)).all())  # every neuron whole or gone
        assert bool((m0.flatten(2).all(2) | ~m0.flatten(2).any(2)).all())  # every kernel whole or gone
        for n, m in conn.masks.items():
            assert not bool(dict(model.named_parameters())[n][~m].any())  # invariant 1
    assert abs(conn.density() - 0.4) < 16 / conn.num_synapses() * 2  # within an ensemble or two (a neuron is 32)
    assert sum(e["pruned"] for e in ctrl.events) > 0


def test_save_load_and_state_dict_keep_the_rules(tmp_path):
    model = net()
    conn = adaptive.Connectome(model, ensemble="4=neuron;synapse")
    masks = {n: m.clone() for n, m in conn.masks.items()}
    masks["4.weight"][[1, 5]] = False
    masks["0.weight"][0, 0, 0, 0] = False
    conn.set_masks(masks)
    conn.save(tmp_path / "c.safetensors")
    back = adaptive.Connectome.load(tmp_path / "c.safetensors", net())
    assert back.ensemble == "4=neuron;synapse" and back.ensemble_specs() == conn.ensemble_specs()
    assert all(torch.equal(back.masks[n], conn.masks[n]) for n in NAMES)
    other = adaptive.Connectome(net(), ensemble="synapse")
    before = {n: m.clone() for n, m in other.masks.items()}
    with pytest.raises(ValueError, match=r"saved with ensemble '4=neuron;synapse'.*differ on \['4.weight'\]"):
        other.load_state_dict(conn.state_dict())
    assert all(torch.equal(other.masks[n], before[n]) for n in NAMES)  # nothing half-loaded
    same = adaptive.Connectome(net(), ensemble={"4.weight": "neuron", "*": "synapse"})  # other words, same layers
    same.load_state_dict(conn.state_dict())
    assert all(torch.equal(same.masks[n], conn.masks[n]) for n in NAMES)
    uniform = adaptive.Connectome(net(), ensemble="kernel")  # a file from before per-layer rules had no per-layer map
    sd = uniform.state_dict()
    assert "ensembles" not in sd
    with pytest.raises(ValueError, match="saved with ensemble 'kernel'"):
        other.load_state_dict(sd)


def test_mask_only_removes_whole_neurons_where_the_rules_say_so():
    torch.manual_seed(0)
    model = net().eval()
    g = torch.Generator().manual_seed(0)
    y = torch.arange(96) % 4
    x = torch.randn(96, 3, 6, 6, generator=g) + y.view(-1, 1, 1, 1).float() * 0.3
    tr = DataLoader(TensorDataset(x, y), batch_size=16, shuffle=True, generator=g)
    ho = DataLoader(TensorDataset(x[:32], y[:32]), batch_size=16)
    original = {n: p.detach().clone() for n, p in model.named_parameters()}
    r = optimize_connectome(model, tr, ho, 200, passes=1.0, window=2, edit_fraction=0.1, progress=False,
                            ensemble="4=neuron;synapse")
    m4 = r.conn.masks["4.weight"]
    assert bool((m4.all(1) | ~m4.any(1)).all())
    assert abs(r.snapshots["200"].removed - 200) <= 32  # within one ensemble (a neuron of 32 synapses)
    for n, p in model.named_parameters():  # invariant 2: no surviving weight moved by a bit
        keep = r.conn.masks[n] if n in r.conn.masks else torch.ones_like(p, dtype=torch.bool)
        assert torch.equal(p.detach()[keep], original[n][keep])


def test_under_a_global_budget_ensembles_of_different_sizes_compete_per_synapse():
    """A neuron of four weights of 0.5 sums to 2.0, more than a single weight of 1.0; ranked by that
    sum it would keep both neurons and empty the other layer. Per synapse, the large weights go first."""
    model = nn.Sequential(nn.Linear(4, 2, bias=False), nn.Linear(2, 4, bias=False))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[0.5] * 4, [0.4] * 4]))
        model[1].weight.copy_(torch.tensor([[1.0, 1.0], [1.0, 1.0], [0.1, 0.1], [0.1, 0.1]]))
    conn = adaptive.Connectome(model, ensemble="0=neuron;synapse")
    adaptive.Controller(conn, policy="magnitude", density=0.5, budget="global")
    assert conn.masks["0.weight"].tolist() == [[True] * 4, [False] * 4]
    assert conn.masks["1.weight"].tolist() == [[True, True], [True, True], [False, False], [False, False]]


@pytest.mark.parametrize("policy", ["set", "rigl", "utility", "balanced"])
def test_rewiring_under_a_global_budget_leaves_no_layer_empty(policy):
    import warnings

    model = net()
    X, Y = torch.randn(64, 3, 6, 6), torch.randint(0, 4, (64,))
    conn = adaptive.Connectome(model, ensemble="4=neuron;synapse")
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # "no live synapse left" would fail the test
        adaptive.Controller(conn, opt, policy=policy, density=0.3, budget="global", update_every=2, end_step=16,
                            edit_fraction=0.5, seed=0)
        for _ in range(16):
            F.cross_entropy(model(X), Y).backward()
            opt.step()
            opt.zero_grad()
    assert all(m.any() for m in conn.masks.values())
    assert abs(conn.density() - 0.3) <= 32 / conn.num_synapses()  # within one neuron


def test_mask_only_with_mixed_rules_keeps_every_layer_and_swaps():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(20, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 4)).eval()
    g = torch.Generator().manual_seed(0)
    y = torch.arange(192) % 4
    x = torch.randn(192, 20, generator=g) + y.view(-1, 1).float() * 0.3
    tr = DataLoader(TensorDataset(x, y), batch_size=16, shuffle=True, generator=g)
    ho = DataLoader(TensorDataset(x[:64], y[:64]), batch_size=32)
    r = optimize_connectome(model, tr, ho, 0.5, passes=2.0, progress=False, ensemble="2=neuron;synapse")
    dens = r.conn.layer_density()
    assert min(dens.values()) > 0.2, dens
    assert sum(e.get("grown", 0) for e in r.events if e.get("kind") == "update") > 0, "no swap at the goal"


def test_a_tied_weight_answers_to_every_name_it_has():
    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.enc, self.dec, self.out = nn.Linear(8, 8), nn.Linear(8, 8), nn.Linear(8, 3)
            self.dec.weight = self.enc.weight

        def forward(self, x):
            return self.out(self.dec(self.enc(x)))

    assert adaptive.Connectome(Tied(), include="dec").names == ["enc.weight"]  # as include/exclude see it
    conn = adaptive.Connectome(Tied(), ensemble="dec=neuron;synapse")
    assert conn.ensemble_specs() == {"enc.weight": "neuron", "out.weight": "synapse"}


def test_crawl_threshold_mode_takes_every_ensemble_that_clears_the_margin_whatever_its_size():
    """20 single weights whose removal gains 0.05 each (under the margin) and one 48-synapse neuron
    whose removal gains 0.96 (0.02 per synapse): only the neuron clears the margin of 0.1, though
    per synapse it ranks last."""
    import warnings

    m = nn.Sequential(nn.Linear(10, 2), nn.Linear(48, 1))
    conn = adaptive.Connectome(m, ensemble="1=neuron;synapse", mode="mask_only")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ctrl = adaptive.Controller(conn, None, policy="crawl", update_every=1)
    ctrl.policy.edit_fraction, ctrl.policy.margin = 0.5, 0.1
    cost = {"0.weight": torch.full((2, 10), -0.05), "1.weight": torch.full((1, 1), -0.96)}
    ctrl.scores = lambda side, step=None, names=None: cost if side == "cost" else {
        k: torch.zeros_like(v) for k, v in cost.items()}
    plan = ctrl.policy.update(ctrl, 1)
    assert {k: v.tolist() for k, v in plan.prune.items() if v.numel()} == {"1.weight": [0]}


@pytest.mark.parametrize("budget", ["uniform", "global"])
def test_random_init_keeps_blocks_of_every_size_alike(budget):
    """block:4x4 on a 10x10 weight has blocks of 16, 8 and 4 synapses: a random start keeps each
    with the same chance (about the density), whatever its size."""
    kept = torch.zeros(3, 3)
    for seed in range(120):
        conn = adaptive.Connectome(nn.Linear(10, 10), ensemble="block:4x4")
        adaptive.Controller(conn, policy="set", density=0.5, budget=budget, init="random", seed=seed, end_step=10)
        kept += conn.ensemble_masks()["weight"].float()
    p = kept / 120
    assert float(p.min()) > 0.3 and float(p.max()) < 0.7, p


def test_block_rules_on_attention_make_one_ensemble_per_head_projection():
    """README: on nn.MultiheadAttention, block:(head size)x(embedding) is one head's query, key or
    value projection."""
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(32, 2, batch_first=True)
    conn = adaptive.Connectome(nn.ModuleDict({"attn": mha}), ensemble="*in_proj_weight=block:16x32;synapse")
    em = conn.ensemble_masks()["attn.in_proj_weight"]
    assert tuple(em.shape) == (6, 1)  # q, k, v for each of 2 heads
    off = em.clone()
    off[4] = False  # the value projection of head 0 (rows 64-79)
    conn.set_ensemble_masks({"attn.in_proj_weight": off})
    dead = (~conn.masks["attn.in_proj_weight"]).all(1).nonzero().squeeze(1)
    assert dead.tolist() == list(range(64, 80))


def _first_rule_in_order(rules, known):
    """The rule ``resolve`` gives a layer, found as the rules read: each tried in turn, first match wins."""
    import fnmatch
    return next((i for i, (pat, _) in enumerate(rules)
                 if pat is None or any(fnmatch.fnmatchcase(k, pat) for k in known if k)), len(rules))


def test_the_first_matching_rule_is_the_one_read_in_order_whatever_mix_of_exact_and_wildcard_patterns():
    from adaptive.ensemble_rules import _FirstMatch
    g = torch.Generator().manual_seed(0)
    names = ["weight", "fc.weight", "a*b.weight", "a?b.weight", "x[1].weight", "blocks.1.fc.weight",
             "blocks.12.fc.weight", "blocks.2.attn.weight", "[.weight"]
    pool = [None, "fc", "fc.weight", "a[*]b", "a[?]b.weight", "a*b", "x[[]1]", "x[1]", "blocks.1?.fc", "*.fc",
            "blocks.[12]*", "*attn*", "weight", "[[].weight", "nothing", "blocks.2.attn", "*"]
    for _ in range(300):
        k = int(torch.randint(1, 7, (1,), generator=g))
        picks = torch.randint(len(pool), (k,), generator=g).tolist()
        rules = [(pool[i] if pool[i] != "*" else None, None) for i in picks]
        first = _FirstMatch(rules)
        for n in names:
            known = (n, n.rpartition(".")[0])
            assert first(known) == _first_rule_in_order(rules, known), (rules, n)


def test_rules_naming_each_layer_are_looked_up_not_matched_against_every_layer(monkeypatch):
    import fnmatch

    from adaptive import ensemble_rules
    from adaptive.name_patterns import escape
    calls = []
    real = fnmatch.fnmatchcase
    monkeypatch.setattr(ensemble_rules.fnmatch, "fnmatchcase", lambda n, p: calls.append(p) or real(n, p))
    names = [f"blocks.{i}.fc.weight" for i in range(300)]
    rules = {escape(n): ("neuron" if i % 2 else "synapse") for i, n in enumerate(names)}
    rules["*.fc"] = "kernel"  # a wildcard after every exact rule: never reached
    with pytest.raises(ValueError, match=r"\['\*\.fc'\] match no prunable layer"):
        resolve(rules, names)
    del rules["*.fc"]
    per_layer, spec = resolve(rules, names)
    assert [per_layer[n].spec for n in names] == ["neuron" if i % 2 else "synapse" for i in range(300)]
    assert spec.split(";")[:2] == ["blocks.0.fc.weight=synapse", "blocks.1.fc.weight=neuron"]
    assert calls == []  # was 45,150 fnmatchcase calls: every rule before a layer's own, for each layer
