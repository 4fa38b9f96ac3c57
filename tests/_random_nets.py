"""Random small networks built from common blocks, and random masks for them, for the property-based
tests of ``graphs.compact`` and the graph builders (tests/test_graphs_random_nets.py).

A network is described by a plain tuple (what hypothesis draws and prints when a case fails) and built by
:func:`build_net`; its weights and BatchNorm statistics come from a generator of their own, so the global
random generators are not touched.
"""
import torch
import torch.nn.functional as F
from hypothesis import strategies as st
from torch import nn

ACTS = ("relu", "gelu", "silu", "hardswish", "none", "relu_")


def act(name):
    """The activation module called ``name`` ("none": identity)."""
    return {"relu": nn.ReLU(), "relu_": nn.ReLU(inplace=True), "gelu": nn.GELU(), "silu": nn.SiLU(), "hardswish": nn.Hardswish(),
            "none": nn.Identity()}[name]


def _divisors(n):
    return [d for d in range(1, n + 1) if n % d == 0]


class ConvBN(nn.Module):
    """Conv2d, optional BatchNorm, activation."""

    def __init__(self, cin, cout, k, stride, pad, dil, groups, bias, bn, a):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, k, stride, pad, dil, groups, bias)
        self.bn = nn.BatchNorm2d(cout) if bn else nn.Identity()
        self.act = act(a)

    def forward(self, x):
        return self.act(self.bn(self.conv(x)))


class Residual(nn.Module):
    """``x + f(x)`` (``f`` keeps the shape)."""

    def __init__(self, f):
        super().__init__()
        self.f = f

    def forward(self, x):
        return x + self.f(x)


class Dense(nn.Module):
    """DenseNet-style ``cat([x, f(x)], 1)``."""

    def __init__(self, f):
        super().__init__()
        self.f = f

    def forward(self, x):
        return torch.cat([x, self.f(x)], 1)


class SE(nn.Module):
    """Squeeze-excitation: ``x * gate(mean(x))``, the gate 1x1 convs or Linear layers."""

    def __init__(self, c, r, linear, hard):
        super().__init__()
        self.linear = linear
        mk = (lambda i, o: nn.Linear(i, o)) if linear else (lambda i, o: nn.Conv2d(i, o, 1))
        self.fc1, self.fc2 = mk(c, r), mk(r, c)
        self.gate = nn.Hardsigmoid() if hard else nn.Sigmoid()

    def forward(self, x):
        if self.linear:
            s = self.gate(self.fc2(F.relu(self.fc1(x.mean((2, 3))))))
            return x * s[:, :, None, None]
        s = self.gate(self.fc2(F.relu(self.fc1(F.adaptive_avg_pool2d(x, 1)))))
        return s * x


