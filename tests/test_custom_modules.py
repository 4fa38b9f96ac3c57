"""Custom architectures through the public API: weight tying, the meta device, integer (token)
inputs and non-tensor outputs, in the connectome, the graph and compaction."""
import re
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import adaptive
import graphs


class TiedHead(nn.Module):
    """A language-model head tied to the embedding (same tensor, two modules)."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(10, 16)
        self.mid = nn.Linear(16, 16)
        self.head = nn.Linear(16, 10, bias=False)
        self.head.weight = self.emb.weight

    def forward(self, x):
        return self.head(F.relu(self.mid(self.emb(x).mean(1))))


class TiedLinears(nn.Module):
    """Two Linear layers sharing one weight."""

    def __init__(self):
        super().__init__()
        self.a = nn.Linear(12, 12)
        self.b = nn.Linear(12, 12)
        self.b.weight = self.a.weight
        self.fc = nn.Linear(12, 10)

    def forward(self, x):
        return self.fc(F.relu(self.b(F.relu(self.a(x)))))


class Tokens(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(50, 16)
        self.a = nn.Linear(16, 16)
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        return self.fc(F.relu(self.a(self.emb(x).mean(1))))


class DictOut(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(12, 16)
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        h = F.relu(self.a(x))
        return {"logits": self.fc(h), "feat": h}


def _half(conn, seed=0):
    g = torch.Generator().manual_seed(seed)
    conn.set_masks({n: torch.rand(m.shape, generator=g) < 0.5 for n, m in conn.masks.items()})


def test_tied_embedding_head_saves_and_loads(tmp_path):
    torch.manual_seed(0)
    model = TiedHead()
    conn = adaptive.Connectome(model)
    _half(conn)
    conn.save(tmp_path / "c.safetensors")
    # the saved name of the tied weight ("head.weight") is not the first name PyTorch gives it
    back = adaptive.Connectome.load(tmp_path / "c.safetensors", model)
    assert back.mask_hash() == conn.mask_hash()
    sd = conn.dense_state_dict()
    assert torch.equal(sd["emb.weight"], sd["head.weight"])  # both names of the tied tensor masked alike


def test_tied_weight_answers_to_every_name_in_include_exclude():
    kept = adaptive.Connectome(TiedLinears(), include="b")
    assert kept.names == ["a.weight"]  # b holds a's weight: selecting b selects it
    assert adaptive.Connectome(TiedLinears(), exclude="b").names == ["fc.weight"]  # b's weight left dense
    assert adaptive.Connectome(TiedHead(), exclude="emb").names == ["mid.weight"]  # embedding untouched


def test_meta_device_model_is_refused_up_front():
    with torch.device("meta"):
        model = TiedLinears()
    with pytest.raises(ValueError, match="meta.*to_empty"):
        adaptive.Connectome(model)


def test_meta_mask_is_refused_and_nothing_changes():
    model = TiedLinears()
    conn = adaptive.Connectome(model)
    before = conn.mask_hash()
    bad = {"a.weight": torch.zeros(12, 12, dtype=torch.bool), "fc.weight": torch.ones(10, 12, dtype=torch.bool, device="meta")}
    with pytest.raises(ValueError, match="meta"):
        conn.set_masks(bad)
    assert conn.mask_hash() == before


def test_graph_of_tied_linears_reads_the_shared_mask():
    torch.manual_seed(0)
    conn = adaptive.Connectome(TiedLinears())
    _half(conn)
    g = graphs.build(conn, level="unit", example_input=torch.randn(2, 12))
    dens = graphs.density_per_layer(g)
    expect = conn.layer_density()["a.weight"]
    assert dens["a"] == pytest.approx(expect) and dens["b"] == pytest.approx(expect)


def test_compact_takes_token_inputs():
    torch.manual_seed(0)
    model = Tokens().eval()
    conn = adaptive.Connectome(model, ensemble="neuron")
    conn.set_ensemble_masks({"a.weight": torch.arange(16) % 2 == 0})  # half of a's units have no input
    x = torch.randint(0, 50, (4, 5))
    small = graphs.compact(model, conn, x)
    assert small.compaction["params_after"] < small.compaction["params_before"]
    with torch.no_grad():
        torch.testing.assert_close(small(x), model(x))


def test_compact_keeps_a_tied_weight_tied():
    torch.manual_seed(0)
    model = TiedHead().eval()
    conn = adaptive.Connectome(model, ensemble="neuron")
    conn.set_ensemble_masks({"mid.weight": torch.arange(16) % 3 != 0, "head.weight": torch.ones(10, dtype=torch.bool)})
    x = torch.randint(0, 10, (4, 5))
    small = graphs.compact(model, conn, x)
    assert small.compaction["params_after"] <= small.compaction["params_before"]
    assert small.head.weight is small.emb.weight
    with torch.no_grad():
        torch.testing.assert_close(small(x), model(x))


def test_compact_verifies_dict_outputs():
    torch.manual_seed(0)
    model = DictOut().eval()
    conn = adaptive.Connectome(model)
    _half(conn)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        small = graphs.compact(model, conn, torch.randn(4, 12))
    assert small.compaction["max_abs_diff"] <= 1e-5


def test_compact_does_not_slice_tied_linears_apart():
    torch.manual_seed(0)
    model = TiedLinears().eval()
    conn = adaptive.Connectome(model, ensemble="neuron")
    conn.set_ensemble_masks({"a.weight": torch.arange(12) % 3 != 0, "fc.weight": torch.ones(10, dtype=torch.bool)})
    x = torch.randn(4, 12)
    small = graphs.compact(model, conn, x)
    assert small.b.weight is small.a.weight  # one tensor, one shape: a and b cannot lose different units
    assert small.compaction["params_after"] <= small.compaction["params_before"]
    with torch.no_grad():
        torch.testing.assert_close(small(x), model(x))


def test_growing_into_a_frozen_layer_is_refused():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 4), nn.ReLU(), nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 64))
    model[0].weight.requires_grad_(False)
    conn = adaptive.Connectome(model)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    with pytest.raises(ValueError, match=r"frozen \(requires_grad=False\).*exclude=.*protect="):
        adaptive.Controller(conn, opt, policy="rigl", density=0.3, update_every=5, end_step=50)
    assert all(bool(m.all()) for m in conn.masks.values())  # refused before any edit
    # protecting the frozen layer (or a policy that never grows) is fine
    adaptive.Controller(conn, opt, policy="rigl", density=0.3, update_every=5, end_step=50, protect="0")
    adaptive.Controller(adaptive.Connectome(model), opt, policy="gmp", density=0.3, update_every=5, end_step=50)


def test_the_frozen_layer_error_says_what_growth_would_do_and_names_a_fix_that_works():
    """It said grown synapses 'would stay 0.0 forever' under every grow_init (grow_init='random' or
    'original' starts them elsewhere), cut the names after 3 with no count and named no pattern to pass."""
    torch.manual_seed(0)
    model = nn.Sequential(*[nn.Linear(4, 4) for _ in range(6)], nn.Linear(4, 3))
    conn = adaptive.Connectome(model)
    for i in (0, 1):
        model[i].weight.requires_grad_(False)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    kw = dict(policy="rigl", density=0.3, update_every=5, end_step=50)
    with pytest.raises(ValueError, match=r"2 layer\(s\) are frozen.*: 0.weight, 1.weight\. .* stay at its "
                                         r"grow_init='random' value\. .*exclude=\['0.weight', '1.weight'\]") as e:
        adaptive.Controller(conn, opt, grow_init="random", **kw)
    assert "0.0" not in str(e.value)
    with pytest.raises(ValueError, match=r"stay at 0\.0 \(grow_init='zero'\), counted live"):
        adaptive.Controller(conn, opt, **kw)
    adaptive.Controller(adaptive.Connectome(model, exclude=["0.weight", "1.weight"]), opt, **kw)  # the fix named
    for i in range(6):
        model[i].weight.requires_grad_(False)
    with pytest.raises(ValueError, match=r"6 layer\(s\) are frozen .*: 0.weight, 1.weight, 2.weight, 3.weight and 2 more\."):
        adaptive.Controller(adaptive.Connectome(model), opt, **kw)



def test_an_optimizer_of_the_trainable_parameters_beside_a_connectome_of_frozen_layers_is_told_why():
    """A connectome whose weights are all frozen (a fine-tuning setup: a frozen backbone, a head read with
    F.linear on a Parameter of its own, which stays dense) and the usual optimizer over the trainable
    parameters: the refusal said 'build it from model.parameters()', which does not help (the optimizer then
    holds the frozen weights and never steps them). It names the frozen weights and the fixes that work."""
    torch.manual_seed(0)

    class Frozen(nn.Module):
        def __init__(self):
            super().__init__()
            self.backbone = nn.Sequential(nn.Linear(8, 8), nn.ReLU())
            self.head = nn.Parameter(torch.randn(3, 8))
            self.backbone.requires_grad_(False)

        def forward(self, x):
            return F.linear(self.backbone(x), self.head)

    model = Frozen()
    with pytest.warns(UserWarning, match="stay dense: head"):
        conn = adaptive.Connectome(model)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    with pytest.raises(ValueError, match=r"none of this connectome's weights: they are all frozen \(requires_grad="
                                         r"False: \['backbone.0.weight'\]\).*requires_grad_\(True\).*exclude=.*"
                                         r"Controller\(conn, policy='magnitude'"):
        adaptive.Controller(conn, opt, policy="magnitude", density=0.5)
    with pytest.raises(ValueError, match=r"none of this connectome's weights: they are all frozen"):
        conn.attach(opt)
    assert conn.num_live() == conn.num_synapses()  # refused before any edit
    adaptive.Controller(conn, policy="magnitude", density=0.5)  # the fix named for pruning them as they are
    assert conn.num_live() == 32 and int((model.backbone[0].weight == 0).sum()) == 32
    other = torch.optim.SGD(nn.Linear(8, 8).parameters(), lr=0.1)  # not frozen: another model's optimizer
    with pytest.raises(ValueError, match=r"none of this connectome's weights \(\['0.weight'\]\): build it "
                                         r"from model.parameters\(\) of the model the Connectome was built on"):
        adaptive.Connectome(nn.Sequential(nn.Linear(8, 8))).attach(other)


def test_a_frozen_layer_is_not_scored_by_a_gradient_it_never_gets():
    """A frozen weight (requires_grad=False) gets no gradient, so an estimator built from gradients
    scored its synapses at 0 and the global budget pruned that layer first, silently (at density 0.5,
    layer 0 went to 25% live and layer 2 stayed whole). The first observation naming it is refused, before the
    window or the masks change, naming the fixes; protected, it is never scored."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    model[0].weight.requires_grad_(False)
    x, y = torch.randn(32, 8), torch.randint(0, 4, (32,))

    def run(conn, steps=5, **kw):
        opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
        ctrl = adaptive.Controller(conn, opt, policy="magnitude", estimator="curvature", density=0.8, budget="global",
                                   update_every=steps, end_step=steps, **kw)
        for _ in range(steps):
            F.cross_entropy(model(x), y).backward()
            opt.step()
            opt.zero_grad()
        return ctrl

    conn = adaptive.Connectome(model)
    before = model[2].weight.detach().clone()
    with pytest.raises(ValueError, match=r"1 layer\(s\) of the connectome are frozen \(requires_grad=False\): 0\.weight\. "
                                         r".*estimator 'curvature' would score every synapse there at 0.*"
                                         r"protect=\['0\.weight'\].*exclude=\['0\.weight'\].*requires_grad_\(True\)"):
        run(conn)
    assert all(bool(m.all()) for m in conn.masks.values()) and torch.equal(model[2].weight, before)  # no step, no edit
    conn.detach()
    ctrl = run(adaptive.Connectome(model), protect="0")
    assert ctrl.conn.layer_density()["0.weight"] == 1.0 and ctrl.conn.num_live() == round(0.8 * 192)
    ctrl.conn.detach()
    # mask_only, driven by hand: the fix named there (the weights require grad, and still never change)
    conn = adaptive.Connectome(model, mode="mask_only")
    ctrl = adaptive.Controller(conn, policy="utility", estimator="curvature", density=0.5, update_every=2, end_step=2)
    F.cross_entropy(model(x), y).backward()
    with pytest.raises(ValueError, match=r"frozen.*in mask_only mode the weights never change"):
        ctrl.observe()
    assert ctrl.stats.count == 0


