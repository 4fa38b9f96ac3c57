"""The diagnostics on a model inside ``nn.DataParallel`` (a DistributedDataParallel-like wrapper holding it as
``.module``), given the Connectome built on the model inside or on the wrapper: it was refused as "conn masks
another model". They run the module inside and name its layers as the connectome does (``NAME``, not
``module.NAME``)."""
import warnings

import pytest
import torch
from torch import nn

import adaptive
from adaptive.diagnostics import BandGradientScaler, collinearity, gradient_by_depth, knowledge_distribution


class _Cat(nn.Module):
    """The input and a layer's output, concatenated into the classifier: inputs of depths 0 and 1."""

    def __init__(self):
        super().__init__()
        self.fc, self.head = nn.Linear(6, 5), nn.Linear(11, 3)

    def forward(self, x):
        return self.head(torch.cat([x, torch.relu(self.fc(x))], 1))


def _setup():
    torch.manual_seed(0)
    net = _Cat()
    conn = adaptive.Connectome(net)
    g = torch.Generator().manual_seed(0)
    conn.set_masks({n: torch.rand(m.shape, generator=g) < 0.6 for n, m in conn.masks.items()})
    data = [(torch.randn(8, 6, generator=g), torch.randint(0, 3, (8,), generator=g)) for _ in range(3)]
    return net, conn, data


def test_collinearity_and_gradient_by_depth_take_the_wrapped_model_s_connectome():
    net, conn, data = _setup()
    wrapped = nn.DataParallel(net)  # without GPUs its forward is the module's
    got, want = collinearity(wrapped, data, conn=conn), collinearity(net, data, conn=conn)
    assert got.table["layer"] == ["fc.weight", "head.weight"] == list(conn.masks)
    assert got.cosine.keys() == want.cosine.keys() and all(torch.equal(got.cosine[k], v) for k, v in want.cosine.items())
    assert got.table["pruned"] == [int((~m).sum()) for m in conn.masks.values()]
    for name in ("head", "module.head"):  # the wrapper's name is taken as the connectome's
        got = gradient_by_depth(wrapped, data, layer=name, batches=3, conn=conn)  # traced through the wrapper
        want = gradient_by_depth(net, data, layer="head", batches=3, conn=conn)
        assert got.layer == want.layer == "head" and got.depths == want.depths == [0, 1]
        assert torch.equal(got.per_weight, want.per_weight)
        assert got.pruned == want.pruned == int((~conn.masks["head.weight"]).sum())


def test_knowledge_distribution_measures_the_module_a_data_parallel_wrapper_runs():
    net, conn, data = _setup()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a few points on a tiny model: fits warn
        got = knowledge_distribution(nn.DataParallel(net), data, data, points=4, conn=conn)
        want = knowledge_distribution(net, data, data, points=4, conn=conn)
    assert type(got.meta["model"]) is _Cat  # a copy of the module: fine-tuned by this process alone
    assert got.pruned_before == want.pruned_before == sum(int((~m).sum()) for m in conn.masks.values())
    assert list(got.table) == list(want.table)


def test_a_connectome_of_another_model_is_still_refused():
    net, conn, data = _setup()
    with pytest.raises(ValueError, match="conn masks another model"):
        collinearity(nn.DataParallel(_Cat()), data, conn=conn)


class _HoldsModule(nn.Module):
    """An ordinary model whose first layer is named ``module``, with a head of its own: no wrapper."""

    def __init__(self):
        super().__init__()
        self.module, self.head = nn.Linear(6, 5), nn.Linear(5, 3)

    def forward(self, x):
        return self.head(torch.relu(self.module(x)))


