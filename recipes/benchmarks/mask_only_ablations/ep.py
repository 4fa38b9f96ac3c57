"""Edge-popup variations on the DEV split (see README.md here): one JSON line per target."""
import sys, time, math, json, argparse
from pathlib import Path; sys.path.insert(0, str(Path(__file__).resolve().parent)); sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
import torch, torch.nn.functional as F
from harness import setup
from adaptive import Connectome
from adaptive.cli import path_type
from adaptive.mask_only import evaluate
from adaptive.data.cycle import LoaderCycle as _batches
from adaptive.baselines.edge_popup import _topk_masks

ap = argparse.ArgumentParser()
ap.add_argument("--lr", type=float, default=0.01)
ap.add_argument("--passes", type=float, default=0.25)
ap.add_argument("--targets", default="0.2,0.5")
ap.add_argument("--opt", default="adam")
ap.add_argument("--init", default="rms")
ap.add_argument("--sched", default="cos")
ap.add_argument("--beta1", type=float, default=0.9)
ap.add_argument("--beta2", type=float, default=0.999)
ap.add_argument("--model", default="resnet20")
ap.add_argument("--seed", type=int, default=0)
ap.add_argument("--bs", type=int, default=128)
ap.add_argument("--ls", type=float, default=0.0)
ap.add_argument("--aug", type=int, default=0)
ap.add_argument("--reuse", type=int, default=1)
ap.add_argument("--rank", type=int, default=0)
ap.add_argument("--noise", type=float, default=0.0)
ap.add_argument("--curv", type=float, default=0.0)
ap.add_argument("--ramp", type=float, default=0.0)
ap.add_argument("--fema", type=float, default=0.99)
ap.add_argument("--offsets", default="", help="structured score offsets learned with the scores: r (per output channel), c (per input channel), l (per layer)")
ap.add_argument("--swa", type=float, default=0.0, help="final mask from the mean scores over this last fraction of each stage")
ap.add_argument("--sam", type=float, default=0.0, help="sharpness-aware: score gradients taken at the kept weights moved by this L2 radius up the loss gradient")
ap.add_argument("--over", type=float, default=0.0, help="overshoot: remove this multiple of the target (at most 0.9) first, then restore down to the target")
ap.add_argument("--over_until", type=float, default=0.3, help="fraction of the stage spent at the overshoot")
ap.add_argument("--over_back", type=float, default=0.7, help="fraction of the stage by which the target is reached again (linear)")
ap.add_argument("--mixup", type=float, default=0.0, help="mixup of the train batches with this Beta(alpha, alpha) (0: off)")
ap.add_argument("--bnalign", type=float, default=0.0, help="weight of a batch-statistics term: each BatchNorm's input "
                "batch mean and std pulled towards its frozen running statistics (standardised, mean over channels and layers)")
ap.add_argument("--save-masks", type=path_type(fix="a path, or leave --save-masks out to save none"), default=None, help="write the final mask of every target to this file (torch.save of {target: masks})")
ap.add_argument("--jpeg", type=int, default=0, help="a second view of every train image, re-encoded once more "
                "as JPEG at this quality (0: off; cached beside the proxy or in --jpeg-cache)")
ap.add_argument("--jmode", default="cons", choices=("cons", "aug", "both"), help="with --jpeg: cons = cross-entropy on "
                "the image plus --jw times KL(p(image) detached || p(second view)); aug = each example replaced by its "
                "second view with probability --jw; both = cross-entropy on the image plus --jw times that on the view")
ap.add_argument("--jw", type=float, default=1.0, help="with --jpeg: the weight (cons, both) or probability (aug)")
ap.add_argument("--jpeg-cache", type=path_type(), default="/tmp/adaptive-jpeg", help="folder of the re-encoded copies of the real train images")
ap.add_argument("--micro", type=int, default=1, help="split every batch into this many micro-batches, one backward each "
                "(the mean of their score gradients is the batch's)")
