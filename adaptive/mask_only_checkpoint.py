"""Stage checkpoints of :func:`adaptive.optimize_connectome`: resume a long mask-only run.

After every stage (one target, or one rung of the "best" ladder) the run can be recorded in one
file: the masks, the controller's state (estimator values and moments, policy, events), every
snapshot kept so far, the history and the clocks. A run that starts with that file present
continues after its last completed stage instead of starting over.

The file carries a fingerprint of what the run was asked to do (targets, settings, the loss and
accuracy functions by name, the number of synapses, a digest of each frozen weight tensor); a file
from another run is refused with the differences named, before anything changes. Files are
written atomically (a temporary file renamed), by the first process only; every process reads the
same file when it resumes.

The loaders' positions are recorded too (:class:`adaptive.data.cycle.LoaderCycle`): the stages
after a resume read the batches the uninterrupted run would have read, so a resumed run reaches
the same masks, given the same loaders (same dataset, batch size, shuffling) and a deterministic
device. A stage that ends inside a pass over the train loader (``passes`` not a whole number)
replays that pass up to the recorded batch when it resumes: loaded and dropped, no compute.
"""
from __future__ import annotations

import functools
import hashlib
import math
import os
import re
from pathlib import Path
from types import CodeType, FunctionType, MethodType, ModuleType
from typing import Dict, List, Optional

import torch

from .atomic import atomic_torch_save
from .distributed import rank

FORMAT = 1


class CheckpointMismatchError(ValueError):
    """A stage checkpoint that cannot continue this run (another run's, or unreadable).

    ``problem`` says what is wrong with the file and ``fix`` what to do; a recipe that gives the
    checkpoint path through an option of its own re-raises with a ``fix`` naming that option
    (:meth:`with_fix`)."""

    def __init__(self, problem: str, fix: str = "", damaged: bool = False, kept: bool = False):
        super().__init__(f"{problem}. {fix}" if fix else problem)
        self.problem, self.fix, self.damaged, self.kept = problem, fix, damaged, kept

    def with_fix(self, fix: str, afresh: Optional[str] = None) -> "CheckpointMismatchError":
        """The same problem with another ``fix``; a damaged file cannot be resumed with any settings,
        so its fix says that and how to start afresh (``afresh``: the recipe's way, when a run
        without its resume option is not). A ``kept`` fix (processes that read different files: no
        option of the recipe's mends that) stays."""
        if self.kept:
            return self
        if self.damaged:
            return CheckpointMismatchError(self.problem, "It cannot be resumed: " + (afresh or _RECIPE_AFRESH), damaged=True)
        return CheckpointMismatchError(self.problem, fix)


# what load_stage suggests to a caller of optimize_connectome(checkpoint=PATH)
_API_FIX = {"unreadable": "Delete it, or pass another checkpoint= file, to start afresh",
            "damaged": "Delete it, or pass another checkpoint= file (a copy of it made before the damage), to start afresh",
            "other run": "Use the same settings to resume, or pass another checkpoint= file (or delete it) to start afresh"}


_RECIPE_AFRESH = ("delete it (or put back a copy made before the damage) and run without --resume to start afresh, "
                  "or give another --output_dir")


def begin(path, resume: bool) -> Optional[str]:
    """What a recipe does with its checkpoint ``path`` before a run: with ``resume`` it must exist
    (FileNotFoundError otherwise); without, an earlier one is set aside (first process) so the run
    starts afresh, and the message saying so is returned. Call :func:`settle` when the run ends or
    fails: the earlier checkpoint is dropped once this run has recorded a stage of its own, and put
    back if it has not (bad input refused before any work must not cost the earlier run its
    checkpoint). Callers wait for every process after.

    The recipes refuse a run without their resume option in a folder that holds an earlier run
    (:mod:`adaptive.run_folder`), so there an earlier checkpoint is set aside only under
    ``--overwrite``; they delete it with the rest of that run once the new settings are accepted
    (the first history record), before this run records a stage."""
    path = Path(path)
    earlier = _set_aside(path)
    if resume and not path.is_file() and earlier.is_file():
        if rank() == 0:  # a fresh run killed before its first stage left the earlier run's record aside
            os.replace(earlier, path)
        return None
    if resume and not path.is_file():
        raise FileNotFoundError(f"--resume: no {path.name} in {path.parent} to continue; run without --resume to start")
    if not resume and path.is_file():
        if rank() == 0:
            os.replace(path, earlier)
        return (f"starting afresh: {path} of an earlier run is replaced once this run records its first stage, "
                "and kept if this run stops before that (--resume continues it)")
    return None


def settle(path) -> None:
    """After a run that :func:`begin` started afresh, finished or failed: the earlier run's
    checkpoint is dropped when this run recorded a stage of its own, else put back (first process)."""
    path = Path(path)
    earlier = _set_aside(path)
    if rank() != 0 or not earlier.is_file():
        return
    if path.is_file():
        earlier.unlink()
    else:
        os.replace(earlier, path)


