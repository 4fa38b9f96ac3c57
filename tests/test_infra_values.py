"""Small infrastructure in value (data lookup, JSON lines, plan and score checks, global seeding, warnings,
range checks): each test guards against one careless edit no other test noticed."""
import math
import os

import pytest
import torch

from adaptive import jsonio, paths


# P6: an explicit data_dir with a leading ~ is read as the home folder in find_data
def test_find_data_expands_home_in_explicit_data_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("ADAPTIVE_DATA", raising=False)
    (tmp_path / "d" / "ds").mkdir(parents=True)
    assert paths.candidate_data_dirs("~/d") == [tmp_path / "d"]
    assert paths.find_data("ds", ["ds"], data_dir="~/d") == tmp_path / "d" / "ds"


# P7: a --data-dir given two levels below the folder holding the dataset is named in the error
def test_find_data_names_a_folder_two_levels_up(tmp_path):
    (tmp_path / "ds").mkdir()
    below = tmp_path / "other" / "train"
    below.mkdir(parents=True)
    with pytest.raises(paths.DatasetNotFoundError, match=r"--data-dir .* holds it"):
        paths.find_data("ds", ["ds"], data_dir=below)


# P8: a whitespace-only path option is refused, not read as a folder named by a space
def test_whitespace_only_path_is_refused():
    assert paths.empty_path_problem("  ", "--out", "a path") is not None
    assert paths.empty_path_problem("\t", "--out", "a path") is not None
    assert paths.empty_path_problem("x", "--out", "a path") is None


# J3: a 0-d integer tensor is written as an integer, not as a float
def test_dumps_integer_scalar_tensor_stays_integer():
    assert jsonio.dumps({"step": torch.tensor(3)}) == '{"step": 3}'
    assert jsonio.dumps([torch.tensor(True)]) == "[true]"


# J6: every JSON line ends in a newline (events.jsonl is appended to)
def test_dumps_lines_ends_each_record_with_newline():
    text = jsonio.dumps_lines([{"a": 1}, {"b": float("nan")}])
    assert text == '{"a": 1}\n{"b": "NaN"}\n'
    assert jsonio.dumps_lines([{"a": 1}]) + jsonio.dumps_lines([{"b": 2}]) == '{"a": 1}\n{"b": 2}\n'


# J7: dumps passes indent on (summary.json is written indented)
def test_dumps_indent():
    assert jsonio.dumps({"a": [1, math.inf]}, indent=2) == '{\n  "a": [\n    1,\n    "Infinity"\n  ]\n}'


# C2/C3/C4: check_plan's tolerance and est_loss_change boundaries
def _ctrl():
    import adaptive

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 3))
    return adaptive.Controller(adaptive.Connectome(net), policy="magnitude", density=0.5, update_every=1)


def test_check_plan_tolerance_and_estimate_boundaries():
    from adaptive.plan_checks import check_plan
    from adaptive.policies.base import EditPlan

    ctrl = _ctrl()
    check_plan(ctrl, EditPlan(tolerance=0.0))  # zero: accept no rise at all
    check_plan(ctrl, EditPlan(tolerance=math.inf, est_loss_change=-1.5))
    with pytest.raises(ValueError, match="est_loss_change is nan"):
        check_plan(ctrl, EditPlan(est_loss_change=float("nan")))
    with pytest.raises(ValueError, match="tolerance is True"):
        check_plan(ctrl, EditPlan(tolerance=True))
    with pytest.raises(ValueError, match="tolerance is -0.1"):
        check_plan(ctrl, EditPlan(tolerance=-0.1))


# S1: scores whose finite values are all equal rank nothing, whatever +-inf they also hold
def test_ranks_nothing_ignores_infinities():
    from adaptive.score_checks import _ranks_nothing

    assert _ranks_nothing(torch.tensor([2.0, 2.0, math.inf, -math.inf]))
    assert _ranks_nothing(torch.tensor([math.inf, math.nan]))
    assert not _ranks_nothing(torch.tensor([1.0, 2.0, math.inf]))


