"""Discovery: which weights of a model are synapses."""
import pytest
import torch
import torchvision
from torch import nn

import adaptive
from adaptive.discovery import discover, state_dict_keys

torch.set_num_threads(1)


def test_linear_and_every_conv_kind_is_found_with_its_bookkeeping():
    model = nn.Sequential(
        nn.Conv1d(3, 4, 3),
        nn.Conv2d(4, 8, 3, groups=2),  # grouped
        nn.Conv2d(8, 8, 3, groups=8, bias=False),  # depthwise
        nn.Conv3d(2, 3, (1, 2, 3)),
        nn.Linear(5, 7),
    )
    found = discover(model)
    assert list(found) == ["0.weight", "1.weight", "2.weight", "3.weight", "4.weight"]
    kinds = {n: l.kind for n, (l, _) in found.items()}
    assert kinds == {"0.weight": "conv1d", "1.weight": "conv2d", "2.weight": "conv2d", "3.weight": "conv3d", "4.weight": "linear"}
    grouped, _ = found["1.weight"]
    assert grouped.shape == (8, 2, 3, 3) and grouped.groups == 2 and grouped.in_units == 4 and grouped.out_units == 8
    dw, _ = found["2.weight"]
    assert dw.shape == (8, 1, 3, 3) and dw.groups == 8 and dw.in_units == 8
    lin, p = found["4.weight"]
    assert lin.module_name == "4" and lin.numel == 35 and p is model[4].weight


def test_biases_and_normalisation_are_not_synapses():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.LayerNorm(4), nn.GroupNorm(2, 4), nn.Flatten(), nn.Linear(4, 2))
    conn = adaptive.Connectome(model)
    assert conn.names == ["0.weight", "5.weight"]
    assert conn.num_synapses() == 4 * 3 * 9 + 8


def test_a_shared_weight_counts_once():
    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(6, 6)
            self.b = nn.Linear(6, 6)
            self.b.weight = self.a.weight

        def forward(self, x):
            return self.b(self.a(x))

    model = Tied()
    conn = adaptive.Connectome(model)
    assert conn.names == ["a.weight"]
    assert conn.num_synapses() == 36
    assert state_dict_keys(model)[id(model.a.weight)] == ["a.weight", "b.weight"]


def test_include_and_exclude_patterns():
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 4), nn.Linear(4, 2))
    assert adaptive.Connectome(model, include="2").names == ["2.weight"]
    assert adaptive.Connectome(model, include=["0", "3.weight"]).names == ["0.weight", "3.weight"]
    assert adaptive.Connectome(model, exclude="3").names == ["0.weight", "2.weight"]
    assert adaptive.Connectome(model, include="*", exclude=["0*", "2"]).names == ["3.weight"]
    with pytest.raises(ValueError, match=r"include pattern\(s\) \['nope'\] matched no prunable layer"):
        adaptive.Connectome(model, include=["0", "nope"])
    with pytest.raises(ValueError, match=r"exclude pattern\(s\) \['fc'\] matched no prunable layer"):
        adaptive.Connectome(model, exclude=["3", "fc"])  # a typo must not leave a layer silently in
    assert adaptive.Connectome(model, include="0", exclude="3").names == ["0.weight"]  # outside include: still a match
    with pytest.raises(ValueError, match="left no prunable layer"):
        adaptive.Connectome(model, exclude="*")
    with pytest.raises(TypeError, match="patterns must be strings"):
        adaptive.Connectome(model, include=[3])


def test_a_comma_separated_pattern_string_is_split_as_on_the_command_line():
    """exclude="0,2" was one pattern '0,2', refused as matching nothing, where the CLI's --exclude 0,2
    excludes two layers."""
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 2))
    assert adaptive.Connectome(model, exclude="0,2").names == ["1.weight", "3.weight"]
    assert adaptive.Connectome(model, exclude=" 0 , 2, ").names == ["1.weight", "3.weight"]
    assert adaptive.Connectome(model, include="0,3*").names == ["0.weight", "3.weight"]
    with pytest.raises(ValueError, match=r"exclude pattern\(s\) \['fc'\] matched no prunable layer"):
        adaptive.Connectome(model, exclude="0,fc")  # each part is checked as a pattern of its own
    from dataclasses import dataclass
    from typing import List, Optional

    from adaptive.config import parse_config

    @dataclass
    class Cli:
        exclude: Optional[List[str]] = None

    assert parse_config(Cli, ["--exclude", "0,2"]).exclude == ["0", "2"]  # the command line's reading


