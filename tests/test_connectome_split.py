"""The Connectome split into mixins (adaptive/connectome_*.py) and the wrapper helpers (adaptive/wrappers.py):
the names importable from adaptive.connectome are the objects where they live now, no method is defined
twice along the class's MRO (one would silently shadow the other), and a patch of a moved name, as the
ensemble-mask-cache benchmark makes, reaches the code that reads it."""
import pickle
import sys
from pathlib import Path

import torch
from torch import nn

import adaptive
from adaptive import (connectome, connectome_edits, connectome_files, connectome_masking, connectome_optimizers,
                      connectome_queries, connectome_state, wrappers)

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _scripts import load_script  # noqa: E402

torch.set_num_threads(1)


def test_the_names_importable_from_adaptive_connectome_are_those_of_their_modules():
    """Every name other modules import from adaptive.connectome is the one object the moved code reads."""
    assert connectome.EnsembleRuleError is connectome_edits.EnsembleRuleError
    assert connectome._MASKED_BY is connectome_optimizers._MASKED_BY  # one registry of masked weights
    assert connectome.FORMAT is connectome_state.FORMAT and connectome.check_same_mode is connectome_state.check_same_mode
    for name in ("_local_module", "_plain_module", "_plain_names", "_plain_patterns", "_stripped", "_wrapper_prefix",
                 "eager"):
        assert getattr(connectome, name) is getattr(wrappers, name), name
    err = pickle.loads(pickle.dumps(connectome.EnsembleRuleError("mask for 'w': rule broken")))
    assert type(err) is connectome.EnsembleRuleError and str(err) == "mask for 'w': rule broken"


def test_no_connectome_method_is_defined_in_two_of_its_classes():
    """A name defined in two mixins (or in a mixin and Connectome) resolves to one of them by MRO order alone."""
    mixins = [connectome_queries.ConnectomeQueriesMixin, connectome_edits.ConnectomeEditsMixin,
              connectome_masking.ConnectomeMaskingMixin, connectome_optimizers.ConnectomeOptimizersMixin,
              connectome_state.ConnectomeStateMixin, connectome_files.ConnectomeFilesMixin]
    assert adaptive.Connectome.__mro__[1:-1] == tuple(mixins)
    seen = {}
    for cls in (adaptive.Connectome, *mixins):
        for name in vars(cls):
            if name.startswith("__") and name not in ("__init__", "__repr__", "__getstate__", "__setstate__"):
                continue  # __module__, __doc__, __dict__, ... every class has
            assert name not in seen, f"{name} is defined in {seen[name].__name__} and {cls.__name__}"
            seen[name] = cls
    for name in ("set_masks", "apply", "attach", "state_dict", "save", "summary", "__getstate__"):
        assert name in seen, name


def test_the_ensemble_mask_cache_benchmark_variants_patch_what_the_connectome_reads():
    """The benchmark's variants turn off the cache and the exact-expansion shortcut by patching names the
    connectome's mixins read: each variant pools the masks a different number of times after an edit (a
    patch of a name the code no longer reads would leave two variants the same)."""
    mod = load_script("recipes/benchmarks/ensemble_mask_cache.py", "ensemble_mask_cache_split_test")
    after_edit = {}
    for variant in mod.VARIANTS:
        torch.manual_seed(0)
        conn = adaptive.Connectome(nn.Sequential(nn.Linear(6, 8), nn.Linear(8, 4)), ensemble="block:2x2")
        pools = []
        with mod.variant(variant, pools):
            ens = conn.ensemble_masks()
            for e in ens.values():
                e.view(-1)[0] = False
            conn.set_ensemble_masks(ens)
            del pools[:]
            conn.ensemble_masks()
            conn.ensemble_masks()
            after_edit[variant] = len(pools)
    # before: pooled at every read; cache: pooled once per layer; as shipped: the ensemble masks given are kept
    assert after_edit == {"before": 4, "cache": 2, "cache + exact expansion": 0}
    assert connectome_edits.expands_exactly is adaptive.ensembles.expands_exactly  # put back after the variant


def test_the_type_hints_of_every_connectome_method_resolve():
    """The mixins annotate ``-> "Connectome"`` (attach, load) in modules that import the class only for type
    checkers: typing.get_type_hints (Sphinx's autodoc, IDEs) raised NameError there,
    where it resolved while the methods lived beside the class."""
    import inspect
    import typing

    checked = []
    for name in dir(adaptive.Connectome):
        attr = inspect.getattr_static(adaptive.Connectome, name)
        fn = attr.fget if isinstance(attr, property) else getattr(attr, "__func__", attr)
        if inspect.isfunction(fn) and fn.__module__.startswith("adaptive."):
            typing.get_type_hints(fn)
            checked.append(name)
    assert typing.get_type_hints(adaptive.Connectome.attach)["return"] is adaptive.Connectome
    assert typing.get_type_hints(adaptive.Connectome.load)["return"] is adaptive.Connectome
    assert {"attach", "load", "set_masks", "save", "state_dict"} <= set(checked)


def test_no_wrapper_prefix_is_stripped_where_it_gains_no_name_the_model_has():
    """Saved names module.a and module.b against a model whose own names are module.a and b: stripping "module."
    finds b but loses module.a, the model's own; a prefix is taken only where it finds more names than none does."""
    from adaptive.wrappers import _wrapper_prefix

    assert _wrapper_prefix(["module.a", "module.b"], {"module.a", "b"}) == ""
    assert _wrapper_prefix(["module.a", "module.b"], {"a", "b"}) == "module."
