"""Arguments of the layer budgets (``adaptive.get_budget(name)(layers, density, protected, min_density)``, a
public call) and of the Controller's budget settings, checked before anything is shared or edited. Found by a
review: a protected layer given as one string was taken letter by letter and a mistyped name dropped (both
protecting nothing, silently); a protected count above its layer's size came back as that layer's count; a
NaN or negative density failed inside the arithmetic ("math domain error"); density 1.5 was blamed on
protected layers there were none of; the Controller refused numpy and one-value tensor densities with "must be
in (0, 1], got 0.5" and min_density None or "0.1" with a bare TypeError, and took min_density=True as 1.0."""
import numpy as np
import pytest
import torch
from torch import nn

import adaptive
from adaptive.budgets import get_budget
from adaptive.discovery import SynapseLayer


def _layers():  # 1,200 and 600 synapses
    return {n: SynapseLayer(name=n, module_name=n[0], kind="linear", shape=shape, groups=1)
            for n, shape in (("a.weight", (30, 40)), ("b.weight", (20, 30)))}


@pytest.mark.parametrize("budget", ["erk", "uniform", "er"])
def test_one_protected_name_as_a_string_is_that_layer(budget):
    fn = get_budget(budget)
    assert fn(_layers(), 0.5, "b.weight") == fn(_layers(), 0.5, ["b.weight"]) == {"a.weight": 300, "b.weight": 600}
    assert fn(_layers(), 0.5, {"b.weight": 100})["b.weight"] == 100


@pytest.mark.parametrize("budget", ["erk", "uniform", "er"])
@pytest.mark.parametrize("kwargs, match", [
    ({"protected": ["b"]}, r"protected names \['b'\] that are not among the layers \['a.weight', 'b.weight'\]"),
    ({"protected": {"b.weight": -5}}, "protected layer 'b.weight' holds -5 live synapses: a count is a whole number "
                                      "from 0 to the layer's 600 synapses"),
    ({"protected": {"b.weight": 700}}, "holds 700 live synapses"),
    ({"protected": {"b.weight": 2.5}}, "holds 2.5 live synapses"),
    ({"density": -0.1}, r"density must be a number in \[0, 1\] .*got -0.1"),
    ({"density": float("nan")}, r"density must be a number in \[0, 1\] .*got nan"),
    ({"density": 1.5}, r"density must be a number in \[0, 1\] .*got 1.5"),
    ({"density": "0.5"}, r"density must be a number in \[0, 1\] .*got '0.5'"),
    ({"min_density": None}, r"min_density must be a number in \[0, 1\] .*got None"),
    ({"min_density": True}, r"min_density must be a number in \[0, 1\] .*got True"),
])
def test_a_budgets_wrong_argument_is_named(budget, kwargs, match):
    args = {"density": 0.5, "protected": (), "min_density": 0.0, **kwargs}
    with pytest.raises(ValueError, match=match):
        get_budget(budget)(_layers(), args["density"], args["protected"], args["min_density"])


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(20, 30), nn.ReLU(), nn.Linear(30, 10))


@pytest.mark.parametrize("density", [np.float32(0.5), np.float64(0.5), torch.tensor(0.5), 0.5])
def test_the_controller_takes_a_numpy_or_tensor_density_as_the_float(density):
    m, ref = _net(), _net()
    conn, conn_ref = adaptive.Connectome(m), adaptive.Connectome(ref)
    ctrl = adaptive.Controller(conn, None, policy="magnitude", density=density)
    adaptive.Controller(conn_ref, None, policy="magnitude", density=0.5)
    assert ctrl.density == 0.5 and type(ctrl.density) is float
    assert all(torch.equal(conn.masks[n], conn_ref.masks[n]) for n in conn.names)


@pytest.mark.parametrize("kwargs, error, match", [
    ({"min_density": "0.1"}, ValueError, r"min_density must be a number in \[0, 1\] .*got '0.1'"),
    ({"min_density": None}, ValueError, r"min_density must be a number in \[0, 1\] .*got None"),
    ({"min_density": True}, ValueError, r"min_density must be a number in \[0, 1\] .*got True"),
    ({"edit_fraction": float("nan")}, ValueError, r"edit_fraction must be a number in \[0, 1\] .*got nan"),
    ({"density": True}, ValueError, r"density must be None or a number in \(0, 1\] .*got True"),
    ({"density": 0}, ValueError, r"density must be None or a number in \(0, 1\] .*got 0"),
    ({"density": torch.tensor([0.5, 0.5])}, ValueError, r"density must be None or a number in \(0, 1\]"),
    ({"budget": ["erk"]}, TypeError, r"budget must be a layer budget's name, one of \['er', 'erk', 'global', "
                                     r"'uniform'\], got list \['erk'\]"),
])
def test_the_controllers_wrong_budget_setting_is_named_and_nothing_is_edited(kwargs, error, match):
    conn = adaptive.Connectome(_net())
    before = {n: conn.masks[n].clone() for n in conn.names}
    with pytest.raises(error, match=match):
        adaptive.Controller(conn, None, policy="magnitude", **{"density": 0.5, **kwargs})
    assert all(torch.equal(conn.masks[n], before[n]) for n in conn.names)
