"""Diagnostics that let a researcher see inside a network.

    python recipes/diagnostics.py dense-gradients [--kind mlp|cnn|both] [--batchnorm off|on|both] [--compare]
    python recipes/diagnostics.py collinearity   [--model mlp --train_steps 300 | --weights FILE [--connectome FILE]]
    python recipes/diagnostics.py knowledge      [--model resnet20 --dataset cifar10 --weights FILE] [--log_x]
    python recipes/diagnostics.py progress RUN_DIR

Every command takes --output_dir, --svg and --overwrite, and every one but progress (which reads a finished run)
the data/model options (--dataset, --data-dir, --model, --weights, --batch_size, --seed) and --progress /
--no-progress (bars only on a terminal unless one says otherwise); figures are PNG (plus SVG with --svg), tables CSV + Markdown,
all written into --output_dir. A rerun with the same settings rewrites its files; one that would leave
files of an earlier run of the command there (another --kind's figures, another --model's, SVGs) is
refused, naming them, unless --overwrite, which deletes those (no other file) once the checks pass.
Defaults run offline on scikit-learn's digits, in seconds (dense-gradients, which trains
four nets by default, in a minute or two on a CPU; on --dataset mnist its two cnn nets take some
20 minutes on one thread, as its first lines say before it starts).
Orders, step sizes and anything selected are computed on a held-out part of TRAIN; the test split
is only ever used to report. A pruned model (--weights of a run folder, with its connectome.safetensors
beside it, or --connectome FILE) is measured as it is: collinearity measures its live synapses only,
knowledge keeps its pruned weights pruned.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import time

if __name__ == "__main__":  # Ctrl-C while torch is still importing: one line, not a traceback
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    __import__("_startup")  # for its effect: installs the quiet start-up Ctrl-C handler

import torch

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from adaptive import diagnostics as D  # noqa: E402
from adaptive.diagnostics._common import bars_off, batch_statistics_explained, set_progress  # noqa: E402
from adaptive.diagnostics.knowledge import DEFAULT_NOISE_FLOOR  # noqa: E402
DEFAULT_ORDER_BATCHES = 20  # held-out batches of a gradient-based removal order, where it holds them
from adaptive.diagnostics.table import Table  # noqa: E402
from adaptive.atomic import write_text  # noqa: E402
from adaptive.cli import ArgumentParser, check_parallelism, error_lines, message_lines  # noqa: E402
from adaptive.cli_checks import LARGEST_COUNT, range_problem  # noqa: E402
from adaptive.paths import empty_path_problem, home_expanded  # noqa: E402
from recipes._diagnostics import folder  # noqa: E402
from recipes._diagnostics.dense_plan import dense_gradients_plan, memory_problem  # noqa: E402
from recipes._diagnostics.memory import keep_freed_memory  # noqa: E402


# ---------------------------------------------------------------------- shared seams
def get_data(args, batch_size=None):
    from adaptive.data import get_dataloaders

    return get_dataloaders(args.dataset, batch_size=batch_size or args.batch_size, data_dir=args.data_dir,
                           download=getattr(args, "download", False),
                           holdout=args.holdout, seed=args.seed, subset=args.subset, test_subset=args.test_subset,
                           eval_batch_size=args.eval_batch_size,
                           progress=getattr(args, "progress", None),
                           option_names={"subset": "--subset", "test_subset": "--test_subset", "holdout": "--holdout"}, **_checked_dataset_kw(args))


def _dataset_kw(args) -> dict:
    from adaptive.config import merge_key_values

    try:
        return merge_key_values(getattr(args, "dataset_kw", None) or [])
    except ValueError as e:
        raise SystemExit(f"recipes/diagnostics.py: error: {e}") from None


def _checked_dataset_kw(args) -> dict:
    """--dataset-kw, a key the dataset's builder does not take (or one an option sets) refused (a
    ValueError: one error line, status 2) before any data is read."""
    from adaptive.data.base import check_dataset_kw

    kw = _dataset_kw(args)
    if "progress" in kw:
        raise ValueError("--dataset-kw progress: give --progress or --no-progress (the bars of every step, data "
                         "preparation's included)")
    check_dataset_kw(args.dataset, kw)
    return kw


def model_first(args, build):
    """``build(num_classes, in_shape)`` called now where the dataset knows them unread
    (:func:`adaptive.data.model_before_data`), so that what does not fit the model (a --weights file,
    a --layer it lacks; ``build`` refuses it) is refused before the data loads. Returns
    ``for_data(num_classes, in_shape)``, to call once it has: that model, or one built then."""
    from adaptive.data import model_before_data

    return model_before_data(args.dataset, build, data_dir=args.data_dir, download=getattr(args, "download", False),
                             **_checked_dataset_kw(args))


def pruned_model(args, num_classes, in_shape):
    """``(model, connectome)``: :func:`get_model`'s model and the Connectome saying which of its
    synapses exist: ``--connectome FILE``, else the ``connectome.safetensors`` beside ``--weights``
    where there is one (a run folder's, next to its dense_state_dict.pt; prune_pretrained's, next to
    pruned_state_dict.pt), else None (a dense model; ``--connectome none`` says so). One found
    beside --weights that prunes weights the file holds nonzero is refused: it is not the masks of
    those weights (a run's state_dict holds zeros wherever its connectome prunes) but another run's."""
    model = get_model(args, num_classes, in_shape)
    if args.connectome == "none":
        return model, None
    path = args.connectome
    if path is not None and not args.weights:
        _refuse("--connectome gives the masks of a pruned model, whose weights --weights FILE must give too "
                "(a run folder's dense_state_dict.pt); without --weights the model is trained dense from scratch")
    if path is None and args.weights:
        beside = os.path.join(os.path.dirname(os.path.abspath(args.weights)), "connectome.safetensors")
        path = beside if os.path.isfile(beside) else None
    if path is None:
        return model, None
    from adaptive import Connectome

    nonzero = {id(p): p.detach() != 0 for p in model.parameters()}  # as --weights gave them: load zeroes the pruned
    which = "--connectome" if args.connectome else "the connectome.safetensors beside --weights"
    try:
        conn = Connectome.load(path, model)
    except (ValueError, KeyError, OSError) as e:
        _refuse(f"{which} ({path}) does not fit --model {args.model}: {e}"
                + ("" if args.connectome else "; give the right one with --connectome FILE, or --connectome none"))
    cut = sum(int((nonzero[id(p)] & ~conn.masks[n]).sum()) for n, p in conn.params.items())
    if cut and not args.connectome:
        _refuse(f"{which} ({path}) prunes {cut:,} weights that --weights ({args.weights}) holds nonzero, so it is not "
                "the masks of those weights (a run's dense_state_dict.pt holds zeros wherever its connectome prunes) "
                "but another run's or model's: give the right one with --connectome FILE, or --connectome none to "
                "measure the weights dense")
    if cut:
        print(f"--connectome prunes {cut:,} weights that --weights holds nonzero: they are set to 0, and the pruned "
              "model is measured", flush=True)
    print(f"pruned model: {conn.num_live():,} of its {conn.num_synapses():,} synapses live ({path})", flush=True)
    return model, conn


def get_model(args, num_classes, in_shape):
    """--model for data of ``num_classes`` classes and inputs ``in_shape``, seeded, its --weights loaded."""
    from adaptive.models import build_model

    torch.manual_seed(args.seed)
    return build_model(args.model, num_classes=num_classes, in_shape=in_shape, weights=args.weights)


def mixed(loader, seed):
    """``loader``'s examples in a seeded random order, the same at every call. Holdout and test
    loaders keep the dataset's order, often grouped by class (ImageFolder, the CIFAR copy here):
    their first batches would hold a few classes, and each batch a single one."""
    return torch.utils.data.DataLoader(loader.dataset, batch_size=loader.batch_size or 1, shuffle=True,
                                       generator=torch.Generator().manual_seed(int(seed) + 17),
                                       collate_fn=loader.collate_fn)


class _BuiltAtFirstUse:
    """A loader made by ``make`` at its first use (iterated, its length asked, any attribute but ``dataset``
    read): the test split's shuffled loader, handed to a diagnostic that reads it only after its choices are
    made. Made at once, its sampler asked the lazy test split's length and built it (scanned a folder,
    decoded a file) before the removal order was computed."""

    def __init__(self, make, dataset):
        self._make, self._loader, self.dataset = make, None, dataset

    def _built(self):
        if self._loader is None:
            self._loader = self._make()
        return self._loader

    def __iter__(self):
        return iter(self._built())

    def __len__(self):
        return len(self._built())

    def __getattr__(self, name):
        if name.startswith("_"):  # (copy and pickle probe dunder names before __init__ has run)
            raise AttributeError(name)
        return getattr(self._built(), name)


def test_mixed(data, seed):
    """The test split in a seeded random order (:func:`mixed`), its loader made at its first use: the split is
    built only once a diagnostic reads it, after everything it chooses."""
    return _BuiltAtFirstUse(lambda: mixed(data.test, seed), data.test.dataset)


def holdout_mixed(data, seed, needed_for: str):
    """The held-out part in a seeded random order (:func:`mixed`); a clear error when ``--holdout 0``
    left it empty."""
    if len(data.holdout.dataset) == 0:
        raise SystemExit(f"recipes/diagnostics.py: error: {needed_for} needs held-out TRAIN data, and --holdout 0 "
                         "leaves none: use --holdout 0.1 (say)")
    return mixed(data.holdout, seed)


def seeded_train_loader(data, batch_size, seed):
    """A fresh shuffled loader over the same train set with a fresh seeded generator: every
    variant of a comparison sees the same batches in the same order."""
    n = len(data.train.dataset)
    if n < batch_size:
        raise ValueError(f"the train part has {n} examples, fewer than one batch of {batch_size} (batches here are "
                         "always full, so that every step reads the same amount): use a larger --subset or a smaller "
                         "--batch_size")
    return torch.utils.data.DataLoader(data.train.dataset, batch_size=batch_size, shuffle=True,
                                       generator=torch.Generator().manual_seed(seed), drop_last=True)


def train_steps(model, loader, steps, optimizer, desc="training"):
    """``steps`` optimizer steps of cross-entropy on ``loader`` (cycled); returns the mean train loss
    of the last 10% of steps. A BatchNorm given one value per channel (a batch of one sample) is
    explained, naming --batch_size."""
    from tqdm.auto import tqdm

    model.train()
    losses, it = [], iter(loader)
    with batch_statistics_explained(f"{desc} (the command's brief training)", "give --batch_size 2 or more"):
        for _ in tqdm(range(steps), desc=desc, leave=False, disable=bars_off()):
            try:
                x, y = next(it)
            except StopIteration:
                it = iter(loader)
                x, y = next(it)
            optimizer.zero_grad(set_to_none=True)
            loss = torch.nn.functional.cross_entropy(model(x), y)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
    if not losses:
        return None
    tail = losses[-max(1, steps // 10):]
    return sum(tail) / len(tail)


def write_table(table: Table, out, name, title=None):
    table.to_csv(os.path.join(out, name + ".csv"))
    write_text(os.path.join(out, name + ".md"), table.to_markdown() + "\n")
    print(f"\n{title or name}\n{table.to_markdown()}")


def write_settings(args, out):
    """``<command>_settings.json`` in ``out`` (folder.SETTINGS): the options this run was given or defaulted
    (:func:`_settings`) and the torch it ran on, written with the run's first file, so that a results folder
    can be traced back to the command that made it (knowledge keeps them in its knowledge_summary.json)."""
    from adaptive import jsonio

    write_text(os.path.join(out, folder.SETTINGS[args.command]), jsonio.dumps(
        {"command": args.command, "settings": _settings(args), "torch": torch.__version__}, indent=2) + "\n")


def outdir(args, model=None):
    """--output_dir, made; a run that would leave an earlier run's files there beside its own is
    refused first, unless --overwrite (:mod:`recipes._diagnostics.folder`; ``model``: the knowledge
    figure's, where not --model)."""
    folder.refuse_left_over(args, args.output_dir, model)
    os.makedirs(args.output_dir, exist_ok=True)
    return args.output_dir


# ---------------------------------------------------------------------- dense-gradients
def make_optimizer(kind, model, lr):
    if kind == "adam":
        return torch.optim.Adam(model.parameters(), lr=lr)
    return torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)