def test_a_layer_frozen_after_a_one_shot_prune_is_not_refused():
    """The magnitude policy edits nothing after its one prune (and observes nothing since): freezing
    a layer for the fine-tuning after it raised the frozen-layer error at the next step. Frozen
    before the prune, it is still refused."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    x, y = torch.randn(32, 8), torch.randint(0, 4, (32,))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    ctrl = adaptive.Controller(adaptive.Connectome(model), opt, policy="magnitude", estimator="taylor", density=0.5,
                               update_every=3, end_step=3)

    def train(steps):
        for _ in range(steps):
            F.cross_entropy(model(x), y).backward()
            opt.step()
            opt.zero_grad()

    train(3)
    assert ctrl.policy.done and ctrl.events[0]["pruned"] > 0
    masks = {n: m.clone() for n, m in ctrl.conn.masks.items()}
    model[0].weight.requires_grad_(False)  # the first layer frozen for the fine-tuning
    frozen = model[0].weight.detach().clone()
    train(3)
    assert all(torch.equal(ctrl.conn.masks[n], m) for n, m in masks.items()) and torch.equal(model[0].weight, frozen)
    ctrl.conn.detach()
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    adaptive.Controller(adaptive.Connectome(model), opt, policy="magnitude", estimator="taylor", density=0.5,
                        update_every=3, end_step=3)
    with pytest.raises(ValueError, match=r"frozen \(requires_grad=False\): 0\.weight"):
        train(1)


class LogitsInDict(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(6, 3)

    def forward(self, x):
        return {"logits": self.fc(x)}


def test_mask_only_names_a_model_that_returns_a_dict():
    torch.manual_seed(0)
    model = LogitsInDict()
    before = model.fc.weight.clone()
    data = [(torch.randn(8, 6), torch.randint(0, 3, (8,))) for _ in range(3)]
    with pytest.raises(TypeError, match="returns the logits.*|returned a dict: wrap it"):
        adaptive.optimize_connectome(model, data, data, target=0.2, progress=False)
    assert torch.equal(model.fc.weight, before)
    with pytest.raises(TypeError, match="returned a dict"):
        adaptive.mask_only.evaluate(model, data)


def test_mask_only_refuses_a_fixed_density_ensemble():
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 3))
    data = [(torch.randn(4, 8), torch.randint(0, 3, (4,)))]
    with pytest.raises(ValueError, match="'2:4' fixes the density at 0.5.*use 'synapse'"):
        adaptive.optimize_connectome(model, data, data, target=0.2, ensemble="2:4", progress=False)


def test_protect_takes_any_name_of_a_tied_weight():
    """A weight tied between two Linears is reported under the first name (a.weight), but protect=, as
    include/exclude and the ensemble rules, takes any name that holds it: "b" protects it."""
    torch.manual_seed(0)
    model = TiedLinears()
    conn = adaptive.Connectome(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    ctrl = adaptive.Controller(conn, opt, policy="set", density=0.7, budget="uniform", update_every=1, protect="b")
    assert ctrl.protected == ["a.weight"]
    for _ in range(3):
        model(torch.randn(4, 12)).pow(2).mean().backward(); opt.step(); opt.zero_grad()
    assert bool(conn.masks["a.weight"].all()) and conn.masks["fc.weight"].float().mean() < 0.6


def test_a_tied_weight_protected_by_its_second_name_is_never_edited_by_any_policy():
    """protect="b,b.weight" (b.weight = a.weight) under every registered policy, in both modes: the tied weight's
    mask never changes, and it counts once in the budget (144 synapses of 264: density 0.6 leaves room)."""
    from adaptive.policies import policy_names

    for mode in ("train", "mask_only"):
        for policy in policy_names():
            torch.manual_seed(0)
            model = TiedLinears()
            conn = adaptive.Connectome(model, mode=mode)
            opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
            ctrl = adaptive.Controller(conn, opt, policy=policy, density=0.6, update_every=1, end_step=4, protect="b,b.weight")
            assert ctrl.protected == ["a.weight"], (mode, policy)
            for _ in range(4):
                model(torch.randn(4, 12)).pow(2).mean().backward(); opt.step(); opt.zero_grad()
            assert bool(conn.masks["a.weight"].all()), (mode, policy)
            assert conn.masks["fc.weight"].float().mean() < 0.5, (mode, policy)  # the rest was edited


@pytest.mark.parametrize("change", ["parametrization", "assign"])
def test_graphs_and_diagnostics_refuse_a_connectome_whose_weights_the_model_no_longer_uses(change):
    """A parametrization registered after the Connectome was built (the layer's weight now computed from it,
    unmasked), or load_state_dict(assign=True) (new Parameters): the connectome's own readers refused it, but
    graphs.build drew the layer with its stale masks, as pruned as before, while the model computed it dense;
    graphs.compact failed with a bare KeyError '0.weight'; collinearity measured it, and knowledge_distribution
    said the pruned weights were left out by include/exclude. Each now gives the connectome's refusal and fix."""
    from adaptive.diagnostics import collinearity, gradient_by_depth, knowledge_distribution

    class Sym(nn.Module):
        def forward(self, w):
            return w.triu() + w.triu(1).t()

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 3))
    conn = adaptive.Connectome(model)
    conn.set_masks({"0.weight": torch.rand(8, 8) < 0.5})
    if change == "parametrization":
        torch.nn.utils.parametrize.register_parametrization(model[0], "weight", Sym())
        fix = r"\['0.weight'\] are no longer the ones this Connectome masks.*parametrization.*remove_parametrizations"
    else:
        model.load_state_dict({k: v.clone() for k, v in model.state_dict().items()}, assign=True)
        fix = r"\['0.weight', '2.weight'\] are no longer the ones this Connectome masks.*assign=True.*new Connectome"
    x = torch.randn(4, 8)
    data = [(torch.randn(8, 8), torch.randint(0, 3, (8,))) for _ in range(2)]
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    for call in (lambda: graphs.build(conn, example_input=x), lambda: graphs.compact(model, conn, x),
                 lambda: collinearity(model, data, conn=conn),
                 lambda: gradient_by_depth(model, data, layer="2", batches=1, conn=conn, depths=torch.zeros(8)),
                 lambda: knowledge_distribution(model, data, order_loader=data, points=3, conn=conn)):
        with pytest.raises(RuntimeError, match=fix):
            call()
    assert all(torch.equal(before[n], p) for n, p in model.named_parameters())
    if change == "parametrization":
        torch.nn.utils.parametrize.remove_parametrizations(model[0], "weight")  # the fix: the same Parameter back
        assert graphs.build(conn, example_input=x).live_synapses() == conn.num_live()


