"""The utility window's statistics and the estimators read from them: what they are said to measure."""
import importlib.util
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from _ports import two_rank_records  # noqa: E402


def _script():
    path = Path(__file__).parent / "scripts" / "two_process_gradient_stats.py"
    spec = importlib.util.spec_from_file_location("two_process_gradient_stats", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _close(a, b):
    torch.testing.assert_close(torch.tensor(a), torch.tensor(b), rtol=1e-5, atol=1e-9)


def test_two_processes_window_is_the_window_of_all_their_batches(tmp_path):
    """Two processes observing two batches each (mask_only: gradients differ by process) hold four batch
    gradients: their reduced window is one process's window of the four, count, batch variance and the
    consistency and evidence scores included. The count was the mean over processes, 2: the batch
    variance's correction was 2/1 for 4/3, and the noise of the mean gradient, variance / n, twice what
    four batches give, so consistency shrank the gradient as if half of them had been seen. Where every
    process observed the same gradients (the same batches, or DDP's averaged one), the count stays."""
    script = _script()
    one = script.window(script.batches())
    rank = two_rank_records("two_process_gradient_stats.py", tmp_path)
    assert rank[0] == rank[1], "the processes' reduced statistics differ"
    got = rank[0]
    assert one["n"] == 4 and got["own"]["n"] == 4, (one["n"], got["own"]["n"])
    for key in ("mean", "variance", "consistency", "evidence"):
        _close(got["own"][key], one[key])
        _close(got["same"][key], one[key])
    assert got["same"]["n"] == 4
    # DDP: one 16-example gradient per step, the same on both processes: a window of 2, as on one process
    pairs = [(torch.cat([a[0], b[0]]), torch.cat([a[1], b[1]]))
             for a, b in zip(script.batches()[0::2], script.batches()[1::2])]
    ddp = script.window(pairs)
    assert got["ddp"]["n"] == ddp["n"] == 2
    for key in ("mean", "variance", "consistency"):
        _close(got["ddp"][key], ddp[key])


def test_the_same_gradients_reduced_in_another_order_still_count_once(tmp_path):
    """Processes holding the same gradients bit for bit (DDP's averaged one) observe them once between them,
    whatever order each device adds up its fingerprint in: one process with one torch thread, the other
    with two, a window of 2 stays 2. The fingerprint was a float64 sum, whose last bits follow the thread
    count (or a GPU's model): the processes read as differing and the window counted 4, halving the noise
    the estimators credit to its mean."""
    rank = two_rank_records("two_process_gradient_stats.py", tmp_path)
    assert rank[0]["same_by_threads"] == rank[1]["same_by_threads"] == {"n": 2}, rank