def check_writable(path) -> None:
    """Refuse, before any work, a checkpoint ``path`` that cannot be written (:func:`save_stage` failed
    only after the first stage): a file where a folder on its way should be, or a folder this process
    cannot create a file in (the nearest existing one: the write creates the rest). Creates nothing;
    every process gets the first process's answer."""
    import tempfile

    from .distributed import agreed_problem
    from .integrity import write_failure

    path = Path(path)
    problem = ""
    if rank() == 0:
        folder = path.parent
        while not folder.exists() and folder != folder.parent:  # (False too under a file: NotADirectoryError)
            folder = folder.parent
        if not folder.is_dir():
            problem = f"{folder} is a file, not a folder"
        else:
            try:
                tempfile.TemporaryFile(dir=folder).close()
            except OSError as e:
                problem = f"no file can be created in {folder} ({write_failure(e)})"
    problem = agreed_problem(problem)
    if problem:
        raise ValueError(f"checkpoint {path} cannot be written: {problem}; give a checkpoint= path in a folder that "
                         "can be written (checked before any work: the first stage's record would have failed)")


def _set_aside(path: Path) -> Path:
    return path.with_name(path.name + ".earlier")


def weights_digest(original: Dict[str, torch.Tensor]) -> List[List[str]]:
    """The exact identity of the frozen weights: ``[name, digest]`` per layer, the digest a blake2b of
    the tensor's dtype, shape and bytes (row-major, on the CPU; any dtype, bf16 included), so that
    weights negated, permuted or changed in one bit are other weights, on any device."""
    out = []
    for name, o in original.items():
        t = o.detach().to("cpu").contiguous()
        h = hashlib.blake2b(f"{t.dtype} {tuple(t.shape)}".encode(), digest_size=16)
        h.update(t.reshape(-1).view(torch.uint8).numpy())  # raw bytes: bf16 has no numpy dtype of its own
        out.append([name, h.hexdigest()])
    return out


def weights_checksum(original: Dict[str, torch.Tensor]) -> List[float]:
    """Per-layer sums of |w| (float64): the weights' identity in checkpoints written before
    :func:`weights_digest` (blind to a sign or an order); still compared, with its tolerance, when
    such a checkpoint is resumed."""
    return [float(o.detach().double().abs().sum()) for o in original.values()]


def _is_sums(v) -> bool:
    return isinstance(v, list) and bool(v) and all(isinstance(x, float) for x in v)


def _is_digest(v) -> bool:
    return isinstance(v, list) and all(isinstance(x, list) and len(x) == 2 and all(isinstance(y, str) for y in x)
                                       for x in v)


def frozen_tensors_digest(model: torch.nn.Module, prunable) -> List[List[str]]:
    """:func:`weights_digest` of every tensor of ``model`` that is not a prunable weight (``prunable``: those
    parameters, a Connectome's ``params``): biases, normalisation layers' weights and running statistics, and
    other buffers, by their names in the module a wrapper runs. They are frozen too and shape every
    evaluation: a checkpoint of other biases was resumed without a word, its held-out figures then disagreeing
    with the snapshots' own."""
    from .wrappers import _plain_module

    plain, skip = _plain_module(model), {id(p) for p in prunable}
    named = [(n, t) for n, t in plain.named_parameters() if id(t) not in skip] + list(plain.named_buffers())
    return weights_digest({n: t for n, t in named if isinstance(t, torch.Tensor)})


def _weights_differences(saved, now: list, weights: Optional[Dict[str, torch.Tensor]], key: str = "weights",
                         unit: str = "layer") -> Optional[str]:
    """What differs between the weights a checkpoint recorded (``saved``: :func:`weights_digest`'s
    list, or an older checkpoint's :func:`weights_checksum`) and this run's (``now``, a digest
    list of ``weights``); None when they are the same. ``key`` and ``unit``: how the message names the
    fingerprint's entry and each tensor of it."""
    if key != "weights":
        problem = _weights_differences(saved, now, weights)
        return None if problem is None else key + problem[len("weights"):].replace("(layer", f"({unit}").replace(
            "another model (layers", f"another model ({unit}s")
    fix = "load the weights that run started from"
    names = [n for n, _ in now]
    if _is_sums(saved):  # an older checkpoint's
        if weights is None:
            return "weights: the checkpoint records an older version's sums of |w|, which need the weights to check"
        if len(saved) != len(now):
            return f"weights: the checkpoint was made from another model ({len(saved)} layers, this run {len(now)})"
        # sums on another device may differ in the last bits
        differ = [n for n, a, b in zip(names, saved, weights_checksum(weights))
                  if not math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-12)]
    elif not _is_digest(saved):
        return "weights: the checkpoint was made from other weights (it records no digest per layer)"
    elif [n for n, _ in saved] != names:
        return (f"weights: the checkpoint was made from another model (layers {[n for n, _ in saved][:5]}, "
                f"this run {names[:5]})")
    else:
        differ = [n for (n, a), (_, b) in zip(saved, now) if a != b]
    if not differ:
        return None
    more = f" and {len(differ) - 1} more" if len(differ) > 1 else ""
    return f"weights: the checkpoint was made from other weights (layer {differ[0]!r}{more} differs: {fix})"


