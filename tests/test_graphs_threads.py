"""graphs traced from several threads at once: fx patches ``nn.Module.__call__`` for the whole process while it
traces, so a model another thread ran meanwhile was taken by that trace ("module is not installed as a
submodule"); graphs serializes its traces (graphs.trace.TRACING)."""
import multiprocessing
import os
import threading
import time

import pytest
import torch
from torch import nn

import adaptive
import graphs


class _Slow(nn.Module):
    """Runs ``body`` after a pause that lets the other threads run (as a larger model's trace would)."""

    def __init__(self, body: nn.Module):
        super().__init__()
        self.body = body

    def forward(self, x):
        time.sleep(0.005)
        return self.body(x)


def _models():
    torch.manual_seed(0)
    mlp = _Slow(nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3)))
    cnn = _Slow(nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 5 * 5, 3)))
    inputs = [torch.randn(2, 6), torch.randn(2, 2, 5, 5)]
    return [m.eval() for m in (mlp, cnn)], inputs


def _conns(models):
    g = torch.Generator().manual_seed(1)
    conns = [adaptive.Connectome(m) for m in models]
    for c in conns:
        c.set_masks({n: torch.rand(m.shape, generator=g) < 0.5 for n, m in c.masks.items()})
    return conns


def _same(a, b) -> bool:
    return (torch.equal(a.src, b.src) and torch.equal(a.dst, b.dst)
            and all(torch.equal(a.edge_attrs[k], b.edge_attrs[k]) for k in a.edge_attrs)
            and all(torch.equal(a.node_attrs[k], b.node_attrs[k]) for k in a.node_attrs))


def _in_threads(work, n=4):
    """Run ``work(i)`` in ``n`` threads started together; their results, or the first error raised."""
    start, results, errors = threading.Barrier(n), [None] * n, []

    def run(i):
        start.wait()
        try:
            results[i] = work(i)
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not any(t.is_alive() for t in threads), "a thread still waits: the lock was left held"
    assert not errors, errors[0]
    return results


def test_builds_in_threads_all_succeed_and_match_a_serial_build():
    models, inputs = _models()
    conns = _conns(models)
    serial = [graphs.build(c, example_input=x) for c, x in zip(conns, inputs)]
    for _ in range(3):  # a race: several rounds
        got = _in_threads(lambda i: graphs.build(conns[i % 2], example_input=inputs[i % 2]))
        assert all(_same(g, serial[i % 2]) for i, g in enumerate(got))


def test_compact_and_build_in_threads_all_succeed():
    models, inputs = _models()
    conns = _conns(models)
    serial = [graphs.build(c, example_input=x) for c, x in zip(conns, inputs)]

    def work(i):
        if i % 2:
            return graphs.compact(models[0], conns[0], example_input=inputs[0])
        return graphs.build(conns[1], example_input=inputs[1])

    for _ in range(3):
        got = _in_threads(work)
        assert all(_same(g, serial[1]) for g in got[0::2])
        assert all(g.compaction["max_abs_diff"] <= 1e-4 for g in got[1::2])


def test_the_lock_is_released_when_a_trace_raises():
    model = _Slow(nn.Linear(3, 2))
    try:
        graphs.build(model=model, example_input=torch.randn(2, 5))  # the wrong width: running it fails
    except RuntimeError:
        pass
    else:
        raise AssertionError("a wrong example_input ran")
    got = _in_threads(lambda i: graphs.build(model=model, example_input=torch.randn(2, 3)), n=2)
    assert all(g.live_synapses() == 6 for g in got)


def _build_in_child(q):
    q.put(graphs.build(model=nn.Linear(3, 2), example_input=torch.randn(2, 3)).live_synapses())


def _take_named_lock_in_child(q):
    """Whether the child takes ``graphs.trace.TRACING``, and whether it is the lock graphs' calls hold there."""
    from graphs import locking
    from graphs.trace import TRACING

    q.put((TRACING.acquire(timeout=5), TRACING is locking.TRACING))


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork on this platform")
@pytest.mark.parametrize("in_child,want", [(_build_in_child, 6), (_take_named_lock_in_child, (True, True))])
def test_a_process_forked_while_another_thread_is_in_graphs_can_trace(in_child, want):
    """A fork copied the lock held by another thread of the parent, which never releases it in the child: the
    child's first graphs call waited forever. The child gets a lock of its own, and ``graphs.trace.TRACING`` names
    it there (the lock moved to graphs.locking: a copy bound in graphs.trace at import would be the parent's, held)."""
    from graphs.trace import TRACING

    held, done = threading.Event(), threading.Event()

    def in_graphs():
        with TRACING:  # another thread inside a graphs call
            held.set()
            done.wait(30)

    t = threading.Thread(target=in_graphs)
    t.start()
    try:
        held.wait(30)
        ctx = multiprocessing.get_context("fork")
        q = ctx.Queue()
        child = ctx.Process(target=in_child, args=(q,))
        child.start()
        child.join(20)
        stuck = child.is_alive()
        if stuck:
            child.kill()
            child.join()
        assert not stuck, "the forked child waited on the lock another thread of its parent held"
        assert child.exitcode == 0 and q.get(timeout=5) == want
    finally:
        done.set()
        t.join()
