"""Process-group helpers: every decision that edits masks is made from statistics reduced across
processes, so all ranks reach the same masks without broadcasting them."""
from __future__ import annotations

import os
import sys
from typing import Any, Callable, Iterable, List, Optional

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def collective_device(t: torch.Tensor) -> torch.device:
    """Where a collective of the process group reduces ``t``: on ``t``'s own device, except under the
    NCCL backend, which reduces CUDA tensors only: a tensor elsewhere (a CPU model's statistics, a
    CPU copy) goes through the process's current CUDA device."""
    return torch.device("cuda") if dist.get_backend() == "nccl" and not t.is_cuda else t.device


BUCKET_ELEMENTS = 1 << 24  # entries reduced at once: 16 M float64 values, 128 MB


@torch.no_grad()
def all_reduce_mean_(tensors: Iterable[torch.Tensor], bucket_elements: Optional[int] = None) -> None:
    """In-place mean over ranks (no-op on one process), summed in float64. The tensors are reduced
    in buckets of at most ``bucket_elements`` entries (default :data:`BUCKET_ELEMENTS`; a tensor
    larger than that is split across buckets), one after the other, so the extra memory is one
    bucket rather than a float64 copy of everything. Each entry is summed on its own, so the result
    does not depend on the bucket size."""
    if bucket_elements is not None and (isinstance(bucket_elements, bool) or int(bucket_elements) != bucket_elements
                                        or bucket_elements < 1):
        raise ValueError(f"bucket_elements must be a positive whole number of entries (or None for "
                         f"{BUCKET_ELEMENTS}), got {bucket_elements!r}")
    tensors: List[torch.Tensor] = [t for t in tensors if t is not None]
    if not tensors or not is_distributed():
        return
    cap = int(bucket_elements or BUCKET_ELEMENTS)
    # a flat view of each tensor to reduce into (a copy, written back at the end, where there is none)
    flats = [t.view(-1) if t.is_contiguous() else t.reshape(-1).clone() for t in tensors]
    device = collective_device(flats[0])
    world = dist.get_world_size()
    i, start = 0, 0  # the next entry to reduce: flats[i][start]
    while i < len(flats):
        pieces, n = [], 0  # (tensor's flat view, first entry, entries) in this bucket
        while i < len(flats) and n < cap:
            k = min(flats[i].numel() - start, cap - n)
            if k > 0:
                pieces.append((flats[i], start, k))
                n += k
                start += k
            if start >= flats[i].numel():
                i, start = i + 1, 0
        if not pieces:
            continue
        bucket = torch.empty(n, dtype=torch.float64, device=device)
        off = 0
        for f, s, k in pieces:
            bucket[off : off + k].copy_(f[s : s + k])
            off += k
        dist.all_reduce(bucket, op=dist.ReduceOp.SUM)
        bucket /= world
        off = 0
        for f, s, k in pieces:
            f[s : s + k].copy_(bucket[off : off + k])
            off += k
        del bucket
    for t, f in zip(tensors, flats):
        if not t.is_contiguous():
            t.copy_(f.view_as(t))


def agreed_problem(problem):
    """The first non-empty of every process's ``problem`` (a message, or anything picklable; in
    rank order), on every process: a check that fails on one process (a file only it reads, a write
    only it makes) stops all of them together, instead of one raising while the others wait in their
    next collective."""
    if not is_distributed():
        return problem
    every: list = [None] * dist.get_world_size()
    dist.all_gather_object(every, problem or None)
    return next((p for p in every if p), None)


_RAISED_ALIKE = "_adaptive_raised_alike"  # set on an error every process of the group raises alike


def raised_alike(e: BaseException) -> bool:
    """Whether every process of the process group raises ``e`` alike (the same type and message):
    an error :func:`agreed_error` returned, which a command line reports once (from process 0)."""
    return bool(getattr(e, _RAISED_ALIKE, False))