def fingerprint(**settings) -> dict:
    """The run's identity: settings made comparable (tuples as lists, estimators by their repr)."""
    def norm(v):
        if isinstance(v, (list, tuple)):
            return [norm(x) for x in v]
        if v is None or isinstance(v, (bool, int, float, str)):
            return v
        return repr(v)

    return {k: norm(v) for k, v in settings.items()}


def callable_identity(fn) -> Optional[object]:
    """A name for ``fn`` (a loss or accuracy function) that is the same in every run that passes the
    same function: ``module.qualname`` for a function (for a lambda or a function defined inside
    another, which share such names, followed by a digest of its code, defaults and closed-over
    values, and of the values of the module globals it reads: :func:`_code_digest`), the class and its plain settings (numbers,
    strings, flags: ``label_smoothing``, ``reduction``) for a loss module or another callable object,
    the function and its arguments for a ``functools.partial``. Never a memory address, which would
    differ between the run and its resume. None for None."""
    if fn is None:
        return None
    if isinstance(fn, functools.partial):
        return [callable_identity(fn.func), [_value_identity(a) for a in fn.args],
                {k: _value_identity(v) for k, v in sorted(fn.keywords.items())}]
    if isinstance(fn, MethodType):  # a bound method: its object's identity, then its name
        return [callable_identity(fn.__self__), fn.__name__]
    name = getattr(fn, "__qualname__", None)
    if isinstance(name, str) and not isinstance(fn, torch.nn.Module):  # a function or builtin
        named = f"{getattr(fn, '__module__', None) or ''}.{name}"
        if isinstance(fn, FunctionType) and ("<lambda>" in name or "<locals>" in name):
            # every lambda of a module has one name, and so has a function made inside another at each
            # call: their code and the values they take along tell them apart
            return f"{named} {_code_digest(fn)}"
        return named
    # a loss module or another callable object: its class and its plain settings (label_smoothing,
    # reduction, ...), not its repr (a module's omits most settings, an object's holds an address)
    settings = {k: _own_device_text(v) for k, v in sorted(getattr(fn, "__dict__", {}).items())
                if not k.startswith("_") and k != "training" and (v is None or isinstance(v, (bool, int, float, str)))}
    return [f"{type(fn).__module__}.{type(fn).__qualname__}", settings]


_DIGESTING: set = set()  # ids of the functions whose digest is being made (one that holds itself, through a list)


def _code_digest(fn: FunctionType) -> str:
    """A short sha256 of what a lambda or a local function computes: its code (no file name or line
    numbers, so it holds for a moved or reloaded copy, and in every process), its default arguments and
    the values it closes over (a function among them by its name alone; other values as
    :func:`_value_identity` gives them: never an address, a file path or a set's hash order, so that
    every process of a run, and its resume, agree). The code is Python's bytecode, which differs between
    Python versions: a run resumed under another version is refused, naming the function.

    A function that reads module globals (:func:`_globals_read`: ``SCALE`` in ``lambda x: x * SCALE``)
    is followed by `` globals DIGEST (NAMES)``, a sha256 of their values given as the closed-over ones
    are (a module, function or class by its name). One that reads none has the digest it had before
    the globals were digested, and a checkpoint that recorded a reader's digest without them still
    resumes (:func:`_differences`: that version could not tell)."""
    def const(c):
        if isinstance(c, CodeType):
            return ["code", c.co_code.hex(), [const(x) for x in c.co_consts], list(c.co_names), list(c.co_varnames),
                    list(c.co_freevars), c.co_argcount, c.co_kwonlyargcount, c.co_flags]
        if isinstance(c, (tuple, list)):
            return [const(x) for x in c]
        if isinstance(c, frozenset):  # (its order follows string hashing, which differs by process)
            return sorted(repr(const(x)) for x in c)
        return repr(c)

    def value(v):
        if isinstance(v, FunctionType):  # (a local function that calls itself holds itself)
            return f"{v.__module__}.{v.__qualname__}"
        return _value_identity(v)

    def taken_along():  # its defaults and closed-over values
        cells = []
        for cell in fn.__closure__ or ():
            try:
                cells.append(value(cell.cell_contents))
            except ValueError:  # an empty cell (a name assigned after the function was made)
                cells.append(None)
        return [[value(v) for v in fn.__defaults__ or ()],
                {k: value(v) for k, v in sorted((fn.__kwdefaults__ or {}).items())}, cells]

    if id(fn) in _DIGESTING:  # reached again through a value it closes over (a list that holds it)
        return "code (itself)"
    _DIGESTING.add(id(fn))
    try:
        _AS_BEFORE.append(True)  # a lambda among its values is digested as before too
        try:
            before = taken_along()
        finally:
            _AS_BEFORE.pop()
        digest = "code " + hashlib.sha256(repr([const(fn.__code__), *before]).encode()).hexdigest()[:16]
        if _AS_BEFORE:
            return digest
        names = _globals_read(fn)
        _IN_GLOBALS.append(True)  # a device by its type (_value_text): each process has its own
        try:
            read = {k: value(v) for k, v in names.items()}
            along = taken_along()
        finally:
            _IN_GLOBALS.pop()
        if repr(along) != repr(before):  # a lambda among its values reads globals: they count too
            read[""] = along
    finally:
        _DIGESTING.discard(id(fn))
    if not read:  # as before the globals were digested: a checkpoint of it resumes as it did
        return digest
    return f"{digest} globals {hashlib.sha256(repr(read).encode()).hexdigest()[:16]} ({', '.join(names)})"