def densecats(args, num_classes, in_shape, kinds, norms) -> dict:
    """The DenseCat net of each (kind, batchnorm) compared, seeded alike, for data of ``num_classes``
    classes and inputs ``in_shape``; a --layer it lacks, or one reading a single depth, is refused (before any
    training), and so, before any net
    is built, are nets larger than the memory available (:func:`memory_problem`)."""
    from adaptive.models import build_model

    # (torch's "can't allocate memory" otherwise); the nets are built and trained on the CPU, so the host's memory
    problem = memory_problem(args, kinds, norms, in_shape, num_classes, device="cpu")
    if problem:
        _refuse(problem)
    nets = {}
    for kind in kinds:
        for bn in norms:
            torch.manual_seed(args.seed)
            nets[kind, bn] = build_model("densecat", num_classes=num_classes, in_shape=in_shape, depth=args.depth,
                                         width=args.width, kind=kind, batchnorm=bn, activation=args.activation)
            depths = D.resolve_depths(nets[kind, bn], args.layer)
            if depths.numel() and bool((depths == depths.reshape(-1)[0]).all()):  # (warned only after training)
                _refuse(f"--layer {args.layer} reads signals of one depth only ({int(depths.reshape(-1)[0])}) in the "
                        f"{folder.dense_tag(kind, bn)} DenseCat net: one band, nothing to compare (its band ratio would be "
                        "NaN); pick a layer that reads a concatenation of several depths: classifier (the default), "
                        "or layers.K for K >= 1")
    return nets