def mark_raised_alike(e: BaseException) -> BaseException:
    """Mark ``e`` as raised alike by every process of a process group (:func:`raised_alike`): an error
    of a check one process made and broadcast (a lock only the main process takes). Returns ``e``."""
    if is_distributed():
        setattr(e, _RAISED_ALIKE, True)
    return e


def _outcome(e: Optional[BaseException]) -> Optional[tuple]:
    """What one process tells the others of its check: None (passed), or its error's class (module
    and qualified name: a class pickles by them, and one defined in a function would not), message
    and notes, as strings."""
    if e is None:
        return None
    message = str(e.args[0] if isinstance(e, KeyError) and e.args else e) or type(e).__name__
    notes = tuple(str(n) for n in (getattr(e, "__notes__", None) or ()))
    return type(e).__module__, type(e).__qualname__, message, notes


def _rebuilt(module: str, qualname: str, message: str) -> BaseException:
    """An error of the class named (as this process knows it) built from ``message``; a RuntimeError
    where there is no such class or it is not built from one message."""
    cls = sys.modules.get(module)
    for part in qualname.split("."):
        cls = getattr(cls, part, None)
    if isinstance(cls, type) and issubclass(cls, Exception):
        try:
            return cls(message)
        except Exception:  # noqa: BLE001 - a class of other arguments: the message is what counts
            pass
    return RuntimeError(message)


def _processes(ranks: List[int], world: int) -> str:
    """``ranks`` in words: "process 1 of 2", "processes 0, 2 of 4"."""
    return f"process{'es' if len(ranks) > 1 else ''} {', '.join(map(str, ranks))} of {world}"


_SAME_FILES_PASSED = ("every process must see the same files (a folder they all see, or the same copy on each) and run "
                      "with the same settings")


def agreed_error(own: Optional[BaseException], some_alone: bool = False,
                 passed_why: str = _SAME_FILES_PASSED) -> Optional[BaseException]:
    """The error every process raises after a check each ran on its own (``own``: this process's,
    None where it passed), agreed in one gather of a few words (none on one process, which gets
    ``own``): None where every process passed. A check that reads what each process sees for
    itself (a file on its own disk, a folder under its own working directory) can fail on some
    processes only; the others would go on into their next collective and wait there for the one
    that stopped (the launcher then ends them, with a traceback of a closed connection). Here every
    process stops together: where all failed alike, each raises its own error; else every one
    raises one error that names which processes failed and why (as the first of them would, its type
    and notes; a RuntimeError where its type is not built from a message) and which passed. The
    error returned is marked :func:`raised_alike`. Every process must call it at the same point
    (after the same collectives): put it after the check, not inside a part that may skip it.
    ``some_alone``: the main process makes part of the check alone (it hashes the files): its failure
    is every process's error as it is, naming no process (the others could not have found it); the
    failures of other processes where it passed are named as above (their own copy of the files).
    ``passed_why``: what the message says after the processes that passed "found no such problem"
    (by default, that every process must see the same files; a check of each process's own shard of
    the training data says that each read other batches)."""
    if not is_distributed():
        return own
    world = dist.get_world_size()
    every: list = [None] * world
    dist.all_gather_object(every, _outcome(own))
    failed = [(r, x) for r, x in enumerate(every) if x is not None]
    if not failed:
        return None
    module, qualname, message, notes = failed[0][1]
    alone = some_alone and failed[0][0] == 0  # the main process's failure, found by it alone
    if len(failed) == world and len(set(x for _, x in failed)) == 1 or alone and _outcome(own) == failed[0][1]:
        return mark_raised_alike(own)
    if not alone:
        passed = [r for r, x in enumerate(every) if x is None]
        message = "; ".join(f"{_processes([r], world)}: {x[2][:-1] if x[2].endswith('.') else x[2]}"
                            for r, x in failed)
        if passed:
            message += f"; {_processes(passed, world)} found no such problem: {passed_why}"
    error = _rebuilt(module, qualname, message)
    for note in notes:
        error.add_note(note)
    return mark_raised_alike(error)


