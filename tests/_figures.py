"""Closing the figures tests keep to inspect."""
from __future__ import annotations

import sys


def close_kept_figures():
    """Generator for an autouse fixture (``_close_kept_figures = pytest.fixture(autouse=True)(close_kept_figures)``):
    the figures a test keeps to inspect (the saving function replaced: it would have closed them) are closed after
    it. Left open, they added up on a test worker until matplotlib warned of more than 20 (in CI, from later tests of
    other files) and held their memory. A test that drew nothing imports no matplotlib here."""
    yield
    if "matplotlib.pyplot" in sys.modules:
        sys.modules["matplotlib.pyplot"].close("all")
