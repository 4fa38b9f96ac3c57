"""The notes a run adds to its summary and its progress lines: a density it did not reach and why,
updates that never ran, what to do about units that no longer train, the train loss a line shows."""
from __future__ import annotations

from typing import List, Optional, Union

import torch

from adaptive.metrics import fmt_unsaturated


def _density_note(cfg, summary, total_steps, ctrl) -> Optional[str]:
    """A line for the summary when the run ended more than one point of density away from the
    requested one, else None: ensembles too coarse to come closer, or a gradual policy given too few
    steps to finish its schedule."""
    got, want = summary["density"], cfg.density
    if want is None or abs(got - want) <= 0.01:  # --density none: the policy's own boundaries set it
        return None
    got = fmt_unsaturated(got, ".4f", (0.0, 1.0))  # (a density of 0.99996 is not "1.0000", every synapse live)
    largest = _whole_ensembles(ctrl, want)
    if largest is not None:
        return (f"the run ended at density {got}, not the requested {want:g}: its {cfg.ensemble!r} ensembles "
                f"(up to {largest:,} synapses each) are kept or pruned whole, and {got} is as near as whole "
                "ensembles come (within half an ensemble of the budget's target); a finer --ensemble lands nearer")
    vetoed = [e for e in ctrl.events if e.get("kind") == "update" and e.get("line_search_fraction") is not None
              and e["line_search_fraction"] < 1.0]
    if vetoed:  # the held-out check held the edits back, not the schedule
        undone = sum(1 for e in vetoed if e["line_search_fraction"] == 0.0)
        return (f"the run ended at density {got}, not the requested {want:g}: the held-out check (--line_search "
                f"{cfg.line_search}) undid {undone} and shrank {len(vetoed) - undone} of {summary['updates']} update(s), "
                f"whose held-out loss rose by more than --line_search_tolerance {cfg.line_search_tolerance:g} "
                "(events.jsonl: line_search_fraction, actual_loss_change); raise the tolerance to let the density "
                "follow its schedule")
    end_step = max(1, int(round(cfg.end_fraction * total_steps)))
    return (f"the run ended at density {got}, not the requested {want:g}: policy {cfg.policy!r} made "
            f"{summary['updates']} update(s), one every {cfg.update_every} steps until step {end_step} of {total_steps} "
            f"(end_fraction {cfg.end_fraction:g}); give it more steps (--epochs, --max_steps) or a smaller --update_every")