def cmd_dense_gradients(args):
    if args.weights or args.connectome:
        _refuse("dense-gradients builds and trains its own DenseCat nets (--kind, --batchnorm, --depth, --width): "
                f"{'--weights' if args.weights else '--connectome'} applies to collinearity and knowledge; drop it")
    _check_counts(args, "grad_batches", "depth", "width", "compare_steps")
    kinds = ["mlp", "cnn"] if args.kind == "both" else [args.kind]
    norms = [False, True] if args.batchnorm == "both" else [args.batchnorm == "on"]
    _refuse_one_sample_batchnorm(args, kinds, norms)
    if args.compare and args.holdout <= 0:  # (found by --compare's evaluation, once the figures were written)
        _refuse("--compare reports each variant's held-out loss and accuracy, and --holdout 0 leaves no held-out "
                "TRAIN data: use --holdout 0.1 (say), or drop --compare")
    nets_for = model_first(args, lambda k, shape: densecats(args, k, shape, kinds, norms))
    out = outdir(args)
    data = get_data(args)
    nets = nets_for(data.num_classes, data.in_shape)
    if __name__ == "__main__":  # only where the recipe is the process: a call of main() (a test, a notebook)
        keep_freed_memory()  # keeps its malloc as it was (the cnn nets' activations: see _diagnostics/memory.py)
    print(dense_gradients_plan(args, kinds, norms, data.in_shape), flush=True)
    rows = []
    for n, (kind, bn) in enumerate([(kind, bn) for kind in kinds for bn in norms], 1):
        tag = folder.dense_tag(kind, bn)
        print(f"[{n}/{len(kinds) * len(norms)}] {tag}: training {args.train_steps} steps, then reading "
              f"{args.grad_batches} batches' gradients", flush=True)
        model = nets[kind, bn]
        opt = make_optimizer("sgd", model, args.lr)
        train_loss = train_steps(model, seeded_train_loader(data, args.batch_size, args.seed), args.train_steps, opt, desc=f"train {tag}")
        res = D.gradient_by_depth(model, seeded_train_loader(data, args.batch_size, args.seed + 1), layer=args.layer,
                                  batches=args.grad_batches)
        res.title = f"DenseCat {kind} ({args.activation}), depth {args.depth} x width {args.width}, " \
                    f"{'BatchNorm' if bn else 'no normalisation'}, {args.dataset}, after {args.train_steps} SGD steps\n" \
                    f"gradients on {args.dataset} TRAIN batches of {args.batch_size}, train mode"
        folder.delete_left_over(args, out)  # (--overwrite; before the first write, once: then none is left)
        if n == 1:
            write_settings(args, out)
        paths = res.plot(os.path.join(out, f"gradients_by_depth_{tag}.png"), svg=args.svg)
        write_table(res.table, out, f"gradients_by_depth_{tag}", f"{args.layer} |grad| by source depth ({tag})")
        ratio = res.ratio()
        decades = math.log10(ratio) if 0 < ratio < math.inf else float("nan")
        if math.isfinite(decades):
            said = f"{ratio:.4g} ({decades:+.2f} decades)"
        elif math.isnan(ratio):
            said = res.no_ratio_reason()
        else:  # 0 or inf: a band's median gradient is exactly 0
            said = f"{ratio:.4g} (the {'last' if ratio == math.inf else 'first'} band's median is 0)"
        print(f"{tag}: median |grad| of the first band / last band = {said}; "
              f"train loss (mean of the last 10% of steps) {'-' if train_loss is None else f'{train_loss:.4f}'}; figure {paths[0]}")
        rows.append({"net": tag, "train_loss": train_loss, "first_band_median": res.medians()[0],
                     "last_band_median": res.medians()[-1], "first/last": ratio,
                     "decades": decades})
    write_table(Table(rows), out, "band_ratios", "first/last band median gradient ratio")
    if args.compare:
        compare_optimizers(args, data, out, kinds)


def _refuse_one_sample_batchnorm(args, kinds, norms):
    """Refuse, before any work, a batch of one sample for an mlp DenseCat with BatchNorm (of
    --batchnorm, or --compare's 'sgd + batchnorm'): in training a BatchNorm1d normalises each batch
    by the batch's own statistics, and one sample gives each unit a single value, which has none
    (PyTorch's 'Expected more than 1 value per channel when training', at the first step). The cnn
    nets' BatchNorm2d also averages over positions, so one sample is enough there."""
    if args.batch_size != 1 or "mlp" not in kinds or not (True in norms or args.compare):
        return
    which = [f"--batchnorm {args.batchnorm}"] * (True in norms) + ["--compare's 'sgd + batchnorm'"] * args.compare
    drop = ["--batchnorm off"] * (True in norms) + ["without --compare"] * args.compare
    _refuse(f"--batch_size 1 cannot train the mlp DenseCat with BatchNorm ({' and '.join(which)}): in training a "
            "BatchNorm normalises each batch by the batch's own statistics, and one sample gives each unit a single "
            f"value, which has none; give --batch_size 2 or more, or {' '.join(drop)}, or --kind cnn")


