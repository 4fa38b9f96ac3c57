"""The run: :func:`main` (its options parsed, the folder and --resume's checkpoint checked),
:func:`_run` (data, model, the folder's lock) and :func:`_prune` (the optimisation, then the final
report, the only reader of the test split, and the outputs). Tests patch ``optimize_connectome`` and
``get_dataloaders`` here, where they are called."""
from __future__ import annotations

import contextlib
import time
from pathlib import Path

import torch

from adaptive.data import get_dataloaders, model_before_data
from adaptive import mask_only_checkpoint as stage_checkpoint
from adaptive import jsonio
from adaptive import run_folder
from adaptive.atomic import atomic_path, atomic_torch_save
from adaptive.cli import mask_only_progress, progress_lines, show_progress
from adaptive.distributed import (gather_mask_hashes, peer_stopped, peer_stopped_error, refuse_differing_masks,
                                  refuse_sharded_launch)
from adaptive.mask_only import changed_from, count_synapses, evaluate, loaded_state, optimize_connectome
from adaptive.metrics import fmt_unsaturated
from adaptive.mask_only_bits import changed_by_load, differ_words, load_changes
from adaptive.cli_checks import examples_in, one_pass_problem
from adaptive.mask_only_data import verify_pass_length
from adaptive.mask_only_targets import one_synapse_note
from adaptive.plots import run_title
from adaptive.training import evaluate as evaluate_sharded

from .builders import _accelerator, _build, _estimator, _imagenet_index, _train_sample
from .folder import (AFRESH, CHECKPOINT, OTHER_RECIPE_FILES, RESUME_FIX, RUN_FILES, _STARTED, _delete_run,
                     _earlier_run, _kept_earlier_note, _refuse_earlier_run, _write_config)
from .parse import parse_args
from .plot import _plot
from .report import _holdout_use, _table, _test_split_words
from .resume import _check_resumed_settings


@contextlib.contextmanager
def _report_resumable(ckpt_path: Path, args):
    """The final report: an error there (a test image that cannot be read, a full disk) comes after the
    whole optimisation, whose result checkpoint.pt keeps: the error says so, and how to make the report
    again without optimising again (it named only the image)."""
    try:
        yield
    except Exception as e:
        if ckpt_path.is_file():
            e.add_note(f"the optimisation finished and its masks are kept in {ckpt_path}: mend what stopped the final "
                       "report and run the same command with --resume (or --config "
                       f"{ckpt_path.parent / 'config.yaml'} --resume), which makes the report without optimising again")
        raise


def optimisation_minutes(result, session_seconds: float) -> float:
    """The optimisation's wall time in minutes over every session of a resumed run: this session's
    (``session_seconds``), or the time its history (and snapshots) carry on from the sessions before, the larger.
    The snapshots alone missed it where the last is not the last stage: a best climb's one snapshot is the rung it
    chose, often early (a resumed climb reported 1.4 s of its 4.8)."""
    carried = [s.wall_seconds for s in result.snapshots.values()]
    carried += [float(h["wall_seconds"]) for h in result.history if isinstance(h.get("wall_seconds"), (int, float))]
    return max([session_seconds] + carried) / 60