def agreed_call(check: Callable[[], Any], some_alone: bool = False, passed_why: str = _SAME_FILES_PASSED) -> Any:
    """``check()``'s result, its outcome agreed by every process (:func:`agreed_error`): an error it
    raises on any process is raised by all of them together. ``check`` must make no collective call
    that a process failing before it would skip. ``some_alone``: the main process does part of it
    alone (a file only it writes): its failure is every process's error as it is, naming no process
    (:func:`agreed_error`). ``passed_why``: what the message says of the processes that passed
    (:func:`agreed_error`)."""
    try:
        result, own = check(), None
    except Exception as e:  # noqa: BLE001 - every process hears of any failure, and raises
        result, own = None, e
    error = agreed_error(own, some_alone=some_alone, passed_why=passed_why)
    if error is None:
        return result
    if error is own:
        raise own
    raise error from own


_SAME_FILES = "every process must see the same files (a folder they all see, or the same copy on each)"


def refuse_differing(value: str, what: str, fix: str = _SAME_FILES, detail: Optional[str] = None) -> None:
    """Raise a ValueError on every process alike (:func:`raised_alike`) where the processes hold
    different values ``value`` of ``what`` (each process's named), found each on its own (the checkpoint
    a --resume names, found in a folder each process lists for itself; the sizes of the data each
    loaded); nothing, and no collective, on one process. ``fix``: what to do, the message's end.
    ``detail``: where this process found its value (its data folder, say), shown after it in the
    message, not compared. Processes of the same value (and detail) are named together ("processes
    0, 2 of 4"), so the message says which differ."""
    if not is_distributed():
        return
    every: list = [None] * dist.get_world_size()
    dist.all_gather_object(every, (value, detail))
    if len(set(v for v, _ in every)) > 1:
        groups: dict = {}  # (value, detail): the ranks that found it, in order of the first
        for r, found in enumerate(every):
            groups.setdefault(found, []).append(r)
        found = "; ".join(f"{_processes(ranks, len(every))}: {v}" + (f" ({d})" if d else "")
                          for (v, d), ranks in groups.items())
        raise mark_raised_alike(ValueError(f"the processes found different {what} ({found}), so they would not run "
                                           f"alike: {fix}"))


def refuse_differing_settings(settings: dict, fix: str) -> None:
    """Raise a ValueError on every process alike (:func:`raised_alike`) where the processes were given
    different ``settings`` (name: a value that reads the same wherever it is equal: a number, a string,
    lists of them), naming each setting that differs and each process's value of it, then ``fix``; one
    gather, and nothing on one process. A setting that differs between processes would have them take
    other steps (a collective one makes and another does not: the first waits until the group's timeout)
    or choose other masks."""
    if not is_distributed():
        return
    every: list = [None] * dist.get_world_size()
    dist.all_gather_object(every, {k: repr(v) for k, v in settings.items()})
    names = list(dict.fromkeys(k for e in every for k in e))
    differ = []
    for name in names:
        groups: dict = {}  # value: the ranks given it, in order of the first
        for r, e in enumerate(every):
            groups.setdefault(e.get(name, "(none)"), []).append(r)
        if len(groups) > 1:
            said = "; ".join(f"{_processes(ranks, len(every))}: {v if len(v) <= 200 else v[:200] + '...'}"
                             for v, ranks in groups.items())
            differ.append(f"{name} ({said})")
    if differ:
        raise mark_raised_alike(ValueError(f"the processes were given different settings: {', '.join(differ)}: {fix}"))


# what a collective raises when another process of the group has ended (gloo: its socket closed;
# the store's client when the process that hosted it, process 0, has gone)
_PEER_GONE = ("Connection closed by peer", "Connection reset by peer", "Broken pipe")


class PeerStoppedError(RuntimeError):
    """This process's collective failed because another process of the launch stopped first (an
    error, written by that process, or Ctrl-C): a command line prints it as one line beside that
    process's own, not gloo's traceback."""


