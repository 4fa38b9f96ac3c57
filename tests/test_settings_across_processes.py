"""Settings compared between the processes of a run (adaptive.distributed.refuse_differing_settings, by
adaptive.mask_only_checkpoint.value_identity): equal settings read the same on every process."""
import torch
import torch.nn.functional as F

import adaptive.distributed as D
from adaptive.mask_only_checkpoint import callable_identity, value_identity


def _loss_on(device):
    """A loss as a script under Accelerate writes it, closing over its process's own device."""
    return lambda out, y: F.cross_entropy(out, y.to(device))


def _loss_with_default(device):
    return lambda out, y, d=device: F.cross_entropy(out, y.to(d))


class _Criterion:
    def __init__(self, device):
        self.device, self.smoothing = device, 0.1

    def __call__(self, out, y):
        return F.cross_entropy(out, y.to(self.device), label_smoothing=self.smoothing)


def _settings(rank):
    """Process ``rank``'s settings of one script: a loss closing over its own device, in three spellings."""
    dev = torch.device(f"cuda:{rank}")
    return {"loss_fn": value_identity(_loss_on(dev)), "accuracy_fn": value_identity(_loss_with_default(dev)),
            "callable": value_identity(_Criterion(f"cuda:{rank}"))}


def test_a_loss_closing_over_its_process_device_is_the_same_setting_on_every_process(monkeypatch):
    """A loss function that closes over ``device = accelerator.device`` (cuda:0 on process 0, cuda:1 on
    process 1) was refused as a setting that differs between the processes (its code digest held the
    device's index), though every process computes the same loss: a device counts by its type there."""
    gathered = [_settings(0), _settings(1)]

    def all_gather_object(every, mine):
        every[:] = [{k: repr(v) for k, v in g.items()} for g in gathered]

    monkeypatch.setattr(D, "is_distributed", lambda: True)
    monkeypatch.setattr(D.dist, "get_world_size", lambda: 2)
    monkeypatch.setattr(D.dist, "all_gather_object", all_gather_object)
    D.refuse_differing_settings(_settings(1), fix="give the same settings")  # no error: they agree
    # another value closed over still differs, and a checkpoint's identity (a resume on the same process) keeps
    # the device as it was recorded
    assert value_identity(_loss_on(torch.device("cuda:1"))) != value_identity(lambda out, y: F.cross_entropy(out, y))
    assert value_identity(_Criterion("cuda:0")) != value_identity(_Criterion("cpu"))
    assert callable_identity(_loss_on(torch.device("cuda:0"))) != callable_identity(_loss_on(torch.device("cuda:1")))