ap.add_argument("--andmask", type=float, default=0.0, help="with --micro: keep a score's gradient only where at least this "
                "fraction of the micro-batches agree on its sign (Parascandolo et al., 2021, AND-mask); 0: off")
ap.add_argument("--andsoft", type=int, default=0, help="with --micro: scale every score gradient by the agreement of its "
                "micro-batch signs, |mean sign| (a soft AND-mask)")
ap.add_argument("--teacher", type=path_type(fix="a path, or leave --teacher out for no teacher"), default=None, help="a state_dict of the same architecture (finetune.py --save): the loss "
                "becomes (1 - --kd) * cross-entropy + --kd * T^2 * KL(teacher || student) at temperature --kdT")
ap.add_argument("--kd", type=float, default=0.5, help="with --teacher: the weight of the distillation term in [0, 1]")
ap.add_argument("--kdT", type=float, default=2.0, help="with --teacher: the distillation temperature")
ap.add_argument("--learn", default="", help="comma-separated shell-style patterns: only these layers' scores "
                "learn; the others keep their initial (magnitude) scores and still compete in the global top-k")
ap.add_argument("--olr", type=float, default=0.01, help="Adam step of the offsets")
ap.add_argument("--proxy", type=path_type(fix="a path, or leave --proxy out for the DEV split"), default=None, help="a proxy network from proxy.py pretrain: learn on its shifted A images, "
                "report on the shifted B images it never saw (dev_acc) and on 5,000 seen ones (mem_acc)")
ap.add_argument("--quality", type=int, default=20, help="with --proxy: the re-JPEG quality of the shift")
a = ap.parse_args()
if a.jpeg and not 1 <= a.jpeg <= 95:
    ap.error(f"--jpeg is a JPEG quality in 1..95 (0: off), got {a.jpeg}")
if a.jw < 0 or (a.jmode == "aug" and a.jw > 1):
    ap.error(f"--jw must be >= 0 (and a probability <= 1 with --jmode aug), got {a.jw}")
if not 1 <= a.micro <= a.bs:
    ap.error(f"--micro must lie in 1..--bs ({a.bs}), got {a.micro}")
if not 0 <= a.andmask <= 1:
    ap.error(f"--andmask is a fraction of micro-batches in [0, 1], got {a.andmask}")
if (a.andmask > 0 or a.andsoft) and a.micro < 2:
    ap.error("--andmask and --andsoft compare micro-batches: give --micro 2 or more")
if a.teacher and (not 0 <= a.kd <= 1 or a.kdT <= 0):
    ap.error(f"--kd must lie in [0, 1] and --kdT be > 0, got {a.kd} and {a.kdT}")
if a.teacher and (a.micro > 1 or a.mixup > 0):
    ap.error("--teacher is not combined with --micro or --mixup")
if a.bnalign < 0:
    ap.error(f"--bnalign is a loss weight and must be >= 0, got {a.bnalign}")
mem = None
if a.proxy and not 1 <= a.quality <= 95:
    ap.error(f"--quality must lie in 1..95, got {a.quality}")
if a.proxy:
    from proxy import proxy_loaders
    from adaptive.models import build_model
    torch.set_num_threads(2)
    tl, hl, dl, mem = proxy_loaders(a.proxy, a.quality, a.seed, a.bs)
    fresh = lambda: build_model("resnet20", weights=a.proxy)
else:
    tl, hl, dl, fresh = setup(a.model, a.seed, bs=a.bs)