def main(argv=None, test_loader_hook=None) -> dict:
    """Run the recipe; returns a summary (rows, paths). ``test_loader_hook(loader)`` may wrap the
    test loader (tests use it to prove the test split is read only for the final report).

    Runs on the GPU when there is one; ``accelerate launch --num_processes N`` splits the training
    batches over N processes (the controller averages its statistics, so every process holds the
    same masks; each scores the whole holdout), the test split is split for the final report, and
    only the main process writes."""
    _STARTED["replaced_earlier"] = False  # an earlier main() in this process replaced its own folder's run
    args = parse_args(argv)
    refuse_sharded_launch("recipes/prune_pretrained.py")  # FSDP, ZeRO-3: before the data (minutes of a folder scan)
    # a list of ImageNet's wnids found in the data's folders joins --dataset-kw before anything else reads it:
    # config.yaml records it (a rerun from config.yaml depended on finding it again) and --resume compares it
    given = args.dataset_kw.get("wnids")
    args.dataset_kw, labels = _imagenet_index(args)  # (a subset of ImageNet's classes scored by a 1000-class network)
    found = args.dataset_kw.get("wnids") if given is None else None
    out = Path(args.output_dir)
    checked = None  # what the check of the checkpoint read: the run's load takes it (one read of the file)
    # another run live there: said before its files (being rewritten) are read, by the process that takes the lock
    busy = run_folder.busy_at_start(out)
    if busy:
        raise run_folder.RunFolderError(busy)
    if not args.resume:  # before anything is built or written
        _refuse_earlier_run(args, out)
    else:  # before any data is read: a run continues with the settings it was started with
        if not (out / CHECKPOINT).is_file() and not (out / (CHECKPOINT + ".earlier")).is_file():
            # the command it names must run: not into another recipe's run or a result folder, and
            # with --overwrite where an earlier run is (a run killed before its first target leaves config.yaml)
            run_folder.refuse_other_recipe(out, OTHER_RECIPE_FILES, "recipes/adaptive.py")
            run_folder.refuse_result_folder(out, RUN_FILES, "recipes/prune_pretrained.py")
            earlier = _earlier_run(out)
            start = (f"it holds an earlier run ({', '.join(earlier[:3])}{' ...' if len(earlier) > 3 else ''}) with no "
                     f"target recorded to continue from (stopped before its first one, say): {AFRESH}" if earlier
                     else "run without --resume to start")
            raise FileNotFoundError(f"--resume: no {CHECKPOINT} in {out} to continue; {start}")
        _check_resumed_settings(args, out, found)
        ckpt = out / CHECKPOINT if (out / CHECKPOINT).is_file() else out / (CHECKPOINT + ".earlier")
        try:  # a damaged one was refused only once the data had loaded (its settings are compared then)
            checked = stage_checkpoint.check_readable(ckpt)
        except stage_checkpoint.CheckpointMismatchError as e:
            raise e.with_fix(RESUME_FIX, afresh=AFRESH) from None
    try:
        return _run(args, out, checked, test_loader_hook, labels)
    finally:  # a run stopped before its load (data refused, say) holds no checkpoint state after it
        if checked is not None:
            checked.drop()


def _run(args, out: Path, checked, test_loader_hook, labels=None) -> dict:
    """The command once its options and --resume's checkpoint are checked: data, model, then the
    run in its locked folder. ``checked``: what the check read of the checkpoint, for its load."""
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    unwritable = run_folder.unwritable_problem(out)  # before the data: the lock that found it came after it loaded
    if unwritable:
        raise run_folder.RunFolderError(unwritable)
    # the model (its weights loaded) before the data where the dataset knows its classes and input
    # shape unread: a weights file that does not fit, or a count beyond the model's synapses, is
    # refused before minutes of data loading (an ImageNet folder scan, CIFAR-10's JPEG decoding)
    dataset_kw = args.dataset_kw  # (with the list of ImageNet's wnids main found; ``labels`` says so)
    model_for = model_before_data(args.dataset, lambda k, shape: _build(args, k, shape), data_dir=args.data_dir,
                                  download=args.download, **dataset_kw)
    dl = get_dataloaders(args.dataset, batch_size=args.batch_size, data_dir=args.data_dir, holdout=args.holdout,
                         download=args.download,
                         seed=args.seed, subset=args.subset, test_subset=args.test_subset, eval_batch_size=args.eval_batch_size,
                         num_workers=args.num_workers, progress=args.progress, holdout_required=True,
                         option_names={"subset": "--subset", "test_subset": "--test-subset", "holdout": "--holdout"}, **dataset_kw)
    _check_verify_batches(args, dl.holdout)
    test_loader = test_loader_hook(dl.test) if test_loader_hook else dl.test  # wrapping reads nothing
    model = model_for(dl.num_classes, dl.in_shape)
    accelerator = _accelerator(args)
    model = model.to(accelerator.device)  # no DDP wrapper: no weight trains, the controller reduces its statistics
    train_dl = accelerator.prepare(dl.train)
    _check_window(args, train_dl, accelerator)
    accelerator.print(f"{args.model}: mask-only on {accelerator.device}, {accelerator.num_processes} process(es), "
                      f"{len(train_dl):,} train batches of {args.batch_size} per process and pass")
    if labels:
        accelerator.print(labels)
    if args.weights is None:
        accelerator.print("note: no --weights given, so the masks are learned on the network's random initial "
                          "weights (a supermask search), not on a pretrained network; pass --weights FILE for that")
    one = one_synapse_note(args.remove, "--remove")
    if one:
        accelerator.print(one)
    lock = run_folder.RunLock(accelerator, out)  # taken before the run's first write into the folder
    lock.acquire(None if args.resume else lambda: _refuse_earlier_run(args, out))
    try:
        return _prune(args, dl, test_loader, model, train_dl, accelerator, out, checked)
    except BaseException:  # refused (a count beyond the model's synapses, say) before writing: it leaves no folder
        lock.release(refused=True)
        raise
    finally:
        lock.release()