def compare_optimizers(args, data, out, kinds):
    """Same net, same seeds, same batches: SGD, Adam, SGD + BatchNorm, band-scaled SGD. Reports the
    final held-out (from TRAIN) loss and accuracy."""
    from adaptive.models import build_model

    variants = [("sgd", "sgd", False, False, args.lr), ("adam", "adam", False, False, args.adam_lr),
                ("sgd + batchnorm", "sgd", True, False, args.lr), ("band-scaled sgd", "sgd", False, True, args.lr)]
    rows = []
    for kind in kinds:
        for label, opt_kind, bn, scaled, lr in variants:
            torch.manual_seed(args.seed)
            model = build_model("densecat", num_classes=data.num_classes, in_shape=data.in_shape,
                                depth=args.depth, width=args.width, kind=kind, batchnorm=bn, activation=args.activation)
            scaler = D.BandGradientScaler(model) if scaled else None
            opt = make_optimizer(opt_kind, model, lr)
            t0 = time.time()
            tl = train_steps(model, seeded_train_loader(data, args.batch_size, args.seed), args.compare_steps, opt,
                             desc=f"{kind}: {label}")
            if scaler:
                scaler.remove()
            ev = D.evaluate(model, data.holdout)
            rows.append({"net": kind, "variant": label, "lr": lr, "steps": args.compare_steps, "train_loss": tl,
                         "holdout_loss": ev["loss"], "holdout_accuracy": ev["accuracy"], "seconds": time.time() - t0})
    write_table(Table(rows), out, "optimizer_comparison", f"same net, same seed, same batches ({args.dataset} holdout from train)")


# ---------------------------------------------------------------------- collinearity
def trained_model(args, data, model):
    """``model`` (:func:`get_model`'s), trained briefly on ``data`` unless --weights gave it."""
    if args.weights is None and args.train_steps > 0:
        print(f"no --weights given: training {args.model} from scratch for {args.train_steps} steps "
              f"(--train_steps) before measuring", flush=True)
        opt = make_optimizer("sgd", model, args.lr)
        train_steps(model, seeded_train_loader(data, args.batch_size, args.seed), args.train_steps, opt,
                    desc=f"train {args.model}")
    return model


def _refuse(msg: str):
    raise SystemExit(f"recipes/diagnostics.py: error: {msg}")


# what leaving out a count option does, offered with its refusal (the others have defaults)
_LEFT_OUT = dict(subset="for all", test_subset="for all", eval_batch_size="for --batch_size",
                 total_synapses="to read it from the run")


def _check_counts(args, *names, least=1):
    """Options that are counts, checked before any model is trained."""
    for name in names:
        v = getattr(args, name, None)
        # (past LARGEST_COUNT, --train_steps 1e20: Python's OverflowError, a traceback)
        problem = range_problem(f"--{name}", v, least, whole=True, left_out=_LEFT_OUT.get(name, ""),
                                most=LARGEST_COUNT)
        if problem:
            _refuse(problem)


def cmd_collinearity(args):
    _check_counts(args, "batches", "grad_batch_size")
    if args.split == "holdout" and args.holdout <= 0:
        _refuse("--split holdout needs held-out TRAIN data, and --holdout 0 leaves none: use --holdout 0.1 (say)")
    model_for = model_first(args, lambda k, shape: pruned_model(args, k, shape))
    out = outdir(args)
    data = get_data(args, batch_size=max(args.batch_size, args.grad_batch_size or 0))
    model, conn = model_for(data.num_classes, data.in_shape)
    loader = (holdout_mixed(data, args.seed, "--split holdout") if args.split == "holdout"
              else seeded_train_loader(data, args.batch_size, args.seed + 1))
    _refuse_one_batch(args, loader)  # before the brief training, which it would waste
    model = trained_model(args, data, model)
    res = D.collinearity(model, loader, batch_size=args.grad_batch_size, batches=args.batches, train_mode=False,
                         conn=conn)
    # the train loader reads TRAIN less its held-out part (where --holdout leaves one): say so
    split = (f"the held-out part of {args.dataset} TRAIN" if args.split == "holdout"
             else f"{args.dataset} TRAIN, less its held-out part" if args.holdout > 0 else f"{args.dataset} TRAIN")
    source = f"{args.model}" + (f" ({os.path.basename(args.weights)})" if args.weights else f" trained {args.train_steps} steps")
    title = f"{source}; gradients on {split}, eval mode"  # the plots add the batches and examples measured
    folder.delete_left_over(args, out)
    write_settings(args, out)
    p1 = res.plot(os.path.join(out, "collinearity_vs_grad2.png"), svg=args.svg, title=title)
    p2 = res.plot(os.path.join(out, "sign_agreement_vs_grad2.png"), svg=args.svg, measure="sign_agreement", title=title)
    p3 = res.plot_summary(os.path.join(out, "collinearity_by_layer.png"), svg=args.svg, title=title)
    write_table(res.table, out, "collinearity_layers", f"collinearity per layer ({res.describe_batches()} of {split})")
    write_table(res.fraction_above(), out, "collinearity_fraction_above", "fraction of weights above each cosine collinearity")
    if conn is not None:
        print(f"measured the {res.measured:,} live synapses; the {res.pruned:,} pruned ones are left out")
    print(f"figures: {p1[0]}, {p2[0]}, {p3[0]}")


