"""The words of the final report: results.md's table (:func:`_table`) and what its Splits note
says the held-out part decided (:func:`_holdout_use`) and the test rows were (:func:`_test_split_words`)."""
from __future__ import annotations

from adaptive.data import is_test_draw, test_images
from adaptive.metrics import fmt_accuracy, fmt_unsaturated
from adaptive.mask_only import resolve_target


def _table(rows) -> str:
    head = ("| target | removed | removed % | train loss | train acc % | held-out loss | held-out acc % | test loss | test acc % |\n"
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n")
    # a share or loss that rounds onto 0 or 100 without being it keeps the digits that say so (fmt_unsaturated):
    # 100 of 268,336 removed read "0.0" %, and all but 10 "100.0"
    pct = lambda f: fmt_unsaturated(100 * f, ".1f")  # noqa: E731
    loss = lambda v: fmt_unsaturated(v, ".4f", (0.0,))  # noqa: E731
    body = "".join(
        f"| {r['target']} | {r['removed']:,} | {pct(r['fraction'])} | {loss(r['train_loss'])} | {fmt_accuracy(r['train_acc'])} | "
        f"{loss(r['holdout_loss'])} | {fmt_accuracy(r['holdout_acc'])} | {loss(r['test_loss'])} | {fmt_accuracy(r['test_acc'])} |\n"
        for r in rows)
    return head + body


def _holdout_use(args, total: int, start: int = 0) -> str:
    """What the held-out part decided in this run of ``total`` prunable synapses, for the Splits note
    (it said 'line search and snapshot choice' also where it decided nothing, only scored the masks;
    for --remove best on a ladder it left out that the held-out scores also stop the climb; and it said
    'line search of every update' where every target was 0, which runs no update). ``start``: the
    synapses a sparse start had already lost (a target of that many, as 0 on a dense one, runs no update)."""
    best = "best" in args.remove
    # a target at the start (0, or a sparse start's count) has no stage ("best": None)
    updates = any(resolve_target(t, total) != start for t in args.remove)
    climb = (f"when the climb stops ({args.patience} rung{'s' if args.patience != 1 else ''} without a better "
             "held-out score, --patience)")
    uses = (["the line search of every update"] if args.verify_batches and updates else []) + (
        ["the choice of the best snapshot"] if best else []) + ([climb] if best and args.ladder else [])
    if uses:
        return "used for " + ", ".join(uses[:-1]) + (" and " if len(uses) > 1 else "") + uses[-1]
    if not updates:
        return ("scored only: a target of 0 is the dense network, with no update to verify" if not start else
                f"scored only: a target of {start:,} removed is the network as loaded (its weights of exactly 0.0 "
                "absent from the start), with no update to verify")
    return "scored only: fixed targets with no line search (--verify-batches 0) choose nothing by it"


def _test_split_words(args, test_loader, n_test: int) -> str:
    """What results.md says the test rows were: the whole test split, or --test-subset's draw from it
    (a --test-subset of the split's size or more takes the whole split, and says so).
    ``test_loader``: the data's own test loader, whose ``.dataset`` is the draw."""
    if args.test_subset is None:
        return f"the whole test split ({n_test:,} images)"
    if is_test_draw(test_loader.dataset, n_test):
        return f"a stratified draw from the test split ({test_images(test_loader.dataset, n_test, '--test-subset')})"
    return f"the whole test split ({n_test:,} images: --test-subset {args.test_subset} is not smaller)"
