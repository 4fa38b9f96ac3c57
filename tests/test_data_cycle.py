"""LoaderCycle: batches pass after pass, and a recorded position that a new process can resume."""
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from adaptive.data.cycle import LoaderCycle

torch.set_num_threads(1)


class Noisy(Dataset):
    """Index plus noise from the global generator (in workers: from the worker's seed)."""

    def __len__(self):
        return 20

    def __getitem__(self, i):
        return torch.tensor(float(i)) + torch.rand(()), i


def loader(workers, own_generator):
    g = torch.Generator().manual_seed(3) if own_generator else None
    return DataLoader(Noisy(), batch_size=6, shuffle=True, generator=g, num_workers=workers)  # 4 batches, last of 2


@pytest.mark.parametrize("workers, own_generator", [(0, False), (0, True), (2, False)])
@pytest.mark.parametrize("stop_after", [2, 4, 6])  # in a pass, at its end, in the second pass
def test_a_new_cycle_resumes_where_the_recorded_one_stood(workers, own_generator, stop_after):
    torch.manual_seed(0)
    a = LoaderCycle(loader(workers, own_generator))
    for _ in range(stop_after):
        next(a)
    state = a.state_dict()
    expected = [next(a) for _ in range(7)]  # crosses into the next pass

    torch.manual_seed(42)  # another process: other random states, another loader object
    b = LoaderCycle(loader(workers, own_generator))
    b.load_state_dict(state)
    got = [next(b) for _ in range(7)]
    for (x1, i1), (x2, i2) in zip(expected, got):
        assert torch.equal(i1, i2) and torch.equal(x1, x2)
    assert b.offset == a.offset

    c = LoaderCycle(loader(workers, own_generator))  # without the state: other batches
    assert any(not torch.equal(e[0], next(c)[0]) for e in expected)


def test_every_example_once_per_pass_and_an_empty_loader_is_refused():
    cyc = LoaderCycle(loader(0, True))
    seen = torch.cat([next(cyc)[1] for _ in range(4)])
    assert sorted(seen.tolist()) == list(range(20))
    with pytest.raises(ValueError, match="no batches"):
        next(LoaderCycle(DataLoader(list(range(0)), batch_size=2)))