def test_a_comma_inside_a_character_class_does_not_split_the_pattern():
    """'layer[1,2]' is one fnmatch pattern (layer1 or layer2): splitting every comma cut it into
    'layer[1' and '2]', which matched nothing, in the API and on the command line alike."""
    from dataclasses import dataclass
    from typing import List, Optional

    from adaptive.config import parse_config

    model = nn.Sequential()
    for i in (1, 2, 3):
        model.add_module(f"layer{i}", nn.Linear(4, 4))
    model.add_module("fc", nn.Linear(4, 2))
    assert adaptive.Connectome(model, exclude="layer[1,2]").names == ["layer3.weight", "fc.weight"]
    assert adaptive.Connectome(model, include="layer[1,3], fc").names == ["layer1.weight", "layer3.weight", "fc.weight"]
    conn = adaptive.Connectome(model)
    ctrl = adaptive.Controller(conn, policy="magnitude", density=0.9, protect="layer[2,3]")
    assert sorted(ctrl.protected) == ["layer2.weight", "layer3.weight"]

    @dataclass
    class Cli:
        exclude: Optional[List[str]] = None

    assert parse_config(Cli, ["--exclude", "layer[1,2],fc"]).exclude == ["layer[1,2]", "fc"]


def _count(model, types=(nn.Linear, nn.Conv2d)):
    seen, n, total = set(), 0, 0
    for m in model.modules():
        if isinstance(m, types) and id(m.weight) not in seen:
            seen.add(id(m.weight))
            n += 1
            total += m.weight.numel()
    return n, total


@pytest.mark.parametrize("builder", ["resnet18", "resnet50", "mobilenet_v3_large", "densenet121"])
def test_torchvision_models(builder):
    model = getattr(torchvision.models, builder)(weights=None)
    conn = adaptive.Connectome(model)
    n, total = _count(model)
    assert len(conn.layers) == n
    assert conn.num_synapses() == total
    assert all(not k.startswith(("bn", "norm")) and ".bn" not in k for k in conn.names)
    assert all(conn.params[k] is p for k, p in model.named_parameters() if k in conn.params)
    if builder == "mobilenet_v3_large":
        dw = conn.layers["features.1.block.0.0.weight"]
        assert dw.groups == 16 and dw.shape == (16, 1, 3, 3)


def test_a_users_own_module():
    class Mine(nn.Module):
        def __init__(self):
            super().__init__()
            self.enc = nn.ModuleDict({"left": nn.Conv1d(2, 4, 5, padding=2), "right": nn.Linear(8, 8)})
            self.scale = nn.Parameter(torch.ones(4))  # not a synapse
            self.head = nn.Sequential(nn.Linear(32, 3))

        def forward(self, x):
            y = self.enc["left"](x) * self.scale[:, None]
            y = self.enc["right"](y)
            return self.head(y.flatten(1))

    model = Mine()
    conn = adaptive.Connectome(model)
    assert conn.names == ["enc.left.weight", "enc.right.weight", "head.0.weight"]
    assert conn.layers["enc.left.weight"].kind == "conv1d"
    assert model(torch.randn(2, 2, 8)).shape == (2, 3)


def test_a_model_without_prunable_layers_raises():
    with pytest.raises(ValueError, match="no prunable layers"):
        adaptive.Connectome(nn.Sequential(nn.ReLU(), nn.BatchNorm1d(3)))
    with pytest.raises(TypeError, match="nn.Module"):
        adaptive.Connectome(torch.zeros(3))


def test_a_lazy_layer_asks_for_a_forward_pass_first():
    with pytest.raises(ValueError, match="lazy"):
        adaptive.Connectome(nn.Sequential(nn.LazyLinear(3)))


def test_a_parametrized_weight_is_named_in_a_warning_with_the_fix():
    model = nn.Sequential(nn.utils.parametrizations.weight_norm(nn.Linear(4, 6)), nn.ReLU(), nn.Linear(6, 2))
    # the exact call for the layer named, not only remove_parametrizations(module, NAME) with a literal NAME
    with pytest.warns(UserWarning, match=r"parametrized weight \(0\).*remove_parametrizations\(module, NAME\) first "
                                         r"\(here torch.nn.utils.parametrize.remove_parametrizations\("
                                         r"model.get_submodule\('0'\), 'weight'\)\)"):
        found = discover(model)
    assert list(found) == ["2.weight"]
    nn.utils.parametrize.remove_parametrizations(model[0], "weight")
    assert list(discover(model)) == ["0.weight", "2.weight"]