# where torch raises a collective's error: torch.distributed's calls, DDP's wrapper, and the autograd engine,
# from which DDP's gradient all-reduce (run during backward) raises
_COLLECTIVE_CODE = tuple(os.path.join(os.path.dirname(os.path.abspath(torch.__file__)), *d.split("/")) + os.sep
                         for d in ("distributed", "nn/parallel", "autograd"))


def _raised_in_collective(e: BaseException) -> bool:
    """Whether ``e`` was raised in torch's collective code (:data:`_COLLECTIVE_CODE`: the innermost frame
    of its traceback), not in this process's own code (a data loader's, a model's, a DataLoader
    worker's error raised again by torch.utils.data)."""
    tb = e.__traceback__
    if tb is None:
        return False
    while tb.tb_next is not None:
        tb = tb.tb_next
    return os.path.abspath(tb.tb_frame.f_code.co_filename).startswith(_COLLECTIVE_CODE)


def peer_stopped(e: BaseException) -> bool:
    """Whether ``e`` is a collective's failure because another process of a multi-process launch
    (``WORLD_SIZE`` > 1) ended: gloo's "Connection closed by peer", a reset or broken connection,
    raised in torch's collective code. The same words in an error of this process's own (a dataset
    read over the network) are not: that error is this process's to report. Under NCCL the words
    differ: its error is not known, and stays as it is."""
    try:
        launched = int(os.environ.get("WORLD_SIZE") or 1) > 1
    except ValueError:
        launched = False
    return (launched and isinstance(e, RuntimeError) and not isinstance(e, PeerStoppedError)
            and any(s in str(e) for s in _PEER_GONE) and _raised_in_collective(e))


def peer_stopped_error(how: str = "") -> PeerStoppedError:
    """The error of a process whose collective failed because another stopped first
    (:func:`peer_stopped`), naming this process (its rank and the world's size, as the launch set
    them) and where to look; ``how``: how to continue the run, appended. Raise it from the
    collective's error. It costs nothing while every process runs: a failure during training
    (a data file only one process reads, an error or Ctrl-C on one) is not agreed step by step,
    so the process that failed reports its own error and the others this one."""
    r, w = os.environ.get("RANK", "?"), os.environ.get("WORLD_SIZE", "?")
    return PeerStoppedError(
        f"process {r} of {w} stopped because another process of the launch stopped first: its error (or "
        "Ctrl-C) is written above, and the launcher's report names its rank; fix what it reports"
        + (f"; {how}" if how else ""))


_INTERRUPT_KEY = "adaptive_interrupt_reported"  # counted in the launch's store by each process a Ctrl-C reached
_ROUND = [0]  # the command-line runs this process has begun (begin_report_round): the round of the store's keys


def begin_report_round() -> None:
    """Begin a new round of the launch store's report keys (:func:`claim_interrupt_report`,
    :func:`note_error_reported`): a command line calls it as it starts a run, so that a second run in
    the same launch (a script that calls a recipe's ``main`` again after catching its error) reads no
    report of the first's. Every process of the launch runs the same runs, so their rounds agree."""
    _ROUND[0] += 1


def _round_key(key: str) -> str:
    """``key`` of this process's round of reports (:func:`begin_report_round`)."""
    return f"{key}.{_ROUND[0]}"


def _launch_store():
    """The store of the default process group (under torchrun or ``accelerate launch``, the launcher's,
    which outlives the processes), None where there is none."""
    if not is_distributed():
        return None
    try:
        return dist.distributed_c10d._get_default_store()
    except Exception:  # noqa: BLE001 - (another torch's internals): the caller goes on without it
        return None


def claim_interrupt_report() -> Optional[bool]:
    """Whether this process is the first of the launch to report a Ctrl-C (every process it reached
    asks; one atomic count in the launch's store answers): True for the first, False for the others,
    None where that cannot be known (no process group, or its store gone)."""
    store = _launch_store()
    if store is None:
        return None
    try:
        return int(store.add(_round_key(_INTERRUPT_KEY), 1)) == 1
    except Exception:  # noqa: BLE001 - (the launcher gone): not known
        return None