def _refuse_one_batch(args, loader):
    """Refuse a --split whose examples make fewer than 2 gradient batches (of --grad_batch_size, else
    the loader's own --batch_size ones): collinearity compares batch gradients, and one batch agrees
    with itself (cosine 1 everywhere), none measures nothing. The API's error and warning name its
    ``batch_size=``, not the options that set it. The size it advises is the largest that makes 2: the
    examples over 2 for batches cut to --grad_batch_size (the rest dropped) or the train loader's own
    (drop_last), one less than the examples for the held-out loader's own (its last batch may be short)."""
    examples = len(loader.dataset)
    read = min(examples, len(loader) * loader.batch_size)  # the train loader drops its last part
    own = "--eval_batch_size" if args.split == "holdout" and args.eval_batch_size else "--batch_size"  # (held-out batches)
    if args.grad_batch_size:
        size, option, n, largest = args.grad_batch_size, "--grad_batch_size", read // args.grad_batch_size, read // 2
    else:
        size, option, n = loader.batch_size, own, len(loader)
        largest = examples // 2 if loader.drop_last else examples - 1
    if n < 2:
        held = "" if read == examples else f" ({read:,} of them read, in whole --batch_size batches)"
        # more data: a larger --subset where one cuts TRAIN (without it, all of TRAIN is read already), a
        # larger --holdout for the held-out part
        more = [o for o, helps in (("--subset", args.subset is not None), ("--holdout", args.split == "holdout")) if helps]
        more = f" or more data ({', '.join(more)})" if more else ""
        _refuse(f"--split {args.split}: its {examples:,} examples{held} make {n} gradient batch{'' if n == 1 else 'es'} "
                f"of {size} ({option}), and collinearity compares the gradients of several batches (one agrees with "
                f"itself everywhere): give a smaller {option} (at most {largest}){more}")


# ---------------------------------------------------------------------- knowledge
def cmd_knowledge(args):
    if not args.replot:
        from adaptive.config import merge_key_values
        from adaptive.utility import configured_estimator, estimator_names, get_estimator

        if args.estimator not in estimator_names():
            _refuse(f"unknown estimator {args.estimator!r}: use one of {sorted(estimator_names())}")
        try:  # the options checked against the estimator's constructor, before anything runs
            args.estimator_kw = merge_key_values(args.estimator_kw or [], "--estimator_kw",
                                                 examples=("damping=1e-6", "{damping: 1.0e-6}"))
            configured_estimator(args.estimator, args.estimator_kw)
        except ValueError as e:
            _refuse(message_lines(e))  # (a plugin estimator's notes follow the line)
        if getattr(get_estimator(args.estimator), "needs_gradients", False) and args.holdout <= 0:
            _refuse(f"the {args.estimator} order needs held-out TRAIN data, and --holdout 0 leaves none: use --holdout "
                    "0.1 (say)")
        if not 0.0 < args.max_fraction <= 1.0:
            _refuse(f"--max_fraction must be in (0, 1], got {args.max_fraction}")
        _check_counts(args, "points", "eval_batches", "order_batches")
        _check_counts(args, "finetune_batches", "bn_batches", least=0)
    if args.replot:
        try:  # read before any folder is made: a mistyped --replot creates nothing
            curve = D.KnowledgeCurve.load(args.replot, noise_floor=args.noise_floor)
        except (FileNotFoundError, ValueError) as e:
            _refuse(f"--replot {args.replot}: {e}")
        model = curve.meta.get("model", "model")
        out = outdir(args, model)
        folder.delete_left_over(args, out, model)
        paths = curve.plot(os.path.join(out, folder.knowledge_figure(model)), svg=args.svg,
                           title=curve.meta.get("title", ""), log_x=args.log_x)
        curve.save(out)
        print(f"{curve.shown_fit_table().to_markdown()}\nredrawn from {args.replot}: {_refit_note(curve, args.noise_floor)}; "
              f"figure {paths[0]}")
        return
    model_for = model_first(args, lambda k, shape: pruned_model(args, k, shape))
    out = outdir(args)
    data = get_data(args)
    model, conn = model_for(data.num_classes, data.in_shape)
    model = trained_model(args, data, model)
    t0 = time.time()
    # held-out TRAIN only for an order that reads gradients: magnitude and random read no data
    reads_data = getattr(get_estimator(args.estimator), "needs_gradients", False)
    order_loader = holdout_mixed(data, args.seed, f"the {args.estimator} order") if reads_data else None
    # not given: up to 20, the whole held-out part where it holds fewer (a warning is for a count asked for)
    order_batches = args.order_batches or (min(DEFAULT_ORDER_BATCHES, len(order_loader)) if order_loader else None)
    curve = D.knowledge_distribution(
        model, test_mixed(data, args.seed), estimator=configured_estimator(args.estimator, args.estimator_kw),
        order_loader=order_loader,
        points=args.points,
        max_fraction=args.max_fraction, finetune_batches=args.finetune_batches,
        # TRAIN batches only where a fine-tune or a BatchNorm re-estimate reads them: a one-shot curve of given
        # --weights reads none, and a train part smaller than one --batch_size batch was refused there
        finetune_loader=(seeded_train_loader(data, args.batch_size, args.seed + 2)
                         if args.finetune_batches or args.bn_batches else None), lr=args.finetune_lr,
        eval_batches=args.eval_batches, order_batches=order_batches, bn_batches=args.bn_batches,
        noise_floor=DEFAULT_NOISE_FLOOR if args.noise_floor is None else args.noise_floor, conn=conn, seed=args.seed,
    )
    n_order = min(len(data.holdout.dataset), (order_batches or 10 ** 9) * (data.holdout.batch_size or 1))
    size = data.holdout.batch_size or 1  # (--eval_batch_size's: the order's batches, each one observation of it)
    last = n_order - (math.ceil(n_order / size) - 1) * size
    source = f"{args.model}" + (f" ({os.path.basename(args.weights)})" if args.weights else f" trained {args.train_steps} steps")
    read = (f"{n_order} held-out TRAIN images in batches of {size}" + (f" (the last of {last}, which counts as "
                                                                       "much as each other)" if size < n_order and
                                                                      last < size else "")
            if reads_data else "weights only" if args.estimator == "magnitude"
            else f"no data ({args.estimator})")
    curve.note = (f"order from {read}; "
                  f"accuracy on {curve.meta['base']['samples']} {args.dataset} TEST images"
                  + (" (a fixed random sample)" if curve.meta['base']['samples'] < len(data.test.dataset) else "")
                  + "".join("; " + c for c in curve.meta["caveats"])
                  + "".join(f"; {what} on TRAIN less its held-out part" for what, n in (
                      ("fine-tuned", args.finetune_batches), ("BatchNorm re-estimated", args.bn_batches)) if n))
    seconds = time.time() - t0  # the measurement alone: no training before it, no saving or drawing after
    curve.meta.update(model=args.model, dataset=args.dataset, seconds=seconds,
                      title=f"knowledge distribution of {source} on {args.dataset}", settings=_settings(args))
    folder.delete_left_over(args, out)
    curve.save(out)  # first: a figure that fails to draw must not lose the measured curve
    paths = curve.plot(os.path.join(out, folder.knowledge_figure(args.model)), svg=args.svg, title=curve.meta["title"],
                       log_x=args.log_x)
    print(f"\naccuracy of what remains\n{curve.shown_markdown()}")
    print(f"\nexponential fits (log y = a + rate * removed)\n{curve.shown_fit_table().to_markdown()}")
    weights = (f"{curve.total:,} live prunable weights ({curve.pruned_before:,} already pruned)" if curve.pruned_before
               else f"{curve.total:,} prunable weights")
    print(f"\n{curve.note}; {weights}; curve measured in {seconds:.1f} s (as "
          f"knowledge_summary.json's seconds: the measurement alone, no training, saving or drawing); figure {paths[0]}")