@pytest.mark.parametrize("fn", ["weight_norm", "spectral_norm"])
def test_an_old_style_weight_norm_is_named_in_a_warning_with_its_fix(fn):
    """torch.nn.utils.weight_norm/spectral_norm recompute the weight from weight_g/weight_v (weight_orig)
    before every call: the warning said the Linear's weight_g and weight_v were weight tensors left dense
    although Linear weights are pruned, and never named weight_norm or how to undo it."""
    import warnings

    model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 2))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.nn.utils.weight_norm is deprecated
        getattr(nn.utils, fn)(model[0])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        found = discover(model)
    said = [str(w.message) for w in caught if issubclass(w.category, UserWarning)]
    assert len(said) == 1, said
    assert f"computed by torch.nn.utils.{fn} (0)" in said[0] and f"torch.nn.utils.remove_{fn}(module)" in said[0]
    assert "weight_g" not in said[0] and "weight_orig" not in said[0] and "not synapses of the connectome and" not in said[0]
    assert list(found) == ["2.weight"]
    getattr(nn.utils, f"remove_{fn}")(model[0])
    assert list(discover(model)) == ["0.weight", "2.weight"]


def test_weight_tensors_left_dense_are_named_in_a_warning():
    import warnings

    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Bilinear(4, 4, 4), torch.nn.Linear(4, 4))
    with pytest.warns(UserWarning, match=r"1 weight tensor\(s\) are not synapses.*1.weight \(Bilinear\)"):
        conn = adaptive.Connectome(model)
    assert conn.names == ["0.weight", "2.weight"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # embeddings (not synapses by design) and plain nets: no warning
        adaptive.Connectome(torch.nn.Sequential(torch.nn.Embedding(10, 4), torch.nn.Linear(4, 2)))


def test_a_synapse_weight_tied_to_an_embedding_is_named_in_a_warning():
    """A GPT-style tied head: pruning head.weight zeroes entries of the embedding table, which
    happened silently."""
    import warnings

    class TiedLM(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(7, 4)
            self.mid = nn.Linear(4, 4)
            self.head = nn.Linear(4, 7, bias=False)
            self.head.weight = self.emb.weight

        def forward(self, x):
            return self.head(self.mid(self.emb(x)))

    with pytest.warns(UserWarning, match=r"head\.weight \(layer 'head'\) is the same Parameter as emb\.weight "
                                         r"\(Embedding\).*exclude='head'.*exclude='emb'"):
        conn = adaptive.Connectome(TiedLM())
    assert conn.names == ["mid.weight", "head.weight"]

    class Holder(nn.Module):  # any other non-synapse module holding it counts too
        def __init__(self, w):
            super().__init__()
            self.table = w

    model = nn.Sequential(nn.Linear(3, 3), nn.ReLU())
    model.add_module("lookup", Holder(model[0].weight))
    with pytest.warns(UserWarning, match=r"0\.weight \(layer '0'\) is the same Parameter as lookup\.table \(Holder\)"):
        adaptive.Connectome(model)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # excluded: dense, nothing to warn about; tied synapse layers: one mask
        assert adaptive.Connectome(TiedLM(), exclude="emb").names == ["mid.weight"]
        tied = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4))
        tied[1].weight = tied[0].weight
        assert adaptive.Connectome(tied).names == ["0.weight"]


def test_an_excluded_or_not_included_lazy_layer_is_left_alone():
    model = nn.Sequential(nn.LazyLinear(16), nn.ReLU(), nn.Linear(16, 4))
    assert adaptive.Connectome(model, exclude="0").names == ["2.weight"]
    assert adaptive.Connectome(model, include="2").names == ["2.weight"]
    with pytest.raises(ValueError, match=r"lazy.*forward pass.*exclude='0'"):
        adaptive.Connectome(model)


@pytest.mark.parametrize("how", ["weight_norm", "parametrizations.weight_norm"])
def test_a_model_whose_every_layer_is_weight_normed_is_refused_naming_the_cause_and_the_fix(how):
    import warnings

    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.nn.utils.weight_norm is deprecated
        for i in (0, 2):
            nn.utils.weight_norm(model[i]) if how == "weight_norm" else nn.utils.parametrizations.weight_norm(model[i])
        with pytest.raises(ValueError, match=r"layer\(s\) 0, 2 are there, but their weights are reparametrised.*"
                                             r"remove_weight_norm\(module\).*remove_parametrizations\(module, 'weight', "
                                             r"leave_parametrized=True\)"):
            adaptive.Connectome(model)


