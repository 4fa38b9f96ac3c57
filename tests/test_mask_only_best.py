"""How target "best" compares held-out evaluations (adaptive.mask_only_best), by hand: ties are no
gain for loss as for accuracy, a non-finite accuracy is as unusable as a non-finite loss, and a
finite evaluation beats a non-finite snapshot."""
import math

import pytest

from adaptive.mask_only_best import _better, _finite, _refuse_nonfinite_dense
from adaptive.mask_only_result import Snapshot


def snap(loss, acc):
    return Snapshot("best", 0, {}, loss, acc, 0)


def test_by_loss_a_tie_is_no_gain_and_only_a_strictly_lower_loss_beats():
    """Without accuracy (regression) the earlier candidate stays on an equal loss, as it does on an
    equal accuracy."""
    assert not _better(None, 0.5, snap(0.5, None))
    assert _better(None, 0.25, snap(0.5, None)) and not _better(None, 0.75, snap(0.5, None))


def test_a_non_finite_accuracy_is_never_chosen_and_a_dense_one_is_refused():
    """A NaN or inf accuracy with a finite loss: never chosen (not even over no snapshot yet), and on
    the dense network refused before any work."""
    for acc in (math.nan, math.inf):
        assert not _finite(acc, 0.5)
        assert not _better(acc, 0.5, None)
        with pytest.raises(ValueError, match=r"dense network's held-out loss is 0.5 \(accuracy (nan|inf)\)"):
            _refuse_nonfinite_dense(0.5, acc)
    _refuse_nonfinite_dense(0.5, 0.75)  # finite figures pass


@pytest.mark.parametrize("than", [snap(math.nan, 0.5), snap(0.5, math.nan), snap(-math.inf, None)])
def test_finite_figures_beat_a_non_finite_snapshot(than):
    """A non-finite snapshot compares false with everything (NaN) or beats every loss (-inf: none):
    any finite evaluation replaces it, whatever its figures."""
    assert _better(0.0, 10.0, than) and _better(None, 10.0, than)