def _refit_note(curve, given) -> str:
    """Which noise floor a --replot refitted above, and the one the fit it was read from used."""
    before = curve.meta["refit_of"]["noise_floor"]
    was = f"{before:g}" if before is not None else "one it did not record (1e-3 unless given --noise_floor)"
    why = "--noise_floor" if given is not None else "as before" if before is not None else "the default"
    return (f"refitted above a noise floor of {curve.noise_floor:g} ({why}; the fit read from there used {was}); "
            "recorded in knowledge_summary.json and the fit table's fitted above")


def _settings(args) -> dict:
    """The command's options as given or defaulted, for its summary file: a results folder traced back to
    the command that made it (seed, subsets, held-out share, rates, weights file, plugins)."""
    plain = (str, int, float, bool, type(None))
    return {k: v for k, v in sorted(vars(args).items())
            if k not in ("func", "command") and (isinstance(v, plain) or isinstance(v, list)
                                                 and all(isinstance(x, plain) for x in v))}


# ---------------------------------------------------------------------- progress
def cmd_progress(args):
    _check_counts(args, "total_synapses")  # (-3 put the run on a negative removal axis; 0 was read as left out)
    prog = D.progress(args.run_dir, total_synapses=args.total_synapses)  # checks the folder before anything is made
    out = args.output_dir or args.run_dir
    # (its own figures only: nothing of the run's; a folder at a figure's name is refused, where the error
    # named a temporary file of the atomic write)
    folder.refuse_left_over(args, out)
    os.makedirs(out, exist_ok=True)
    from adaptive.plots import run_config, run_title

    cfg = run_config(args.run_dir)  # the run's model and dataset, not this command's --model/--dataset defaults
    title = run_title(cfg.get("model"), cfg.get("dataset"), args.run_dir, what="controller progress: ")
    folder.delete_left_over(args, out)
    paths = prog.plot(os.path.join(out, "progress.png"), svg=args.svg, title=f"{title}\n{args.run_dir}")
    print(f"{len(prog.events)} events, {len(prog.metrics)} metric rows; removal axis from {prog.removed_source}; figure {paths[0]}")