class _BareWeights(nn.Module):
    """A convolution and a matrix product on Parameters of the model's own (no nn.Conv2d or nn.Linear)."""

    def __init__(self, conv: bool):
        super().__init__()
        self.conv = conv
        self.first = nn.Conv2d(3, 8, 3, padding=1) if conv else nn.Linear(6, 8)
        self.w = nn.Parameter(torch.randn(8, 8, 1, 1) if conv else torch.randn(8, 5))
        self.head = nn.Linear(8 if conv else 5, 3)

    def forward(self, x):
        h = F.relu(self.first(x))
        if self.conv:
            return self.head(F.relu(F.conv2d(h, self.w)).mean((2, 3)))
        return self.head(F.relu(h @ self.w))


@pytest.mark.parametrize("conv", [True, False])
def test_compact_says_why_dead_units_read_by_a_bare_weight_stay(conv):
    """Dead units feeding F.conv2d(h, self.w) or h @ self.w on a Parameter of the model's own stay (no layer
    to shrink): graphs.compact kept them with no word (params_before == params_after beside summary()'s dead
    units), where F.linear on such a weight is warned of. It names the node and the weight, and the fix."""
    torch.manual_seed(0)
    model = _BareWeights(conv)
    with pytest.warns(UserWarning, match="stay dense: w"):
        conn = adaptive.Connectome(model, ensemble="neuron")
    conn.set_ensemble_masks({"first.weight": torch.tensor([1, 0, 1, 1, 0, 1, 1, 1], dtype=torch.bool)})
    x = torch.randn(2, 3, 6, 6) if conv else torch.randn(4, 6)
    with pytest.warns(UserWarning, match="cannot follow the data flow"):
        assert graphs.summary(graphs.build(conn, example_input=x))["dead"]["dead"] == 2
    said = (r"node 'conv2d' .* reads 'w', a parameter of the model's own that no convolution module holds: the channels "
            r"it reads and writes keep their size \(dead units .* an nn.Conv1d/2d/3d" if conv else
            r"node 'matmul' .* reads 'w', a parameter of the model's own that no nn.Linear module holds: the channels it "
            r"reads and writes keep their size \(dead units .* an nn.Linear")
    with pytest.warns(UserWarning, match="graphs.compact: " + said):
        small = graphs.compact(model.eval(), conn, x)
    assert small.compaction["params_after"] == small.compaction["params_before"]
    with warnings.catch_warnings():  # held in a layer of its own, the same weight is no bare parameter: no warning
        warnings.simplefilter("error")
        graphs.compact(nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 5)).eval(), None, torch.randn(4, 6))