def interrupt_reported() -> Optional[bool]:
    """Whether a process of the launch has claimed the report of a Ctrl-C (:func:`claim_interrupt_report`);
    None where that cannot be known."""
    return _store_has(_round_key(_INTERRUPT_KEY))


def _store_has(key: str) -> Optional[bool]:
    """Whether the launch's store holds ``key``; None where that cannot be known (no process group, or its
    store gone with the launcher)."""
    store = _launch_store()
    if store is None:
        return None
    try:
        return bool(store.check([key]))
    except Exception:  # noqa: BLE001 - (the launcher gone): not known
        return None


_ERROR_KEY = "adaptive_error_reported"  # set in the launch's store by process 0 once it has written an agreed error


def _line_digest(text: str) -> str:
    """A short digest of an error line, as the launch's store records it (:func:`note_error_reported`)."""
    import hashlib

    return hashlib.sha256(text.encode("utf-8", "replace")).hexdigest()[:16]


def note_error_reported(text: str = "") -> None:
    """Record in the launch's store that this process (process 0) has written the line ``text`` of an error
    every process raises alike (:func:`raised_alike`), so that the others, which leave it to this one,
    end without writing it (:func:`error_reported`), unless theirs is another (:func:`reported_error_is`);
    nothing where there is no store."""
    store = _launch_store()
    if store is None:
        return
    try:
        store.set(_round_key(_ERROR_KEY), _line_digest(text))
    except Exception:  # noqa: BLE001 - (the launcher gone): the others write it after their wait
        pass


def reported_error_is(text: str) -> bool:
    """Whether the error line process 0 recorded writing (:func:`note_error_reported`) is ``text``: False
    only where it recorded another one (an error "raised alike" that was not, such as argparse's on
    command lines that differ between the processes: this process's own line is then written too); True
    where that cannot be known (no store, or it does not answer), as the line was always taken to be."""
    store = _launch_store()
    if store is None:
        return True
    try:
        recorded = store.get(_round_key(_ERROR_KEY))
    except Exception:  # noqa: BLE001 - (the launcher gone, or not recorded): not known
        return True
    recorded = recorded.decode() if isinstance(recorded, bytes) else str(recorded)
    return recorded == _line_digest(text)


def error_reported() -> Optional[bool]:
    """Whether process 0 has written the line of an error every process raises alike
    (:func:`note_error_reported`); None where that cannot be known (no process group, or its store gone)."""
    return _store_has(_round_key(_ERROR_KEY))


class MaskMismatchError(RuntimeError):
    """The processes of a group hold different masks (:func:`check_masks_agree`)."""


# what a MaskMismatchError says to do: where the masks parted at an update (or at the run's end)
MASKS_FIX = ("Every process must build its controller alike (the same seed=, not offset by the rank; the same "
             "settings) on the same weights, and edit masks only through it: a connectome and controller built before "
             "accelerator.prepare prune each process's own initial weights, so seed the model alike on every process "
             "or build them after prepare, which gives every process rank 0's weights.")
# ... and where they parted as a checkpoint was loaded
RESUME_FIX = ("Every process must resume from the same checkpoint: a folder they all see, or the same copy on each "
              "(a copy of another run's checkpoint of the same name holds other masks).")


def _layer_mask_hashes(conn) -> dict:
    """Each layer's SHA-256 of its bit-packed mask (:meth:`adaptive.Connectome.mask_hash`, one layer at a time)."""
    import hashlib

    from . import bitpack

    return {n: hashlib.sha256(bitpack.pack(m).numpy().tobytes()).hexdigest() for n, m in conn.masks.items()}