class InvertedResidual(nn.Module):
    """MobileNet block: expand 1x1, depthwise kxk, optional SE, project 1x1 (+ x where the shape allows)."""

    def __init__(self, c, e, cout, k, stride, a, se):
        super().__init__()
        self.expand = ConvBN(c, e, 1, 1, 0, 1, 1, False, True, a)
        self.dw = ConvBN(e, e, k, stride, k // 2, 1, e, False, True, a)
        self.se = SE(e, max(1, e // 4), False, True) if se else nn.Identity()
        self.project = ConvBN(e, cout, 1, 1, 0, 1, 1, False, True, "none")
        self.skip = stride == 1 and c == cout

    def forward(self, x):
        h = self.project(self.se(self.dw(self.expand(x))))
        return x + h if self.skip else h


class Twice(nn.Module):
    """The same map read twice: ``cat([x, x], 1)`` then a conv, or ``x * x``."""

    def __init__(self, c, cat):
        super().__init__()
        self.cat = cat

    def forward(self, x):
        return torch.cat([x, x], 1) if self.cat else x * x


class Branches(nn.Module):
    """Inception-style: two conv branches of one input (one strided with a projection shortcut added)
    concatenated, or a projection shortcut ``proj(x) + f(x)`` at stride 2."""

    def __init__(self, c, a_out, b_out, concat, bn, a):
        super().__init__()
        self.concat = concat
        self.a = ConvBN(c, a_out, 1, 1, 0, 1, 1, not bn, bn, a)
        self.b = ConvBN(c, a_out if not concat else b_out, 3, 2 if not concat else 1, 1, 1, 1, not bn, bn, a)
        if not concat:
            self.a = ConvBN(c, a_out, 1, 2, 0, 1, 1, not bn, bn, "none")

    def forward(self, x):
        return torch.cat([self.a(x), self.b(x)], 1) if self.concat else self.a(x) + self.b(x)


class GLU(nn.Module):
    """A 1x1 conv to 2c channels, halves gated: ``a * sigmoid(b)`` (channel split)."""

    def __init__(self, c, out):
        super().__init__()
        self.conv = nn.Conv2d(c, 2 * out, 1)

    def forward(self, x):
        a, b = self.conv(x).chunk(2, 1)
        return a * torch.sigmoid(b)


class ConvNeXt(nn.Module):
    """Depthwise conv, then channels-last LayerNorm and a Linear MLP on ``[N, H, W, C]``, added back."""

    def __init__(self, c, hidden, a):
        super().__init__()
        self.dw = nn.Conv2d(c, c, 3, padding=1, groups=c)
        self.ln = nn.LayerNorm(c)
        self.fc1, self.act, self.fc2 = nn.Linear(c, hidden), act(a), nn.Linear(hidden, c)

    def forward(self, x):
        h = self.dw(x).permute(0, 2, 3, 1)
        return x + self.fc2(self.act(self.fc1(self.ln(h)))).permute(0, 3, 1, 2)


class InPlaceResidual(nn.Module):
    """torchvision's BasicBlock style: ``out = bn(conv(x)); out += x; relu_(out)``."""

    def __init__(self, c, groups):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, padding=1, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(c)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x):
        out = self.bn(self.conv(x))
        out += x
        return self.relu(out)


class Up(nn.Module):
    """A transposed convolution (strided, grouped or not), optional GroupNorm."""

    def __init__(self, c, cout, k, stride, pad, out_pad, groups, gn):
        super().__init__()
        self.up = nn.ConvTranspose2d(c, cout, k, stride, pad, out_pad, groups)
        self.norm = nn.GroupNorm(1, cout) if gn else nn.Identity()

    def forward(self, x):
        return F.relu(self.norm(self.up(x)))


class Pool(nn.Module):
    def __init__(self, kind):
        super().__init__()
        self.kind = kind

    def forward(self, x):
        return F.max_pool2d(x, 2) if self.kind == "max" else F.avg_pool2d(x, 2)


class ChannelLN(nn.Module):
    """LayerNorm over the channels of a map (permuted channels-last and back)."""

    def __init__(self, c):
        super().__init__()
        self.ln = nn.LayerNorm(c)

    def forward(self, x):
        return self.ln(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class Head(nn.Module):
    def __init__(self, c, hw, flatten, hidden, a, ln, classes):
        super().__init__()
        self.flatten = flatten
        feats = c * hw if flatten else c
        self.ln = nn.LayerNorm(feats) if ln else nn.Identity()
        self.fc1 = nn.Linear(feats, hidden) if hidden else nn.Identity()
        self.act = act(a)
        self.fc2 = nn.Linear(hidden or feats, classes)

    def forward(self, x):
        h = torch.flatten(x, 1) if self.flatten else x.mean((2, 3))
        return self.fc2(self.act(self.fc1(self.ln(h))))


class Net(nn.Module):
    def __init__(self, blocks, head):
        super().__init__()
        self.blocks = nn.Sequential(*blocks)
        self.head = head

    def forward(self, x):
        return self.head(self.blocks(x))


class SeqBlock(nn.Module):
    """Pre-norm transformer pieces on ``[N, T, C]``: an MLP, an attention, or a plain Linear + act."""

    def __init__(self, kind, c, hidden, heads, a, bias, ln):
        super().__init__()
        self.kind = kind
        self.ln = nn.LayerNorm(c) if ln else nn.Identity()
        if kind == "mlp":
            self.fc1, self.act, self.fc2 = nn.Linear(c, hidden, bias), act(a), nn.Linear(hidden, c, bias)
        elif kind == "attn":
            self.attn = nn.MultiheadAttention(c, heads, bias=bias, batch_first=True)
        else:
            self.fc1, self.act = nn.Linear(c, c, bias), act(a)

    def forward(self, x):
        h = self.ln(x)
        if self.kind == "mlp":
            return x + self.fc2(self.act(self.fc1(h)))
        if self.kind == "attn":
            return x + self.attn(h, h, h, need_weights=False)[0]
        return self.act(self.fc1(h))


class SeqNet(nn.Module):
    def __init__(self, fin, c, blocks, classes, pool):
        super().__init__()
        self.embed = nn.Linear(fin, c)
        self.blocks = nn.Sequential(*blocks)
        self.pool = pool
        self.head = nn.Linear(c, classes)

    def forward(self, x):
        h = self.blocks(self.embed(x))
        return self.head(h.mean(1) if self.pool == "mean" else h[:, 0])


# ------------------------------------------------------------------------------------ strategies
@st.composite
def conv_specs(draw):
    """A CNN: input channels and size, a list of blocks, a head."""
    cin = draw(st.integers(1, 4))
    size = draw(st.integers(4, 9))
    c, hw = cin, size
    blocks = []
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["conv", "conv", "res", "dense", "se", "pool", "ir", "ln", "dwsep", "twice",
                                     "branch", "glu", "convnext", "inres", "up"]))
        if kind == "pool" and hw < 2:
            kind = "conv"
        if kind == "conv":
            k = draw(st.integers(1, min(3, hw)))
            dil = draw(st.integers(1, 2)) if k > 1 and hw >= 2 * k - 1 else 1
            pad = draw(st.integers(0, dil * (k - 1)))
            stride = draw(st.integers(1, 2))
            cout = draw(st.integers(1, 6))
            groups = draw(st.sampled_from([g for g in _divisors(c) if cout % g == 0] + ([c] if c > 1 else [])))
            if cout % groups:
                cout = groups * draw(st.integers(1, 2))
            spec = ("conv", c, cout, k, stride, pad, dil, groups, draw(st.booleans()), draw(st.booleans()),
                    draw(st.sampled_from(ACTS)))
            hw = (hw + 2 * pad - dil * (k - 1) - 1) // stride + 1
            c = cout
        elif kind == "res":
            k = draw(st.sampled_from([1, 3]))
            groups = draw(st.sampled_from(_divisors(c)))
            spec = ("res", c, k, groups, draw(st.booleans()), draw(st.booleans()), draw(st.sampled_from(ACTS)))
        elif kind == "dense":
            g = draw(st.integers(1, 3))
            k = draw(st.sampled_from([1, 3]))
            spec = ("dense", c, g, k, draw(st.booleans()), draw(st.sampled_from(ACTS)))
            c += g
        elif kind == "se":
            spec = ("se", c, draw(st.integers(1, 3)), draw(st.booleans()), draw(st.booleans()))
        elif kind == "pool":
            spec = ("pool", draw(st.sampled_from(["max", "avg"])))
            hw //= 2
        elif kind == "ir":
            cout = draw(st.integers(1, 5))
            stride = draw(st.integers(1, 2))
            spec = ("ir", c, draw(st.integers(1, 8)), cout, 3, stride, draw(st.sampled_from(ACTS)), draw(st.booleans()))
            hw = (hw + 2 - 3) // stride + 1
            c = cout
        elif kind == "ln":
            spec = ("ln", c)
        elif kind == "twice":
            cat = draw(st.booleans())
            spec = ("twice", c, cat)
            c = 2 * c if cat else c
        elif kind == "branch":
            concat = draw(st.booleans())
            a_out, b_out = draw(st.integers(1, 4)), draw(st.integers(1, 4))
            spec = ("branch", c, a_out, b_out, concat, draw(st.booleans()), draw(st.sampled_from(ACTS)))
            c = a_out + b_out if concat else a_out
            hw = hw if concat else (hw - 1) // 2 + 1
        elif kind == "convnext":
            spec = ("convnext", c, draw(st.integers(1, 6)), draw(st.sampled_from(ACTS)))
        elif kind == "inres":
            spec = ("inres", c, draw(st.sampled_from(_divisors(c))))
        elif kind == "up":
            stride = draw(st.integers(1, 2))
            k = draw(st.integers(1, 3))
            pad = draw(st.integers(0, (k - 1) // 2))
            out_pad = draw(st.integers(0, stride - 1))
            groups = draw(st.sampled_from(_divisors(c)))
            cout = groups * draw(st.integers(1, 2))
            spec = ("up", c, cout, k, stride, pad, out_pad, groups, draw(st.booleans()))
            hw = (hw - 1) * stride - 2 * pad + k + out_pad
            c = cout
        elif kind == "glu":
            out = draw(st.integers(1, 4))
            spec = ("glu", c, out)
            c = out
        else:  # depthwise (with a channel multiplier) then pointwise
            mult = draw(st.integers(1, 2))
            cout = draw(st.integers(1, 5))
            spec = ("dwsep", c, mult, cout, draw(st.booleans()), draw(st.sampled_from(ACTS)))
            c = cout
        blocks.append(spec)
    head = ("head", c, hw * hw, draw(st.booleans()), draw(st.sampled_from([0, 3, 5])), draw(st.sampled_from(ACTS)),
            draw(st.booleans()), draw(st.integers(1, 4)))
    return ("cnn", cin, size, tuple(blocks), head)


@st.composite
def seq_specs(draw):
    """A sequence model on ``[N, T, F]``: embed, transformer pieces, pooled head."""
    fin = draw(st.integers(1, 5))
    t = draw(st.integers(1, 5))
    heads = draw(st.sampled_from([1, 2]))
    c = heads * draw(st.integers(1, 3))
    blocks = tuple(("seq", draw(st.sampled_from(["mlp", "attn", "lin"])), c, draw(st.integers(1, 6)), heads,
                    draw(st.sampled_from(ACTS)), draw(st.booleans()), draw(st.booleans()))
                   for _ in range(draw(st.integers(1, 3))))
    return ("seq", fin, t, c, blocks, draw(st.integers(1, 4)), draw(st.sampled_from(["mean", "first"])))


def _block(spec):
    kind = spec[0]
    if kind == "conv":
        return ConvBN(*spec[1:])
    if kind == "res":
        _, c, k, groups, bias, bn, a = spec
        return Residual(ConvBN(c, c, k, 1, k // 2, 1, groups, bias, bn, a))
    if kind == "dense":
        _, c, g, k, bn, a = spec
        return Dense(ConvBN(c, g, k, 1, k // 2, 1, 1, True, bn, a))
    if kind == "se":
        return SE(*spec[1:])
    if kind == "pool":
        return Pool(spec[1])
    if kind == "ir":
        return InvertedResidual(*spec[1:])
    if kind == "ln":
        return ChannelLN(spec[1])
    if kind == "twice":
        return Twice(*spec[1:])
    if kind == "branch":
        return Branches(*spec[1:])
    if kind == "glu":
        return GLU(*spec[1:])
    if kind == "convnext":
        return ConvNeXt(*spec[1:])
    if kind == "inres":
        return InPlaceResidual(*spec[1:])
    if kind == "up":
        return Up(*spec[1:])
    if kind == "dwsep":
        _, c, mult, cout, bn, a = spec
        return nn.Sequential(ConvBN(c, c * mult, 3, 1, 1, 1, c, False, bn, a), ConvBN(c * mult, cout, 1, 1, 0, 1, 1, True, bn, a))
    raise ValueError(kind)


def build_net(spec, seed=0, dtype=torch.float64):
    """The network ``spec`` describes, in eval mode, its weights, biases and BatchNorm statistics drawn
    from a generator seeded ``seed``; and an example input for it (batch 2)."""
    if spec[0] == "cnn":
        _, cin, size, blocks, head = spec
        net = Net([_block(b) for b in blocks], Head(*head[1:]))
        shape = (2, cin, size, size)
    else:
        _, fin, t, c, blocks, classes, pool = spec
        net = SeqNet(fin, c, [SeqBlock(*b[1:]) for b in blocks], classes, pool)
        shape = (2, t, fin)
    g = torch.Generator().manual_seed(seed)
    net = net.to(dtype)
    with torch.no_grad():
        for name, p in net.named_parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=dtype) * (0.6 if p.dim() > 1 else 0.5))
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g, dtype=dtype))
                m.running_var.copy_(torch.rand(m.num_features, generator=g, dtype=dtype) + 0.5)
    return net.eval(), torch.randn(shape, generator=g, dtype=dtype)


@st.composite
def mask_plans(draw, names):
    """Per layer: a synapse density, the fraction of output rows made dead and the fraction of input
    columns made dead; at most one layer (drawn, or none) loses every synapse, every output row or every
    input column (all its units dead), so that most networks still compute something."""
    plan = {n: (draw(st.sampled_from([1.0, 0.8, 0.5, 0.2])), draw(st.sampled_from([0.0, 0.0, 0.25, 0.5])),
                draw(st.sampled_from([0.0, 0.0, 0.25, 0.5])))
            for n in names}
    dead = draw(st.sampled_from(names)) if draw(st.integers(0, 3)) == 0 else None
    if dead is not None:
        plan[dead] = draw(st.sampled_from([(0.0, 0.0, 0.0), (1.0, 1.0, 0.0), (1.0, 0.0, 1.0)]))
    return plan


def make_masks(conn, plan, seed):
    """Masks for ``conn`` following ``plan`` (:func:`mask_plans`), drawn from a generator seeded ``seed``."""
    g = torch.Generator().manual_seed(seed)
    masks = {}
    for name, m in conn.masks.items():
        density, rows, cols = plan[name]
        keep = torch.rand(m.shape, generator=g) < density
        if m.dim() >= 2:
            keep[torch.rand(m.shape[0], generator=g) < rows] = False
            keep[:, torch.rand(m.shape[1], generator=g) < cols] = False
        masks[name] = keep
    return masks