def test_compact_warns_once_per_bare_weight_where_dead_units_stay_and_follows_its_views():
    """A loop unrolled by the trace (z[:, t] @ self.wh at every step) gave one warning per step, each naming the
    same weight; a transposed bare weight (z @ self.wo.t()) gave none, its dead units kept with no word; a buffer
    was called a parameter; and every bare weight was warned of at every call, with no dead unit anywhere. One
    warning per tensor where dead units stay, naming the nodes that read it and what it is."""
    class Unrolled(nn.Module):
        def __init__(self):
            super().__init__()
            self.inp = nn.Linear(4, 8)
            self.wh = nn.Parameter(torch.randn(8, 8))
            self.wo = nn.Parameter(torch.randn(8, 8))
            self.register_buffer("mix", torch.randn(8, 8))
            self.head = nn.Linear(8, 2)

        def forward(self, x):
            z = F.relu(self.inp(x))
            acc = z[:, 0] @ self.wh
            for t in range(1, 6):
                acc = acc + z[:, t] @ self.wh
            return self.head(acc + z.mean(1) @ self.wo.t() + z.amax(1) @ self.mix)

    torch.manual_seed(0)
    model = Unrolled().eval()
    x = torch.randn(2, 6, 4)
    with pytest.warns(UserWarning, match="stay dense"):
        conn = adaptive.Connectome(model, ensemble="neuron")
    with warnings.catch_warnings(record=True) as said:  # nothing dead: nothing to say
        warnings.simplefilter("always")
        graphs.compact(model, conn, x)
    assert not [str(w.message) for w in said if "of the model's own" in str(w.message)]
    conn.set_ensemble_masks({"inp.weight": torch.tensor([1, 0, 1, 1, 1, 1, 1, 1], dtype=torch.bool)})
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        small = graphs.compact(model, conn, x)
    assert small.compaction["params_after"] == small.compaction["params_before"]
    bare = [str(w.message) for w in said if "of the model's own" in str(w.message)]
    assert len(bare) == 3, bare
    said = {t: next(m for m in bare if f"read {t!r}" in m or f"reads {t!r}" in m) for t in ("wh", "wo", "mix")}
    assert re.search(r"nodes 'matmul' .* \.\.\. \(6 in all\) read 'wh', a parameter of the model's own .* keep "
                     r"their size \(dead units feeding it included\); hold the weight in an nn.Linear", said["wh"])
    assert re.search(r"node 'matmul_6' .* reads 'wo', a parameter of the model's own", said["wo"])
    assert re.search(r"node 'matmul_7' .* reads 'mix', a buffer of the model's own", said["mix"])


