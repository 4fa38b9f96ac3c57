"""get_policy and get_estimator share one checked build (adaptive.registry.build): an unknown
name, an unknown keyword or a non-number for a number option is a ValueError naming the options."""
import pytest

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
    assert build({"x": Thing}, "thing", "x", {"rate": "0.25"}).rate == "0.25"