def _batch_note(cfg, train_examples: int, processes: int = 1) -> Optional[str]:
    """A line for the summary when the train part holds fewer examples than one step takes (--subset 100
    with --batch_size 128): every epoch is then a single step of a partial batch, which runs without a
    word otherwise. None where a step fits."""
    step = cfg.batch_size * cfg.gradient_accumulation_steps * processes
    if train_examples >= step:
        return None
    of = (f"--batch_size {cfg.batch_size}" + (f" x {cfg.gradient_accumulation_steps} accumulated" if
                                              cfg.gradient_accumulation_steps > 1 else "")
          + (f" x {processes} processes" if processes > 1 else ""))
    if processes > 1:  # Accelerate evens the processes' batches: the step is filled with examples read again
        one = cfg.batch_size * processes * min(cfg.gradient_accumulation_steps,
                                               -(-train_examples // (cfg.batch_size * processes)))
        what = (f"one step of {one:,} examples, {one - train_examples:,} of them read a second time or more (each "
                "process's share is evened out with examples from the epoch's start)") if one > train_examples else \
            f"one step of {train_examples:,} examples"
    else:
        what = f"one step of {train_examples:,} examples"
    return (f"the train part holds {train_examples:,} examples, fewer than one step takes ({step:,}: {of}), so each "
            f"epoch is {what}; a smaller --batch_size (or a larger --subset) gives more steps")


def _whole_ensembles(ctrl, density: float) -> Optional[int]:
    """The largest ensemble's synapses when the live count is within half an ensemble of its target
    for ``density`` (each layer's under a layer budget whose counts the policy holds, else the
    network's): as near as whole ensembles come. None where ensembles hold one synapse or the count
    is farther off."""
    from adaptive.policies.base import synapse_targets

    names = ctrl.editable()
    largest = {n: 1 if (s := ctrl.ensemble_sizes(n)) is None else int(s.max()) for n in names}
    if not names or max(largest.values()) <= 1:
        return None
    try:
        per_layer, network = synapse_targets(ctrl, density)
    except ValueError:  # the density is below what protected layers and floors need: no target to meet
        return None
    live = {n: int(torch.count_nonzero(ctrl.conn.masks[n])) for n in names}
    if per_layer is not None and ctrl.policy.holds_layer_counts and not ctrl.policy.ranks_globally:
        near = all(abs(live[n] - per_layer[n]) <= largest[n] / 2 for n in names)
    else:
        target = network if network is not None else sum(per_layer.values())
        near = abs(sum(live.values()) - target) <= max(largest.values()) / 2
    return max(largest.values()) if near else None


def _update_note(cfg, summary, total_steps, ctrl) -> Optional[str]:
    """A line for the summary when an adaptive policy never got to edit the connectome: its update
    windows held NaN or inf gradients or weights, or the run was too short for its schedule."""
    skipped = ctrl.nonfinite_windows
    if skipped and summary["updates"]:
        return (f"{skipped} update window(s) held NaN or inf gradients or weights and were skipped ({summary['updates']} "
                "update(s) ran); the training diverged at times (see the losses in metrics.csv): lower --lr, or "
                "add --warmup_steps")
    if summary["updates"] or cfg.policy == "magnitude":  # one-shot magnitude prunes at the start
        return None
    if skipped:
        return (f"no controller update ran: the gradients or weights of all {skipped} update window(s) held NaN or inf, so "
                "each update was skipped and the connectome kept its initial masks; the training diverged (see "
                "the losses in metrics.csv): lower --lr, or add --warmup_steps")
    end_step = max(1, int(round(cfg.end_fraction * total_steps)))
    return (f"no controller update ran: policy {cfg.policy!r} edits every {cfg.update_every} steps until step "
            f"{end_step} of {total_steps} (end_fraction {cfg.end_fraction:g}), so the connectome kept its initial "
            "masks; give it more steps (--epochs, --max_steps) or a smaller --update_every")


def dying_relu_remedy(cfg) -> str:
    """What the silent-units warning suggests against ReLUs that die: clipping the gradient where the
    run does not clip (recipes/benchmarks/lenet5_stability.py: LeNet-5 at lr 0.1 collapsed to chance in
    5 of 24 runs, 3 settings x 8 seeds, with --max_grad_norm 1 in none, and with a warmup in 4 others),
    else a tighter clip or a lower rate."""
    if cfg.max_grad_norm is None:
        return ("clipping the gradient, --max_grad_norm 1, kept all 24 LeNet-5 runs on MNIST alive where lr 0.1 "
                "alone lost 5: docs/training.md, recipes/benchmarks/lenet5_stability.py; a lower --lr helps too")
    return f"a smaller --max_grad_norm than {cfg.max_grad_norm:g} or a lower --lr usually keeps them alive"


def _last_train_loss(rows: List[dict], step: int) -> Union[float, str, None]:
    """A progress line's train loss: the last train row's, with the steps it covers where it closed
    before ``step`` (an evaluation between rows: an epoch's end, --eval_every off --log_every's
    grid), so that it does not pass for the loss up to the step the line names. None: no row yet."""
    train = [r for r in rows if r.get("split") == "train"]
    if not train:
        return None
    loss, end = train[-1].get("loss"), train[-1]["step"]
    if end == step or not isinstance(loss, (int, float)):
        return loss
    start = train[-2]["step"] + 1 if len(train) > 1 else 1
    return f"{loss:.4g} (steps {start}-{end})"
