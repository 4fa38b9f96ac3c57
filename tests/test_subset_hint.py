"""The hint of get_datasets for an empty held-out part (_subset_for_holdout) names the smallest
subset that gives one: the same answer as trying every size, found without trying them all."""
import random
from decimal import Decimal

import pytest
import torch

from adaptive.data import _subset_for_holdout, get_datasets
from adaptive.data.split import holdout_counts, subset_counts


NONE = " (or holdout=0 for no held-out part at all)"


def _brute(labels, subset, holdout):  # the hint as it was: every size in turn
    counts = torch.unique(labels, return_counts=True)[1]
    for size in range(subset + 1, len(labels) + 1):
        if bool((holdout_counts(subset_counts(counts, size), holdout) > 0).any()):
            return f"give a subset of at least {size} or a larger holdout{NONE}"
    return f"give a larger holdout{NONE}"


def test_same_hint_as_trying_every_size():
    rng = random.Random(0)
    cases = [(torch.arange(500) % 10, 10, 0.01), (torch.arange(500) % 10, 3, 0.3),
             (torch.tensor([0] * 7 + [1] * 3 + [2] * 1), 1, 0.2), (torch.arange(40) % 4, 39, 0.01),
             (torch.arange(40) % 4, 40, 0.5)]
    for _ in range(150):
        k = rng.randint(1, 8)
        y = torch.cat([torch.full((rng.randint(1, 60),), c) for c in range(k)])
        cases.append((y, rng.randint(1, len(y)), rng.choice([0.003, 0.01, 0.02, 0.05, 0.1, 0.17, 0.3, 0.45])))
    for y, subset, hold in cases:
        assert _subset_for_holdout(y, subset, hold) == _brute(y, subset, hold), (y.bincount().tolist(), subset, hold)


def test_imagenet_sized_labels_return():
    y = torch.arange(1_281_167) % 1000
    assert _subset_for_holdout(y, 2000, 0.001) == _brute_at(y, 500001, 0.001)


def _brute_at(y, size, hold):  # the brute-force answer checked at the size and the one before it
    counts = torch.unique(y, return_counts=True)[1]
    gives = lambda s: bool((holdout_counts(subset_counts(counts, s), hold) > 0).any())
    assert gives(size) and not gives(size - 1)
    return f"give a subset of at least {size} or a larger holdout{NONE}"


def test_a_caller_that_needs_the_held_out_part_is_not_told_to_drop_it():
    """prune_pretrained refuses --holdout 0 (its selection reads the held-out part), so the hint it
    relays names a subset or a larger holdout, never a holdout of 0."""
    y = torch.arange(500) % 10
    for subset, hold in ((10, 0.05), (10, 0.01), (3, 0.3)):
        plain = _brute(y, subset, hold)
        needed = _subset_for_holdout(y, subset, hold, required=True)
        assert needed == plain.replace(NONE, "")
        assert "holdout=0" not in needed and _subset_for_holdout(y, subset, hold) == plain
    assert _subset_for_holdout(y, 10, 0.05, required=True).startswith("give a subset of at least ")
    assert _subset_for_holdout(y, 10, 0.01, required=True) == "give a larger holdout"


RECIPE = {"subset": "--subset", "holdout": "--holdout"}  # option_names as the recipes pass them


def _error(**kw) -> str:
    with pytest.raises(ValueError) as info:
        get_datasets("digits", **kw)
    return str(info.value)


def test_the_empty_holdout_error_names_the_fixes_as_the_caller_spells_them():
    """The hint said 'holdout 0 for none' to every caller: a library caller passes holdout=0, a
    recipe's user --holdout 0, and neither was told what 0 means (no held-out part at all)."""
    why = ("the held-out part of digits is empty: the 30 train examples of {s} with {h} hold out round(0.01 x its "
           "examples of a class) = 0 of every class; give a {o} of at least 496 or a larger {ho}")
    assert _error(subset=30, holdout=0.01) == why.format(
        s="subset=30", h="holdout=0.01", o="subset", ho="holdout") + " (or holdout=0 for no held-out part at all)"
    assert _error(subset=30, holdout=0.01, option_names=RECIPE) == why.format(
        s="--subset 30", h="--holdout 0.01", o="--subset", ho="--holdout") + " (or --holdout 0 for no held-out part at all)"
    # a caller that needs the held-out part is not told to drop it
    assert _error(subset=30, holdout=0.01, option_names=RECIPE, holdout_required=True) == why.format(
        s="--subset 30", h="--holdout 0.01", o="--subset", ho="--holdout")
    # no subset gives one: a larger holdout only
    assert _error(subset=1400, holdout=0.001).endswith(
        "with holdout=0.001 hold out round(0.001 x its examples of a class) = 0 of every class; give a larger holdout "
        "(or holdout=0 for no held-out part at all)")
    assert _error(subset=1400, holdout=0.001, option_names=RECIPE).endswith(
        "give a larger --holdout (or --holdout 0 for no held-out part at all)")
    assert len(get_datasets("digits", subset=30, holdout=0).holdout) == 0  # what the hint offers runs