def test_a_weight_masked_by_torch_nn_utils_prune_is_named_with_prune_remove_and_its_mask_carries_over():
    """torch.nn.utils.prune keeps weight_orig (a Parameter) and weight_mask (a buffer) and recomputes
    weight before every call. The warning said "0.weight_orig (Linear) ... stay dense. A Connectome
    prunes nn.Linear ... weights", and with every layer pruned the error blamed weight_norm or a
    parametrization and advised remove_weight_norm / remove_parametrizations, which both raise here."""
    import warnings

    import torch.nn.utils.prune as tp

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))
    tp.l1_unstructured(model[0], "weight", amount=0.5)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        conn = adaptive.Connectome(model)
    said = [str(w.message) for w in caught if issubclass(w.category, UserWarning)]
    assert conn.names == ["2.weight"] and len(said) == 1, said
    assert "0.weight are masked by torch.nn.utils.prune" in said[0]
    assert "torch.nn.utils.prune.remove(model.get_submodule('0'), 'weight')" in said[0]
    assert "weight_orig (Linear)" not in said[0] and "remove_weight_norm" not in said[0]

    alone = nn.Sequential(nn.Linear(6, 8))
    tp.l1_unstructured(alone[0], "weight", amount=0.5)
    with pytest.raises(ValueError, match=r"has no prunable layers: its weight\(s\) 0.weight are masked by "
                                         r"torch.nn.utils.prune.*torch.nn.utils.prune.remove\(module, 'weight'\)") as e:
        adaptive.Connectome(alone)
    assert "remove_weight_norm" not in str(e.value) and "remove_parametrizations" not in str(e.value)
    root = nn.Linear(6, 8)  # the model itself: get_submodule('') is the model
    tp.random_unstructured(root, "weight", amount=0.3)
    with pytest.raises(ValueError, match=r"weight\(s\) weight are masked.*get_submodule\(''\), 'weight'\)"):
        adaptive.Connectome(root)

    # the fix the message names, and its way to keep the mask: both work as it says
    x = torch.randn(5, 6)
    before = model(x)
    mask = model[0].weight_mask.bool()
    tp.remove(model[0], "weight")
    conn = adaptive.Connectome(model)
    assert conn.names == ["0.weight", "2.weight"]
    conn.set_masks({"0.weight": mask})
    assert torch.equal(conn.masks["0.weight"], mask) and torch.allclose(model(x), before)


@pytest.mark.parametrize("attr", ["in_proj_weight", "weight_ih_l0"])
def test_a_prune_masked_attention_or_recurrent_matrix_is_named_with_its_own_prune_remove_call(attr):
    """An attention projection masked by torch.nn.utils.prune was named as "a.in_proj_weight_orig
    (MultiheadAttention) ... A Connectome prunes nn.MultiheadAttention's projections"."""
    import torch.nn.utils.prune as tp

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.MultiheadAttention(8, 2) if attr == "in_proj_weight" else nn.LSTM(8, 8)
            self.f = nn.Linear(8, 8)

        def forward(self, x):
            return self.f(self.a(x, x, x)[0] if attr == "in_proj_weight" else self.a(x)[0])

    model = Net()
    tp.l1_unstructured(model.a, attr, amount=0.5)
    with pytest.warns(UserWarning, match=rf"a\.{attr} are masked by torch.nn.utils.prune.*"
                                         rf"prune.remove\(model.get_submodule\('a'\), '{attr}'\)") as caught:
        conn = adaptive.Connectome(model)
    assert f"a.{attr}" not in conn.names and "f.weight" in conn.names
    assert not any("_orig (" in str(w.message) for w in caught)
    mask = getattr(model.a, f"{attr}_mask").bool()
    tp.remove(model.a, attr)
    conn = adaptive.Connectome(model)
    conn.set_masks({f"a.{attr}": mask})
    assert torch.equal(conn.masks[f"a.{attr}"], mask)