tl.dataset.augment = bool(a.aug)
if a.jpeg:
    import copy
    from torch.utils.data import DataLoader
    from proxy import rejpeg
    base = tl.dataset
    cache = (Path(a.proxy).parent / f"rejpeg-q{a.quality}-then-q{a.jpeg}.pt") if a.proxy else \
        Path(a.jpeg_cache) / f"cifar10-jpeg-train-rejpeg-q{a.jpeg}.pt"
    if cache.exists():
        imgs2 = torch.load(cache, weights_only=True)
    else:
        imgs2 = rejpeg(base.images, a.jpeg); cache.parent.mkdir(parents=True, exist_ok=True); torch.save(imgs2, cache)
    view2 = copy.copy(base); view2.images = imgs2

    class _Paired(torch.utils.data.Dataset):
        def __len__(self): return len(base)
        def __getitems__(self, idx):
            x1, y = base.batch(list(idx)); x2, _ = view2.batch(list(idx))
            return list(zip(x1.unbind(0), x2.unbind(0), y.tolist()))
    tl = DataLoader(_Paired(), batch_size=tl.batch_size, shuffle=True, generator=torch.Generator().manual_seed(a.seed))
teacher = None
if a.teacher:
    teacher = fresh().eval()
    teacher.load_state_dict(torch.load(a.teacher, map_location="cpu", weights_only=True))
    for p in teacher.parameters(): p.requires_grad_(False)
torch.manual_seed(a.seed)
model = fresh().eval()
for p in model.parameters(): p.requires_grad_(False)
conn = Connectome(model, mode="mask_only")
for p in conn.params.values(): p.requires_grad_(True)
total = conn.num_synapses()
it0 = _batches(tl)
F0 = {n: torch.zeros_like(p) for n, p in conn.params.items()}
if a.init.startswith("obd"):
    for _ in range(10):
        x, y = next(it0)
        for p in conn.params.values(): p.grad = None
        out = model(x)
        # per-sample-ish Fisher: sampled labels from the model's own predictive (empirical on true labels here)
        F.cross_entropy(out, y).backward()
        for n, p in conn.params.items(): F0[n] += p.grad.pow(2) * x.shape[0] / 10
raw = {}
for n, o in conn.original.items():
    r = o.abs() if not a.init.startswith("obd") else o.abs() * F0[n].sqrt()
    raw[n] = r.float()
scale = {n: (r.pow(2).mean().sqrt() if a.init in ("global", "obdglobal") else torch.tensor(1.0)) for n, r in raw.items()}
scores = {n: (r / r.pow(2).mean().sqrt()).clone() for n, r in raw.items()}
if a.rank:
    flat = torch.cat([v.reshape(-1) for v in scores.values()])
    rk = torch.empty_like(flat); rk[flat.argsort()] = torch.arange(flat.numel(), dtype=flat.dtype) / flat.numel()
    off = 0
    for n, v in scores.items():
        scores[n] = rk[off: off + v.numel()].view_as(v).clone(); off += v.numel()
scores = {n: v.requires_grad_(True) for n, v in scores.items()}
def _oshape(v, kind):
    if kind == "r": return (v.shape[0],) + (1,) * (v.dim() - 1)
    if kind == "c": return (1, v.shape[1]) + (1,) * (v.dim() - 2)
    return (1,) * v.dim()
offs = {(n, k): torch.zeros(_oshape(v, k), requires_grad=True) for n, v in scores.items() for k in a.offsets}
def eff(sc):
    out = {n: v.detach().clone() for n, v in sc.items()}
    for (n, k), o in offs.items(): out[n] += o.detach()
    return out
def topk(sc, k):
    return _topk_masks({n: v * scale[n] for n, v in eff(sc).items()}, k)
frozen_scores = set()
if a.learn:
    import fnmatch
    pats = [q for q in a.learn.split(",") if q]
    frozen_scores = {n for n in scores if not any(fnmatch.fnmatchcase(n, q) for q in pats)}
    if len(frozen_scores) == len(scores):
        ap.error(f"--learn {a.learn!r} matches no layer; layers: {', '.join(scores)}")
    print("learning the scores of", sorted(set(scores) - frozen_scores), flush=True)