def test_the_empty_train_part_error_names_the_options_as_the_caller_spells_them():
    assert _error(subset=20, holdout=0.95) == ("the train part of digits is empty: 20 train examples (subset=20) with "
                                               "holdout=0.95 leave none to train on; give a larger subset or a smaller "
                                               "holdout")
    assert _error(subset=20, holdout=0.95, option_names=RECIPE).endswith(
        "20 train examples (--subset 20) with --holdout 0.95 leave none to train on; give a larger --subset or a "
        "smaller --holdout")


def test_a_positive_holdout_that_holds_out_nothing_is_refused_without_a_subset_too():
    """digits with holdout=0.001 (round(0.001 x 146) = 0 of every class) gave an empty held-out part
    silently: the check ran only with a subset, and a recipe failed late at its empty holdout loader
    without naming --holdout. The hint names the smallest holdout (two digits) that holds one out."""
    why = ("the held-out part of digits is empty: {h} holds out round(0.001 x its examples of a class) = 0 of every "
           "class of its 1,438 train examples (the largest class has 146); give {least} or more")
    assert _error(holdout=0.001) == why.format(h="holdout=0.001", least="holdout=0.0035") + \
        " (or holdout=0 for no held-out part at all)"
    assert _error(holdout=0.001, option_names=RECIPE, holdout_required=True) == why.format(
        h="--holdout 0.001", least="--holdout 0.0035")
    assert len(get_datasets("digits", holdout=0.0035).holdout) > 0  # the value it names holds one out
    assert "is empty" in _error(holdout=0.0034)  # and is the smallest of two digits that does


@pytest.mark.parametrize("largest", [1, 2, 3, 7, 146, 1000, 5000, 999_999])
def test_the_least_holdout_is_the_smallest_two_digit_value_that_holds_one_out(largest):
    from adaptive.data import _least_holdout
    from adaptive.data.split import holdout_counts

    least = _least_holdout(largest)
    typed = Decimal(repr(least))
    below = float(typed - Decimal(1).scaleb(typed.adjusted() - 1))  # one less in its second digit: 0.0034
    assert repr(least) == f"{least:.2g}"  # typed as it reads (no 0.0035000000000000005)
    assert int(holdout_counts(torch.tensor([largest]), least)) == 1
    assert int(holdout_counts(torch.tensor([largest]), below)) == 0


def test_a_holdout_the_caller_fixes_is_never_offered_as_the_fix():
    """A script that fixes the holdout (option_names {"holdout": None}: no option sets it) was told to
    try 'a larger holdout' or 'holdout=0'; its errors offer only what it can change."""
    fixed = {"subset": "--subset", "holdout": None}
    assert _error(subset=30, holdout=0.01, option_names=fixed) == (
        "the held-out part of digits is empty: the 30 train examples of --subset 30 with its holdout of 0.01 hold out "
        "round(0.01 x its examples of a class) = 0 of every class; give a --subset of at least 496")
    assert _error(subset=1400, holdout=0.001, option_names=fixed).endswith(
        "= 0 of every class; no --subset gives one at its holdout of 0.001")
    assert _error(subset=20, holdout=0.95, option_names=fixed).endswith(
        "20 train examples (--subset 20) with its holdout of 0.95 leave none to train on; give a larger --subset")
    assert _error(holdout=0.001, option_names=fixed).endswith(
        "(the largest class has 146); it takes a holdout of at least 0.0035, which this caller does not give")


def test_a_subset_of_at_least_one_per_class_holds_one_of_each():
    """Classes of 60, 20 and 3 examples, a subset of 10: proportional rounding gave the rare class none,
    though the size check promised a subset of at least 3 holds one example of each. The largest share
    gives it one; a balanced split's counts are as before."""
    assert subset_counts(torch.tensor([60, 20, 3]), 10).tolist() == [6, 3, 1]
    assert subset_counts(torch.tensor([60, 20, 3]), 3).tolist() == [1, 1, 1]
    assert subset_counts(torch.tensor([100] * 10), 55).tolist() == [5] * 5 + [6] * 5  # as before (no class at 0)
    y = torch.tensor([0] * 60 + [1] * 20 + [2] * 3)
    from adaptive.data.split import stratified_subset

    picked = stratified_subset(y, 10, seed=0)
    assert torch.bincount(y[picked], minlength=3).tolist() == [6, 3, 1]