_AS_BEFORE: list = []  # non-empty while a digest is made as it was before the globals were (_code_digest)
_IN_GLOBALS: list = []  # non-empty while the digest of the globals read is made (_code_digest)


def _globals_read(fn: FunctionType) -> Dict[str, object]:
    """The module-level names ``fn``'s code (and the code made inside it: a nested lambda, a
    comprehension) reads and that are defined in its module, sorted, with their values: ``SCALE`` in
    ``lambda x: x * SCALE``. Not a builtin, nor a name it assigns itself (``global N; N += 1``: state it
    keeps, which differs between the run and its resume), nor the module's own dunders (``__file__``: a path).

    A global read through its attributes counts by the value it reads there (``args.smoothing``:
    the option, not the whole namespace, whose other options, ``--resume`` among them, differ between
    the run and its resume), down to the first attribute that is callable (a method: ``crit.forward``
    and ``CFG.get`` count by ``crit`` and ``CFG``) or fails; a module's attributes are not followed
    (``F.cross_entropy`` counts as ``F``, a module known by its name)."""
    import dis

    read, assigned, codes = set(), set(), [fn.__code__]
    while codes:
        code = codes.pop()
        codes.extend(c for c in code.co_consts if isinstance(c, CodeType))
        chain = None  # the global being read and the attributes read from it so far
        for ins in dis.get_instructions(code):
            if ins.opname == "EXTENDED_ARG":
                continue
            if chain is not None and ins.opname in ("LOAD_ATTR", "LOAD_METHOD"):
                chain.append(ins.argval)
                continue
            if chain is not None:
                read.add(tuple(chain))
                chain = None
            if ins.opname in ("LOAD_GLOBAL", "LOAD_NAME"):
                chain = [ins.argval]
            elif ins.opname in ("STORE_GLOBAL", "DELETE_GLOBAL"):
                assigned.add(ins.argval)
        if chain is not None:
            read.add(tuple(chain))
    names = getattr(fn, "__globals__", None) or {}
    out = {}
    for first, *attrs in read:
        if first in assigned or not isinstance(first, str) or first not in names \
                or (first.startswith("__") and first.endswith("__")):
            continue
        v, path = names[first], [first]
        for a in attrs if not isinstance(names[first], ModuleType) else ():
            try:
                nxt = getattr(v, a)
            except Exception:  # noqa: BLE001 - an attribute that fails: the value it was read from counts
                break
            if callable(nxt):
                break
            v = nxt
            path.append(a)
        out[".".join(path)] = v
    return dict(sorted(out.items()))


_ADDRESS = re.compile(r"0x[0-9a-fA-F]{6,}")  # a memory address, in whatever words a repr puts it


_ACROSS: list = []  # non-empty while value_identity compares a setting between processes (not a checkpoint's)
# a device as text, one process's own where it names an index ("cuda:1")
_DEVICE_TEXT = re.compile(r"(cuda|xpu|npu|hpu|mps|mtia|xla|privateuseone):\d+")


def value_identity(v):
    """What identifies ``v`` (a setting, or a value a loss function takes along), the same for equal
    values in every process, never a memory address (:func:`_value_identity`), for settings compared
    between the processes of a run: a device, which each process has its own of (``cuda:0``,
    ``cuda:1``: a loss function that closes over ``device = accelerator.device``), counts by its type
    alone, as a ``torch.device`` or as its text. (A checkpoint's identities, which a resume of the same
    process compares, keep its index, as they were recorded.)"""
    _ACROSS.append(True)
    try:
        return _value_identity(v)
    finally:
        _ACROSS.pop()


def _own_device_text(v):
    """``v``, or where it is a device's text with an index (``"cuda:1"``) while settings are compared between
    processes (:func:`value_identity`), the device's type alone."""
    if _ACROSS and isinstance(v, str) and _DEVICE_TEXT.fullmatch(v):
        return f"device(type={v.split(':')[0]!r})"
    return v


def _value_identity(v, _within: tuple = ()):
    """What identifies a value a loss function takes along (a ``functools.partial``'s argument, a
    lambda's default or closed-over value): the same for equal values in every process and in a
    resume. Plain values as they are, lists and tuples item by item, a callable by
    :func:`callable_identity`, a tensor by its values (not its device); anything else by
    :func:`_value_text`."""
    if v is None or isinstance(v, (bool, int, float, str)):
        return _own_device_text(v)
    if id(v) in _within:  # a list that holds itself
        return "[...]"
    if isinstance(v, (list, tuple)):
        return [_value_identity(x, _within + (id(v),)) for x in v]
    if callable(v):
        return callable_identity(v)
    if isinstance(v, torch.Tensor):  # its values, not its device: every process holds its own copy
        return f"tensor {tuple(v.shape)} {v.dtype}" if v.is_meta else repr(v.detach().cpu())
    return _value_text(v, _within)


