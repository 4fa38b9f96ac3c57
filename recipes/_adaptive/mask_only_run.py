"""A ``mode: mask_only`` run: the weights stay bit-exact and only the connectome moves
(:func:`adaptive.optimize_connectome`), recorded after every target so that --resume continues it."""
from __future__ import annotations

import time

from adaptive import mask_only_checkpoint as stage_checkpoint
from adaptive.cli import mask_only_progress, progress_lines, show_progress
from adaptive.distributed import agreed_call, gather_mask_hashes, refuse_differing_masks, uncompiled_model_note
from adaptive.mask_only_targets import one_synapse_note
from adaptive.training import TrainState, metric_row

from .builders import _refuse_differing_splits
from .checks import _estimator
from .config import _target
from .folder import MASK_ONLY_CHECKPOINT, _save_config
from .report import (RunResult, _end, _finish, _nonzero, _save_trained, _split_labels, _test_eval, _test_split_size,
                     _write_outputs)
from .resume import _stage_precision_fix


def _mask_only(cfg, accelerator, model, loaders, output_dir, lock) -> RunResult:
    """Mask-only connectome optimisation: the weights stay bit-exact, only the masks move. The run
    is recorded after every target in ``mask_only_checkpoint.pt``; ``--resume`` continues it."""
    from adaptive.mask_only import optimize_connectome

    ckpt = output_dir / MASK_ONLY_CHECKPOINT  # --resume was resolved to this run folder already
    if cfg.weights is None:
        accelerator.print("note: no --weights given, so the masks are learned on the network's random initial "
                          "weights (a supermask search), not on a pretrained network; pass --weights FILE for that")
    one = one_synapse_note(cfg.target, "--target")  # (--density D means --target 1-D: a fraction, never the count 1)
    if one:
        accelerator.print(one)
    uncompiled = uncompiled_model_note(accelerator, "recipes/adaptive.py")
    if uncompiled:
        accelerator.print(uncompiled)
    lock.acquire(cfg)
    # an earlier run's checkpoint (set aside by begin) survives a run refused or stopped before its
    # first target, from here on: the setup below can fail or be interrupted too
    try:
        # (each process looks for the checkpoint itself, the first moves it: agreed, as every step up to
        # optimize_connectome, whose collectives are its own, is)
        if agreed_call(lambda: stage_checkpoint.begin(ckpt, bool(cfg.resume))):  # (without --resume: --overwrite)
            accelerator.print(f"--overwrite: the earlier run in {output_dir} is deleted once this run's settings are "
                              f"accepted (at its first update); until then its {MASK_ONLY_CHECKPOINT} is kept")
        accelerator.wait_for_everyone()

        # (preparing data loaders makes no collective call; iterating them may)
        train_dl, test_dl = accelerator.prepare(loaders.train, loaders.test)
        # every process verifies edits on the same (whole, unsharded) held-out batches, so all make the
        # same decisions; optimize_connectome moves batches to the model's device
        holdout_dl = loaders.holdout
        # each process loaded its own copy of the data: one of another size would stop matching the others'
        # reductions inside optimize_connectome (the test split, unread until the report, is compared there)
        _refuse_differing_splits(cfg, loaders, train=train_dl, holdout=holdout_dl)
        model, kw, synapses, loaded, at_load = agreed_call(
            lambda: _set_up(cfg, accelerator, model, loaders, train_dl, output_dir, ckpt))
        saved = []

        def save_config_once(record):  # the first record comes after optimize_connectome has checked its settings
            # (every process reaches it alike: the main process writes, and a failure is agreed: _save_config)
            if not saved:
                _save_config(accelerator, cfg, output_dir)
                saved.append(True)

        show = (mask_only_progress(synapses, lambda line: print(line, flush=True))
                if progress_lines(cfg.progress, accelerator.is_main_process) else None)

        def on_record(record):
            save_config_once(record)
            if show is not None:
                show(record)

        kw["callback"] = on_record
        t0 = time.time()
        try:
            with accelerator.autocast():  # --mixed_precision: the passes run under autocast, weights stay exact
                result = optimize_connectome(model, train_dl, holdout_dl, _target(cfg), **kw)
        except stage_checkpoint.CheckpointMismatchError as e:  # the checkpoint path here is RUN/mask_only_checkpoint.pt
            raise e.with_fix(f"To continue it, give the run's settings with --resume (--config {output_dir / 'config.yaml'} "
                             f"holds them{_stage_precision_fix(e.problem)}); to start afresh, give another --output_dir (or --overwrite to replace that "
                             "run)", afresh="start afresh in another --output_dir, or with --overwrite (which deletes that "
                             "run)") from None
    finally:
        stage_checkpoint.settle(ckpt)
    save_config_once(None)  # a resumed run with every target done records nothing
    conn = result.conn
    # masks that parted after the last evaluation's check (the chosen rung's, loaded on each process) stop here,
    # before any output
    hashes = gather_mask_hashes(accelerator, conn)
    refuse_differing_masks(hashes, conn, result.controller.step_count, ", the run's end")
    synapses = conn.num_synapses()
    live_share = lambda removed: (synapses - removed) / synapses  # noqa: E731  (as conn.density(): summary.json's)
    per_pass = max(1, len(train_dl))
    epoch_of = lambda step: max(0, step - 1) // per_pass  # noqa: E731  (the pass over TRAIN a step's batch came from)
    state = TrainState(step=result.controller.step_count, epoch=epoch_of(result.controller.step_count))
    for h in result.history:
        st = TrainState(step=h["step"], epoch=epoch_of(h["step"]))
        if h["kind"] == "update":
            metric_row(st, "train", h["train_loss"], h["train_acc"])
        elif h["kind"] == "eval":
            metric_row(st, "holdout", h["holdout_loss"], h["holdout_acc"])
        else:
            continue
        removed = h.get("train_removed", h["removed"]) if h["kind"] == "update" else h["removed"]
        st.metrics[-1].update(density=live_share(removed), removed=removed)  # what the row measured
        state.metrics += st.metrics
    _save_trained(accelerator, output_dir, conn)  # kept should the test split fail, read for the first time now
    _refuse_differing_splits(cfg, loaders, test=test_dl)  # read now, for the report: its evaluation's batches must match
    with accelerator.autocast():
        test_loss, test_acc, n_test = _test_eval(cfg, accelerator, model, test_dl)
    metric_row(state, "test", test_loss, test_acc, conn)
    from adaptive.mask_only import changed_from
    from adaptive.mask_only_bits import changed_by_load, differ_words

    # against the weights as loaded, and what the load itself changed of the --weights file (a float64 file
    # cast to the model's float32: 'differ from the original: 0' where every surviving value differed from it),
    # read at the set-up, not here: the file may have been replaced or removed while the run went on
    held = conn.dense_state_dict()  # (not `state`: the run's TrainState)
    accelerator.print("surviving weights that differ from the original: " + differ_words(
        changed_from(held, loaded, conn), changed_by_load(held, loaded, at_load[0]), at_load[1], cfg.weights, "the model"))
    # for 'best' the figures star the masks the model now holds (the chosen rung, or the dense network):
    # the lines end at the last rung tried
    best = result.snapshots.get("best")
    kept = None if best is None else dict(step=best.step, density=live_share(best.removed),
                                          holdout_loss=best.holdout_loss, holdout_acc=best.holdout_acc)
    labels = _split_labels(loaders, n_test, "train (each update window's batches)", cfg.test_subset)
    files = _write_outputs(accelerator, cfg, output_dir, state.metrics, result.events, labels, kept)
    # the held-out score of the masks the model now holds (for 'best', the chosen rung, not the last one tried)
    snaps = result.snapshots
    final = snaps.get("best") or (list(snaps.values())[-1] if snaps else None)
    summary = dict(test_accuracy=test_acc, test_loss=test_loss, test_examples=n_test,
                   test_split_examples=_test_split_size(loaders, n_test, cfg.test_subset),
                   holdout_accuracy=final.holdout_acc if final is not None else None, density=conn.density(),
                   synapses=conn.num_synapses(), live=conn.num_live(), nonzero=_nonzero(conn), steps=state.step,
                   updates=sum(1 for e in result.events if e.get("kind") == "update"),
                   seconds=result.resumed_seconds + time.time() - t0,  # a resumed run's earlier sessions too
                   processes=accelerator.num_processes, mask_hash_per_process=hashes)
    _finish(accelerator, output_dir, summary, files)
    _end(accelerator)
    return RunResult(output_dir, model, conn, result.controller, state, summary, files)