def _check_verify_batches(args, holdout) -> None:
    """Refuse --verify-batches above the batches of one pass of the held-out part, in this command's
    words (optimize_connectome refuses it too, but as its keyword ``verify_batches=`` and with no word of
    the options that set the held-out part's batches); every process holds the same held-out part, so
    all refuse alike, before the run's folder is taken."""
    batches = verify_pass_length(holdout, args.seed) if args.verify_batches else None
    problem = one_pass_problem("--verify-batches", args.verify_batches, batches,
                               f"the held-out part ({examples_in(holdout, 'images')}--eval-batch-size {args.eval_batch_size} each)",
                               "hold out more batches (a larger --holdout or --subset, or a smaller --eval-batch-size)",
                               reader="each line search")
    if problem:
        raise ValueError(problem)


def _check_window(args, train_dl, accelerator) -> None:
    """Refuse a --window above the training batches of one pass (each process's): an update's window
    would read some twice, and ``--window 10**18`` ran that many batches; every process holds as many
    batches, so all refuse alike, before the run's folder is taken. A --resume continues such a window
    with a warning: the run recorded it before this check (a finished target ran with it), and its
    checkpoint refuses any other, so a smaller one is no fix there."""
    problem = one_pass_problem("--window", args.window, len(train_dl),
                               f"one pass of the train part ({examples_in(train_dl, 'images')}--batch-size {args.batch_size} each"
                               f"{', per process' if accelerator.num_processes > 1 else ''})",
                               "read more batches per pass (a larger --subset, a smaller --holdout or --batch-size)",
                               reader="an update's window")
    if problem and args.resume:
        accelerator.print(f"warning: {problem.split('; give ')[0]}; the run was started with it before this was "
                          "refused, so it continues as it ran")
    elif problem:
        raise ValueError(problem)


