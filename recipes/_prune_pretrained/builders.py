"""What a run is built from: the model (its --weights loaded, its class count the data's, its
--remove counts checked), the estimator, the Accelerator, and the fixed train sample the report
scores every row on."""
from __future__ import annotations

import torch

from adaptive.mask_only import check_targets
from adaptive.models import build_model_kw


def _train_sample(dl, args):
    """``train_eval_batches`` batches' worth of train-part images drawn once (seeded), in a fixed
    order: every row of the table is scored on the same images. (Iterating the shuffled train loader
    anew for each row drew other images each time.)"""
    from torch.utils.data import DataLoader, Subset

    ds = dl.train.dataset
    n = min(args.train_eval_batches * args.batch_size, len(ds))
    pick = torch.randperm(len(ds), generator=torch.Generator().manual_seed(args.seed))[:n].sort().values
    return DataLoader(Subset(ds, pick.tolist()), batch_size=args.eval_batch_size, shuffle=False,
                      num_workers=args.num_workers)


def _estimator(args):
    """The estimator by name, or an instance built with ``--estimator-kw`` and, for the estimators
    that take one, ``--step``."""
    from adaptive.utility import configured_estimator

    if args.step is not None and args.estimator not in ("presence", "evidence"):
        raise ValueError(f"--step applies to the presence and evidence estimators, not {args.estimator!r}")
    step = {} if args.step is None else {"step": args.step}
    return configured_estimator(args.estimator, {**args.estimator_kw, **step}, option="--estimator-kw")


def _accelerator(args):
    """One process per device under ``accelerate launch``; a plain run uses the GPU when there is
    one (``--cpu`` to stay on the CPU)."""
    from accelerate import Accelerator

    return Accelerator(cpu=bool(args.cpu) or not torch.cuda.is_available(), mixed_precision=args.mixed_precision)


def _check_num_classes(args, num_classes: int) -> None:
    """--num-classes must be the data's: labels are its class indices 0..K-1, which a model of another
    class count scores wrongly (a 1000-class run on a 2-class folder reported 0% everywhere)."""
    if args.num_classes and num_classes and args.num_classes != num_classes:
        raise ValueError(f"--num-classes {args.num_classes} does not match the {num_classes} classes of the "
                         f"{args.dataset} data: give --num-classes {num_classes} (and weights of that many classes), or "
                         "data with the model's classes")


def _build(args, num_classes: int, in_shape) -> torch.nn.Module:
    """The model for data of ``num_classes`` classes (unless --num-classes says, which must be the
    data's) and inputs ``in_shape``, its --remove counts checked against its synapses."""
    _check_num_classes(args, num_classes)
    model = build_model_kw(args.model, args.model_kw, "--model-kw", num_classes=args.num_classes or num_classes,
                           in_shape=in_shape, weights=args.weights)
    check_targets(model, args.remove, ensemble=args.ensemble, ladder=args.ladder)
    return model