def test_a_submodule_named_module_beside_other_weights_is_no_wrapper():
    """Any attribute ``module`` was followed as a wrapper's: the Connectome of a model's submodule named ``module``
    was taken for the model's, and its other layers measured as dense."""
    torch.manual_seed(0)
    net = _HoldsModule()
    data = [(torch.randn(8, 6), torch.randint(0, 3, (8,))) for _ in range(2)]
    part = adaptive.Connectome(net.module)
    with pytest.raises(ValueError, match="conn masks another model"):
        collinearity(net, data, conn=part)
    with pytest.raises(ValueError, match="conn masks another model"):
        gradient_by_depth(net, data, layer="head", batches=2, conn=part)
    whole = adaptive.Connectome(net)
    assert whole.model is net and list(whole.masks) == ["module.weight", "head.weight"]
    assert collinearity(net, data, conn=whole).table["layer"] == ["module.weight", "head.weight"]
    # inside a real wrapper: only the wrapper's own prefix is taken off, the submodule keeps its name
    wrapped = nn.DataParallel(net)
    assert adaptive.Connectome(wrapped).model is net
    for name in ("module", "module.weight", "module.module.weight"):
        got = gradient_by_depth(wrapped, data, layer=name, depths=torch.tensor([0, 0, 0, 1, 1, 1]), batches=2, conn=whole)
        assert got.layer == "module" and torch.equal(got.live, whole.masks["module.weight"])


def test_knowledge_distribution_takes_the_connectome_built_on_the_data_parallel_wrapper():
    """A Connectome built on the wrapper itself (a connectome of the module inside, under its names) was refused
    as 'conn masks another model' once the copy was of the module inside."""
    net, _, data = _setup()
    wrapped = nn.DataParallel(net)
    conn = adaptive.Connectome(wrapped)
    assert conn.model is net and list(conn.masks) == ["fc.weight", "head.weight"]
    g = torch.Generator().manual_seed(0)
    conn.set_masks({n: torch.rand(m.shape, generator=g) < 0.6 for n, m in conn.masks.items()})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a few points on a tiny model: fits warn
        got = knowledge_distribution(wrapped, data, data, points=4, conn=conn)
    assert type(got.meta["model"]) is _Cat
    assert got.pruned_before == sum(int((~m).sum()) for m in conn.masks.values()) > 0


class _Opaque(_Cat):
    """A forward fx cannot trace (it branches on a value), its depths given by its own input_depths."""

    def forward(self, x):
        h = torch.relu(self.fc(x))
        if x.sum() > 1e9:
            h = 2 * h
        return self.head(torch.cat([x, h], 1))

    def input_depths(self, layer):
        return [0] * 6 + [1] * 5 if layer in ("head", "head.weight") else [0] * 6


@pytest.mark.parametrize("layer", ["module.head", "module.head.weight", "head"])
def test_gradient_by_depth_reads_the_input_depths_of_the_module_a_data_parallel_wrapper_runs(layer):
    """The wrapper has no input_depths of its own: the depths were traced instead, and a model fx cannot trace was
    refused, told to use a model with an input_depths method."""
    _, _, data = _setup()
    model = _Opaque()  # dense: no Connectome
    got = gradient_by_depth(nn.DataParallel(model), data, layer=layer, batches=2)
    want = gradient_by_depth(model, data, layer=layer.removeprefix("module."), batches=2)
    assert got.layer == want.layer and got.depths == want.depths == [0, 1]
    assert torch.equal(got.per_weight, want.per_weight)


def test_band_gradient_scaler_of_a_data_parallel_model_names_and_depths_the_module_inside():
    """A scaler built on the wrapper named its layers module.NAME and read (traced) the wrapper's depths; it scales
    the module inside's layers under the connectome's names, with that module's input_depths."""
    from adaptive.diagnostics import BandGradientScaler

    _, _, data = _setup()
    model = _Opaque()  # fx cannot trace it: its depths are its own input_depths
    wrapped = nn.DataParallel(model)
    for layers in (["head"], ["module.head"]):
        scaler = BandGradientScaler(wrapped, layers=layers)
        try:
            assert list(scaler.state) == ["head"] and scaler.state["head"]["bands"].tolist() == [0, 1]
            x, y = data[0]
            torch.nn.functional.cross_entropy(wrapped(x), y).backward()
            assert scaler.state["head"]["seen"].tolist() == [True, True]
        finally:
            scaler.remove()
            model.zero_grad()