def _set_up(cfg, accelerator, model, loaders, train_dl, output_dir, ckpt) -> tuple:
    """What :func:`adaptive.optimize_connectome` runs with: ``(model, kw, synapses, loaded, at_load)``, the model
    on the process's device (no DDP wrapper: no weight is trained; the controller reduces its
    statistics across processes), its keywords, its synapses, the weights as loaded (the final
    check's reference) and what the load changed of the --weights file
    (:func:`adaptive.mask_only_bits.load_changes`), the start line printed. Its refusals (an empty train loader, a setting) are
    every process's alike; its other failures (its own device's memory) may be one process's. No
    collective: call it through :func:`adaptive.distributed.agreed_call`."""
    from adaptive.mask_only import count_synapses, loaded_state, resolve_target, stage_batches

    model = model.to(accelerator.device)
    target = _target(cfg)
    if len(train_dl) == 0:
        raise ValueError(f"the train loader is empty ({len(loaders.datasets.train)} examples): lower --batch_size or --holdout")
    # --max_steps counts training batches per target (each process's), else --epochs passes
    passes = cfg.max_steps / len(train_dl) if cfg.max_steps else float(cfg.epochs)
    passes = cfg.mask_only_kw.get("passes", passes)  # (kept by a resumed run recorded before the check)
    synapses = count_synapses(model, cfg.include, cfg.exclude)  # (quietly: the connectome warns, below)
    kw = dict(passes=passes, ensemble=cfg.ensemble, include=cfg.include, exclude=cfg.exclude,
              estimator=_estimator(cfg), window=cfg.update_every, edit_fraction=cfg.edit_fraction, seed=cfg.seed,
              progress=show_progress(cfg.progress) and accelerator.is_local_main_process, checkpoint=ckpt)
    # held-out evaluations as in train mode: every --eval_every steps, else every epoch (in updates)
    window = max(1, int(cfg.update_every or 1))
    kw["eval_every"] = max(1, (cfg.eval_every or len(train_dl)) // window)
    kw.update(cfg.mask_only_kw)  # (none of the keys above but the ones a resumed run kept: see _KW_KEPT)
    _check_pass_bounds(cfg, kw, train_dl, loaders.holdout, accelerator)
    # the batches each target reads: whole update windows, so maybe a few more than --max_steps or --epochs say
    per_target = stage_batches(kw["passes"], len(train_dl), kw["window"])
    # the window's source: a resumed run's recorded --mask_only_kw window overrides --update_every
    source = "--mask_only_kw window" if "window" in cfg.mask_only_kw else "--update_every"
    whole = ("a whole batch" if kw["window"] == 1
             else f"whole update windows of {kw['window']} ({source})")
    rounded = f", rounded up to {whole}" if per_target > kw["passes"] * len(train_dl) + 1e-9 else ""
    # a target of 0 is the dense network, with no stage of its own (check_targets accepted the target above)
    reads = ("the dense network, scored on the held-out part with no training batch read"
             if resolve_target(target, synapses) == 0 else
             f"{per_target:,} batches per target ({kw['passes']:.3g} pass(es) of {len(train_dl)} batches{rounded})")
    if cfg.eval_every and "eval_every" not in cfg.mask_only_kw and cfg.eval_every % window:  # (evaluations fall
        # between updates only: the cadence is whole windows, which the start line says where it is not --eval_every)
        reads += (f", held-out evaluations every {kw['eval_every'] * window} batches (--eval_every {cfg.eval_every} "
                  f"rounded down to whole update windows of {window})")
    accelerator.print(f"{cfg.model} on {cfg.dataset} (mask_only): {synapses:,} synapses (of "
                      f"{sum(p.numel() for p in model.parameters()):,} parameters), target {_shown(target)}, {reads}, "
                      f"estimator {cfg.estimator} -> {output_dir}")
    loaded = loaded_state(model)  # the weights as loaded, before the connectome: the final check's reference
    # what the load changed of the --weights file, read now (the file as it was loaded, as prune_pretrained reads
    # it), not at the report after the optimisation, when the file may have been replaced, moved or deleted
    from adaptive.mask_only_bits import load_changes

    return model, kw, synapses, loaded, load_changes(cfg.weights, loaded, model)


def _check_pass_bounds(cfg, kw: dict, train_dl, holdout_dl, accelerator) -> None:
    """Refuse, in the recipe's option names, an update window above the training batches of one pass
    (``--update_every 10**18`` ran that many batches) and ``--mask_only_kw verify_batches=N`` above the
    batches of one pass of the held-out part (optimize_connectome refuses it as its keyword, with no word
    of --holdout): each would read some batches twice, which adds no evidence. Every process holds as
    many batches, so all refuse alike. Values of the wrong type are left to optimize_connectome's checks.
    A --resume continues such a window with a warning, as it ran: the run recorded it before this check
    (its stage checkpoint refuses another, and a new run refuses ``--mask_only_kw window``), so a smaller
    one is no fix there."""
    from adaptive.cli_checks import examples_in, one_pass_problem
    from adaptive.mask_only_data import verify_pass_length

    processes = accelerator.num_processes
    window, verify = kw.get("window"), kw.get("verify_batches")
    option, sep = ("--mask_only_kw window", "=") if "window" in cfg.mask_only_kw else ("--update_every", " ")
    problems = []
    if isinstance(window, int) and not isinstance(window, bool):
        problems.append(one_pass_problem(
            option, window, len(train_dl),
            f"one pass of the train part ({examples_in(train_dl)}--batch_size {cfg.batch_size} each"
            f"{', per process' if processes > 1 else ''})",
            "read more batches per pass (a larger --subset, a smaller --holdout or --batch_size)",
            reader="an update's window", sep=sep))
        if problems[-1] and cfg.resume:
            accelerator.print(f"warning: {problems.pop().split('; give ')[0]}; the run was started with it before "
                              "this was refused, so it continues as it ran")
    if isinstance(verify, int) and not isinstance(verify, bool) and verify > 0:
        problems.append(one_pass_problem(
            "--mask_only_kw verify_batches", verify, verify_pass_length(holdout_dl, kw.get("seed", cfg.seed)),
            f"the held-out part ({examples_in(holdout_dl)}--eval_batch_size {cfg.eval_batch_size or cfg.batch_size} each)",
            "hold out more batches (a larger --holdout or --subset, or a smaller --eval_batch_size)",
            reader="each line search", sep="="))
    for problem in problems:
        if problem:
            raise ValueError(problem)


def _shown(target) -> str:
    """A target as the opening line shows it: a fraction that --density made (1 - 0.7) without its float
    noise (0.30000000000000004 reads 0.3, 0.0 stays 0.0); a count or 'best' as given."""
    return repr(round(target, 12)) if isinstance(target, float) else str(target)
