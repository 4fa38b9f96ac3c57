"""get_policy and get_estimator share one checked build (adaptive.registry.build): an unknown
name, an unknown keyword or a non-number for a number option is a ValueError naming the options."""
import numpy as np
import pytest
import torch

import adaptive
from adaptive.policies.base import get_policy
from adaptive.utility.base import get_estimator


def test_estimator_unknown_keyword_is_value_error_naming_options():
    with pytest.raises(ValueError, match=r"unknown argument\(s\) \['nonsense'\] for utility estimator 'obd'") as e:
        get_estimator("obd", nonsense=1)
    assert "takes" in str(e.value)


def test_estimator_unknown_name_lists_estimators():
    with pytest.raises(ValueError, match=r"unknown utility estimator 'nope': use one of \[.*'obd'"):
        get_estimator("nope")


def test_policy_messages_unchanged():
    with pytest.raises(ValueError, match=r"unknown policy 'nope': use one of"):
        get_policy("nope")
    with pytest.raises(ValueError, match=r"unknown argument\(s\) \['nonsense'\] for policy 'rigl'"):
        get_policy("rigl", nonsense=1)


def test_number_option_given_text_is_named():
    from adaptive.registry import build

    class Thing:
        def __init__(self, rate=0.5):
            self.rate = rate

    with pytest.raises(ValueError, match=r"thing 'x' option rate must be a number, got 'fast'"):
        build({"x": Thing}, "thing", "x", {"rate": "fast"})
    # a number written as text reached the class as a string (get_estimator("presence", step="0.5")
    # then failed with a bare TypeError, get_estimator("evidence", clip="3") was taken)
    with pytest.raises(ValueError, match=r"option rate must be a number, got '0.25' \(a string: write rate=0.25\)"):
        build({"x": Thing}, "thing", "x", {"rate": "0.25"})
    assert build({"x": Thing}, "thing", "x", {"rate": np.float32(0.25)}).rate == np.float32(0.25)
    assert build({"x": Thing}, "thing", "x", {"rate": torch.tensor(0.25)}).rate == 0.25


@pytest.mark.parametrize("case", ["presence step", "evidence clip", "crawl edit_fraction"])
def test_a_number_written_as_text_is_refused_by_name(case):
    name, option = case.split()
    get = get_policy if name == "crawl" else get_estimator
    with pytest.raises(ValueError, match=rf"{name}' option {option} must be a number, got '0.5' \(a string"):
        get(name, **{option: "0.5"})


def test_options_given_with_an_instance_are_refused_not_dropped():
    """get_policy(RigL(), bogus=1) and Controller(policy=<instance>, edit_fraction=...) dropped the
    options unseen: the run went on with the instance's own settings."""
    with pytest.raises(ValueError, match=r"policy option\(s\) \['bogus'\] cannot be applied to the policy instance "
                                         r"RigL given: build the instance with them, or give the policy by name \('rigl'\)"):
        get_policy(get_policy("rigl"), bogus=1)
    with pytest.raises(ValueError, match=r"option\(s\) \['step'\] cannot be applied to the estimator instance Presence"):
        get_estimator(get_estimator("presence"), step=0.3)
    conn = adaptive.Connectome(torch.nn.Sequential(torch.nn.Linear(8, 8)))
    with pytest.raises(ValueError, match=r"\['margin'\] cannot be applied to the policy instance Crawl"):
        adaptive.Controller(conn, None, policy=get_policy("crawl", edit_fraction=0.1), density=0.5, margin=0.2)
    assert conn.density() == 1.0  # refused before the controller sparsified anything
    policy = get_policy("crawl", edit_fraction=0.1)
    assert get_policy(policy) is policy and get_estimator(get_estimator("presence")).name == "presence"


def test_a_mistyped_option_names_the_one_it_meant_the_policys_or_the_controllers():
    """--controller_kw zero_cost_ordr=index said only "the policy takes none", with no word of the
    Controller option zero_cost_order it missed; pacee=even listed threshold's options unranked."""
    with pytest.raises(ValueError, match=r"takes \['adapt', 'pace', .*\]; did you mean 'pace' for 'pacee'\?$"):
        get_policy("threshold", pacee="even")
    conn = adaptive.Connectome(torch.nn.Sequential(torch.nn.Linear(4, 4)))
    with pytest.raises(ValueError, match=r"the policy takes none; did you mean the Controller's 'zero_cost_order' "
                                         r"for 'zero_cost_ordr'\?$"):
        adaptive.Controller(conn, policy="utility", density=0.5, zero_cost_ordr="index")
    with pytest.raises(ValueError, match=r"the policy takes none$"):  # nothing near: no guess
        adaptive.Controller(conn, policy="utility", density=0.5, foo=1)
    with pytest.raises(ValueError, match=r"unknown pace 'evn'.*\)$"):  # a bad value of a known option: no guess
        adaptive.Controller(conn, policy="threshold", density=0.5, pace="evn")
    assert conn.density() == 1.0  # refused before anything was edited


