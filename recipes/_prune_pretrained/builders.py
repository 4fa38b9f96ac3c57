"""What a run is built from: the model (its --weights loaded, its class count the data's, its
--remove counts checked), the estimator, the Accelerator, and the fixed train sample the report
scores every row on."""
from __future__ import annotations

import torch

from adaptive.mask_only import check_targets
from adaptive.models import build_model_kw
from adaptive.models.weights import WeightsMismatchError, as_model_keys, load_weights, read_state_dict


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

    from adaptive.distributed import uncompiled_model_note, warn_lone_launched_process

    accelerator = Accelerator(cpu=bool(args.cpu) or not torch.cuda.is_available(), mixed_precision=args.mixed_precision)
    warn_lone_launched_process(accelerator, "recipes/prune_pretrained.py")  # accelerate launch --cpu --num_processes 2
    uncompiled = uncompiled_model_note(accelerator, "recipes/prune_pretrained.py")  # --dynamo_backend: never applied
    if uncompiled:
        accelerator.print(uncompiled)
    return accelerator


def _check_num_classes(args, num_classes: int) -> None:
    """--num-classes must be the data's: labels are its class indices 0..K-1, which a model of another
    class count scores wrongly (a 1000-class run on a 2-class folder reported 0% everywhere)."""
    if args.num_classes and num_classes and args.num_classes != num_classes:
        raise ValueError(f"--num-classes {args.num_classes} does not match the {num_classes} classes of the "
                         f"{args.dataset} data: give --num-classes {num_classes} (and weights of that many classes), or "
                         "data with the model's classes")


def _imagenet_index(args):
    """``(dataset_kw, note)``: --dataset-kw as the run reads it, and the line that says how the classes are labelled
    (None: as before, 0..K-1). Where datasets ``imagenet`` and ``folder`` find class folders named as ImageNet
    wnids, fewer than its 1000 (Imagenette's ten, say), and the model has 1000 outputs (--weights of a 1000-class
    classifier; without --weights, --num-classes 1000), each folder is labelled by its ImageNet index, so that loss
    and accuracy are the 1000-class network's own: ``wnids`` (a file of the 1000 wnids) is taken from --dataset-kw,
    else looked for in the data's folders (:func:`adaptive.data.wnids.find_wnid_file`); none found is refused
    naming the option and the file, and one found is read and checked against the folders here, its refusals worded
    for a list nobody gave (how to name another, or to need none). The list found is in the ``dataset_kw`` returned,
    which main sets as the run's --dataset-kw: config.yaml records it. Weights of the data's class count keep it as it is (a --num-classes 1000
    beside them is refused as before: the data's classes are not the model's). Anything this cannot tell (no such
    folder, a weights file it cannot read) leaves dataset_kw as it is: building the model and the data says what
    is wrong. The weights file is read here too (once more) only where the class folders are wnids."""
    from torchvision.datasets.folder import find_classes

    from adaptive.data import dataset_facts
    from adaptive.data.imagenet import _folder_train, _imagenet_train
    from adaptive.data.wnids import (HOW, LEVELS_UP, MAPPING_FILES, NUM_WNIDS, all_wnids, find_wnid_file, read_wnids,
                                     wnid_labels)
    from adaptive.paths import DatasetNotFoundError

    kw = dict(args.dataset_kw)
    if args.dataset not in ("imagenet", "folder"):
        return kw, None
    if kw.get("wnids") is not None:
        return kw, (f"labels: each class folder by its index among ImageNet's {NUM_WNIDS} wnids listed in {kw['wnids']} "
                    f"(dataset_kw wnids); loss and accuracy over all {NUM_WNIDS} outputs")
    try:
        train = _imagenet_train(args.data_dir) if args.dataset == "imagenet" else _folder_train(args.data_dir)
        classes = find_classes(str(train))[0]
    except (DatasetNotFoundError, OSError):
        return kw, None
    if not all_wnids(classes) or len(classes) >= NUM_WNIDS:
        return kw, None
    outputs, why = args.num_classes, f"--num-classes {args.num_classes}"
    if args.weights:  # (its outputs, where they differ from the data's classes: --num-classes is checked against them)
        facts = dataset_facts(args.dataset, data_dir=args.data_dir, **kw)
        try:
            model = build_model_kw(args.model, args.model_kw, "--model-kw", num_classes=facts[0], in_shape=facts[1])
            found = _file_class_count(model, args.weights, facts[0])
        except Exception:  # (no facts, a file that is no weights: building the model says what is wrong)
            found = None
        outputs, why = (found[0] if found else None), f"--weights {args.weights} holds a {found and found[0]}-class classifier"
    if outputs != NUM_WNIDS:
        return kw, None
    path = find_wnid_file(train.parent)
    if path is None:
        raise ValueError(f"the {len(classes)} class folders of {train} are ImageNet wnids ({', '.join(classes[:3])}"
                         f"{', ...' if len(classes) > 3 else ''}) and the model has {NUM_WNIDS} outputs ({why}), but "
                         f"no list of ImageNet's wnids was found to give each folder its ImageNet index: {HOW}; or put "
                         f"that file, as {MAPPING_FILES[0]}, in {train.parent} (looked for {', '.join(MAPPING_FILES)} "
                         f"there and in the {LEVELS_UP} folders above it); or give weights of "
                         f"{len(classes)} classes")
    # checked here, in words for a list nobody gave (its errors said "leave out dataset_kw wnids"; the user gave none)
    name = f"{path}, the list of ImageNet's wnids found in the data's folders (used as the model has {NUM_WNIDS} outputs),"
    other = (f"give --dataset-kw wnids=FILE naming ImageNet's list (it is then not looked for), or remove or mend {path}")
    wnid_labels(classes, read_wnids(path, name=name, how=other), path, train, name=name,
                fix=(f"{other}; or give weights of the folders' {len(classes)} classes, numbered 0..K-1 (no list is "
                     "looked for then)"))
    kw["wnids"] = str(path)  # (recorded in config.yaml: a rerun from it uses this list, found or not)
    return kw, (f"labels: each of the {len(classes)} class folders by its index among ImageNet's {NUM_WNIDS} wnids "
                f"listed in {path} (found in the data's folders; --dataset-kw wnids=FILE names another); loss and "
                f"accuracy over all {NUM_WNIDS} outputs")