@pytest.mark.parametrize("how", ["weight_norm", "parametrizations.weight_norm"])
def test_a_model_mixing_prune_masked_and_weight_normed_layers_is_refused_naming_both_fixes(how):
    import warnings

    import torch.nn.utils.prune as tp

    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    tp.l1_unstructured(model[0], "weight", amount=0.5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.nn.utils.weight_norm is deprecated
        nn.utils.weight_norm(model[2]) if how == "weight_norm" else nn.utils.parametrizations.weight_norm(model[2])
        with pytest.raises(ValueError, match=r"0.weight are masked by torch.nn.utils.prune.*prune.remove.*"
                                             r"layer\(s\) 2 are there, but their weights are reparametrised.*"
                                             r"remove_weight_norm\(module\)"):
            adaptive.Connectome(model)


def test_complex_weights_are_not_synapses_they_stay_dense_with_a_warning():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.Linear(6, 6, dtype=torch.cfloat))
    with pytest.warns(UserWarning, match=r"1 complex-valued weight\(s\) are not synapses.*1.weight \(torch.complex64\)"):
        conn = adaptive.Connectome(model)
    assert conn.names == ["0.weight"]
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # excluded: kept dense as asked, nothing to warn about
        assert adaptive.Connectome(model, exclude="1").names == ["0.weight"]
    for dtype in (torch.cfloat, torch.complex128):
        with pytest.raises(ValueError, match=r"only prunable weights are complex-valued \(0.weight \(torch.complex"):
            adaptive.Connectome(nn.Sequential(nn.Linear(4, 4, dtype=dtype)))


def test_weights_with_no_entries_are_left_out_of_the_connectome():
    """nn.Linear(0, 4) or nn.Linear(4, 0) became a layer of 0 synapses: a neuron ensemble's summary
    divided by zero, and a model of only such layers made an empty connectome."""
    import warnings

    torch.manual_seed(0)
    with warnings.catch_warnings():  # torch's own "Initializing zero-element tensors is a no-op"
        warnings.simplefilter("ignore")
        model = nn.Sequential(nn.Linear(0, 4), nn.Linear(4, 0), nn.Conv2d(3, 0, 3), nn.Linear(4, 3))
        only_empty = nn.Sequential(nn.Linear(4, 0))
    assert list(discover(model)) == ["3.weight"]
    conn = adaptive.Connectome(model, ensemble="neuron")
    assert conn.names == ["3.weight"] and conn.num_synapses() == 12
    assert "3.weight" in conn.summary()
    assert adaptive.Connectome(model, exclude="0").names == ["3.weight"]  # a pattern naming one is still used
    with pytest.raises(ValueError, match=r"no prunable layers: its layer\(s\) 0.weight have weights with no entries"):
        adaptive.Connectome(only_empty)


class _BareWeight(nn.Module):
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.randn(4, 3))
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        return self.fc(torch.nn.functional.linear(x, self.w))


def test_a_pattern_naming_a_parameter_outside_prunable_layers_says_so():
    """include='w' on a bare Parameter read by F.linear (or a bias, an embedding table) was refused with
    'check ... weight names with model.named_parameters()', where 'w' is listed: the error names the
    parameters it matches and why they are no synapses."""
    model = _BareWeight()
    with pytest.raises(ValueError, match=r"\['w'\] matched no prunable layer: they match the parameter\(s\) w, "
                                         r"which are not weights of a prunable layer.*hold it in such a layer"):
        adaptive.Connectome(model, include="w")
    with pytest.raises(ValueError, match=r"match the parameter\(s\) fc.bias, which are not weights"):
        adaptive.Connectome(model, exclude="*.bias")
    with pytest.raises(ValueError, match=r"\['nope'\] matched no prunable layer \(its prunable weights: fc.weight; a "
                                         r"pattern matches a weight's name or its layer's\); check module names"):
        adaptive.Connectome(model, include="nope")  # matches nothing at all: as before


def test_a_pattern_naming_a_reparametrised_weight_says_to_remove_the_reparametrisation():
    """A weight under torch.nn.utils.prune or a parametrization is in an nn.Linear already: 'hold it in
    such a layer' was the wrong fix, contradicting the warning beside it."""
    from torch.nn.utils import parametrizations, prune, spectral_norm

    for reparam, stored, fix in (
            (lambda m: prune.l1_unstructured(m, "weight", amount=0.5), "0.weight_orig", "prune.remove(module, 'weight')"),
            (parametrizations.weight_norm, "0.parametrizations.weight.original0", "remove_parametrizations(module"),
            (spectral_norm, "0.weight_orig", "remove_spectral_norm(module)")):
        model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2))
        reparam(model[0])
        with pytest.warns(UserWarning), pytest.raises(ValueError) as e:
            adaptive.Connectome(model, include="0.*")
        msg = str(e.value)
        assert stored in msg and "remove the reparametrisation first" in msg and fix in msg, msg
        assert "hold it in such a layer" not in msg and msg.count("remove") == 2, msg  # the one fix that works
    # told from the module, not the name: a plain Parameter named *_orig, a pruned bias are no weights
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2))
    model.register_parameter("pos_orig", nn.Parameter(torch.zeros(3)))
    prune.l1_unstructured(model[0], "bias", amount=0.5)
    for pattern, named in (("pos*", "pos_orig"), ("0.bias*", "0.bias_orig")):
        with pytest.raises(ValueError, match=f"they match the parameter\\(s\\) {named}, which are not weights"):
            adaptive.Connectome(model, include=pattern)