def test_a_word_for_a_number_option_gets_no_hint_to_write_it_unquoted():
    """'damping=abc' was answered '(a string: write damping=abc)', which is no number either."""
    from adaptive.utility import get_estimator

    with pytest.raises(ValueError) as e:
        get_estimator("obd", damping="abc")
    assert str(e.value).endswith("must be a number, got 'abc'"), str(e.value)


@pytest.mark.parametrize("flag", [True, np.bool_(True), torch.tensor(True)], ids=["bool", "numpy", "torch"])
def test_a_flag_for_a_number_option_is_refused_naming_the_option(flag):
    """np.bool_(True) (no subclass of bool) and a boolean tensor passed float() as 1.0: an estimator or
    policy built with damping=np.True_ or prune_boundary=np.True_ ran with 1 where a number was meant."""
    from adaptive.registry import number_option

    with pytest.raises(ValueError, match=r"option damping must be a number, got .*True.* \(a flag, not a number: give "
                                         r"damping the number itself, such as its default 1e-12\)$"):
        get_estimator("obd", damping=flag)
    with pytest.raises(ValueError, match=r"policy 'crawl' option edit_fraction must be a number.*a flag, not a number"):
        get_policy("crawl", edit_fraction=flag)
    with pytest.raises(ValueError, match=r"option step must be .*True.* \(a flag, not a number: give step the number"):
        number_option("utility estimator 'presence'", "step", flag, low=0)
    assert get_policy("threshold", adapt=flag).adapt is True  # a flag option still takes a flag (as Python's bool)
    assert number_option("x", "k", np.float64(0.5)) == 0.5 and number_option("x", "k", torch.tensor(2)) == 2.0


def test_two_functions_one_factory_made_from_lists_are_two_definitions():
    """A factory's closure holding a list or dict counted only by its type: make_mlp([64]) then
    make_mlp([128]) under one name was accepted in silence and the name built the second (a tuple
    closure was refused, as python_api.md promises for any other object under a taken name)."""
    from adaptive.models import _REGISTRY, build_model, register_model

    def make(hidden):
        def build(num_classes=10, in_shape=(1, 8, 8)):
            return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, hidden[0]), torch.nn.ReLU(),
                                       torch.nn.Linear(hidden[0], num_classes))
        return build

    try:
        register_model("factory_list_review")(make([64]))
        register_model("factory_list_review")(make([64]))  # the same definition again: quiet
        with pytest.raises(ValueError, match=r"model 'factory_list_review' is already registered \(.*build with "
                                             r"closure \(\[64\]\).*register .*build with closure \(\[128\]\) defaults .* under"):
            register_model("factory_list_review")(make([128]))
        assert build_model("factory_list_review", num_classes=10, in_shape=(1, 8, 8))[1].out_features == 64
    finally:
        _REGISTRY.pop("factory_list_review", None)


def test_the_same_definition_run_again_is_quiet_though_its_closure_was_filled_by_use():
    """Closures compared by their lists' and dicts' contents refused the same definition run again (a notebook
    cell) where the first one's memo dict or counter list had been filled by use since: they are compared as
    they were when registered. A table of a million entries is described by its length, not spelt out."""
    import time

    from adaptive.models import _REGISTRY, build_model, register_model

    def define():
        memo, calls = {}, [0]

        def build(num_classes=10, in_shape=(1, 8, 8)):
            calls[0] += 1
            memo.setdefault(num_classes, calls[0])
            return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, num_classes))
        return build

    try:
        register_model("memo_review")(define())
        build_model("memo_review", num_classes=10, in_shape=(1, 8, 8))  # fills the first one's memo and counter
        register_model("memo_review")(define())  # run again: quiet
        big = list(range(10 ** 6))

        def holding(table):
            def build(num_classes=10, in_shape=(1, 8, 8)):
                return table
            return build

        t0 = time.perf_counter()
        register_model("big_review")(holding(big))
        register_model("big_review")(holding(big))
        assert time.perf_counter() - t0 < 5  # (generous: spelt out, each took a quarter second and 8 MB)
        from adaptive.registry import _made_with
        assert "<list of 1000000>" in _made_with(_REGISTRY["big_review"])
    finally:
        _REGISTRY.pop("memo_review", None)
        _REGISTRY.pop("big_review", None)
