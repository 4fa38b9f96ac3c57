"""recipes/adaptive.py's check that every process loaded data of the same split sizes
(recipes/_adaptive/builders.py ``_refuse_differing_splits``)."""
import json
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).parent))
from _ports import run_two_ranks  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import recipes.adaptive as R  # noqa: E402
from recipes._adaptive import mask_only_run, train as recipe_train  # noqa: E402


def _one_process_group(tmp_path, monkeypatch):
    """A gloo group of one process, with adaptive.distributed taking it for several: the recipe's
    cross-process checks run their gathers (each process alike), as under a launch of several."""
    import adaptive.distributed as D

    if not dist.is_initialized():  # (a run's end takes it down)
        dist.init_process_group("gloo", store=dist.FileStore(str(tmp_path / f"store{len(list(tmp_path.glob('store*')))}"), 1),
                                rank=0, world_size=1)
    monkeypatch.setattr(D, "is_distributed", lambda: True)


def test_the_size_check_leaves_the_test_split_unread_until_the_report(tmp_path, monkeypatch):
    """Under several processes the check read the size of the test split right after
    accelerator.prepare, which built the lazy split before training or mask-only optimisation (the
    test split is read only for the final report). Now it compares train and holdout there, and the
    test split just before the report reads it; both modes."""
    seen = {}
    try:
        for module, args in ((recipe_train, ["--model", "mlp", "--max_steps", "2", "--update_every", "2"]),
                             (mask_only_run, None)):
            real_loaders, real_set_up = recipe_train.get_dataloaders, module._set_up

            def loaders(cfg, real_loaders=real_loaders):
                seen["loaders"] = real_loaders(cfg)
                return seen["loaders"]

            def set_up(*a, real_set_up=real_set_up, module=module, **kw):
                seen[module.__name__] = seen["loaders"].datasets.test.materialized
                return real_set_up(*a, **kw)

            monkeypatch.setattr(recipe_train, "get_dataloaders", loaders)
            monkeypatch.setattr(module, "_set_up", set_up)
            _one_process_group(tmp_path, monkeypatch)
            if args is None:
                torch.manual_seed(123)
                from adaptive.models import build_model

                torch.save(build_model("mlp", num_classes=10, in_shape=(64,)).state_dict(), tmp_path / "w.pt")
                args = ["--mode", "mask_only", "--target", "0.3", "--epochs", "1", "--update_every", "8",
                        "--weights", str(tmp_path / "w.pt")]
            R.main(["--output_dir", str(tmp_path / module.__name__), "--threads", "1", "--progress", "false",
                    "--figures", "false", *args])
            assert seen[module.__name__] is False, f"{module.__name__}: test split built before training"
            assert seen["loaders"].datasets.test.materialized  # and read for the report
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def test_a_test_split_that_fails_to_build_on_one_process_stops_every_process(tmp_path):
    """The sizes were found by each process before the gather: process 1, whose copy lacks the test
    file, raised there alone while process 0 waited in the gather until the group's timeout (30
    minutes by default). Every process now raises, naming process 1's failure."""
    script = ROOT / "tests" / "scripts" / "two_process_split_sizes.py"
    env = dict(os.environ, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="", PYTHONPATH=str(ROOT))
    run_two_ranks(script, tmp_path, env)
    for r in range(2):
        rec = json.loads((tmp_path / f"rank{r}.json").read_text())
        assert rec["error"] == "FileNotFoundError", rec
        assert "no test file in process 1's copy" in rec["message"], rec