def _value_text(v, _within: tuple = ()) -> str:
    """``repr(v)`` where that is the same in every process: a dict, set or sequence item by item (a
    set's items sorted, as its own order follows the process's string hashing; a tensor among them by
    its values, not its device), a module by its name (its repr holds its file's path), and a value
    whose repr holds a memory address (an object's default repr), or whose repr fails, by its type's
    name alone. In the digest of the module globals a lambda reads (:func:`_code_digest`; elsewhere
    as before, so that recorded identities hold), a ``torch.device`` by its type alone (``cuda``, not
    ``cuda:1``: every process of a run has its own)."""
    if v is None or isinstance(v, (bool, int, float, str, bytes)):
        return repr(v)
    if id(v) in _within:
        return "..."
    inner = _within + (id(v),)
    if isinstance(v, ModuleType):
        return f"<module {v.__name__!r}>"
    if isinstance(v, torch.Tensor):
        return str(_value_identity(v))
    if isinstance(v, torch.device) and (_ACROSS or _IN_GLOBALS and not _AS_BEFORE):  # each process its own GPU
        return f"device(type={v.type!r})"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{_value_text(k, inner)}: {_value_text(x, inner)}" for k, x in v.items()) + "}"
    if isinstance(v, (set, frozenset)):
        items = ", ".join(sorted(_value_text(x, inner) for x in v))
        if isinstance(v, frozenset):
            return f"frozenset({{{items}}})" if items else "frozenset()"
        return f"{{{items}}}" if items else "set()"
    if isinstance(v, list):
        return "[" + ", ".join(_value_text(x, inner) for x in v) + "]"
    if isinstance(v, tuple) and type(v) is tuple:
        return "(" + ", ".join(_value_text(x, inner) for x in v) + ("," if len(v) == 1 else "") + ")"
    if callable(v):
        return repr(callable_identity(v))
    try:
        text = repr(v)
    except Exception:  # noqa: BLE001 - a repr that fails identifies nothing: the type does
        return type(v).__qualname__
    return type(v).__qualname__ if _ADDRESS.search(text) else text


_GLOBALS = re.compile(r" globals [0-9a-f]{16} \(([^()]*)\)$")  # what _code_digest adds for the globals read


def _without_globals(v):
    """A callable's identity (:func:`callable_identity`: a string, or lists of them) as it was
    before the module globals a lambda reads were digested: the `` globals ...`` part dropped."""
    if isinstance(v, str):
        return _GLOBALS.sub("", v)
    if isinstance(v, list):
        return [_without_globals(x) for x in v]
    if isinstance(v, dict):
        return {k: _without_globals(x) for k, x in v.items()}
    return v


def _same_name_hint(saved, now) -> str:
    """What a lambda's (or a local function's) identities that differ only in their code digest mean."""
    if not (isinstance(saved, str) and isinstance(now, str) and " code " in saved and " code " in now
            and saved.split(" code ")[0] == now.split(" code ")[0]):
        return ""
    if _without_globals(saved) == _without_globals(now):
        names = _GLOBALS.search(now)
        return (f" (the same code, defaults and closed-over values, with other values of the module globals it reads: "
                f"{names.group(1) if names else ''}; give them the values the run had)")
    import sys

    return (" (the same name, with other code, defaults or closed-over values; the code is Python's bytecode, which "
            f"another Python version compiles otherwise: resume under the one the run used, this is "
            f"{sys.version_info[0]}.{sys.version_info[1]})")


def _same_estimator(saved: str, now: str) -> bool:
    """Older checkpoints recorded an estimator by its registry name ("presence", its defaults) or
    by a repr without its settings ("Evidence()"): the same estimator as ``now`` if its defaults
    print as ``now`` does, or (settings unknown) if the class matches."""
    if "(" not in saved:
        from .utility import get_estimator

        try:
            return repr(get_estimator(saved)) == now
        except (KeyError, ValueError, TypeError):
            return False
    return saved.endswith("()") and now.startswith(saved[:-1])


# the fields of a loader's identity (:func:`adaptive.mask_only_data._data_identity`), as a mismatch names them
_DATA_FIELDS = ("examples", "batches", "batch size")


def _is_identity(x) -> bool:
    """Whether ``x`` is a loader's identity: one value (a count, or None) per field of ``_DATA_FIELDS``."""
    return isinstance(x, (list, tuple)) and len(x) == len(_DATA_FIELDS)


# why a loader could not tell each field (:func:`adaptive.mask_only_data._data_identity`)
_UNKNOWN = {"examples": "not known (no .dataset with a len())", "batches": "not known (no len())",
            "batch size": "not known (no .batch_size)"}


def _known(x, name: str) -> str:
    """Field ``name`` of a loader's identity as a mismatch shows it (None: the loader could not tell, and why)."""
    return _UNKNOWN[name] if x is None else repr(x)


