"""Strict JSON for the files other tools read (events.jsonl, history.jsonl, summary.json,
knowledge_summary.json, benchmark results).

Python's ``json.dumps`` writes a failed fit's NaN or an infinite loss as the bare tokens ``NaN``,
``Infinity`` and ``-Infinity``, which are not JSON (RFC 8259): ``jq``, JavaScript's ``JSON.parse``, Go,
Rust's serde refuse the whole file. :func:`dumps` writes them as the strings ``"NaN"``, ``"Infinity"``
and ``"-Infinity"`` (:data:`NONFINITE`: protobuf's JSON mapping does the same, and so does the graph
export, ``graphs.write``), which keeps what the value was (a NaN loss is not an infinite one), and
numbers of other types (tensors, NumPy scalars) as plain floats; ``allow_nan=False`` makes any value
it missed an error rather than a bare token. :func:`loads` reads such text back, the three strings as
their floats, and also the bare tokens and the ``null`` of files written before.

A string is read back as a float everywhere but under a key of :data:`TEXT_FIELDS` (or one ending in
``_note``): the fields whose values are text, names included (a plugin's policy, estimator, model or
dataset may be registered as ``"NaN"`` or ``"Infinity"``: read as a float, a policy named so turned into
a float NaN, and a knowledge run's model name broke its ``--replot``). A text field of one's own (in a
``KnowledgeCurve``'s ``meta``, say) under another key that holds exactly one of the three strings reads
as the float.
"""
from __future__ import annotations

import json
import math
from typing import Any, Iterable, Optional


NONFINITE = {"NaN": float("nan"), "Infinity": float("inf"), "-Infinity": float("-inf")}

# the keys whose values (and everything under them) are text in the files the project writes: events.jsonl
# (kind, policy, target, mask_hash), history.jsonl, summary.json (mixed_precision, device, the *_note
# sentences, mask_hash_per_process, prune_pretrained's rows: target, folder), knowledge_summary.json
# (estimator, note; meta: model, dataset, title, caveats, refit_of's folder) and the benchmarks' records
# (key, method, policy, estimator). :func:`restore` gives none of them back as a float.
TEXT_FIELDS = frozenset({
    "kind", "policy", "estimator", "method", "target", "label", "name", "key", "mask_hash", "mask_hash_per_process",
    "mixed_precision", "device", "folder", "path", "note", "model", "dataset", "title", "caveats",
})


def text_field(key: Any) -> bool:
    """Whether ``key`` names a text field (:data:`TEXT_FIELDS`, or a key ending in ``_note``)."""
    return isinstance(key, str) and (key in TEXT_FIELDS or key.endswith("_note"))


def nonfinite_text(x: float) -> str:
    """The :data:`NONFINITE` string of a float that is NaN or infinite."""
    return "NaN" if x != x else ("Infinity" if x > 0 else "-Infinity")


def finite(obj: Any) -> Any:
    """``obj`` with every float that is NaN or infinite replaced by its :data:`NONFINITE` string, through
    dicts, lists and tuples; a 0-d tensor or NumPy scalar becomes its Python number first."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else nonfinite_text(obj)
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite(v) for v in obj]
    if hasattr(obj, "item") and getattr(obj, "ndim", None) == 0:  # torch / NumPy scalar
        return finite(obj.item())
    return obj


def restore(obj: Any) -> Any:
    """``obj`` (parsed JSON) with every :data:`NONFINITE` string given back as its float, through dicts
    and lists: the inverse of :func:`finite`. What a text field holds (:func:`text_field`: a name such as a
    policy registered as ``"NaN"``) stays as it is."""
    if isinstance(obj, str):
        return NONFINITE.get(obj, obj)
    if isinstance(obj, dict):
        return {k: (v if text_field(k) else restore(v)) for k, v in obj.items()}
    if isinstance(obj, list):
        return [restore(v) for v in obj]
    return obj


def dumps(obj: Any, indent: Optional[int] = None) -> str:
    """Strict JSON text of ``obj`` (see the module docstring); other objects through ``float``."""
    return json.dumps(finite(obj), indent=indent, allow_nan=False, default=lambda o: finite(float(o)))


def dumps_lines(records: Iterable[Any]) -> str:
    """JSON lines (one :func:`dumps` per record, each ending in a newline), as events.jsonl holds."""
    return "".join(dumps(r) + "\n" for r in records)


def loads(text: str | bytes) -> Any:
    """Parse strict JSON written by :func:`dumps`, its :data:`NONFINITE` strings as floats but in a text
    field (:func:`restore`; the bare tokens of an older file read as floats too)."""
    return restore(json.loads(text))
