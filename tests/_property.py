"""Hypothesis settings shared by the property-based test files (test_invariant_properties.py,
test_mask_only_properties.py, test_graphs_random_nets.py,
test_diagnostics_properties.py): a few derandomized examples, so that the
suite is deterministic and fast; ``ADAPTIVE_PROPERTY_EXAMPLES=500`` explores that many random ones."""
import os

from hypothesis import HealthCheck, settings

EXAMPLES = int(os.environ.get("ADAPTIVE_PROPERTY_EXAMPLES", "0"))


def prop(n: int):
    """Settings for a property: ``n`` examples, derandomized (CI), unless ADAPTIVE_PROPERTY_EXAMPLES explores."""
    return settings(max_examples=EXAMPLES or n, deadline=None, derandomize=not EXAMPLES,
                    suppress_health_check=list(HealthCheck), print_blob=True)