def _differences(saved: dict, now: dict, weights: Optional[Dict[str, torch.Tensor]] = None) -> List[str]:
    out = []
    for k in sorted(set(saved) | set(now)):
        a, b = saved.get(k), now.get(k)
        if k == "weights" and _is_digest(b):
            problem = _weights_differences(a, b, weights)
            if problem:
                out.append(problem)
            continue
        if k == "frozen_tensors":
            if a is None:
                continue  # recorded before the other tensors were
            problem = _weights_differences(a, b, None, key=k, unit="tensor")
            if problem:
                out.append(problem)
            continue
        if k == "weights" and _is_sums(a) and _is_sums(b) and len(a) == len(b):  # weights_checksum on both sides
            if all(math.isclose(x, y, rel_tol=1e-6, abs_tol=1e-12) for x, y in zip(a, b)):
                continue  # sums on another device may differ in the last bits
        if k in ("precision", "eval_every", "processes") and a is None:
            continue  # recorded before the precision (the held-out cadence, the process count) was
        if k == "processes" and a != b:  # what differs in the train data's batches then is its consequence: said so
            out.append(f"processes: checkpoint {a}, this run {b} (a run's train batches are split over its processes, "
                       f"so each process's batches and the stages' steps differ too: resume it under {a} "
                       f"process{'es' if a != 1 else ''}, as it ran)")
            continue
        if k in ("loss_fn", "accuracy_fn") and k not in saved:
            continue  # recorded before the loss and accuracy functions were
        if k in ("loss_fn", "accuracy_fn") and " globals " not in repr(a) and a == _without_globals(b):
            continue  # recorded before the module globals a lambda reads were (that version could not tell)
        if k in ("loss_fn", "accuracy_fn") and isinstance(a, str) and isinstance(b, str) and " " not in a \
                and b.startswith(f"{a} code "):
            continue  # a lambda or local function recorded before its code was (by its shared name alone)
        if k == "estimator" and isinstance(a, str) and isinstance(b, str) and _same_estimator(a, b):
            continue
        if k in ("train_content", "holdout_content"):
            if a is not None and b is not None and a != b:  # (None: recorded before it was, or no fingerprint)
                said = any("_content: checkpoint" in o for o in out)  # (the reason once, for both loaders)
                out.append(f"{k}: checkpoint {a}, this run {b}" + ("" if said else
                           " (other data of the same sizes: another copy, or the same examples in another order, "
                           "from which another held-out part is drawn; the run would go on from masks learned on other "
                           "examples: give the data the run read)"))
            continue
        if k in ("train_data", "holdout_data") and a != b and _is_identity(a) and _is_identity(b):
            out.append(f"{k}: " + " and ".join(f"{name} (checkpoint {_known(x, name)}, this run {_known(y, name)})"
                                               for name, x, y in zip(_DATA_FIELDS, a, b) if x != y))
            continue
        if a != b:
            out.append(f"{k}: checkpoint {a!r}, this run {b!r}{_same_name_hint(a, b)}" if k != "weights" else
                       "weights: the checkpoint was made from other weights")
    return out


def save_stage(path, state: dict) -> None:
    """Write ``state`` to ``path`` atomically (first process only), with a sha256 of its content
    (:func:`adaptive.integrity.digest`) that :func:`load_stage` verifies. A write that fails (a
    full disk, a file-size limit) leaves the earlier file as it was and raises
    :class:`~adaptive.integrity.CheckpointWriteError` saying so."""
    from .distributed import agreed_problem
    from .integrity import CheckpointWriteError, digest, write_errors, write_failure

    problem = ""
    if rank() == 0:
        state = {"format": FORMAT, **state}
        state["sha256"] = digest(state)
        path = Path(path)
        try:
            atomic_torch_save(state, path)
        except write_errors() as e:
            kept = (f"{path} still holds the previous stage's record, so the run can continue from there (the "
                    "same command with its resume option; optimize_connectome: the same checkpoint=)"
                    if path.is_file() else "no earlier stage was recorded, so the run starts afresh when run again")
            problem = (f"writing the stage checkpoint {path} failed ({write_failure(e)}); the partial file was removed "
                       f"and {kept}: free disk space (or raise the file-size limit) first")
    problem = agreed_problem(problem)  # every process stops, not only the one that writes
    if problem:
        raise CheckpointWriteError(problem)


# what load_stage checks before anything uses a loaded state: key -> accepted types
_TYPES = {"format": int, "fingerprint": dict, "stage": int, "step": int, "since_best": int, "masks": dict,
          "controller": dict, "snapshots": dict, "history": list, "data": (dict, type(None)),
          "cpu_seconds": (int, float), "wall_seconds": (int, float), "sha256": str}
_OPTIONAL = {"data", "sha256"}