@pytest.mark.parametrize("op", ["addmm", "tensordot", "addmm_method"])
def test_compact_warns_of_dead_units_read_by_a_bare_weight_through_the_other_matrix_products(op):
    """The other matrix products graphs follows (torch.addmm(self.b, h, self.w), torch.tensordot, self.b.addmm(h, self.w)) on a
    parameter of the model's own keep the dead units feeding them as h @ self.w does, but compact said nothing
    of them (the bare-weight warning knew matmul, mm, bmm and einsum only). The added input of an add* product (a
    bias) is not named as a weight."""
    class Bare(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(6, 8)
            self.w = nn.Parameter(torch.randn(8, 4))
            self.b = nn.Parameter(torch.randn(4))

        def forward(self, x):
            h = torch.relu(self.fc(x))
            if op == "addmm":
                return torch.addmm(self.b, h, self.w)
            if op == "tensordot":
                return torch.tensordot(h, self.w, dims=1) + self.b
            return self.b.addmm(h, self.w)

    torch.manual_seed(0)
    model = Bare().eval()
    with pytest.warns(UserWarning, match="stay dense"):
        conn = adaptive.Connectome(model, ensemble="neuron")
    conn.set_ensemble_masks({"fc.weight": torch.tensor([1, 0, 1, 1, 0, 1, 1, 1], dtype=torch.bool)})
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        small = graphs.compact(model, conn, torch.randn(3, 6))
    assert small.compaction["params_after"] == small.compaction["params_before"]
    bare = [str(w.message) for w in said if "of the model's own" in str(w.message)]
    assert len(bare) == 1 and "'w', a parameter of the model's own" in bare[0], bare
    assert "hold the weight in an nn.Linear" in bare[0]


def test_compact_does_not_blame_a_bare_weight_for_dead_units_that_only_feed_an_add_products_added_input():
    """torch.addmm(g, h, self.w) adds g to the product: g's dead units stay because the sum's channels do, whatever
    holds self.w, so the bare-weight warning (which looks at the units a product multiplies) says nothing of them;
    it named 'w' when dead units of g alone were kept."""
    class Added(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(6, 8)
            self.side = nn.Linear(6, 4)
            self.w = nn.Parameter(torch.randn(8, 4))
            self.head = nn.Linear(4, 2)

        def forward(self, x):
            return self.head(torch.addmm(torch.relu(self.side(x)), torch.relu(self.fc(x)), self.w))

    torch.manual_seed(0)
    model = Added().eval()
    with pytest.warns(UserWarning, match="stay dense"):
        conn = adaptive.Connectome(model, ensemble="neuron")
    conn.set_ensemble_masks({"side.weight": torch.tensor([1, 0, 1, 1], dtype=torch.bool)})
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        graphs.compact(model, conn, torch.randn(3, 6))
    assert not [str(w.message) for w in said if "of the model's own" in str(w.message)]


def test_compact_says_why_a_tied_layer_keeps_its_dead_units():
    """A convolutional autoencoder whose decoder is tied to its encoder (dec.weight = enc.weight: a Conv2d and a
    ConvTranspose2d store the same (8, 3, k, k) tensor): pruned encoder channels are dead units, which compact
    kept with no word (one tensor cannot be cut two ways). It names the layer, the count and the tie."""
    class ConvAE(nn.Module):
        def __init__(self):
            super().__init__()
            self.enc = nn.Conv2d(3, 8, 3, padding=1)
            self.dec = nn.ConvTranspose2d(8, 3, 3, padding=1)
            self.dec.weight = self.enc.weight

        def forward(self, x):
            return self.dec(torch.relu(self.enc(x)))

    torch.manual_seed(0)
    model = ConvAE().eval()
    conn = adaptive.Connectome(model, ensemble="neuron")
    conn.set_ensemble_masks({"enc.weight": torch.tensor([1, 0, 1, 1, 0, 1, 1, 1], dtype=torch.bool)})
    x = torch.randn(2, 3, 6, 6)
    with pytest.warns(UserWarning, match=r"graphs.compact: layer 'enc' keeps 2 constant \(dead\) unit\(s\): its weight "
                                         r"is tied to 'dec'.*untie them"):
        small = graphs.compact(model, conn, x)
    assert small.compaction["params_after"] == small.compaction["params_before"]
    with torch.no_grad():
        torch.testing.assert_close(small(x), model(x))


def test_compact_does_not_blame_a_tie_for_dead_units_that_would_stay_untied():
    """A language model's head tied to its embedding (lm_head.weight = wte.weight) with vocabulary rows pruned:
    their logits are constant, but they are the model's outputs, which stay tied or not. The warning said
    'untie them ... to have them compacted', a fix that compacts nothing; it is kept for units the tie alone
    keeps (the encoder of a tied autoencoder, above). A hidden layer tied beside it is still named."""
    class TinyLM(nn.Module):
        def __init__(self, tie_hidden: bool):
            super().__init__()
            self.wte = nn.Embedding(10, 8)
            self.fc = nn.Linear(8, 8)
            self.back = nn.Linear(8, 8)
            if tie_hidden:
                self.back.weight = self.fc.weight
            self.lm_head = nn.Linear(8, 10, bias=False)
            self.lm_head.weight = self.wte.weight

        def forward(self, i):
            return self.lm_head(torch.relu(self.back(torch.relu(self.fc(self.wte(i))))))

    torch.manual_seed(0)
    i = torch.randint(0, 10, (2, 5))
    vocab = torch.tensor([1, 0, 1, 1, 1, 1, 1, 1, 0, 1], dtype=torch.bool)
    model = TinyLM(tie_hidden=False).eval()
    conn = adaptive.Connectome(model, ensemble="neuron")
    conn.set_ensemble_masks({"lm_head.weight": vocab})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        small = graphs.compact(model, conn, i)
    assert small.compaction["removed"]["lm_head"] == 0
    model = TinyLM(tie_hidden=True).eval()
    conn = adaptive.Connectome(model, ensemble="neuron")
    conn.set_ensemble_masks({"lm_head.weight": vocab, "fc.weight": torch.tensor([1, 0, 1, 1, 1, 1, 1, 1],
                                                                                dtype=torch.bool)})
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        graphs.compact(model, conn, i)
    tied = sorted(str(w.message) for w in said if "is tied to" in str(w.message))  # back's row 1 is fc's, pruned
    assert len(tied) == 2, tied
    assert "layer 'back' keeps 1 constant (dead) unit(s): its weight is tied to 'fc'" in tied[0]
    assert "layer 'fc' keeps 1 constant (dead) unit(s): its weight is tied to 'back'" in tied[1]


def test_compact_keeps_channels_scaled_by_a_tensor_of_the_models_own_as_the_graphs_page_says():
    """docs/graphs.md: channels scaled or shifted by a tensor of the model's own along them (`h * self.gamma +
    self.shift`, held in a ParameterList and a ParameterDict here) stay as they are, dead ones included; the copy
    still computes what the masked model computes."""
    class Scaled(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.ModuleDict({"a": nn.Linear(6, 8)})
            self.gamma = nn.ParameterList([nn.Parameter(torch.rand(8) + 0.5)])
            self.shift = nn.ParameterDict({"b": nn.Parameter(torch.randn(8))})
            self.head = nn.Linear(8, 3)

        def forward(self, x):
            return self.head(torch.relu(self.fc["a"](x)) * self.gamma[0] + self.shift["b"])

    torch.manual_seed(0)
    model = Scaled().eval()
    conn = adaptive.Connectome(model, ensemble="neuron")
    conn.set_ensemble_masks({"fc.a.weight": torch.tensor([1, 0, 1, 1, 0, 1, 1, 1], dtype=torch.bool)})
    x = torch.randn(4, 6)
    assert graphs.summary(graphs.build(conn, example_input=x))["dead"]["dead"] == 2
    small = graphs.compact(model, conn, x)
    assert small.compaction["params_after"] == small.compaction["params_before"]
    assert small.compaction["removed"] == {"fc.a": 0, "head": 0}
    with torch.no_grad():
        torch.testing.assert_close(small(x), model(x))


def test_a_mask_only_connectome_of_frozen_layers_is_told_a_fix_of_its_mode():
    """In mask_only mode the refusal of an optimizer holding none of the (frozen) weights said 'unfreeze the
    layers to train and prune', though weights never train there: it names the fixes of that mode instead."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 3))
    for m in (model[0], model[2]):
        m.weight.requires_grad_(False)
    conn = adaptive.Connectome(model, mode="mask_only")
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)  # the biases
    with pytest.raises(ValueError, match=r"all frozen .*in mask_only mode no optimizer steps them.*Controller "
                                         r"without an optimizer.*mask_learning") as err:
        conn.attach(opt)
    assert "to train and prune" not in str(err.value)
    assert conn.num_live() == conn.num_synapses() and not conn._optimizers  # nothing attached
    ctrl = adaptive.Controller(conn, policy="magnitude", density=0.5)  # the fix named
    assert ctrl.optimizer is None and conn.num_live() == conn.num_synapses() // 2
