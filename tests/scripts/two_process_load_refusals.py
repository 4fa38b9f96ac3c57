"""Run under `accelerate launch --multi_gpu --num_processes 2`: load_checkpoint through agreed_call where
process 1 alone meets a problem in its own copy of the checkpoint, each process recording what it raised:

- ``moment``: its optimizer.bin holds a moment of another shape (refused before anything loads: the
  message must name the checkpoint, the file and the process);
- ``unexpected``: one of its checks before the load fails with an error that is not a read error (a
  TypeError: every process must raise it as a TypeError naming process 1 and the cause, not an OSError
  saying it cannot read its copy);
- ``inside_load``: recipes/adaptive.py's resume (_resume) where a registered object's load_state_dict
  raises inside Accelerate's load with its cause on the second line of its message (as torch's
  load_state_dict does): every process's message must carry that cause.

Writes one JSON file per rank into argv[1]."""
import datetime
import pathlib
import shutil
import sys

import torch
from accelerate import Accelerator
from accelerate.utils import InitProcessGroupKwargs

import adaptive.checkpoint_weights as CW
from adaptive import distributed as D
from adaptive.training import TrainState, load_checkpoint, save_checkpoint
from _rank_record import write_record_and_finish

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))
from recipes._adaptive.train import _resume  # noqa: E402


class Thing:
    """A registered object whose load fails on process 1 while ``fail`` is set."""

    def __init__(self, me):
        self.me, self.fail, self.x = me, False, 0

    def state_dict(self):
        return {"x": self.x}

    def load_state_dict(self, sd):
        if self.fail and self.me == 1:
            raise RuntimeError("Error(s) in loading state for Thing:\n\tthe real cause: x must be 7")
        self.x = sd["x"]


def main(out_dir):
    # a short timeout: collectives paired wrongly end in an error within it, not in the test's timeout
    acc = Accelerator(cpu=True, kwargs_handlers=[InitProcessGroupKwargs(timeout=datetime.timedelta(seconds=30))])
    me = acc.process_index
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model, opt = acc.prepare(model, opt)
    thing = Thing(me)
    acc.register_for_checkpointing(thing)
    model(torch.randn(2, 4)).sum().backward()
    opt.step()
    saved = save_checkpoint(acc, pathlib.Path(out_dir) / "run", 1)
    record = {}
    for case in ("moment", "unexpected", "inside_load"):
        ckpt = pathlib.Path(out_dir) / f"copy{me}" / case  # each process's own copy
        shutil.copytree(saved, ckpt)
        if me == 1 and case == "moment":
            sd = torch.load(ckpt / "optimizer.bin", weights_only=False)
            sd["state"][0]["momentum_buffer"] = sd["state"][0]["momentum_buffer"][:-1].clone()
            torch.save(sd, ckpt / "optimizer.bin")
        checked = CW.nonzero_pruned_weights
        if me == 1 and case == "unexpected":
            def broken(*_):
                raise TypeError("boom: a check that is no read")
            CW.nonzero_pruned_weights = broken
        thing.fail = case == "inside_load"
        try:
            if case == "inside_load":
                D.agreed_call(lambda: _resume(acc, ckpt, TrainState(processes=2), 1, 0))
            else:
                D.agreed_call(lambda: load_checkpoint(acc, ckpt, verified=True))
            record[case] = ["returned"]
        except Exception as e:  # noqa: BLE001 - recorded for the test
            record[case] = [type(e).__name__, str(e), D.raised_alike(e)]
        finally:
            CW.nonzero_pruned_weights, thing.fail = checked, False
    write_record_and_finish(acc, out_dir, me, record)


if __name__ == "__main__":
    main(sys.argv[1])
