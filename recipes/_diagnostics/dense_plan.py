"""What ``dense-gradients`` is about to do, said before it starts: the nets, their steps, and the
convolutions that take most of its time where it trains cnn nets (a cnn DenseCat convolves every
position of the image at every layer: on MNIST the default command runs for about twenty minutes on
one CPU thread, nearly all of it in the cnn nets' convolutions)."""
from __future__ import annotations

import math

# Multiply-adds per second of one CPU thread in the cnn nets' 3x3 convolutions (PyTorch's own
# kernels, float32): measured near 40 G on a 2020s x86 server core; the range allows for slower and faster ones.
THREAD_MACS = (20e9, 50e9)


def cnn_layer_macs(in_shape, depth: int, width: int, batch_size: int) -> list:
    """Multiply-adds of each of a cnn DenseCat's 3x3 convolutions in one forward pass of a batch (layer k
    reads the input's channels plus k earlier outputs of ``width`` channels, at every position); a
    backward pass costs each convolution as much again for its input's gradient, and again for its weight's."""
    channels, positions = int(in_shape[0]), math.prod(int(s) for s in in_shape[1:])
    return [batch_size * positions * width * 9 * (channels + width * k) for k in range(depth)]


def cnn_forward_macs(in_shape, depth: int, width: int, batch_size: int) -> int:
    """Multiply-adds of one forward pass of a batch through a cnn DenseCat's 3x3 convolutions."""
    return sum(cnn_layer_macs(in_shape, depth, width, batch_size))


def cnn_read_macs(in_shape, depth: int, width: int, batch_size: int, layer: str) -> int:
    """Multiply-adds of the convolutions in one gradient read of ``layer`` (``gradient_by_depth``: a forward
    pass, then ``torch.autograd.grad`` of the loss for that layer's weight alone). The backward runs only as far
    as the layer: every later convolution's input gradient (each reads the layer's output), and the layer's own
    weight gradient (``layers.K``, or its parameter's name ``layers.K.weight``, which the command takes too);
    none for ``classifier``, which comes after every convolution."""
    macs = cnn_layer_macs(in_shape, depth, width, batch_size)
    kind, _, k = layer.removesuffix(".weight").partition(".")
    return sum(macs) + (sum(macs[int(k):]) if kind == "layers" and k.isdigit() else 0)


def dense_gradients_plan(args, kinds, norms, in_shape) -> str:
    """The line printed before any net trains: how many nets, how many steps each, what --compare adds,
    and, where cnn nets train, their convolutions' multiply-adds and the minutes those take on one
    CPU thread at :data:`THREAD_MACS` (a training step's backward counted as two forwards, a gradient read as
    a forward and the backward to ``--layer``: :func:`cnn_read_macs`)."""
    from recipes._diagnostics.folder import dense_tag

    tags = [dense_tag(k, bn) for k in kinds for bn in norms]
    said = (f"dense-gradients: {len(tags)} DenseCat net{'s' * (len(tags) > 1)} ({', '.join(tags)}; depth {args.depth} "
            f"x width {args.width}), {'each ' * (len(tags) > 1)}trained {args.train_steps} SGD steps on batches of {args.batch_size}, "
            f"then its {args.layer} gradients read over {args.grad_batches} batches")
    compared = 4 * len(kinds) if args.compare else 0
    if compared:
        said += f"; then --compare trains {compared} more nets {args.compare_steps} steps each"
    if "cnn" not in kinds:
        return said + "."
    forward = cnn_forward_macs(in_shape, args.depth, args.width, args.batch_size)
    read = cnn_read_macs(in_shape, args.depth, args.width, args.batch_size, args.layer)
    macs = (len(norms) * (3 * args.train_steps * forward + args.grad_batches * read)
            + 4 * 3 * args.compare_steps * forward * bool(compared))
    slow, fast = (macs / rate / 60 for rate in THREAD_MACS)
    shape = "x".join(str(int(s)) for s in in_shape[1:])
    took = "under a minute" if slow < 1 else f"{max(fast, 1):.0f} to {slow:.0f} minutes"
    return (said + f".\nThe cnn nets convolve all {shape} positions at every layer: about {_count(macs)} "
            f"multiply-adds in all, roughly {took} on one CPU thread (less with --threads N where cores are free; "
            "--kind mlp alone takes a small part of that).")


def _count(macs: float) -> str:
    return f"{macs / 1e12:.3g} T" if macs >= 1e12 else f"{macs / 1e9:.3g} G"


