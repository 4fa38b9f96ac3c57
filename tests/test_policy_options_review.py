"""Policies' options at their edges, found by a review: crawl ignored the controller's edit_fraction and
edit_decay silently (it keeps a limit of its own); crawl took any goal, deadline or saved
state (a negative goal emptied the network, a goal of "abc" failed at the next update with a bare TypeError);
an edit decay given as a list failed with "unhashable type"."""
import copy
import warnings

import pytest
import torch
from torch import nn

import adaptive
from adaptive.policies import get_policy


def _conn():
    torch.manual_seed(0)
    return adaptive.Connectome(nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4)))


@pytest.mark.parametrize("policy,kw,words", [
    ("crawl", dict(edit_fraction=0.5), r"keeps an edit limit of its own.*edit_fraction=0\.5 would be ignored: pass "
                                       r"policy=get_policy\('crawl', edit_fraction=0\.5\)"),
    ("crawl", dict(edit_decay="linear"), r"edit_decay='linear' would be ignored: leave it out"),
    ("crawl", dict(edit_fraction=0.1, edit_decay="linear"),
     r"edit_fraction=0\.1 and edit_decay='linear' would be ignored: pass .* or leave them out"),
])
def test_an_edit_schedule_a_policy_ignores_is_refused(policy, kw, words):
    conn = _conn()
    with pytest.raises(ValueError, match=words):
        adaptive.Controller(conn, None, policy=policy, **kw)
    assert conn.num_live() == conn.num_synapses()


def test_crawls_own_limit_is_given_through_get_policy_and_the_defaults_are_taken():
    conn = _conn()
    ctrl = adaptive.Controller(conn, None, policy=get_policy("crawl", edit_fraction=0.2), edit_decay="constant")
    assert ctrl.policy.edit_fraction == 0.2
    assert adaptive.Controller(_conn(), None, policy="gmp", density=0.5, end_step=5, edit_fraction=0.3).policy.name == "gmp"


@pytest.mark.parametrize("goal,deadline", [(-5, 3), (50.7, 3), ("abc", 3), (True, 3), (10, "soon"), (10, 2.5)])
def test_crawl_refuses_a_goal_or_deadline_that_is_no_count_and_sets_nothing(goal, deadline):
    ctrl = adaptive.Controller(_conn(), None, policy="crawl", update_every=1)
    with pytest.raises(ValueError, match="policy 'crawl': (goal|deadline) must be"):
        ctrl.policy.set_goal(goal, deadline)
    assert (ctrl.policy.goal, ctrl.policy.deadline) == (None, None)
    ctrl.policy.set_goal(100.0, 4)  # a whole number given as a float, as a product of a fraction gives it
    assert (ctrl.policy.goal, ctrl.policy.deadline) == (100, 4)


@pytest.mark.parametrize("bad", [{"goal": "abc"}, {"goal": -5}, {"goal": 50.7}, {"edit_fraction": -3.0},
                                 {"edit_fraction": float("nan")}, {"deadline": "soon"}])
def test_a_crawl_state_edited_by_hand_is_refused_before_any_of_it_is_set(bad):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ctrl = adaptive.Controller(_conn(), None, policy="crawl", density=0.5, update_every=1, end_step=10)
    sd = copy.deepcopy(ctrl.state_dict())
    before = ctrl.policy.state_dict()
    sd["policy"].update(bad)
    with pytest.raises(ValueError, match=f"policy 'crawl': the state's.*{next(iter(bad))}"):
        ctrl.load_state_dict(sd)
    assert ctrl.policy.state_dict() == before


def test_an_edit_decay_given_as_a_list_is_named():
    with pytest.raises(ValueError, match=r"unknown edit decay \['cosine'\]: use one of"):
        adaptive.Controller(_conn(), None, policy="rigl", density=0.5, edit_decay=["cosine"])