def test_include_and_exclude_written_as_the_wrapper_names_layers_select_the_module_inside_s():
    """collinearity (and a Connectome) of a wrapped model read module.NAME and module.* patterns as NAME and *: they
    matched nothing. A pattern matching nothing is refused naming the model's prunable weights."""
    net, conn, data = _setup()
    wrapped = nn.DataParallel(net)
    for include, exclude, want in ((["module.head"], None, ["head.weight"]), ("module.*", None, ["fc.weight", "head.weight"]),
                                   (None, "module.fc", ["head.weight"]), ("head", None, ["head.weight"])):
        assert collinearity(wrapped, data, include=include, exclude=exclude, conn=conn).table["layer"] == want
        assert list(adaptive.Connectome(wrapped, include=include, exclude=exclude).masks) == want
    for model, pattern in ((net, "module.head"), (wrapped, "module.nothing"), (wrapped, "nothing")):
        with pytest.raises(ValueError, match=r"include pattern\(s\) \['" + pattern + r"'\] matched no prunable layer \(its "
                                             r"prunable weights: fc.weight, head.weight;"):
            collinearity(model, data, include=pattern)
    # a model's own submodule called module matches as given, inside a wrapper too
    held = nn.DataParallel(_HoldsModule())
    assert list(adaptive.Connectome(held, include="module").masks) == ["module.weight"]
    assert list(adaptive.Connectome(held, include="module.module").masks) == ["module.weight"]


class _TwoNames(_Cat):
    """_Cat whose head is also held as ``out`` (one module, two names)."""

    def __init__(self):
        super().__init__()
        self.out = self.head


def test_a_wrapper_s_pattern_selects_a_layer_by_any_of_its_names():
    """discover matches a pattern against every name of a layer; the wrapper's module.out was checked against each
    module's first name only (head), so it was kept as given, and refused as matching no prunable layer."""
    wrapped = nn.DataParallel(_TwoNames())
    assert list(adaptive.Connectome(wrapped.module, include="out").masks) == ["head.weight"]
    assert list(adaptive.Connectome(wrapped, include="module.out").masks) == ["head.weight"]
    assert list(adaptive.Connectome(wrapped, exclude="module.out").masks) == ["fc.weight"]


def test_protect_ensemble_rules_and_knowledge_distribution_read_a_wrapper_s_patterns_as_include_does():
    """A Controller's protect=, the ensemble rules of a Connectome built on a wrapper and knowledge_distribution's
    include=/exclude= refused module.fc ('matched no layer') where a Connectome's include= took it as fc."""
    net, _, data = _setup()
    wrapped = nn.DataParallel(net)
    conn = adaptive.Connectome(wrapped, ensemble={"module.fc": "neuron", "*": "synapse"})
    assert conn.granularity_of("fc.weight").spec == "neuron" and conn.ensemble == "fc=neuron;synapse"
    for protect in ("module.fc", "module.f*", "fc"):
        ctrl = adaptive.Controller(conn, policy="magnitude", density=0.5, protect=protect)
        assert ctrl.protected == ["fc.weight"]
    with pytest.raises(ValueError, match=r"protect pattern\(s\) \['module.nothing'\] matched no layer"):
        adaptive.Controller(conn, policy="magnitude", density=0.5, protect="module.nothing")
    # built on the plain model, the connectome names no wrapper: module.fc is refused as before
    with pytest.raises(ValueError, match=r"protect pattern\(s\) \['module.fc'\] matched no layer"):
        adaptive.Controller(adaptive.Connectome(net), policy="magnitude", density=0.5, protect="module.fc")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a few points on a tiny model: fits warn
        got = knowledge_distribution(wrapped, data, data, points=2, include="module.fc")
    assert got.total == net.fc.weight.numel()


def test_gradient_by_depth_and_band_gradient_scaler_find_a_layer_by_its_second_name():
    """A module held as head and out was found by its first name only (named_modules drops repeats): layer='out'
    was refused as no layer of the model. Either name, wrapped or not, measures and scales the one layer, named by
    its first name as a connectome names it; given by both names, it is scaled once (a second hook scaled it twice,
    and remove() left the first behind)."""
    _, _, data = _setup()
    net = _TwoNames()
    want = gradient_by_depth(net, data, layer="head", batches=3)
    for model, name in ((net, "out"), (net, "out.weight"), (nn.DataParallel(net), "module.out")):
        got = gradient_by_depth(model, data, layer=name, batches=3)
        assert got.layer == "head" and torch.equal(got.per_weight, want.per_weight)
    x, y = data[0]
    grads = {}
    for layers in (["head"], ["out"], ["head", "out"], ["module.out"]):
        scaler = BandGradientScaler(nn.DataParallel(net) if layers == ["module.out"] else net, layers=layers)
        try:
            assert list(scaler.state) == ["head"]
            net.zero_grad()
            nn.functional.cross_entropy(net(x), y).backward()
            grads[tuple(layers)] = net.head.weight.grad.clone()
        finally:
            scaler.remove()
    assert all(torch.equal(g, grads[("head",)]) for g in grads.values())
    net.zero_grad()
    nn.functional.cross_entropy(net(x), y).backward()  # the hooks are all gone: the plain gradient
    assert not torch.equal(net.head.weight.grad, grads[("head",)])