def refuse_differing_masks(hashes: List[str], conn, step=None, when: str = "", fix: str = MASKS_FIX) -> None:
    """Raise :class:`MaskMismatchError` where ``hashes`` (every process's mask hash, in rank order:
    :func:`gather_mask_hashes`'s, or :func:`check_masks_agree`'s gather) differ, naming the step
    (``step``, then ``when``: ", right after resuming from ...", say), the processes that hold each
    hash, the layers whose masks differ, and ``fix``. Every process holds the same ``hashes``, so
    every one raises it alike (:func:`raised_alike`); the layers are found in one more gather, made
    only where the hashes differ (by every process alike), so agreeing masks cost no more than the
    hashes' gather. Nothing where they agree."""
    if len(set(hashes)) <= 1:
        return
    world = len(hashes)
    layers = ""
    if is_distributed() and dist.get_world_size() == world:
        every: list = [None] * world
        dist.all_gather_object(every, _layer_mask_hashes(conn))
        names = list(dict.fromkeys(n for e in every for n in e))
        differ = [n for n in names if len({e.get(n) for e in every}) > 1]
        if differ:
            shown = ", ".join(differ[:8]) + (f" and {len(differ) - 8} more" if len(differ) > 8 else "")
            layers = f"; the masks of {shown} differ"
    groups: dict = {}  # hash: the ranks that hold it, in order of the first
    for r, h in enumerate(hashes):
        groups.setdefault(h, []).append(r)
    held = "; ".join(f"{_processes(ranks, world)} hold{'' if len(ranks) > 1 else 's'} masks {str(h)[:12]}"
                     for h, ranks in groups.items())
    where = (f" at step {step}" if step is not None else "") + when
    raise mark_raised_alike(MaskMismatchError(
        f"connectome masks differ between processes{where} ({held}{layers}). {fix}"))


def check_masks_agree(conn, step=None, when: str = "", fix: str = MASKS_FIX) -> str:
    """Gather every rank's mask hash and raise MaskMismatchError if any differs
    (:func:`refuse_differing_masks`, naming the step, the processes and layers, and ``fix``; ``when``
    follows the step). Returns the hash."""
    h = conn.mask_hash()
    if not is_distributed():
        return h
    hashes: List[str] = [None] * dist.get_world_size()  # type: ignore
    dist.all_gather_object(hashes, h)
    refuse_differing_masks(hashes, conn, step, when, fix)
    return h


def gather_mask_hashes(accelerator, conn) -> List[str]:
    """Every process's mask hash, in rank order, on every process (all equal when they agree); check
    them with :func:`refuse_differing_masks`."""
    if accelerator.num_processes == 1:
        return [conn.mask_hash()]
    from accelerate.utils import gather_object

    return list(gather_object([conn.mask_hash()]))


def exit_launched_process() -> None:
    """End a finished process of a multi-process launch (``WORLD_SIZE`` > 1) without interpreter
    teardown: gloo's background threads can abort a run that has written everything and left its
    process group ("terminate called without an active exception", pytorch/pytorch#190489), more
    often on a loaded machine. Call it last, after every file is closed; a single process returns."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


_SIZE_VARIABLES = ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")


def _launcher_view(pid: int) -> tuple:
    """(its command line as a list, whether its environment sets MASTER_ADDR) of process ``pid``, from
    /proc (Linux); None for what cannot be read."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = [a.decode(errors="replace") for a in f.read().split(b"\0") if a]
    except OSError:
        argv = None
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            has_addr = any(e.startswith(b"MASTER_ADDR=") for e in f.read().split(b"\0"))
    except OSError:
        has_addr = None
    return argv, has_addr


def _is_accelerate_launch(argv: Optional[List[str]]) -> bool:
    """Whether ``argv`` is accelerate's launcher (``accelerate launch``, ``accelerate-launch``,
    ``python -m accelerate.commands.launch``): its first tokens name accelerate and launch."""
    names = [os.path.basename(a) for a in (argv or [])[:4]]
    return any(n.startswith("accelerate") for n in names) and any("launch" in n for n in names)


