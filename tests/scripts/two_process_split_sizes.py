"""Run as ``python two_process_split_sizes.py OUT RANK``, two at once (rank 0 and 1): a gloo process
group on the CPU with a short timeout, then the recipe's split-size check on data whose test split
fails to build on process 1 only (its copy lacks the file). Writes ``rank{N}.json`` into OUT: the
error each process raised (type and message). A process that went on alone into the check's gather
would wait there for the group's timeout (seconds here, 30 minutes by default) and record that."""
import datetime
import json
import sys
from pathlib import Path
from types import SimpleNamespace

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from adaptive.data.base import LazyDataset  # noqa: E402
from recipes._adaptive.builders import _refuse_differing_splits  # noqa: E402


def main(out, me):
    out = Path(out)
    dist.init_process_group("gloo", init_method=f"file://{out / 'store'}", rank=me, world_size=2,
                            timeout=datetime.timedelta(seconds=20))

    def build():
        if me == 1:
            raise FileNotFoundError("no test file in process 1's copy")
        return TensorDataset(torch.zeros(10, 1))

    test = LazyDataset(build)
    loaders = SimpleNamespace(datasets=SimpleNamespace(test=test))
    cfg = SimpleNamespace(data_dir="data", dataset="mnist")
    try:
        _refuse_differing_splits(cfg, loaders, test=DataLoader(test, batch_size=4))
        record = {"error": None}
    except Exception as e:  # noqa: BLE001 - what each process raised is the record
        record = {"error": type(e).__name__, "message": str(e)}
    (out / f"rank{me}.json").write_text(json.dumps(record))
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _rank_record import leave_group

    leave_group(str(out), me)  # (ends the process: gloo's teardown can abort it, see leave_group)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