def test_a_connectome_loaded_into_a_wrapper_reads_its_patterns_as_one_built_on_it(tmp_path):
    """Connectome.load into a DataParallel model built the connectome on the module inside, so a Controller's
    protect='module.fc' was refused ('matched no layer') where one built on the wrapper took it as fc."""
    net, _, _ = _setup()
    conn = adaptive.Connectome(nn.DataParallel(net), ensemble={"module.fc": "neuron", "*": "synapse"})
    conn.save(tmp_path / "c.safetensors")
    loaded = adaptive.Connectome.load(tmp_path / "c.safetensors", nn.DataParallel(net))
    assert loaded.ensemble == "fc=neuron;synapse"
    assert adaptive.Controller(loaded, policy="magnitude", density=0.5, protect="module.fc").protected == ["fc.weight"]
    plain = adaptive.Connectome.load(tmp_path / "c.safetensors", net)  # into the plain model: no wrapper names
    with pytest.raises(ValueError, match=r"protect pattern\(s\) \['module.fc'\] matched no layer"):
        adaptive.Controller(plain, policy="magnitude", density=0.5, protect="module.fc")


def test_band_gradient_scaler_takes_depths_under_any_name_of_a_layer():
    """layers=['head'] with depths={'out': d} (another name of the one module): the depths were looked up under
    head and the name given only, so d went unused and the traced depths (0 and 1) were scaled by instead."""
    net = _TwoNames()
    d = torch.tensor([0] * 6 + [2] * 5)
    for layers, key in ((["head"], "out"), (["out"], "head"), (["head"], "out.weight"), (["module.head"], "module.out")):
        model = nn.DataParallel(net) if layers == ["module.head"] else net
        scaler = BandGradientScaler(model, layers=layers, depths={key: d})
        try:
            assert scaler.state["head"]["bands"].tolist() == [0, 2]
        finally:
            scaler.remove()
    with pytest.raises(ValueError, match=r"depths= gives the layer 'head' other depths under 'head' and under 'out', "
                                         r"two names of one module: give its depths once"):
        BandGradientScaler(net, layers=["head"], depths={"head": d, "out": d.clamp(max=1)})
    assert not net.head.weight._backward_hooks  # no hook left behind
    scaler = BandGradientScaler(net, layers=["head"], depths={"head": d, "out": d.clone()})  # the same: taken
    assert scaler.state["head"]["bands"].tolist() == [0, 2]
    scaler.remove()


class _KnownAsOut(_TwoNames):
    """_TwoNames whose input_depths knows the head by its second name only."""

    def input_depths(self, layer):
        if layer != "out":
            raise KeyError(f"no layer {layer!r}")
        return torch.tensor([0] * 6 + [3] * 5)


def test_a_model_s_input_depths_is_asked_under_every_name_of_a_layer():
    """input_depths was asked under the layer's first name (head) only: a model that knows it as out was
    refused (KeyError), though the default layers= (every name input_depths answers to) had picked it."""
    _, _, data = _setup()
    net = _KnownAsOut()
    for layers in (None, ["head"], ["out"]):
        scaler = BandGradientScaler(net, layers=layers)
        try:
            assert list(scaler.state) == ["head"] and scaler.state["head"]["bands"].tolist() == [0, 3]
        finally:
            scaler.remove()
    got = gradient_by_depth(net, data, layer="head", batches=1)
    assert got.layer == "head" and sorted(got.table["depth"]) == [0, 3]
    with pytest.raises(KeyError, match="no layer 'fc'"):  # a layer it knows by no name: its own error, as before
        gradient_by_depth(net, data, layer="fc", batches=1)