# S3: scores that are one of the tensors an estimator keeps per layer in a tuple are copied
def test_owned_copies_scores_held_in_a_tuple_of_the_estimator_state():
    from types import SimpleNamespace

    from adaptive.score_checks import _owned

    m, v = torch.ones(3), torch.zeros(3)
    est = SimpleNamespace(moments={"fc": (m, v)})
    ctx = SimpleNamespace(name="fc", weight=torch.ones(3), mask=torch.ones(3, dtype=torch.bool), restore=None)
    s = _owned(v, ctx, est, layers=("fc",))
    assert torch.equal(s, v)
    s += 1
    assert torch.equal(v, torch.zeros(3))  # the estimator's state is untouched


# G3: a seed past NumPy's 2**32 (or negative) seeds NumPy from seed % 2**32, as documented
@pytest.mark.parametrize("seed", [2**40 + 7, -3])
def test_seeded_global_rng_takes_large_and_negative_seeds(seed):
    import numpy as np

    from adaptive.global_rng import seeded_global_rng

    with seeded_global_rng(seed):
        got = np.random.rand(3)
    np.random.seed(seed % 2**32)
    assert np.array_equal(got, np.random.rand(3))


# G5: a whole-number float seed (3.0) seeds as the integer does
def test_by_argument_float_whole_seed_seeds():
    from adaptive.global_rng import seeded_global_rng

    @seeded_global_rng.by_argument("seed")
    def draw(seed=0):
        return torch.rand(2)

    assert torch.equal(draw(seed=3.0), draw(seed=3))


# W1: warn_user attributes the warning to the caller's line (this file)
def test_warn_user_points_at_the_caller():
    import warnings

    from adaptive.warn import warn_user

    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        warn_user("a caller's warning")
    assert os.path.abspath(w[0].filename) == os.path.abspath(__file__)


# W2: a UserWarning subclass is named in the one-line form
def test_one_line_names_a_user_warning_subclass():
    from adaptive.warn import _one_line

    class MyWarning(UserWarning):
        pass

    assert _one_line("m", UserWarning, "f", 1) == "warning: m\n"
    assert _one_line("m", MyWarning, "f", 1) == "warning (MyWarning): m\n"


# K1/K2: range_problem's closed/open upper end and non-finite values
def test_range_problem_ends_and_nonfinite():
    from adaptive.cli_checks import range_problem

    assert range_problem("--x", 1, 0, 1) is None
    assert range_problem("--x", 0.5, 0, 1, open_high=True) is None
    assert range_problem("--x", 1, 0, 1, open_high=True) is not None
    assert range_problem("--x", math.inf, 0) is not None
    assert range_problem("--x", math.nan, 0) is not None


# K3: the largest count itself is taken
def test_range_problem_most_is_inclusive():
    import sys

    from adaptive.cli_checks import range_problem

    assert range_problem("--batch_size", sys.maxsize, 1, whole=True, most=sys.maxsize) is None
    assert range_problem("--batch_size", sys.maxsize + 1, 1, whole=True, most=sys.maxsize) is not None


# L1: a count in a progress line is written as the integer it is
def test_progress_line_writes_counts_as_integers():
    from adaptive.cli import progress_line

    assert progress_line(step=12345, train_loss=0.51234) == "progress: step 12345, train loss 0.5123"


# L3: as many threads or workers as the CPUs is no warning; one more is
def test_parallelism_warns_only_above_the_cpus(monkeypatch):
    import warnings

    from adaptive import cli

    monkeypatch.setattr(cli, "usable_cpus", lambda: 4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cli.check_parallelism("--threads", 4, 1)
    with pytest.warns(UserWarning, match="--threads 5 asks for more threads than the 4 CPUs"):
        cli.check_parallelism("--threads", 5, 1)


# L5: an evaluation of a new target shows no train loss of the target before it
def test_mask_only_progress_keeps_train_loss_to_its_own_target():
    from adaptive.cli import mask_only_progress

    lines = []
    on_record = mask_only_progress(100, lines.append)
    on_record({"kind": "update", "target": 10, "train_loss": 0.75})
    on_record({"kind": "eval", "target": 10, "step": 4, "removed": 10})
    on_record({"kind": "eval", "target": 20, "step": 4, "removed": 10})
    assert "train loss 0.75" in lines[0] and "target 10" in lines[0]
    assert "train loss" not in lines[1] and "target 20" in lines[1]
