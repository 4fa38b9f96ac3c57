"""A user's granularity pattern can be taken out again (a notebook cell edited to register an
overlapping pattern was refused at every use, with no way out short of restarting Python); the
built-in patterns stay."""
import pytest
import torch

import adaptive
from adaptive.ensembles import _REGISTRY, get_granularity, register_granularity, unregister_granularity


def test_an_edited_cells_overlapping_pattern_is_named_and_the_old_one_can_be_taken_out():
    try:
        @register_granularity(r"pair:(\d+)")
        def pair(spec):
            return get_granularity("synapse")

        @register_granularity(r"pair:(\d+)x?")  # the cell, edited and run again
        def pair_edited(spec):
            return get_granularity("neuron")

        with pytest.raises(ValueError, match=r"adaptive.unregister_granularity\('pair:\(\\\\d\+\)'\) takes"):
            get_granularity("pair:2")
        adaptive.unregister_granularity(r"pair:(\d+)")
        assert get_granularity("pair:2").spec == "neuron"
        conn = adaptive.Connectome(torch.nn.Sequential(torch.nn.Linear(4, 3)), ensemble="pair:2")
        assert conn.granularities["0.weight"].spec == "neuron"
    finally:
        for p in (r"pair:(\d+)", r"pair:(\d+)x?"):
            _REGISTRY.pop(p, None)


def test_built_in_patterns_stay_and_an_override_gives_its_built_in_back():
    with pytest.raises(ValueError, match=r"ensemble pattern 'kernel' is built in .* cannot be removed"):
        unregister_granularity("kernel")
    with pytest.raises(ValueError, match=r"no ensemble pattern 'pear' is registered"):
        unregister_granularity("pear")
    builtin = _REGISTRY["kernel"]
    try:
        register_granularity("kernel", replace=True)(lambda s: get_granularity("synapse"))
        assert get_granularity("kernel").spec == "synapse"
        unregister_granularity("kernel")
        assert _REGISTRY["kernel"] is builtin and get_granularity("kernel").spec == "kernel"
    finally:
        _REGISTRY["kernel"] = builtin


def test_a_plugin_that_fails_after_unregistering_gives_the_pattern_back():
    from adaptive import registry

    register_granularity(r"trio:(\d+)")(lambda s: get_granularity("synapse"))
    try:
        with pytest.raises(RuntimeError):
            with registry.all_or_nothing():
                unregister_granularity(r"trio:(\d+)")
                raise RuntimeError("the plugin fails later")
        assert r"trio:(\d+)" in _REGISTRY
    finally:
        _REGISTRY.pop(r"trio:(\d+)", None)


def test_a_pattern_registered_again_counts_its_own_ensembles_not_the_old_factorys():
    """The ensemble-size cache was keyed by the granularity's spec: after unregister_granularity and
    a new factory under the same pattern (a spec of the same text, another layout), the policies
    counted synapses by the old one's ensembles (6 a neuron where each synapse is its own)."""
    from adaptive.ensembles import NeuronGranularity, SynapseGranularity
    from adaptive.policies.base import ensemble_size

    class Rows(NeuronGranularity):
        spec = "reregistered"

    class Each(SynapseGranularity):
        spec = "reregistered"

    register_granularity("reregistered")(lambda s: Rows())
    try:
        assert ensemble_size(get_granularity("reregistered"), (4, 6)) == 6.0
        unregister_granularity("reregistered")
        register_granularity("reregistered")(lambda s: Each())
        assert ensemble_size(get_granularity("reregistered"), (4, 6)) == 1.0
    finally:
        unregister_granularity("reregistered")
