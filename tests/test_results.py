"""core.results: one schema for the app's CSV, the CLI's CSV and its JSON lines."""

from __future__ import annotations

import csv
import io
import json

import pytest

from app.review import ScanAnalysis, results_csv
from core import CLASS_NAMES
from core.__main__ import _Writer
from core.model import Prediction
from core.results import CSV_COLUMNS, DECIMALS, result_record, spreadsheet_safe

PROBS = {"glioma": 0.1234567, "meningioma": 0.2, "notumor": 0.6765433, "pituitary": 0.0}


def _predictions() -> list[Prediction]:
    return [
        Prediction("notumor", 0.6765433, PROBS, flags=("low confidence",)),
        Prediction("glioma", 0.9, PROBS, outside_training=True, ood_score=0.5, flags=("outside the training data",)),
        Prediction("glioma", 0.9, PROBS, is_brain_mri=False, ood_score=3.0, flags=("not recognised as a brain MRI",)),
    ]


def _cli_text(records: list[dict], fmt: str) -> str:
    stream = io.StringIO()
    writer = _Writer(stream, fmt)
    for record in records:
        writer.write(record)
    return stream.getvalue()


def test_page_and_cli_write_the_same_csv():
    names = ["a.jpg", "=cmd.jpg", "c.png"]
    page = results_csv([(n, ScanAnalysis(digest="d", prediction=p)) for n, p in zip(names, _predictions())]).decode()
    cli = _cli_text([result_record(n, p) for n, p in zip(names, _predictions())], "csv")
    assert page == cli
    rows = list(csv.DictReader(io.StringIO(page)))
    assert tuple(rows[0]) == CSV_COLUMNS
    assert [r["status"] for r in rows] == ["ok", "outside_training", "not_brain_mri"]
    assert rows[1]["file"] == "'=cmd.jpg"  # no spreadsheet formula
    assert rows[2]["label"] == "" and rows[2]["confidence"] == ""  # the label is withheld
    assert rows[0]["p_glioma"] == f"{0.1234567:.{DECIMALS}f}"


def test_json_lines_carry_the_same_fields_and_precision():
    record = result_record("a.jpg", _predictions()[0])
    line = json.loads(_cli_text([record], "jsonl"))
    assert line == record
    flat = set(CSV_COLUMNS) - {f"p_{n}" for n in CLASS_NAMES}
    assert set(line) == flat | {"probabilities"}
    assert line["probabilities"]["glioma"] == round(0.1234567, DECIMALS)


def test_an_error_record_has_no_prediction():
    record = result_record("bad.jpg", error="cannot read")
    assert record["status"] == "error" and record["label"] is None and record["error"] == "cannot read"
    with pytest.raises(ValueError, match="either a prediction or an error"):
        result_record("x")


@pytest.mark.parametrize("text", ["=1+1", "+a", "-a", "@a", "\tx"])
def test_formulas_are_quoted(text):
    assert spreadsheet_safe(text) == "'" + text