def test_a_pattern_naming_a_reparametrised_layer_by_its_module_name_says_why():
    """include="0" where layer 0's weight is parametrized (or an LSTM's weight_hh_l0 is) was refused as
    matching no prunable layer, with only a hint to check module names: it names the layer and the call."""
    from torch.nn.utils import parametrizations, spectral_norm

    for reparam, fix in ((parametrizations.weight_norm, "remove_parametrizations(module, 'weight', leave_parametrized=True)"),
                         (spectral_norm, "torch.nn.utils.remove_spectral_norm(module)")):
        model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2))
        reparam(model[0])
        for kind in ("include", "exclude"):
            with pytest.warns(UserWarning), pytest.raises(ValueError) as e:
                adaptive.Connectome(model, **{kind: "0"})
            msg = str(e.value)
            assert "layer '0'" in msg and "reparametrised" in msg and fix in msg, msg
            assert ("dense already" in msg) == (kind == "exclude"), msg
    lstm = nn.LSTM(4, 3)
    parametrizations.orthogonal(lstm, "weight_hh_l0")
    with pytest.warns(UserWarning), pytest.raises(ValueError, match=r"layer 'weight_hh_l0'.*remove_parametrizations"
                                                                     r"\(module, 'weight_hh_l0'"):
        adaptive.Connectome(lstm, include="weight_hh_l0")


def test_the_call_a_reparametrised_layer_pattern_names_is_one_that_works_for_its_kind():
    """The removal call named for include="0" is the one for that kind of reparametrisation (a parametrization,
    old-style weight_norm or spectral_norm hooks, torch.nn.utils.prune): run on layer 0, include="0" then builds."""
    import re

    from torch.nn.utils import parametrizations, prune, spectral_norm, weight_norm

    for reparam in (parametrizations.orthogonal, parametrizations.spectral_norm, weight_norm, spectral_norm,
                    lambda m: prune.l1_unstructured(m, "weight", amount=0.5)):
        def build():
            torch.manual_seed(0)
            model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2))
            reparam(model[0])
            return model
        with pytest.warns(UserWarning), pytest.raises(ValueError, match="layer '0'") as e:
            adaptive.Connectome(build(), include="0")
        calls = re.findall(r"torch\.nn\.utils\.[\w.]+\(module[^)]*\)", str(e.value))
        assert len(calls) == 1, str(e.value)
        model = build()
        eval(calls[0], {"torch": torch, "module": model[0]})
        assert adaptive.Connectome(model, include="0").names == ["0.weight"]


def test_a_pattern_naming_a_container_of_layers_suggests_its_star_form():
    """protect='branches.b' (or include=) where branches.b is a Sequential was refused as matching no
    layer, with no hint that a pattern matches a layer's own name and 'branches.b.*' takes them all."""
    model = nn.Sequential()
    model.add_module("branches", nn.ModuleDict({"a": nn.Sequential(nn.Linear(4, 4)), "b": nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4))}))
    model.add_module("out", nn.Linear(4, 2))
    with pytest.raises(ValueError, match=r"'branches.b' name\(s\) module\(s\) holding prunable layers.*give 'branches.b.\*'"):
        adaptive.Connectome(model, include="branches.b")
    conn = adaptive.Connectome(model)
    with pytest.raises(ValueError, match=r"protect pattern\(s\) \['branches.b'\] matched no layer.*give 'branches.b.\*'"):
        adaptive.Controller(conn, policy="magnitude", density=0.9, protect="branches.b")
    ctrl = adaptive.Controller(conn, policy="magnitude", density=0.9, protect="branches.b.*")  # the form it names
    assert sorted(ctrl.protected) == ["branches.b.0.weight", "branches.b.1.weight"]
    with pytest.raises(ValueError) as e:
        adaptive.Connectome(model, include="nope")
    assert "holding prunable layers" not in str(e.value)  # no container of that name: no hint