def _structure_problem(state: dict) -> str:
    """What is wrong with the shape of a loaded stage state ("" when nothing)."""
    for k in state:
        if k not in _TYPES:
            return f"unknown entry {k!r}"
    for k, types in _TYPES.items():
        if k not in state:
            if k not in _OPTIONAL:
                return f"no {k!r} entry"
            continue
        v = state[k]
        if not isinstance(v, types) or (types is int and isinstance(v, bool)):
            return f"{k!r} is a {type(v).__name__}"
    if not all(isinstance(n, str) and isinstance(m, torch.Tensor) for n, m in state["masks"].items()):
        return "'masks' holds something other than tensors"
    for label, snap in state["snapshots"].items():
        if not isinstance(snap, dict) or not isinstance(snap.get("masks"), dict) or not all(
                isinstance(m, torch.Tensor) for m in snap["masks"].values()):
            return f"snapshot {label!r} is not a snapshot"
    if not all(isinstance(r, dict) for r in state["history"]):
        return "'history' holds something other than records"
    data = state.get("data")
    if data is not None and not all(isinstance(data.get(k), dict) for k in ("train", "holdout")):
        return "'data' does not hold both loaders' positions"
    return ""


def _unreadable(e: BaseException) -> str:
    """Why torch.load failed, in a few words (its messages run to paragraphs, and an unpickling
    failure's advises weights_only=False, which is no remedy for a damaged file)."""
    import pickle

    if isinstance(e, pickle.UnpicklingError):
        return f"{type(e).__name__}: its pickled data is damaged"
    text = str(e).strip().splitlines()
    first = text[0].split(". ")[0] if text and text[0] else ""
    return f"{type(e).__name__}: {first[:160]}" if first else type(e).__name__


def load_stage(path, now: dict, weights: Optional[Dict[str, torch.Tensor]] = None,
               checked: Optional["Checked"] = None) -> Optional[dict]:
    """The state recorded in ``path`` (None when there is no file). ``weights``: the frozen weights
    whose :func:`weights_digest` is ``now["weights"]``, needed only to check a checkpoint written
    before the digests (it recorded :func:`weights_checksum`'s sums). Raises
    :class:`CheckpointMismatchError` when it was written by a run with another fingerprint, is
    damaged (its content does not match the sha256 stored with it, or its entries are not what a
    stage checkpoint holds) or is not a stage checkpoint, and ValueError when ``path`` is a folder.
    Everything is checked before the state is returned, so a caller changes nothing for a bad file.
    ``checked``: what :func:`check_readable` returned for this file, whose state is taken instead of
    reading the file again while the file at ``path`` is the one it read (:meth:`Checked.take`).

    Under several processes every process reads its own copy, and the outcome is agreed (one
    gather of a few words, none on one process): a check that fails on some processes only (a
    file each reads from its own disk, one missing or damaged there, weights loaded otherwise)
    raises on every process, naming which failed and why, and so do processes that read different
    checkpoints (another stage, or no file); no process goes on alone into the run's next
    collective, where the others would wait for it until the process group's timeout."""
    try:
        state, own = _load_stage(path, now, weights, checked), None
    except Exception as e:  # noqa: BLE001 - every process hears of any failure, and raises
        state, own = None, e
    from .distributed import is_distributed

    agreed = _agreed_load(path, own, state) if is_distributed() else own
    if agreed is own and own is not None:
        raise own
    if agreed is not None:
        raise agreed from own
    if state is not None:
        state.pop("sha256", None)
    return state


def _load_report(e: Optional[BaseException], state: Optional[dict]) -> tuple:
    """What one process tells the others of its load: ("failed", kind, problem, fix, damaged), or
    ("read", what it read: its stage, step and sha256; None for no file)."""
    if e is None:
        return ("read", None if state is None else (state["stage"], state["step"], state.get("sha256")))
    if isinstance(e, CheckpointMismatchError):
        return ("failed", "mismatch", e.problem, e.fix, e.damaged)
    return ("failed", "value" if isinstance(e, ValueError) else "other", f"{e}" or type(e).__name__, "", False)


def _read_words(x: Optional[tuple], all_read: list) -> str:
    """What one process read (:func:`_load_report`'s), in words; its sha256 where another process
    read the same stage and step."""
    if x is None:
        return "no file"
    same = sum(1 for y in all_read if y is not None and y[:2] == x[:2]) > 1
    return f"stage {x[0]} (step {x[1]}" + (f", sha256 {str(x[2])[:12]})" if same else ")")


def _agreed_load(path, own: Optional[BaseException], state: Optional[dict]) -> Optional[BaseException]:
    """Every process's load outcome gathered (one all_gather_object): the error this process
    raises, the same on every process (None: all read the same checkpoint, or all found none).
    Processes that all failed alike raise what one process would (``own``)."""
    import torch.distributed as dist

    every: list = [None] * dist.get_world_size()
    dist.all_gather_object(every, _load_report(own, state))
    world = len(every)
    failed = [(r, rep) for r, rep in enumerate(every) if rep[0] == "failed"]
    if failed:
        if len(failed) == world and len({rep[1:] for _, rep in failed}) == 1:
            return own  # the same problem everywhere (a foreign file all of them read): as on one process
        kind, fix = failed[0][1][1], failed[0][1][3]
        ok = [r for r, rep in enumerate(every) if rep[0] == "read"]
        why = "; ".join(f"process {r}: {rep[2]}" for r, rep in failed)
        problem = (f"the stage checkpoint {path} failed its checks on {_processes([r for r, _ in failed], world)} "
                   f"({why})")
        if ok:
            problem += (f", while {_processes(ok, world)} read {'theirs' if len(ok) > 1 else 'its'} without fault: "
                        "every process must read the same file (on a file system they all see, or the same copy on each)")
        if kind == "mismatch":
            return CheckpointMismatchError(problem, fix, damaged=any(rep[4] for _, rep in failed))
        return (ValueError if kind == "value" else RuntimeError)(problem)
    read = [rep[1] for rep in every]
    if len(set(read)) == 1:
        return None
    seen = "; ".join(f"process {r}: {_read_words(x, read)}" for r, x in enumerate(read))
    return CheckpointMismatchError(
        f"the processes read different stage checkpoints at {path} ({seen}), so they would resume from different places",
        "Give every process the same file (on a file system they all see, or the same copy on each), then resume",
        kept=True)