@pytest.mark.parametrize("data_seed", [5, None])  # None: the sampler's seed is torch's when prepared
@pytest.mark.parametrize("stop_after", [2, 6, 9])  # in the first pass, in the second, in the third
def test_an_accelerate_prepared_loader_resumes_where_it_stood(stop_after, data_seed):
    """Accelerate's seedable sampler reseeds with seed + epoch at every pass, the epoch taken from
    the prepared loader's pass counter: a fresh loader starts at epoch 0, so the counter is part of
    the position (without it a resumed mask_only run read other batches after its first pass)."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState
    from accelerate.utils import DataLoaderConfiguration

    def prepared():
        AcceleratorState._reset_state(True)
        acc = Accelerator(cpu=True, dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True,
                                                                              data_seed=data_seed))
        return acc.prepare(DataLoader(Noisy(), batch_size=6, shuffle=True))

    try:
        torch.manual_seed(0)
        a = LoaderCycle(prepared())
        for _ in range(stop_after):
            next(a)
        state = a.state_dict()
        expected = [next(a)[1] for _ in range(9)]  # crosses into later passes
        torch.manual_seed(42)  # another process, seeded otherwise
        b = LoaderCycle(prepared())
        b.load_state_dict(state)
        assert [next(b)[1].tolist() for _ in range(9)] == [i.tolist() for i in expected]
        # a position recorded before pass counters were (an older checkpoint) still loads; past the
        # first pass it cannot be exact, and says so
        old = dict(state)
        for k in ("pass_start", "now"):
            if old[k] is not None:
                old[k] = {kk: vv for kk, vv in old[k].items() if kk != "counters"}
        if stop_after < 4:  # the old code recorded a first pass's start before the sampler made its generator
            old["pass_start"] = {**old["pass_start"], "generators": []}
        c = LoaderCycle(prepared())
        if stop_after < 4:
            c.load_state_dict(old)
            assert [next(c)[1].tolist() for _ in range(2)] == [i.tolist() for i in expected[:2]]
        else:
            with pytest.warns(UserWarning, match="recorded without the loader's pass counters"):
                c.load_state_dict(old)
    finally:
        AcceleratorState._reset_state(True)


def test_a_read_only_pass_counter_is_left_alone():
    class ReadOnlyEpoch(torch.utils.data.Sampler):
        def __init__(self, n):
            self.n = n

        @property
        def epoch(self):
            return 0

        def __iter__(self):
            return iter(range(self.n))

        def __len__(self):
            return self.n

    a = LoaderCycle(DataLoader(Noisy(), batch_size=6, sampler=ReadOnlyEpoch(20)))
    next(a)
    state = a.state_dict()
    b = LoaderCycle(DataLoader(Noisy(), batch_size=6, sampler=ReadOnlyEpoch(20)))
    b.load_state_dict(state)  # no AttributeError from a property without a setter
    assert next(b)[1].tolist() == [6, 7, 8, 9, 10, 11]


def test_a_position_recorded_exactly_at_the_end_of_a_pass_resumes_with_the_same_batches():
    """20 examples in batches of 5: the pass ends on a full batch, and the sampler draws its next
    permutation only when asked for a fifth; the record must come after that draw."""
    def make():
        return DataLoader(Noisy(), batch_size=5, shuffle=True, generator=torch.Generator().manual_seed(3))

    torch.manual_seed(0)
    a = LoaderCycle(make())
    for _ in range(4):
        next(a)
    state = a.state_dict()
    expected = [next(a)[1] for _ in range(6)]
    b = LoaderCycle(make())
    b.load_state_dict(state)
    assert [next(b)[1].tolist() for _ in range(6)] == [e.tolist() for e in expected]


def test_loading_a_state_into_a_cycle_part_way_through_a_pass_drops_its_old_pass():
    torch.manual_seed(0)
    a = LoaderCycle(loader(0, True))
    state = a.state_dict()  # before its first batch
    expected = [next(a)[1].tolist() for _ in range(6)]
    b = LoaderCycle(loader(0, True))
    for _ in range(2):
        next(b)
    b.load_state_dict(state)
    assert [next(b)[1].tolist() for _ in range(6)] == expected


def _resumed_draw(seed_all, draw):
    """``draw()`` right after a state recorded with a cached second Gaussian, then after resuming it
    in a process whose random states differ."""
    seed_all(1)
    draw()  # draws a pair and keeps the second for the next call
    state = LoaderCycle(loader(0, True)).state_dict()
    expected = draw()
    seed_all(2)
    draw()
    LoaderCycle(loader(0, True)).load_state_dict(state)
    return expected, draw()


def test_numpys_cached_second_gaussian_survives_a_resume():
    import numpy as np

    expected, got = _resumed_draw(np.random.seed, np.random.randn)
    assert got == expected


def test_pythons_cached_second_gaussian_survives_a_resume():
    import random

    expected, got = _resumed_draw(random.seed, lambda: random.gauss(0.0, 1.0))
    assert got == expected


class ReadAhead:
    """A loader that loads the next batch before it yields the current one (as an
    Accelerate-prepared loader does)."""

    def __init__(self, inner):
        self.inner = inner
        self.sampler = inner.sampler  # where LoaderCycle finds the generator that shuffles

    def __len__(self):
        return len(self.inner)

    def __iter__(self):
        it = iter(self.inner)
        current = next(it, None)
        while current is not None:
            following = next(it, None)
            yield current
            current = following


def _prepared_noisy():
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(True)
    return Accelerator(cpu=True).prepare(DataLoader(Noisy(), batch_size=3, shuffle=True,
                                                    generator=torch.Generator().manual_seed(3)))


@pytest.mark.parametrize("make", [lambda: ReadAhead(loader(0, True)), _prepared_noisy],
                         ids=["read-ahead", "accelerate"])
@pytest.mark.parametrize("stop_after", [1, 3, 5])
def test_a_read_ahead_batch_draws_its_random_transform_as_it_did(make, stop_after):
    """Random transforms in the main process draw from the global generator, and other code draws
    from it between batches (a mask_only run's evaluations do). A loader that reads ahead has
    drawn the batch after the recorded position already; the replay must draw it the same way
    (a resumed mask_only run with --augment read another first batch and chose other masks)."""
    from accelerate.state import AcceleratorState

    try:
        torch.manual_seed(0)
        a = LoaderCycle(make())
        for _ in range(stop_after):
            next(a)
            torch.rand(5)  # other code draws between batches
        state = a.state_dict()
        expected = [next(a)[0] for _ in range(4)]
        torch.manual_seed(42)
        b = LoaderCycle(make())
        b.load_state_dict(state)
        got = [next(b)[0] for _ in range(4)]
        assert all(torch.equal(x, y) for x, y in zip(expected, got)), (expected, got)
        # and a position recorded right after such a load resumes the same way
        c = LoaderCycle(make())
        c.load_state_dict(state)
        again = c.state_dict()
        d = LoaderCycle(make())
        d.load_state_dict(again)
        assert all(torch.equal(x, next(d)[0]) for x in expected)
    finally:
        AcceleratorState._reset_state(True)


class LongerThanItSays(torch.utils.data.IterableDataset):
    """24 examples in batches of 6 (4 batches) from a dataset that claims 18 (3 batches)."""

    def __len__(self):
        return 18

    def __iter__(self):
        for i in range(24):
            yield torch.tensor(float(i)) + torch.rand(()), i


@pytest.mark.parametrize("stop_after", [2, 3, 4, 5])
def test_a_loader_longer_than_its_length_resumes_with_the_batch_it_read_past_the_end(stop_after):
    """Recording at the stated end of a pass reads one batch further to see whether the pass ended;
    a loader that had one more kept it for next, and the resumed run read an earlier batch again
    (a mask_only stage of one pass ends exactly there)."""
    def make():
        return DataLoader(LongerThanItSays(), batch_size=6)

    torch.manual_seed(0)
    a = LoaderCycle(make())
    for _ in range(stop_after):
        next(a)
        torch.rand(3)  # other code draws between batches
    state = a.state_dict()
    expected = [next(a) for _ in range(6)]
    torch.manual_seed(42)
    b = LoaderCycle(make())
    b.load_state_dict(state)
    got = [next(b) for _ in range(6)]
    assert [g[1].tolist() for g in got] == [e[1].tolist() for e in expected]
    assert all(torch.equal(g[0], e[0]) for g, e in zip(got, expected))


class ToDevice:
    """A loader of one's own: each batch of the DataLoader it holds, moved (here: cast) on the way."""

    def __init__(self, loader):
        self.loader = loader

    def __len__(self):
        return len(self.loader)

    def __iter__(self):
        for x, i in self.loader:
            yield x.double(), i


class SlottedToDevice(ToDevice):
    __slots__ = ("inner",)

    def __init__(self, loader):
        self.inner = loader

    @property
    def loader(self):
        return self.inner


def _seeded(seed):
    return DataLoader(Noisy(), batch_size=6, shuffle=True, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("wrap", [ToDevice, SlottedToDevice])
@pytest.mark.parametrize("stop_after", [2, 6])  # in a pass, in the second pass
def test_a_wrapper_holding_a_shuffling_dataloader_resumes_where_it_stood(stop_after, wrap):
    """The wrapped DataLoader's own generator was not recorded (only the loader's own sampler attributes were
    looked at): the replay ran the pass under the resumed loader's generator as it was, and the resumed run read
    other batches, unsaid (optimize_connectome's checkpoint= resumed to other masks)."""
    a = LoaderCycle(wrap(_seeded(3)))
    for _ in range(stop_after):
        next(a)
    state = a.state_dict()
    expected = [next(a) for _ in range(5)]
    b = LoaderCycle(wrap(_seeded(99)))  # another process: its generator anywhere (the recorded one replaces it)
    b.load_state_dict(state)
    for (x1, i1), (x2, i2) in zip(expected, [next(b) for _ in range(5)]):
        assert torch.equal(i1, i2) and torch.equal(x1, x2)


def test_a_wrappers_position_recorded_before_its_dataloaders_generators_were_resumes_with_a_warning(monkeypatch):
    """A checkpoint written before the wrapped DataLoader's generators were recorded holds none of them: refused
    as "another loader" once they were, where it is the recorded run's loader. It resumes as it did then, warned."""
    from adaptive.data import cycle

    with monkeypatch.context() as m:
        m.setattr(cycle, "_wrapped_loaders", lambda obj: [])  # what the library recorded before
        a = LoaderCycle(ToDevice(_seeded(3)))
        for _ in range(6):
            next(a)
        state = a.state_dict()
    for key in ("pass_start", "now", "before_last"):  # (no such key then)
        del state[key]["wrapped_loaders"]
    assert len(state["pass_start"]["generators"]) == 0 and state["offset"] == 2
    b = LoaderCycle(ToDevice(_seeded(3)))
    with pytest.warns(UserWarning, match="recorded without the random states of the DataLoader your loader holds"):
        b.load_state_dict(state)
    assert b.offset == 2
    c = LoaderCycle(ToDevice(_seeded(3)))
    with pytest.raises(ValueError, match="the loader shuffles with 1 generator"):  # (one recorded now: another loader)
        c.load_state_dict(LoaderCycle(ToDevice(DataLoader(Noisy(), batch_size=6, shuffle=True))).state_dict())


class _Private:
    """A wrapper that keeps its DataLoader in a private slot (name-mangled) and has a property that must not run."""

    __slots__ = ("__dl",)

    def __init__(self, loader):
        self.__dl = loader

    def __iter__(self):
        return iter(self.__dl)

    def __len__(self):
        return len(self.__dl)

    @property
    def loud(self):
        raise AssertionError("read")


def test_a_private_slot_is_found_and_no_property_runs():
    from adaptive.data.cycle import _wrapped_loaders

    dl = _seeded(3)
    assert _wrapped_loaders(_Private(dl)) == [dl]
