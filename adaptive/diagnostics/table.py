"""A tiny row table: every diagnostic returns its numbers as one, for notebooks and reports.

A :class:`Table` is a list of row dicts with a few conveniences (columns, markdown, CSV, pandas).
It has no dependency beyond the standard library; ``to_pandas`` imports pandas only when called.
"""
from __future__ import annotations

import csv
import os
import re
from typing import Any, Dict, Iterable, List

from ..atomic import atomic_path


class Table(list):
    """A list of rows (dicts with the same keys, in order). ``table["col"]`` gives a column."""

    def __init__(self, rows: Iterable[Dict[str, Any]] = ()):
        super().__init__(dict(r) for r in rows)

    @property
    def columns(self) -> List[str]:
        cols: List[str] = []
        for r in self:
            cols.extend(k for k in r if k not in cols)
        return cols

    def __getitem__(self, key):
        if isinstance(key, str):
            return [r.get(key) for r in self]
        return super().__getitem__(key)

    def to_markdown(self, floatfmt: str = ".4g") -> str:
        """The table as Markdown, floats written with the format spec ``floatfmt``, None as blank. A float
        that is not 1 but rounds to it there (a share of 0.99996) gets the digits that tell it from 1:
        "1" reads as all of them."""
        cols = self.columns
        digits = re.fullmatch(r"\.(\d+)g", floatfmt)

        def fmt(v):
            if isinstance(v, float):
                text = format(v, floatfmt)
                if digits and text in ("1", "-1") and abs(v) != 1.0:
                    for more in range(int(digits.group(1)) + 1, 18):
                        text = format(v, f".{more}g")
                        if text not in ("1", "-1"):
                            break
                return text
            return "" if v is None else str(v)

        lines = ["| " + " | ".join(cols) + " |", "|" + "|".join(" --- " for _ in cols) + "|"]
        lines += ["| " + " | ".join(fmt(r.get(c)) for c in cols) + " |" for r in self]
        return "\n".join(lines)

    def to_csv(self, path: str | os.PathLike) -> None:
        with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=self.columns)
            w.writeheader()
            w.writerows(self)

    def to_pandas(self):
        try:
            import pandas as pd  # optional: only notebooks that ask for a DataFrame need it
        except ImportError:
            raise ImportError("Table.to_pandas needs pandas, which adaptive does not install: "
                              "`pip install pandas`, or use .to_csv(path) / .to_markdown()") from None

        return pd.DataFrame(list(self), columns=self.columns)

    def __str__(self) -> str:
        return self.to_markdown()


def save_figure(fig, path: str | os.PathLike, svg: bool = False, dpi: int = 120) -> List[str]:
    """Write ``fig`` as PNG at ``path`` (``dpi`` dots per inch; and an SVG next to it when ``svg``, the
    same bytes for the same figure); close it, written or not; return paths."""
    import matplotlib.pyplot as plt

    from ..plots import tight_artists  # a legend under a panel (plots.legend_below) is on the canvas too

    try:
        path = os.fspath(path)
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        root = os.path.splitext(path)[0]
        out = [root + ".png"]
        with atomic_path(out[0]) as tmp:
            fig.savefig(tmp, dpi=dpi, bbox_inches="tight", bbox_extra_artists=tight_artists(fig))
        if svg:
            import matplotlib

            out.append(root + ".svg")
            # the same figure, the same bytes (as the PNG): no date stamp, and the ids of clip paths and
            # markers from a fixed salt, not random ones (every rerun's SVG differed)
            with atomic_path(out[1]) as tmp, matplotlib.rc_context({"svg.hashsalt": "adaptive"}):
                fig.savefig(tmp, bbox_inches="tight", bbox_extra_artists=tight_artists(fig), metadata={"Date": None})
    finally:  # written or not
        plt.close(fig)
    return out


def pyplot():
    """matplotlib.pyplot, on the backend the user picked (``MPLBACKEND``, ``matplotlib.use``, a
    matplotlibrc's ``backend``, or the one an already-used pyplot runs on); on the non-interactive
    Agg only where none was picked and matplotlib would choose one itself (the figures are written
    to files, not shown)."""
    import matplotlib

    if not backend_chosen():
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def backend_chosen() -> bool:
    """Whether matplotlib's backend was picked (by the user, or resolved by a pyplot already in use)
    rather than left for matplotlib to choose on first use."""
    import matplotlib

    if os.environ.get("MPLBACKEND"):
        return True
    rc = matplotlib.rcParams
    get = getattr(rc, "_get_backend_or_none", None)  # None while still to be chosen
    if get is not None:
        return get() is not None
    sentinel = getattr(matplotlib.rcsetup, "_auto_backend_sentinel", None)  # a matplotlib without that method
    return dict.__getitem__(rc, "backend") is not sentinel
