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