def _processes(ranks: List[int], world: int) -> str:
    """``ranks`` in words: "process 1 of 2", "processes 0, 2 of 4"."""
    return f"process{'es' if len(ranks) > 1 else ''} {', '.join(map(str, ranks))} of {world}"


def _load_stage(path, now: dict, weights: Optional[Dict[str, torch.Tensor]] = None,
                checked: Optional["Checked"] = None) -> Optional[dict]:
    """:func:`load_stage` on this process alone (the state keeps its sha256, which the processes compare)."""
    state = checked.take(path) if checked is not None else None
    if state is None:
        state = _read(path)
    if state is None:
        return None
    if "sha256" not in state:
        import sys

        if rank() == 0:
            print(f"warning: {path} carries no checksum (written by an older version), so it cannot be verified",
                  file=sys.stderr)
    diff = _differences(state["fingerprint"], now, weights)
    if diff:
        raise CheckpointMismatchError(f"{path} was written by another run; it differs in " + "; ".join(diff),
                                      _API_FIX["other run"])
    return state


def check_readable(path) -> Optional["Checked"]:
    """Raise what :func:`load_stage` raises for a damaged, unreadable or foreign file at ``path``
    (nothing for a stage checkpoint, or no file), without comparing its settings: a recipe checks
    it before loading any data. Returns what it read (None: no file), for the caller to hand to the
    :func:`load_stage` that follows (``checked=``), so that a resume reads its checkpoint once."""
    stamp = _file_stamp(path)  # before the read: a file replaced during it does not match it later
    state = _read(path)
    return Checked(stamp, state) if state is not None and stamp is not None else None


class Checked:
    """The state :func:`check_readable` read, with the identity of the file it read (device, inode,
    size, modification time). It goes only where its caller hands it, and is held only until
    :meth:`take` (or :meth:`drop`): a checkpoint's state (a large model's masks and estimator
    values) is not kept beyond the run that read it."""

    def __init__(self, stamp: tuple, state: dict):
        self.stamp, self.state = stamp, state

    def take(self, path) -> Optional[dict]:
        """The state, once, while the file at ``path`` is the one read (renamed is the same file;
        one replaced or changed since is not: None, read it again); it is let go either way."""
        state, self.state = self.state, None
        return state if state is not None and _file_stamp(path) == self.stamp else None

    def drop(self) -> None:
        """Let the state go (a run that stopped before its load)."""
        self.state = None


def _file_stamp(path) -> Optional[tuple]:
    """The identity of the file at ``path`` (device, inode, size, modification time); None: none there."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns


def _read(path) -> Optional[dict]:
    """The state in ``path`` (None: no file), checked to be an undamaged stage checkpoint."""
    from .integrity import digest

    path = Path(path)
    if path.exists() and not path.is_file():
        raise ValueError(f"checkpoint {path} is a folder: give a file path, e.g. {path / 'checkpoint.pt'}")
    if not path.is_file():
        return None
    if path.stat().st_size == 0:
        raise CheckpointMismatchError(f"{path} is empty (0 bytes: its write was cut short or the file was truncated), "
                                      "not a readable mask-only checkpoint", _API_FIX["unreadable"], damaged=True)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a truncated or foreign file
        raise CheckpointMismatchError(f"{path} is not a readable mask-only checkpoint ({_unreadable(e)})",
                                      _API_FIX["unreadable"], damaged=True) from e
    if isinstance(state, dict) and isinstance(state.get("sha256"), str):  # first: a damaged entry is damage, not another format
        body = {k: v for k, v in state.items() if k != "sha256"}
        if digest(body) != state["sha256"]:
            raise CheckpointMismatchError(f"{path} is damaged: its content does not match the sha256 stored in it",
                                          _API_FIX["damaged"], damaged=True)
    if not isinstance(state, dict) or state.get("format") != FORMAT or "fingerprint" not in state:
        raise CheckpointMismatchError(f"{path} is not a mask-only stage checkpoint (format {FORMAT})",
                                      _API_FIX["unreadable"])
    problem = _structure_problem(state)
    if problem:
        raise CheckpointMismatchError(f"{path} is damaged ({problem})", _API_FIX["damaged"], damaged=True)
    return state