def densecat_parameters(in_shape, depth: int, width: int, num_classes: int, kind: str) -> int:
    """The weights and biases of one DenseCat net (:class:`adaptive.models.densecat.DenseCat`; its
    BatchNorms' few left out): layer k reads the input's units (mlp: all of them; cnn: its channels,
    through 3x3 kernels) plus k earlier outputs of ``width``, and the classifier all of them."""
    units = math.prod(int(s) for s in in_shape) if kind == "mlp" else int(in_shape[0])
    kernel = 1 if kind == "mlp" else 9
    layers = sum(kernel * (units + width * k) * width + width for k in range(depth))
    return layers + (units + width * depth) * num_classes + num_classes


def densecat_activations(in_shape, depth: int, width: int, batch_size: int, kind: str) -> int:
    """The values one forward pass of a batch keeps for its backward, at the least: each layer's input
    (the concatenation of the input and the earlier outputs, at every position for cnn)."""
    units = math.prod(int(s) for s in in_shape) if kind == "mlp" else int(in_shape[0])
    positions = 1 if kind == "mlp" else math.prod(int(s) for s in in_shape[1:])
    return batch_size * positions * sum(units + width * k for k in range(depth + 1))


def dense_gradients_bytes(args, kinds, norms, in_shape, num_classes: int) -> int:
    """The least memory dense-gradients needs, in bytes (float32): every net's weights (all are built
    before the first trains), the gradients and SGD momentum of the largest, and the values a training
    batch keeps for its backward in the largest. A lower bound: the backward's own and the data's come on top."""
    params = {kind: densecat_parameters(in_shape, args.depth, args.width, num_classes, kind) for kind in kinds}
    held = sum(params[kind] for kind in kinds) * len(norms) + 2 * max(params.values())
    return 4 * (held + max(densecat_activations(in_shape, args.depth, args.width, args.batch_size, kind)
                           for kind in kinds))


def available_memory(device="cpu") -> "int | None":
    """Bytes of memory available to start new work on ``device`` (where the nets' tensors will live): for a
    CUDA device its free memory (``torch.cuda.mem_get_info``: the host's says nothing of a GPU's) and the
    blocks this process's caching allocator holds unused (reserved but not allocated: freed tensors' memory,
    which the driver counts as taken, though new tensors reuse it); else the host's, /proc/meminfo's
    MemAvailable (Linux), else the machine's physical memory (``os.sysconf``); None where none can be read."""
    import os

    import torch

    device = torch.device(device)
    if device.type == "cuda":
        try:
            free = int(torch.cuda.mem_get_info(device)[0])
        except (RuntimeError, AssertionError, ValueError):  # (no CUDA, or no such device)
            return None
        try:
            return free + max(0, int(torch.cuda.memory_reserved(device)) - int(torch.cuda.memory_allocated(device)))
        except (RuntimeError, AssertionError, ValueError):
            return free
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return None


def memory_problem(args, kinds, norms, in_shape, num_classes: int, available=None, device="cpu") -> "str | None":
    """Why dense-gradients cannot run here, where the least memory it needs
    (:func:`dense_gradients_bytes`) is more than the memory available on ``device``, the one its nets are
    built on (``available`` bytes, default :func:`available_memory` of that device: a GPU's free memory,
    the host's for the CPU); None where it fits, or the memory is not known. A --width 100000000
    ended in torch's "can't allocate memory" traceback while building its nets."""
    import torch

    device = torch.device(device)
    available = available_memory(device) if available is None else available
    need = dense_gradients_bytes(args, kinds, norms, in_shape, num_classes)
    if available is None or need <= available:
        return None
    nets = len(kinds) * len(norms)
    fewer = [o for o, more in (("--kind mlp or cnn", len(kinds) > 1), ("--batchnorm off or on", len(norms) > 1)) if more]
    where = f"{_bytes(available)} free on {device}" if device.type == "cuda" else f"{_bytes(available)} this machine has available"
    return (f"dense-gradients needs at least about {_bytes(need)} of memory (its {nets} DenseCat "
            f"net{'s' * (nets > 1)} of depth {args.depth} x width {args.width}, one net's gradients and momentum, and "
            f"one batch of {args.batch_size}'s activations), more than the {where}: "
            f"lower --width, --depth or --batch_size" + (f" (or build fewer nets: {', '.join(fewer)})"
                                                          if fewer else ""))


def _bytes(n: float) -> str:
    """``n`` bytes in decimal units, 3 significant digits: ``472 MB``, ``18.9 GB``."""
    for unit in ("B", "KB", "MB", "GB", "TB", "PB"):
        if n < 1000 or unit == "PB":
            return f"{n:.3g} {unit}" if n < 1000 else f"{n:,.0f} {unit}"
        n /= 1000