def _option_value(argv: Optional[List[str]], *names: str) -> Optional[str]:
    """The value of the first of ``names`` (``--opt V`` or ``--opt=V``) on command line ``argv``, or None."""
    for i, tok in enumerate(argv or []):
        if tok in names and i + 1 < len(argv):
            return argv[i + 1]
        if tok.startswith(tuple(n + "=" for n in names)):
            return tok.partition("=")[2]
    return None


def _requested_processes(argv: Optional[List[str]]) -> Optional[int]:
    """The ``--num_processes`` of an ``accelerate launch`` command line, else its ``--config_file``'s
    ``num_processes`` (read by Accelerate's own reader; a file that cannot be read counts as none); None:
    given in neither (Accelerate's default config file is not read)."""
    value = _option_value(argv, "--num_processes", "--num-processes")
    if value is None:
        path = _option_value(argv, "--config_file", "--config-file")
        if path is None:
            return None
        try:
            from accelerate.commands.config.config_args import load_config_from_file

            value = load_config_from_file(path).num_processes
        except Exception:  # noqa: BLE001 - a warning's wording only: a file unread says "several processes"
            return None
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def lone_launched_process_problem(script: str, environ=None, launcher_pid: Optional[int] = None) -> Optional[str]:
    """What to say where ``accelerate launch`` was asked for several processes and started this one
    alone (None otherwise): it starts several only with ``--multi_gpu`` (which it refuses beside its
    ``--cpu``), so ``--cpu --num_processes 2``, or ``--num_processes 2`` on a machine with fewer than two
    GPUs, runs one process, silently. Such a launch sets MASTER_ADDR for the process group it never makes (and
    WORLD_SIZE none); a MASTER_ADDR that the launcher's own environment (``launcher_pid``, default the
    parent process) holds was the user's, and counts only beside a ``--num_processes`` above 1 on its
    command line. A launcher that is not accelerate's (a shell that exported MASTER_ADDR, srun), or one whose
    command line cannot be read (no /proc, as on macOS), says nothing. ``script``: the recipe, as the fix
    names it."""
    env = os.environ if environ is None else environ
    if "ACCELERATE_USE_CPU" not in env or "MASTER_ADDR" not in env:  # (not accelerate's one-process launcher)
        return None
    for name in _SIZE_VARIABLES:  # a launcher that sized a process group: the group says how many there are
        if str(env.get(name, "")).strip():
            return None
    argv, launcher_has_addr = _launcher_view(os.getppid() if launcher_pid is None else launcher_pid)
    if not _is_accelerate_launch(argv):  # a shell, srun, ... (a MASTER_ADDR of the user's), or no /proc to tell
        return None
    requested = _requested_processes(argv)
    if requested is not None and requested <= 1:
        return None
    # the launcher's own environment held it (the user's MASTER_ADDR, passed on), or it cannot be read
    if requested is None and launcher_has_addr is not False:
        return None
    asked = f"{requested} processes" if requested else "several processes (it sets MASTER_ADDR only then)"
    n = requested or "N"
    return (f"accelerate launch was asked for {asked} and started this one alone, which trains by itself: "
            "accelerate launch starts several only with --multi_gpu, and refuses that beside its own --cpu (on a "
            f"machine with fewer than two GPUs, --num_processes {n} alone starts one too). Give accelerate launch "
            f"--multi_gpu --num_processes {n} {script} ... (it runs on CPUs too, with gloo; the recipe's own --cpu, after "
            f"{script}, keeps a run on the CPU where there is a GPU), or drop --num_processes for one process")


def warn_lone_launched_process(accelerator, script: str) -> None:
    """A warning (:func:`lone_launched_process_problem`) where ``accelerator`` runs one process of an
    ``accelerate launch`` that was asked for several; ``script`` names the recipe in the fix."""
    if accelerator.num_processes == 1:
        problem = lone_launched_process_problem(script)
        if problem:
            import warnings

            warnings.warn(problem, stacklevel=2)