def _build(args, num_classes: int, in_shape) -> torch.nn.Module:
    """The model for data of ``num_classes`` classes (unless --num-classes says, which must be the
    data's) and inputs ``in_shape``, its --remove counts checked against its synapses. Where --num-classes
    and the data's classes differ, --weights is loaded into a model of --num-classes first: a file that
    cannot be read or holds another model's weights is named as such (the class counts' refusal came first,
    and its fix, another --num-classes, only led to the file's own error)."""
    try:
        _check_num_classes(args, num_classes)
    except ValueError:
        if args.weights:
            probe = build_model_kw(args.model, args.model_kw, "--model-kw", num_classes=args.num_classes,
                                   in_shape=in_shape)
            try:
                load_weights(probe, args.weights)  # (its own error first, where the file is the problem)
            except WeightsMismatchError as bad:  # unreadable, or another model's weights (not this one's of other
                try:                              # classes, whose fix the class counts' refusal names)
                    other_classes = _file_class_count(probe, args.weights, args.num_classes) is not None
                except Exception:
                    other_classes = False
                if not other_classes:
                    raise bad from None
        raise
    classes = args.num_classes or num_classes
    model = build_model_kw(args.model, args.model_kw, "--model-kw", num_classes=classes, in_shape=in_shape)
    if args.weights:
        try:
            load_weights(model, args.weights)
        except WeightsMismatchError:
            found = _file_class_count(model, args.weights, classes)
            if found is None:
                raise
            other, shapes = found
            wnids = (args.dataset_kw or {}).get("wnids")  # (given: the folders labelled as 1000 classes)
            why = "" if wnids is None else (f" (by --dataset-kw wnids={wnids}, each class folder labelled by its "
                                            f"index among ImageNet's {classes} wnids: leave it out for weights of the "
                                            "folders' own classes)")
            raise WeightsMismatchError(
                f"--weights {args.weights} holds a {other}-class classifier ({shapes}), and the {args.dataset} data has "
                f"{classes} classes{why}: mask-only optimisation changes no weight, so it cannot change the number of "
                f"outputs. Give the weights of this model with {classes} outputs, trained on these classes (e.g. "
                f"torch.save(model.state_dict(), path) of a model built with num_classes={classes}), or data with "
                f"the model's {other} classes") from None
    check_targets(model, args.remove, ensemble=args.ensemble, ladder=args.ladder)
    return model


def _file_class_count(model: torch.nn.Module, path: str, classes: int):
    """``(K, what differs)`` where the weights file ``path`` holds ``model``'s weights for K classes,
    not ``classes`` (every key there but those :func:`load_weights` skips, as GoogLeNet's auxiliary
    heads; every shape the model's but for a first dimension of K, its outputs, where the model's is
    ``classes``); else None (another mismatch, whose own error says it)."""
    sd, own = read_state_dict(path), model.state_dict()
    skipped = tuple(getattr(model, "skipped_weight_prefixes", ()))  # as load_weights skips them
    sd = as_model_keys(sd, own, skipped)  # (and strips a prefix every key carries, renames old DenseNet names)
    sd = {k: v for k, v in sd.items() if k in own or not k.startswith(skipped)}
    if set(sd) - set(own) or [k for k in own if k not in sd and not k.endswith("num_batches_tracked")]:
        return None
    wrong = sorted(k for k in own if k in sd and sd[k].shape != own[k].shape)
    # every mismatch an output count alone (a classifier reading other features, as from images of
    # another size, is a mismatch a model of these classes would still have)
    if not wrong or not all(sd[k].dim() == own[k].dim() >= 1 and own[k].shape[0] == classes
                            and sd[k].shape[1:] == own[k].shape[1:] for k in wrong):
        return None
    counts = {int(sd[k].shape[0]) for k in wrong}
    if len(counts) != 1:
        return None
    return counts.pop(), ", ".join(f"{k}: file {tuple(sd[k].shape)}, model {tuple(own[k].shape)}" for k in wrong)