bn_terms = []
if a.bnalign > 0:
    def _bn_hook(mod, inp):
        if not torch.is_grad_enabled():
            return
        z = inp[0]
        mu = z.mean(dim=(0, 2, 3)) if z.dim() == 4 else z.mean(dim=0)
        sd = (z.var(dim=(0, 2, 3)) if z.dim() == 4 else z.var(dim=0)).add(mod.eps).sqrt()
        rsd = mod.running_var.add(mod.eps).sqrt()
        bn_terms.append((((mu - mod.running_mean) / rsd).pow(2) + (sd / rsd - 1).pow(2)).mean())
    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if not bns:
        ap.error("--bnalign needs a network with BatchNorm layers (it pulls their batch statistics to the running ones)")
    for m in bns:
        m.register_forward_pre_hook(_bn_hook)
steps = int(math.ceil(a.passes * len(tl)))
it = _batches(tl)
fisher = {}
t0 = time.time()
saved = {}
for t in [float(x) for x in a.targets.split(",")]:
    keep = total - int(round(t * total))
    if a.opt == "adam":
        groups = [{"params": list(scores.values())}]
        if offs: groups.append({"params": list(offs.values()), "lr": a.olr})
        opt = torch.optim.Adam(groups, lr=a.lr, betas=(a.beta1, a.beta2))
    elif a.opt in ("lnorm", "gnorm"):
        opt = torch.optim.SGD(list(scores.values()), lr=a.lr, momentum=0.9)
    else:
        opt = torch.optim.SGD(list(scores.values()), lr=a.lr, momentum=0.9)
    lam = (lambda s: 0.5 * (1 + math.cos(math.pi * s / steps))) if a.sched == "cos" else (lambda s: 1.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lam)
    tr_loss = 0
    swa_sum, swa_n = None, 0
    keep0 = conn.num_live()
    for s in range(steps):
        k = keep if a.ramp <= 0 else int(round(keep0 + (keep - keep0) * min(1.0, (s + 1) / (a.ramp * steps))))
        if a.over > 0:
            k_over = total - int(round(min(0.9, a.over * t) * total))
            u = (s + 1) / steps
            w = 1.0 if u <= a.over_until else max(0.0, (a.over_back - u) / max(1e-9, a.over_back - a.over_until))
            k = int(round(keep + (k_over - keep) * w))
        batch = next(it)
        x, y = batch[0], batch[-1]
        x2 = batch[1] if a.jpeg else None
        if x2 is not None and a.jmode == "aug":
            swap = (torch.rand(x.shape[0]) < a.jw).view(-1, 1, 1, 1)
            x = torch.where(swap, x2, x)
        if a.mixup > 0:
            lm = float(torch.distributions.Beta(a.mixup, a.mixup).sample())
            pi = torch.randperm(x.shape[0])
            x = lm * x + (1 - lm) * x[pi]
            y2 = y[pi]
        if teacher is not None:
            with torch.no_grad():
                tprob = F.softmax(teacher(x) / a.kdT, 1)
        def _ce(out):
            l = F.cross_entropy(out, y, label_smoothing=a.ls)
            if teacher is not None:
                l = (1 - a.kd) * l + a.kd * a.kdT ** 2 * F.kl_div(F.log_softmax(out / a.kdT, 1), tprob, reduction="batchmean")
            if x2 is not None and a.jmode in ("cons", "both"):
                out2 = model(x2)
                if a.jmode == "cons":
                    l = l + a.jw * F.kl_div(F.log_softmax(out2, 1), F.softmax(out.detach(), 1), reduction="batchmean")
                else:
                    l = l + a.jw * F.cross_entropy(out2, y)
            if bn_terms:
                l = l + a.bnalign * torch.stack(bn_terms).mean()
                bn_terms.clear()
            return l if a.mixup <= 0 else lm * l + (1 - lm) * F.cross_entropy(out, y2, label_smoothing=a.ls)
        for _r in range(a.reuse):
            if a.noise > 0:
                nz = {}
                for n, v in scores.items():
                    uu = torch.rand_like(v).clamp_(1e-6, 1 - 1e-6)
                    nz[n] = v.detach() + a.noise * (uu.log() - (-uu).log1p())
                conn.set_masks(topk(nz, k))
            else:
                conn.set_masks(topk(scores, k))
            for p in conn.params.values(): p.grad = None
            Gpre = {}  # score gradients already formed (micro-batches), else g * w0 below
            if a.micro > 1:
                Gs = {n: [] for n in scores}
                lsum = 0.0
                for xc, yc in zip(x.chunk(a.micro), y.chunk(a.micro)):
                    for p in conn.params.values(): p.grad = None
                    lc = F.cross_entropy(model(xc), yc); lc.backward(); lsum += float(lc) / a.micro
                    for n in scores: Gs[n].append(conn.params[n].grad * conn.original[n])
                with torch.no_grad():
                    for n in scores:
                        st = torch.stack(Gs[n]); Gm = st.mean(0)
                        agree = st.sign().mean(0).abs()
                        if a.andmask > 0:
                            Gm = Gm * (agree >= a.andmask)
                        if a.andsoft:
                            Gm = Gm * agree
                        Gpre[n] = Gm
                tr_loss += lsum / a.reuse
            else:
                loss = _ce(model(x)); loss.backward(); tr_loss += float(loss.detach()) / a.reuse
            if a.sam > 0:
                with torch.no_grad():
                    gm = {n: p.grad * conn.masks[n] for n, p in conn.params.items()}
                    nrm = torch.sqrt(sum(g.pow(2).sum() for g in gm.values())).clamp_min(1e-12)
                    for n, p in conn.params.items(): p.add_(gm[n], alpha=a.sam / float(nrm)); p.grad = None
                _ce(model(x)).backward()
                conn.apply()
            with torch.no_grad():
                for n, v in scores.items():
                    if frozen_scores and n in frozen_scores:
                        v.grad = None
                        continue
                    g = conn.params[n].grad; o = conn.original[n]
                    G = Gpre[n] if Gpre else g * o
                    if a.curv > 0:
                        Fm = fisher.get(n)
                        Fm = g.pow(2) * x.shape[0] if Fm is None else a.fema * Fm + (1 - a.fema) * g.pow(2) * x.shape[0]
                        fisher[n] = Fm
                        G = G - a.curv * 0.5 * Fm * o.pow(2) * (2 * conn.masks[n].float() - 1)
                    if a.opt == "lnorm":
                        G = G / G.pow(2).mean().sqrt().clamp_min(1e-30)
                    v.grad = G
                    for k in a.offsets:
                        o = offs[(n, k)]
                        dims = [d for d in range(G.dim()) if o.shape[d] == 1]
                        o.grad = G.sum(dim=dims, keepdim=True) if dims else G.clone()
                if a.opt == "gnorm":
                    r = torch.cat([v.grad.reshape(-1) for v in scores.values()]).pow(2).mean().sqrt()
                    for v in scores.values(): v.grad /= r
            opt.step()
        sched.step()
        if a.swa > 0 and s >= (1 - a.swa) * steps:
            cur = eff(scores)
            swa_sum = cur if swa_sum is None else {n: swa_sum[n] + cur[n] for n in cur}
            swa_n += 1
    if swa_n:
        conn.set_masks(_topk_masks({n: v / swa_n * scale[n] for n, v in swa_sum.items()}, keep))
    else:
        conn.set_masks(topk(scores, keep))
    if a.save_masks:
        saved[t] = {n: m.clone() for n, m in conn.masks.items()}
        torch.save(saved, a.save_masks)
    dv = evaluate(model, dl)
    extra = {} if mem is None else {"mem_acc": round(100 * evaluate(model, mem)[1], 2)}
    print(json.dumps({"target": t, "dev_acc": round(100*dv[1],2), "dev_loss": round(dv[0],4), **extra, "train_loss": round(tr_loss/steps,4), "min": round((time.time()-t0)/60,2), **vars(a)}), flush=True)
