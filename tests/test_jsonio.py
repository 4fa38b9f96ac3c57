"""Every JSON and JSON-lines file the project writes is strict JSON (RFC 8259): a NaN or infinite number
is the string "NaN", "Infinity" or "-Infinity" (adaptive.jsonio), never the bare token Python's json
writes, which jq, JavaScript's JSON.parse and other strict parsers refuse; the project's readers give the
floats back."""
import json
import math

import torch
from torch import nn

from adaptive import Connectome, Controller, jsonio
from adaptive.diagnostics.progress import read_events, read_history


def strict(text: str):
    """``text`` parsed as a strict parser does: a bare NaN/Infinity token is an error."""
    def refuse(name):
        raise ValueError(f"not JSON: {name}")

    return json.loads(text, parse_constant=refuse)


def _controller():
    torch.manual_seed(0)
    conn = Connectome(nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2)))
    return Controller(conn, density=0.5)


def test_events_jsonl_is_strict_json_and_reads_back_its_non_finite_numbers(tmp_path):
    """events.jsonl held -Infinity and NaN (a diverged run's loss change, an empty ensemble's bound) as bare
    tokens: jq and JSON.parse refused the file. They are strings now, read back as floats."""
    ctrl = _controller()
    ctrl.events[:] = [{"step": 1, "kind": "update", "est_loss_change": float("nan"), "boundaries": [float("-inf"), 0.5]},
                      {"step": 2, "kind": "update", "actual_loss_change": float("inf"), "policy": "NaN-free"}]
    path = tmp_path / "events.jsonl"
    ctrl.write_events(path)
    lines = [strict(ln) for ln in path.read_text().splitlines()]
    assert lines[0]["est_loss_change"] == "NaN" and lines[0]["boundaries"] == ["-Infinity", 0.5]
    assert lines[1]["actual_loss_change"] == "Infinity" and lines[1]["policy"] == "NaN-free"
    back = read_events(str(path))
    assert math.isnan(back[0]["est_loss_change"]) and back[0]["boundaries"] == [float("-inf"), 0.5]
    assert back[1]["actual_loss_change"] == float("inf") and back[1]["step"] == 2


def test_an_events_file_written_before_still_reads(tmp_path):
    """The bare tokens of an events.jsonl written before (and null) still read back."""
    path = tmp_path / "events.jsonl"
    path.write_text('{"step": 1, "est_loss_change": NaN, "x": -Infinity, "y": null}\n')
    (e,) = read_events(str(path))
    assert math.isnan(e["est_loss_change"]) and e["x"] == float("-inf") and e["y"] is None


def test_history_jsonl_reads_back_non_finite_losses(tmp_path):
    """history.jsonl (prune_pretrained) is written with dumps_lines: strict, read back as floats."""
    path = tmp_path / "history.jsonl"
    path.write_text(jsonio.dumps_lines([{"kind": "update", "step": 3, "train_loss": float("inf"), "train_acc": 0.5},
                                        {"kind": "eval", "step": 3, "holdout_loss": float("nan"), "holdout_acc": 0.1}]))
    for ln in path.read_text().splitlines():
        strict(ln)
    rows = list(read_history(str(path)))
    assert rows[0]["loss"] == float("inf") and math.isnan(rows[1]["loss"])


def test_dumps_refuses_what_it_cannot_make_strict():
    """allow_nan=False: a value the conversion missed is an error, never a bare token in the file."""
    text = jsonio.dumps({"a": [float("nan"), {"b": (float("-inf"),)}], "c": torch.tensor(float("inf"))}, indent=1)
    doc = strict(text)
    assert doc == {"a": ["NaN", {"b": ["-Infinity"]}], "c": "Infinity"}
    back = jsonio.loads(text)
    assert math.isnan(back["a"][0]) and back["a"][1]["b"] == [float("-inf")] and back["c"] == float("inf")


def test_the_graph_export_and_the_other_files_share_one_convention():
    from graphs import exporters

    assert exporters.NONFINITE is jsonio.NONFINITE


def test_a_name_that_reads_like_a_non_finite_number_stays_text(tmp_path):
    """The reader gave every "NaN", "Infinity" and "-Infinity" string back as a float, text fields too: a
    policy, estimator, model or dataset may be registered under such a name (the registry takes it), and
    read back the events' policy was a float NaN and a knowledge run's model name a float (its --replot
    named the figure knowledge_inf.png). Text fields stay text; the numbers beside them still read back."""
    ctrl = _controller()
    ctrl.events[:] = [{"step": 1, "kind": "update", "policy": "NaN", "target": "Infinity", "holdout_loss": float("nan")}]
    path = tmp_path / "events.jsonl"
    ctrl.write_events(path)
    (e,) = read_events(str(path))
    assert e["policy"] == "NaN" and e["target"] == "Infinity" and math.isnan(e["holdout_loss"])
    doc = jsonio.loads(jsonio.dumps({"estimator": "NaN", "density_note": "-Infinity", "loss": float("-inf"),
                                     "meta": {"model": "Infinity", "dataset": "NaN", "caveats": ["NaN"],
                                              "refit_of": {"folder": "NaN", "noise_floor": float("inf")}},
                                     "rows": [{"target": "NaN", "test_loss": float("nan")}]}))
    assert (doc["estimator"], doc["density_note"], doc["meta"]["model"], doc["meta"]["dataset"]) == (
        "NaN", "-Infinity", "Infinity", "NaN")
    assert doc["meta"]["caveats"] == ["NaN"] and doc["meta"]["refit_of"]["folder"] == "NaN"
    assert doc["loss"] == float("-inf") and doc["meta"]["refit_of"]["noise_floor"] == float("inf")
    assert doc["rows"][0]["target"] == "NaN" and math.isnan(doc["rows"][0]["test_loss"])

