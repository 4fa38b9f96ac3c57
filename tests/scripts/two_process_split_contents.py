"""Run as ``python two_process_split_contents.py OUT RANK``, two at once (rank 0 and 1): a gloo process
group on the CPU with a short timeout, then the recipe's check of the data each process loaded
(``_refuse_differing_splits``) on MNIST-like copies of the same size, each process reading its own
folder ``OUT/p{RANK}/data`` (written by the test): copies that are alike, copies whose train split
differs at one example, and copies whose test split differs (compared only where the test split is
given, as before the final report). Writes ``rank{N}.json`` into OUT: per case, the error each
process raised (type, message, whether marked raised alike), or None."""
import datetime
import json
import sys
from pathlib import Path
from types import SimpleNamespace

import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
import adaptive.distributed as D  # noqa: E402
from adaptive.data import get_dataloaders  # noqa: E402
from recipes._adaptive.builders import _refuse_differing_splits  # noqa: E402


def main(out, me):
    out = Path(out)
    dist.init_process_group("gloo", init_method=f"file://{out / 'store'}", rank=me, world_size=2,
                            timeout=datetime.timedelta(seconds=20))
    record = {}
    for case in sorted(p.name for p in (out / f"p{me}").iterdir()):
        data_dir = out / f"p{me}" / case / "data"  # (absolute, another folder on each process)
        loaders = get_dataloaders("mnist", batch_size=16, data_dir=data_dir, holdout=0.2, seed=0, augment=True)
        cfg = SimpleNamespace(data_dir=str(data_dir), dataset="mnist")
        for splits in (("train", "holdout"), ("test",)):
            try:
                _refuse_differing_splits(cfg, loaders, **{s: getattr(loaders, s) for s in splits})
                record[f"{case} {'+'.join(splits)}"] = None
            except Exception as e:  # noqa: BLE001 - what each process raised is the record
                record[f"{case} {'+'.join(splits)}"] = [type(e).__name__, str(e), D.raised_alike(e)]
            if splits == ("train", "holdout"):  # the test split is left unread until its own check
                record[f"{case} test read"] = loaders.datasets.test.materialized
    (out / f"rank{me}.json").write_text(json.dumps(record))
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _rank_record import leave_group

    leave_group(str(out), me)  # (ends the process: gloo's teardown can abort it, see leave_group)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
