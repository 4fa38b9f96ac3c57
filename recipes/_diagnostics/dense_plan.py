"""What ``dense-gradients`` is about to do, said before it starts: the nets, their steps, and the
convolutions that take most of its time where it trains cnn nets (a cnn DenseCat convolves every
position of the image at every layer: on MNIST the default command runs for about twenty minutes on
one CPU thread, nearly all of it in the cnn nets' convolutions)."""
from __future__ import annotations

import math

# Multiply-adds per second of one CPU thread in the cnn nets' 3x3 convolutions (PyTorch's own
# kernels, float32): measured near 40 G on a 2020s x86 server core; the range allows for slower and faster ones.
THREAD_MACS = (20e9, 50e9)


def cnn_forward_macs(in_shape, depth: int, width: int, batch_size: int) -> int:
    """Multiply-adds of one forward pass of a batch through a cnn DenseCat's 3x3 convolutions (layer k
    reads the input's channels plus k earlier outputs of ``width`` channels, at every position)."""
    channels, positions = int(in_shape[0]), math.prod(int(s) for s in in_shape[1:])
    fan_in = depth * channels + width * depth * (depth - 1) // 2  # summed over the layers
    return batch_size * positions * width * 9 * fan_in


def dense_gradients_plan(args, kinds, norms, in_shape) -> str:
    """The line printed before any net trains: how many nets, how many steps each, what --compare adds,
    and, where cnn nets train, their convolutions' multiply-adds and the minutes those take on one
    CPU thread at :data:`THREAD_MACS` (a backward pass counted as two forwards, a gradient read as one)."""
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
    forwards = len(norms) * (3 * args.train_steps + args.grad_batches) + 4 * 3 * args.compare_steps * bool(compared)
    macs = forwards * cnn_forward_macs(in_shape, args.depth, args.width, args.batch_size)
    slow, fast = (macs / rate / 60 for rate in THREAD_MACS)
    shape = "x".join(str(int(s)) for s in in_shape[1:])
    took = "under a minute" if slow < 1 else f"{max(fast, 1):.0f} to {slow:.0f} minutes"
    return (said + f".\nThe cnn nets convolve all {shape} positions at every layer: about {_count(macs)} "
            f"multiply-adds in all, roughly {took} on one CPU thread (less with --threads N where cores are free; "
            "--kind mlp alone takes a small part of that).")


def _count(macs: float) -> str:
    return f"{macs / 1e12:.3g} T" if macs >= 1e12 else f"{macs / 1e9:.3g} G"