# ---------------------------------------------------------------------- command line
def build_parser() -> argparse.ArgumentParser:
    # progress reads a finished run: it takes only the output options, not the data and model ones it would ignore
    output = argparse.ArgumentParser(add_help=False)
    o = output.add_argument_group("output")
    o.add_argument("--output_dir", "--output-dir", default=None, help="where figures and tables go (default: runs/diagnostics/COMMAND; for progress, the run folder; for knowledge --replot, DIR)")
    o.add_argument("--svg", action="store_true", help="also write SVG figures (default: PNG only)")
    o.add_argument("--overwrite", action="store_true", help="delete the files an earlier run of this command left in "
                   "--output_dir that this run does not write (another --kind's, --batchnorm's or --model's, "
                   "--compare's, SVGs), just before its first write; never another file (default: such a run is "
                   "refused before any work, naming them; a rerun with the same settings rewrites its files)")
    common = argparse.ArgumentParser(add_help=False, parents=[output])
    common.add_argument("--progress", dest="progress", action="store_true", default=None,
                        help="progress bars (data preparation, training, gradient reads, removal points) even when "
                             "stderr is not a terminal (default: bars only when stderr is a terminal, none into pipes "
                             "and log files)")
    common.add_argument("--no-progress", "--no_progress", dest="progress", action="store_false", default=None,
                        help="no progress bars, even on a terminal (default: bars only when stderr is a terminal)")
    g = common.add_argument_group("data and model")
    g.add_argument("--dataset", default="digits", help="digits (offline), mnist, cifar10, imagenet, folder (--data-dir holds train/ and val/ or test/), fake")
    g.add_argument("--data-dir", "--data_dir", dest="data_dir", default=None, help="data folder (default: $ADAPTIVE_DATA, else ../shared/data)")
    g.add_argument("--download", action="store_true", help="let torchvision download a dataset that is not found (needs internet; default: never)")
    g.add_argument("--model", default="mlp", help="model name for adaptive.models.build_model (mlp, lenet5, resnet20, ...; dense-gradients always builds densecat)")
    g.add_argument("--plugins", nargs="+", action="extend", default=[], help=".py files or module names imported first: their "
                   "register_* calls add models or datasets that --model and --dataset can then name, or estimators for "
                   "knowledge --estimator (repeatable, the "
                   "values adding up; default: none)")
    g.add_argument("--weights", default=None, help="weights file loaded strictly into --model (skips the brief training; default: none, train --train_steps)")
    g.add_argument("--connectome", default=None, metavar="FILE", help="a pruned model's connectome (Connectome.save's "
                   ".safetensors) for --weights: collinearity measures only its live synapses, knowledge keeps its "
                   "pruned weights pruned (default: the connectome.safetensors beside --weights, where there is one, "
                   "as in a run folder, refused where it prunes weights --weights holds nonzero; else the model is "
                   "dense); none: the model is dense, whatever lies beside --weights")
    g.add_argument("--dataset-kw", "--dataset_kw", dest="dataset_kw", action="append", default=[], metavar="KEY=VALUE",
                   help="an argument of the dataset builder, e.g. image_size=32 for folder, or several as a YAML mapping "
                        "'{image_size: 32, resize: 36}' (repeatable, later ones winning per key; YAML values; default: none)")
    g.add_argument("--batch_size", "--batch-size", type=int, default=128, help="batch size of training and gradient measurements")
    g.add_argument("--eval_batch_size", type=int, default=None, help="batch size of evaluations, and of the held-out batches a gradient-based removal order "
                   "reads, each one observation of its statistics (default: --batch_size)")
    g.add_argument("--seed", type=int, default=0, help="seed of the split, data order, initial weights and a random removal order")
    g.add_argument("--holdout", type=float, default=0.1, help="fraction of TRAIN held out for orders and comparisons")
    g.add_argument("--subset", type=int, default=None, help="use a stratified subset of TRAIN of this size (default: all of it)")
    g.add_argument("--test_subset", type=int, default=None, help="report on a stratified subset of TEST of this size (default: all of it)")
    g.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's own)")
    g.add_argument("--lr", type=float, default=0.05, help="SGD step size of the brief training (and of the SGD variants of dense-gradients)")
    g.add_argument("--train_steps", type=int, default=300, help="SGD steps of brief training when no --weights is given (dense-gradients: always)")

    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False)
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("dense-gradients", allow_abbrev=False, parents=[common], help="gradients of a concatenation net by signal depth")
    s.add_argument("--kind", choices=["mlp", "cnn", "both"], default="both",
                   help="DenseCat layers: fully connected (mlp), convolutional (cnn), or one net of each")
    s.add_argument("--batchnorm", choices=["off", "on", "both"], default="both",
                   help="BatchNorm after each layer: off, on, or one net of each")
    s.add_argument("--depth", type=int, default=8, help="layers of the DenseCat net (each sees every earlier output)")
    s.add_argument("--width", type=int, default=32, help="units (mlp) or channels (cnn) per DenseCat layer")
    s.add_argument("--activation", choices=["relu", "tanh", "gelu"], default="relu", help="DenseCat nonlinearity")
    s.add_argument("--layer", default="classifier", help="layer whose weight gradients are grouped (classifier, layers.K)")
    s.add_argument("--grad_batches", type=int, default=50, help="batches the gradient statistics run over")
    s.add_argument("--compare", action="store_true", help="also train SGD, Adam, BatchNorm and band-scaled SGD side by side (default: off)")
    s.add_argument("--compare_steps", type=int, default=600, help="training steps of each --compare variant")
    s.add_argument("--adam_lr", type=float, default=1e-3, help="Adam step size of the --compare variant (the others use --lr)")
    s.set_defaults(func=cmd_dense_gradients)

    s = sub.add_parser("collinearity", allow_abbrev=False, parents=[common], help="per-weight collinearity of batch gradients")
    s.add_argument("--grad_batch_size", type=int, default=None, help="batch size of the measured gradients (default: --batch_size)")
    s.add_argument("--batches", type=int, default=None, help="gradient batches (default: one pass)")
    s.add_argument("--split", choices=["holdout", "train"], default="train", help="data the gradients are measured on")
    s.set_defaults(func=cmd_collinearity)

    s = sub.add_parser("knowledge", allow_abbrev=False, parents=[common], help="accuracy of what remains against weights removed")
    s.add_argument("--estimator", default="magnitude", help="utility estimator giving the removal order (adaptive.utility)")
    s.add_argument("--estimator_kw", "--estimator-kw", action="append", default=[], metavar="KEY=VALUE",
                   help="an argument of the estimator's constructor, e.g. damping=1e-6 for obd, or several as a YAML "
                        "mapping (repeatable, later ones winning per key; YAML values; default: none)")
    s.add_argument("--points", type=int, default=40, help="N: the curve is measured at 0 removed, at N counts spaced "
                   "logarithmically from 1 to --max_fraction of the prunable weights and at max(2, N // 2) counts "
                   "spaced evenly from 0 to there; a count that comes twice (often among the smallest) is measured "
                   "once, so at most 1 + N + max(2, N // 2) points")
    s.add_argument("--max_fraction", type=float, default=1.0, help="remove up to this fraction of the prunable weights")
    s.add_argument("--finetune_batches", type=int, default=0, help="fine-tune steps after each point (0 = one shot)")
    s.add_argument("--finetune_lr", type=float, default=1e-3, help="SGD step size of the --finetune_batches steps")
    s.add_argument("--eval_batches", type=int, default=None, help="TEST batches per point (default: all)")
    s.add_argument("--bn_batches", type=int, default=0, help="TRAIN batches on which BatchNorm statistics are "
                   "re-estimated at every point (0: the intact network's are kept)")
    s.add_argument("--order_batches", type=int, default=None, help="held-out TRAIN batches for gradient-based orders; "
                   "more than the held-out part holds get a warning (default: %d, or all of it where it holds fewer)"
                   % DEFAULT_ORDER_BATCHES)
    s.add_argument("--noise_floor", type=float, default=None,
                   help="loss increases (nats) below this are not fitted (the accuracy fit's floor is its own: drops "
                        "below 1.5 examples' worth); recorded in knowledge_summary.json and the fit table (default: "
                        "1e-3; for --replot, the noise floor the run recorded)")
    s.add_argument("--log_x", action="store_true", help="draw the loss-increase and accuracy-drop panels against a "
                   "log axis of weights removed too (the intact net, 0 removed, left out there; with --replot as well; "
                   "default: a linear axis, on which the exponential fit is straight)")
    s.add_argument("--replot", default=None, metavar="DIR", help="redraw and refit a finished knowledge run's tables (written into DIR unless --output_dir is given; default: measure afresh)")
    s.set_defaults(func=cmd_knowledge)

    s = sub.add_parser("progress", allow_abbrev=False, parents=[output], help="controller progress of a run folder")
    s.add_argument("run_dir", help="run folder of recipes/adaptive.py (events.jsonl, metrics.csv)")
    s.add_argument("--total_synapses", type=int, default=None, help="synapses of the run's connectome: places density-only events on the removal axis (default: read from the run)")
    s.set_defaults(func=cmd_progress)
    for command in sub.choices.values():
        _show_defaults(command)
    return p


def _show_defaults(parser: argparse.ArgumentParser) -> None:
    """Every option's help ends with its default where it has one (None, off and empty say theirs in words)."""
    for action in parser._actions:
        d = action.default
        unset = d is None or d is False or d is argparse.SUPPRESS or (isinstance(d, list) and not d)
        if action.help and not unset and "default" not in action.help:
            action.help += f" (default: {d})"