def test_a_weight_matrix_of_a_custom_module_left_dense_is_named_with_the_fix():
    """A custom module's own Parameter read by F.linear (self.w, self.kernel: not named *weight*)
    stayed dense with no warning; only parameters named *weight* were named, and without the fix."""
    import warnings

    class Custom(nn.Module):
        def __init__(self):
            super().__init__()
            self.w, self.kernel = nn.Parameter(torch.randn(4, 8)), nn.Parameter(torch.randn(4, 8, 3))
            # no weight matrices: a position table, a token, a layer scale, a vector
            self.pos_embedding, self.cls_token = nn.Parameter(torch.zeros(1, 5, 8)), nn.Parameter(torch.zeros(1, 1, 8))
            self.layer_scale, self.v = nn.Parameter(torch.ones(8, 1, 1)), nn.Parameter(torch.ones(8))

        def forward(self, x):
            return torch.nn.functional.linear(x, self.w)

    model = nn.Sequential(nn.Linear(8, 8), Custom())
    with pytest.warns(UserWarning) as caught:
        conn = adaptive.Connectome(model)
    said = [str(w.message) for w in caught]
    assert len(said) == 1, said
    assert "2 weight tensor(s) are not synapses of the connectome and stay dense: 1.w (Custom), 1.kernel (Custom)" in said[0]
    assert "1.w, 1.kernel are parameters of your own module(s)" in said[0] and "nn.Linear(in_features" in said[0]
    assert conn.names == ["0.weight"]
    model[1] = nn.Linear(8, 4, bias=False)  # the fix: held in an nn.Linear, it is a layer of the connectome
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert adaptive.Connectome(model).names == ["0.weight", "1.weight"]


@pytest.mark.parametrize("tie", ["transposed view", "data", "embedding data"])
def test_weights_that_share_memory_as_two_parameters_are_refused_naming_the_fix(tie):
    """Two parameters over one memory (nn.Parameter(enc.weight.t()), b.weight.data = a.weight.data) were two layers
    with masks of their own: an optimizer step through one wrote the other's pruned synapses back (32 of them after
    one step), and a head tied to an Embedding through .data had the embedding's entries zeroed unwarned."""
    import adaptive

    torch.manual_seed(0)
    if tie == "transposed view":
        m = nn.ModuleDict({"enc": nn.Linear(8, 4, bias=False), "dec": nn.Linear(4, 8, bias=False)})
        m["dec"].weight = nn.Parameter(m["enc"].weight.t())
    elif tie == "data":
        m = nn.ModuleDict({"a": nn.Linear(8, 8), "b": nn.Linear(8, 8)})
        m["b"].weight.data = m["a"].weight.data
    else:
        m = nn.ModuleDict({"emb": nn.Embedding(10, 8), "head": nn.Linear(8, 10, bias=False)})
        m["head"].weight.data = m["emb"].weight.data
    with pytest.raises(ValueError, match=r"shares its memory with the parameter\(s\) .*Tie them as one parameter "
                                         r"\(b.weight = a.weight"):
        adaptive.Connectome(m)
    if tie == "data":  # the fix: one parameter under two names
        m["b"].weight = m["a"].weight
        assert len(adaptive.Connectome(m).masks) == 1


def test_weights_side_by_side_in_one_buffer_are_not_shared():
    """An RNN's weights flattened into one buffer (as cuDNN's flatten_parameters lays them out) share a storage but
    no element: each is its own layer."""
    import adaptive

    torch.manual_seed(0)
    m = nn.ModuleDict({"a": nn.Linear(4, 4), "b": nn.Linear(4, 4)})
    flat = torch.cat([m["a"].weight.detach().reshape(-1), m["b"].weight.detach().reshape(-1)])
    m["a"].weight, m["b"].weight = nn.Parameter(flat[:16].view(4, 4)), nn.Parameter(flat[16:].view(4, 4))
    assert m["a"].weight.untyped_storage().data_ptr() == m["b"].weight.untyped_storage().data_ptr()
    assert len(adaptive.Connectome(m).masks) == 2