def sharded_launch_problem(script: str, environ=None) -> Optional[str]:
    """What to say where this process was launched to shard the model's weights; None otherwise: FSDP
    (``accelerate launch --use_fsdp``, of either ``--fsdp_version``, or ``distributed_type: FSDP`` in an
    ``accelerate config`` file: Accelerate's own flag, ``ACCELERATE_USE_FSDP``, read as Accelerate reads it,
    only ``true`` turning FSDP on), or DeepSpeed ZeRO stage 3 (``--use_deepspeed --zero_stage 3``, or
    ``zero_optimization.stage: 3`` in its ``--deepspeed_config_file``), flags every process of the launch reads
    alike. Both shard each weight across the processes (FSDP2's DTensor shards, FSDP1's FlatParameters,
    ZeRO-3's partitions), while a connectome masks, scores and edits whole weights (a mask cannot be applied to
    a shard); on a CPU Accelerate shards nothing under FSDP and silently runs DDP instead. ``script`` names the
    recipe in the fix; ``environ``: the environment read (``os.environ``)."""
    environ = os.environ if environ is None else environ
    fix = (f"Launch with accelerate launch --multi_gpu --num_processes N {script} ... (DDP: every process holds the "
           "whole model; on CPUs too, with gloo)")
    if environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true":  # (Accelerate's test: "1" is not FSDP)
        return (f"FSDP (accelerate launch --use_fsdp, or distributed_type: FSDP in its config file) cannot run {script}: "
                "it shards each weight across the processes (DTensor shards, or FSDP1's flat parameters), while the "
                "connectome masks, scores and edits whole weights (and on a CPU Accelerate shards nothing and would "
                f"silently run DDP). {fix}")
    if environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true" and _deepspeed_zero_stage(environ) == 3:
        return (f"DeepSpeed ZeRO stage 3 (accelerate launch --use_deepspeed --zero_stage 3, or zero_optimization.stage 3 "
                f"in its DeepSpeed config) cannot run {script}: it partitions each weight across the processes, while "
                f"the connectome masks, scores and edits whole weights. {fix}")
    return None


def _deepspeed_zero_stage(environ) -> Optional[int]:
    """The ZeRO stage a DeepSpeed launch gives, as Accelerate's DeepSpeedPlugin reads it: its
    ``--deepspeed_config_file``'s ``zero_optimization.stage`` (a JSON file), else ``--zero_stage``, else 2; None
    where the file cannot be read (Accelerate says why)."""
    path = environ.get("ACCELERATE_DEEPSPEED_CONFIG_FILE", "none")
    stage = environ.get("ACCELERATE_DEEPSPEED_ZERO_STAGE", 2)
    try:
        if path != "none":
            import json

            with open(path) as f:
                given = json.load(f)["zero_optimization"].get("stage", "auto")
            stage = stage if given == "auto" else given
        return int(stage)
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        return None


def refuse_sharded_launch(script: str) -> None:
    """Raise :func:`sharded_launch_problem`'s ValueError under an FSDP or DeepSpeed ZeRO-3 launch: called before the
    ``Accelerator`` is made (and before anything is written), on every process alike (the flag is the
    launch's)."""
    problem = sharded_launch_problem(script)
    if problem:
        raise ValueError(problem)


def uncompiled_model_note(accelerator, script: str) -> Optional[str]:
    """The warning line (None where there is nothing to say) for a launch whose dynamo backend
    (``accelerate launch --dynamo_backend``, or ``dynamo_config`` in its config file) a mask-only run does
    not apply: it hands Accelerate its data loaders, never the model (no weight trains, and the
    presence statistics read the plain model), so nothing is compiled. ``script`` names the recipe."""
    from accelerate.utils import DynamoBackend

    backend = accelerator.state.dynamo_plugin.backend
    if backend == DynamoBackend.NO:
        return None
    return (f"warning: --dynamo_backend {backend.value.lower()} (from accelerate launch or its config) is not applied: "
            f"{script} in mask-only mode does not prepare (or compile) the model; the run continues uncompiled")