def main(argv=None):
    args = build_parser().parse_args(argv)
    _refuse_multi_process()
    if getattr(args, "plugins", None):
        from adaptive.plugins import PluginError, load_plugins

        try:
            load_plugins(args.plugins)
        except PluginError as e:
            raise SystemExit(error_lines("recipes/diagnostics.py", e)) from None
    _check_counts(args, "train_steps", least=0)  # every command's (collinearity and knowledge took -5 as 0)
    _check_common(args)
    if getattr(args, "threads", None):
        torch.set_num_threads(args.threads)
    problem = empty_path_problem(args.output_dir, "--output_dir", "a folder, or leave it out for the command's default")
    if problem:  # (it failed once the work was done)
        _refuse(problem)
    _expand_home(args)
    if args.output_dir is None and getattr(args, "replot", None):
        args.output_dir = args.replot  # redrawn where the run is, unless told otherwise (--replot's checks name it)
    elif args.output_dir is None and args.command != "progress":
        args.output_dir = os.path.join("runs", "diagnostics", args.command)
    if args.output_dir is not None and args.output_dir != getattr(args, "replot", None):
        from adaptive.run_folder import not_a_folder  # (makedirs failed with "File exists" once the work was done)

        problem = not_a_folder(args.output_dir)
        if problem:
            _refuse(problem)
    created = _missing_folders(args.output_dir)
    found = set_progress(getattr(args, "progress", None))  # (progress draws none)
    try:
        args.func(args)
    except BaseException:  # a refused option, missing data, Ctrl-C: no empty output folder left behind
        _remove_empty(created)
        raise
    finally:
        set_progress(found)  # (main called in a session: the caller's own setting back, not the default)
    return args


def _expand_home(args) -> None:
    """~ in every path option is the home folder, as the shell would have it (--output_dir=~/x made a
    folder called ~ in the working directory; --weights=~/w.pt, --connectome, --replot and progress's
    run folder were 'does not exist')."""
    for name in ("output_dir", "weights", "connectome", "replot", "run_dir", "data_dir"):
        if hasattr(args, name):
            setattr(args, name, home_expanded(getattr(args, name)))


def _check_common(args) -> None:
    """The options every command but progress shares, and knowledge's rates, checked before any work:
    --threads 0 and --eval_batch_size 0 were read as left out, --seed -1 ran, a NaN --lr trained a NaN
    model, a negative one ended with torch's bare "Invalid learning rate", --replot '' measured afresh, and
    --weights '' measured the fresh init untrained."""
    from adaptive.config import SEED_RANGE, seed_in_range

    if (getattr(args, "threads", None) or 0) > 0:  # (0 and below: _check_counts's 'at least 1')
        try:  # first: its bound (2**31 - 1, torch's C int) is the one a count of threads meets
            check_parallelism("--threads", args.threads, 1)
        except ValueError as e:
            raise SystemExit(str(e)) from None
    # the data options: the data layer refused them only once the output folder was made (then removed)
    _check_counts(args, "threads", "batch_size", "eval_batch_size", "subset", "test_subset")
    problem = range_problem("--holdout", getattr(args, "holdout", None), 0, 1, open_high=True,  # (NaN: refused)
                            what="the part of TRAIN held out; 0: none", example="0.1 (say)")
    if problem:
        _refuse(problem)
    for name in ("lr", "finetune_lr", "adam_lr"):
        v = getattr(args, name, None)
        if v is not None and not (math.isfinite(v) and v > 0):
            _refuse(f"--{name} must be a finite number > 0, got {v}")
    floor = getattr(args, "noise_floor", None)
    if floor is not None and not (math.isfinite(floor) and floor >= 0):
        _refuse(f"--noise_floor must be a finite number >= 0 (nats; loss increases below it are not fitted), got {floor}")
    if getattr(args, "seed", None) is not None and not seed_in_range(args.seed):
        _refuse(f"--seed must be in {SEED_RANGE}, got {args.seed}")
    for name, fix in (("weights", "a weights file, or leave --weights out to train --model for --train_steps steps"),
                      ("connectome", "a connectome file, none for a dense model, or leave --connectome out for the "
                                     "one beside --weights"),
                      # (read the default folder unsaid)
                      ("data_dir", "a data folder, or leave --data_dir out for the default ($ADAPTIVE_DATA, else "
                                   "../shared/data)"),
                      ("replot", "the output folder of a finished knowledge run, or leave --replot out to measure "
                                 "afresh")):
        # (--weights "" measured the fresh init, untrained, as if it were the weights; --replot "" measured afresh)
        problem = empty_path_problem(getattr(args, name, None), f"--{name}", fix)
        if problem:
            _refuse(problem)


def _refuse_multi_process() -> None:
    """Every command runs whole in one process: under a multi-process launch (accelerate launch
    --num_processes N, torchrun) each process ran all of it, the output written N times, with no word.
    Refused before any work by the main process, with one line; the others leave quietly (status 0,
    so that the launcher does not stop the main process before it has said why)."""
    try:
        processes = int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        processes = 1
    if processes > 1:
        if os.environ.get("RANK", "0") not in ("0", ""):
            raise SystemExit(0)
        _refuse(f"diagnostics runs in one process and splits no work, but this launch started {processes} "
                "(WORLD_SIZE): each would run the whole command and write every file; run it with plain "
                "`python recipes/diagnostics.py ...` instead of accelerate launch or torchrun")


def _missing_folders(path) -> list:
    """``path`` and those of its parents that do not exist yet, deepest first: what this command's
    makedirs would create (nothing for None, the progress command's default of the run folder)."""
    missing = []
    path = os.path.abspath(path) if path else None
    while path and not os.path.exists(path):
        missing.append(path)
        parent = os.path.dirname(path)
        path = parent if parent != path else None
    return missing


def _remove_empty(folders) -> None:
    """Remove ``folders`` (deepest first) while each is an empty folder: only folders this command
    created, never one that holds anything."""
    for made in folders:
        if not os.path.isdir(made) or os.listdir(made):
            return
        try:
            os.rmdir(made)
        except OSError:
            return


if __name__ == "__main__":
    from adaptive.cli import run_cli

    run_cli(main, "recipes/diagnostics.py")