def test_a_weight_whose_elements_share_memory_is_refused_and_strided_ones_are_not():
    """nn.Parameter(torch.randn(1, 4).expand(3, 4)): pruning synapse [0, 0] zeroed [1, 0] and [2, 0], which the
    mask kept live (torch only warned of masked_fill_ on an expanded tensor). A strided weight whose elements do
    not overlap (a column slice, a transpose) is fine."""
    import adaptive

    m = nn.Sequential(nn.Linear(4, 3))
    m[0].weight = nn.Parameter(torch.randn(1, 4).expand(3, 4))
    with pytest.raises(ValueError, match=r"the prunable weight '0.weight' reads some of its memory at several positions "
                                         r"\(strides \(0, 1\) for shape \(3, 4\).*nn.Parameter\(w.detach\(\).clone\(\)\)"):
        adaptive.Connectome(m)
    for view in (torch.randn(3, 8)[:, ::2], torch.randn(4, 3).t()):
        m[0].weight = nn.Parameter(view)
        assert len(adaptive.Connectome(m).masks) == 1


def test_a_layer_subclass_with_a_forward_of_its_own_is_warned_of():
    """timm's StdConv2d (weight standardisation in its forward) or a LoRA Linear (weight + B @ A) was pruned
    without a word, while its forward read the pruned synapses as nonzero: changing only a pruned input
    channel moved the output by 18.9. A subclass that keeps torch's forward is not warned of."""
    import warnings

    import torch.nn.functional as F

    import adaptive

    class StdConv2d(nn.Conv2d):
        def forward(self, x):
            w = self.weight
            w = (w - w.mean(dim=(1, 2, 3), keepdim=True)) / (w.std(dim=(1, 2, 3), keepdim=True) + 1e-5)
            return F.conv2d(x, w, self.bias, self.stride, self.padding)

    class Plain(nn.Linear):  # torch's own forward (as NonDynamicallyQuantizableLinear)
        pass

    with pytest.warns(UserWarning, match=r"1 prunable layer\(s\) are subclasses of a torch layer with a forward of "
                                         r"their own \(0.weight \(StdConv2d\)\).*keep such layers out"):
        adaptive.Connectome(nn.Sequential(StdConv2d(3, 4, 3), nn.Flatten(), Plain(4, 2)))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        adaptive.Connectome(nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), Plain(4, 2)))


@pytest.mark.parametrize("how", ["script", "trace"])
def test_a_torchscript_module_is_refused_naming_the_eager_model(how):
    """Connectome(torch.jit.script(m)) said only 'RecursiveScriptModule has no prunable layers'."""
    m = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    compiled = torch.jit.script(m) if how == "script" else torch.jit.trace(m, torch.randn(1, 4))
    with pytest.raises(TypeError, match="is a TorchScript module .*build the Connectome on the eager model"):
        adaptive.Connectome(compiled)


def test_a_pattern_spelling_a_name_with_a_wildcard_character_is_told_its_escaped_form():
    """A layer named 'fc[1]' (a ModuleDict key) could not be named by exclude=/protect= as spelt, '[1]' being a
    character class, and the refusal listed 'fc[1].weight' among the prunable weights, naming no reason."""
    m = nn.ModuleDict({"fc[1]": nn.Linear(4, 4), "b": nn.Linear(4, 2)})
    with pytest.raises(ValueError, match=r"'fc\[1\]' spell\(s\) a name holding .* write 'fc\[\[\]1\]' for the name"):
        adaptive.Connectome(m, exclude="fc[1]")
    conn = adaptive.Connectome(m)
    with pytest.raises(ValueError, match=r"protect pattern.*write 'fc\[\[\]1\]' for the name itself"):
        adaptive.Controller(conn, None, policy="rigl", density=0.5, protect="fc[1]")
    assert list(adaptive.Connectome(m, exclude="fc[[]1]").masks) == ["b.weight"]


def test_a_convolution_that_reads_its_weight_in_its_own_conv_forward_is_warned_of():
    """A Conv2d subclass overriding _conv_forward (weight standardisation) reads its weight otherwise than the
    masked kernel assumes, as one overriding forward does: warned of alike (no test had one)."""
    import warnings

    import adaptive

    class StdConv(nn.Conv2d):
        def _conv_forward(self, x, w, b):
            return super()._conv_forward(x, (w - w.mean()) / (w.std() + 1e-5), b)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        adaptive.Connectome(nn.Sequential(StdConv(3, 4, 3), nn.Flatten(), nn.Linear(4 * 6 * 6, 2)))
    assert any("forward of their own" in str(w.message) for w in caught)
