"""adaptive/mask_only.py split into modules of one concept each (adaptive/mask_only_*.py): every name it
defined is importable from it still, as the one object the moved code reads, and the type hints of the
moved functions and methods resolve in their new modules."""
import importlib
import inspect
import typing

import adaptive.mask_only as mask_only

# every name adaptive/mask_only.py defined before the split, and the module it lives in now
HOMES = {
    "mask_only_targets": ["Target", "_label", "_plain_number", "_labels", "parse_target", "resolve_target",
                          "_resolve_targets", "check_targets", "count_synapses", "_is_real", "listed_targets"],
    "mask_only_result": ["Snapshot", "MaskOnlyResult"],
    "mask_only_data": ["_data_identity", "_check_loader", "_NONE", "_to_device", "_model_device", "_shuffled"],
    "mask_only_eval": ["_logits", "evaluate", "_agreed"],
    "mask_only_settings": ["stage_batches", "checked_passes", "_precision"],
    "mask_only_best": ["_criterion", "_finite", "_refuse_nonfinite_dense", "_better"],
    "mask_only_window": ["_EMPTY_WINDOW", "_on_host"],
    "mask_only_stages": ["_stage_state"],
    "mask_only_learning": ["_kept_note", "mask_learning", "restore_original"],
    "mask_only_bits": ["changed_weights", "loaded_state", "_same_bits", "_bits", "changed_from"],
}
MODULES = ["mask_only"] + sorted(HOMES) + ["mask_only_batches", "mask_only_plan"]


def test_the_names_adaptive_mask_only_defined_are_those_of_their_new_modules():
    for module, names in HOMES.items():
        home = importlib.import_module(f"adaptive.{module}")
        for name in names:
            assert getattr(mask_only, name) is getattr(home, name), f"adaptive.mask_only.{name} is not {module}'s"
    assert mask_only.optimize_connectome.__module__ == "adaptive.mask_only"
    import adaptive

    assert adaptive.optimize_connectome is mask_only.optimize_connectome
    assert adaptive.Snapshot is mask_only.Snapshot and adaptive.MaskOnlyResult is mask_only.MaskOnlyResult


def test_the_type_hints_of_every_mask_only_function_resolve():
    """The moved code annotates with names (``Connectome``, ``Target``, ``AccuracyFn``) that each new
    module must import: typing.get_type_hints (Sphinx's autodoc, IDEs) raises NameError otherwise."""
    checked = []
    for module in MODULES:
        mod = importlib.import_module(f"adaptive.{module}")
        for name, obj in vars(mod).items():
            if getattr(obj, "__module__", None) != mod.__name__:
                continue  # imported, checked in its own module
            members = [obj] + ([m for m in vars(obj).values() if inspect.isfunction(m)] if inspect.isclass(obj) else [])
            for fn in members:
                if inspect.isfunction(fn) or inspect.isclass(fn):
                    typing.get_type_hints(inspect.unwrap(fn))
                    checked.append(f"{module}.{getattr(fn, '__qualname__', name)}")
    assert {"mask_only.optimize_connectome", "mask_only_stages.StageRun.run", "mask_only_plan.plan_run",
            "mask_only_settings.check_settings"} <= set(checked)


def test_the_result_of_a_line_searched_run_keeps_no_pass_of_the_train_loader_alive():
    """Before the split the controller's line-search loss (``holdout_loss``) was a closure over the model,
    the loss and the verification batches; after it, a bound method of the run, so the result's controller
    kept the whole run alive: the train loader's pass in progress (a DataLoader's iterator, with its worker
    processes), the held-out cycle and the checkpoint's state, for as long as the caller kept the result."""
    import gc
    import weakref

    import torch
    from torch import nn
    from torch.utils.data import DataLoader, TensorDataset

    passes = []

    class Tracked:  # a loader whose passes (iterators) can be watched
        def __init__(self, inner):
            self.inner = inner

        def __len__(self):
            return len(self.inner)

        def __iter__(self):
            it = iter(self.inner)

            class Pass:
                def __iter__(self):
                    return self

                def __next__(self):
                    return next(it)

            p = Pass()
            passes.append(weakref.ref(p))
            return p

    torch.manual_seed(0)
    x, y = torch.randn(32, 6), torch.arange(32) % 2
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 2))
    res = mask_only.optimize_connectome(model, Tracked(DataLoader(TensorDataset(x, y), batch_size=8)),
                                        DataLoader(TensorDataset(x, y), batch_size=8), 0.3, passes=1.5,
                                        verify_batches=1, progress=False)
    gc.collect()
    assert len(passes) == 2 and res.controller.holdout_loss is not None
    assert [p() for p in passes] == [None, None], "the result keeps a pass of the train loader alive"
    assert isinstance(res.controller.holdout_loss(), float)  # the line search's loss still answers, as before