def _prune(args, dl, test_loader, model, train_dl, accelerator, out: Path, checked=None) -> dict:
    """The run, once it holds its folder: optimisation, then the final report and the outputs.
    ``checked``: what --resume's check read of the checkpoint (the optimisation's load takes it)."""
    main_proc = accelerator.is_main_process
    ckpt_path = out / CHECKPOINT
    # without --resume an earlier checkpoint is here only with --overwrite: set aside, so that a run
    # refused by optimize_connectome (its settings checked first) leaves the earlier run whole
    stage_checkpoint.begin(ckpt_path, args.resume)
    # (an earlier --overwrite run killed before its settings were accepted left the checkpoint set aside)
    replacing = args.overwrite and bool(_earlier_run(out))
    if replacing:
        accelerator.print(f"--overwrite: the earlier run in {out} is deleted once this run's settings are accepted "
                          f"(at its first update or held-out evaluation); until then it is kept whole, its "
                          f"{CHECKPOINT} too")
    accelerator.wait_for_everyone()
    deleted = []
    # config.yaml records the settings before the first stage checkpoint, so that a --resume after a
    # crash is checked against them (_check_resumed_settings); a run that records no stage takes it back
    wrote_config = []

    def write_config():
        if main_proc:
            _write_config(args, dl, out)
            wrote_config.append(True)

    def delete_earlier_run(_record=None):  # --overwrite: settings accepted, the earlier run goes (once)
        if args.overwrite and not deleted:
            deleted.append(True)
            _STARTED["replaced_earlier"] = True  # from here on, checkpoint.pt is this run's (Ctrl-C says so)
            if main_proc:
                _delete_run(out, keep=(CHECKPOINT,))  # checkpoint.pt, if there, is this run's (set aside above)
                write_config()

    if not args.overwrite and (not args.resume or (out / "config.yaml").is_file()):
        write_config()  # (an --overwrite run's goes once the earlier run's config.yaml has gone, above)
    show = (mask_only_progress(count_synapses(model), lambda line: accelerator.print(line, flush=True))
            if progress_lines(args.progress, main_proc) else None)

    def on_record(record):
        delete_earlier_run(record)
        if show is not None:  # no bar: one plain line per held-out evaluation
            show(record)

    extra = {"callback": on_record} if args.overwrite or show is not None else {}
    loaded = loaded_state(model)  # the weights as loaded, before the connectome: what the report checks against
    # and what the load itself changed of the file (a float64 file cast to the model's float32): the check
    # against the weights as loaded said 0 where pruned_state_dict.pt differed from the file in every such value
    at_load, at_load_names = load_changes(args.weights, loaded, model)
    t0 = time.time()
    try:
        with accelerator.autocast():  # --mixed-precision bf16: forward passes in bf16, weights and masks untouched
            result = optimize_connectome(
                model, train_dl, dl.holdout, args.remove, passes=args.passes, ensemble=args.ensemble,
                estimator=_estimator(args), window=args.window, edit_fraction=args.edit_fraction,
                approach=args.approach, margin=args.margin, verify_batches=args.verify_batches,
                line_search_tries=args.line_search_tries, eval_every=args.eval_every, seed=args.seed,
                progress=show_progress(args.progress) and accelerator.is_local_main_process, ladder=args.ladder,
                patience=args.patience, checkpoint=ckpt_path, _checked=checked, **extra)
    except stage_checkpoint.CheckpointMismatchError as e:  # the recipe's checkpoint path is OUTPUT_DIR/checkpoint.pt
        raise e.with_fix(RESUME_FIX, afresh=AFRESH) from None
    except Exception as e:  # (a Ctrl-C says so in _on_interrupt)
        if replacing and not deleted:  # stopped before the settings were accepted: --overwrite deleted nothing
            e.add_note(_kept_earlier_note(out))
        if peer_stopped(e):  # another process failed first (its error is its own to report): one line here, as
            # recipes/adaptive.py says it, not gloo's "Connection closed by peer" traceback
            how = (f"its finished stages are kept in {ckpt_path}: run the same command with --resume to continue"
                   if ckpt_path.is_file() else "run the same command again")
            raise peer_stopped_error(how) from e
        raise
    finally:  # --overwrite: the earlier run's checkpoint survives a run refused before its first update
        stage_checkpoint.settle(ckpt_path)
        if wrote_config and not args.resume and not ckpt_path.is_file():  # stopped before its first stage:
            (out / "config.yaml").unlink(missing_ok=True)  # nothing to resume, nothing left behind
    delete_earlier_run()
    minutes = optimisation_minutes(result, time.time() - t0)
    conn = result.conn
    total = conn.num_synapses()

    # ---- final report: the only place the test split is read (built and split over processes only now)
    test_dl = accelerator.prepare(test_loader)

    train_sample = _train_sample(dl, args)

    from tqdm.auto import tqdm

    rows, hashes = [], {}
    # one bar over every evaluation of the report: the dense network's train sample, held-out part
    # and test split, then each snapshot's train sample and test split
    # (closed however the report ends: a refusal of parted masks left it open, garbling the terminal and the error)
    report_bar = tqdm(total=(1 + len(result.snapshots)) * (len(train_sample) + len(test_dl)) + len(dl.holdout),
                      desc="final report", unit="batch", mininterval=1.0, leave=False,
                      disable=not (show_progress(args.progress) and accelerator.is_local_main_process))

    def train_eval():  # the same images for every row and on every process
        return evaluate(model, train_sample, progress=report_bar)

    with report_bar, torch.no_grad(), accelerator.autocast(), _report_resumable(ckpt_path, args):
        conn.set_masks({n: torch.ones_like(m) for n, m in conn.masks.items()})
        tl, ta, _ = train_eval()
        hl, ha, _ = evaluate(model, dl.holdout, progress=report_bar)
        sl, sa, n_test = evaluate_sharded(accelerator, model, test_dl, progress=report_bar)
        # a sparse start (weights of exactly 0.0, absent from the start): its row is the network as loaded
        start = result.start_removed
        rows.append(dict(target="start" if start else "dense", removed=start, fraction=start / total, train_loss=tl,
                         train_acc=ta, holdout_loss=hl, holdout_acc=ha, test_loss=sl, test_acc=sa))
        several = len(result.snapshots) > 1
        for label, snap in result.snapshots.items():
            result.use(label)
            pruned_sd = conn.dense_state_dict(device="cpu")  # the file loads on a machine without a GPU
            differ = changed_from(pruned_sd, loaded, conn)  # every tensor, against the copy taken at load
            hashes[label] = gather_mask_hashes(accelerator, conn)
            # before anything is written: masks that parted after the last evaluation's check stop every process
            refuse_differing_masks(hashes[label], conn, snap.step, f", target {label}'s snapshot, in the final report")
            folder = out / f"remove_{label}" if several else out
            if main_proc:
                folder.mkdir(parents=True, exist_ok=True)
                atomic_torch_save(pruned_sd, folder / "pruned_state_dict.pt")  # never truncated; same masks, same bytes
                conn.save(folder / "connectome.safetensors")
            tl, ta, _ = train_eval()
            sl, sa, _ = evaluate_sharded(accelerator, model, test_dl, progress=report_bar)
            by_load = changed_by_load(pruned_sd, loaded, at_load)
            accelerator.print(f"[{label}] surviving weights that differ from the original: "
                              + differ_words(differ, by_load, at_load_names, args.weights, "pruned_state_dict.pt"))
            rows.append(dict(target=label, removed=snap.removed, fraction=snap.removed / total, train_loss=tl,
                             train_acc=ta, holdout_loss=snap.holdout_loss, holdout_acc=snap.holdout_acc,
                             test_loss=sl, test_acc=sa, changed=differ + by_load, changed_by_load=by_load, folder=str(folder)))
    table = _table(rows)
    note = (f"\n{args.model} on {args.dataset}, {total:,} prunable synapses, {fmt_unsaturated(minutes, '.1f', (0.0,))} min of optimisation "
            f"on {accelerator.num_processes} process(es) ({accelerator.device.type}, mixed precision "
            f"{args.mixed_precision}"
            + ("; every figure here was measured under bf16 autocast, so a float32 evaluation of "
               "pruned_state_dict.pt differs in the last digits" if args.mixed_precision == "bf16" else "")
            + ").\n"
            f"Splits: train = a fixed random sample of {len(train_sample.dataset):,} images of the train part (the same for "
            f"every row); held-out = a stratified part of the TRAIN split ({len(dl.holdout.dataset):,} images; "
            f"{_holdout_use(args, total, result.start_removed)}"
            + ("; pretrained weights may have been trained on these very images, so its figures can read above the "
               "test split's" if args.weights else "") + "); test = "
            + _test_split_words(args, dl.test, n_test)  # (the data's loader: a test_loader_hook's wrapper may hide it)
            + ", read only for this report (before the run its files were only checked for faults, none scored: "
              "docs/data.md).\n")
    accelerator.print(table + note)
    if main_proc:
        out.mkdir(parents=True, exist_ok=True)
        with atomic_path(out / "results.md") as tmp:
            tmp.write_text("# prune_pretrained\n\n" + table + note)
        with atomic_path(out / "history.jsonl") as tmp, open(tmp, "w") as f:
            f.write(jsonio.dumps_lines(result.history))
        result.controller.write_events(out / "events.jsonl")
        _plot(result.history, rows, result.events, out / "curves.png",
              title=run_title(args.model, args.dataset, out, what="prune_pretrained: "),
              holdout_images=len(dl.holdout.dataset))
        summary = dict(rows=rows, minutes=minutes, processes=accelerator.num_processes,
                       device=accelerator.device.type, mixed_precision=args.mixed_precision,  # (what fed every figure)
                       mask_hash_per_process=hashes)
        with atomic_path(out / "summary.json") as tmp:
            tmp.write_text(jsonio.dumps(summary, indent=1))
        _write_config(args, dl, out)
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return {"rows": rows, "output_dir": str(out), "result": result, "minutes": minutes,
            "mask_hash_per_process": hashes}
