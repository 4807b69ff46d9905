"""core.results: the sentence of each review flag, and one schema for the app's CSV, the CLI's
CSV and its JSON lines."""

from __future__ import annotations

import csv
import io
import json

import pytest

from app.review import ScanAnalysis, results_csv
from core import CLASS_LABELS, CLASS_NAMES
from core.__main__ import _Writer
from core.constants import WEAK_NEGATIVE_FLAG
from core.model import Prediction
from core.results import (
    CSV_COLUMNS,
    DECIMALS,
    NOT_BRAIN_MRI_FLAG,
    OUTSIDE_TRAINING_FLAG,
    flag_text,
    result_record,
    spreadsheet_safe,
)
from core.rules import FLAG_KINDS, LOW_CONFIDENCE, MIRROR_DISAGREES, NOT_BRAIN_MRI, OUTSIDE_TRAINING, WEAK_NEGATIVE, Flag

PROBS = {"glioma": 0.1234567, "meningioma": 0.2, "notumor": 0.6765433, "pituitary": 0.0}
LOW = Flag(LOW_CONFIDENCE, 0.6765433, 0.7)
OUTSIDE = Flag(OUTSIDE_TRAINING, 1.234, 1.0)
GATE = Flag(NOT_BRAIN_MRI, 3.456, 2.5, check="gate")
WEAK = Flag(WEAK_NEGATIVE, 0.98765, 0.993, classes=("meningioma",), confidence=0.9712)
MIRROR = Flag(MIRROR_DISAGREES, classes=("glioma", "pituitary"))
#: One flag of each kind, and of each image check.
EXAMPLES = {
    "blank": Flag(NOT_BRAIN_MRI, 0.0123, 0.04, check="blank"),
    "colour": Flag(NOT_BRAIN_MRI, 0.2, 0.04, check="colour"),
    "aspect": Flag(NOT_BRAIN_MRI, 3.14, 2.5, check="aspect"),
    "gate": GATE, "outside": OUTSIDE, "low": LOW, "weak": WEAK, "mirror": MIRROR,
}


# ---------------------------------------------------------------------- flag sentences
def test_every_kind_has_its_own_sentence():
    texts = {name: flag_text(flag) for name, flag in EXAMPLES.items()}
    assert {flag.kind for flag in EXAMPLES.values()} == set(FLAG_KINDS)
    assert len(set(texts.values())) == len(texts) and all(texts.values())


@pytest.mark.parametrize("check, words", [("blank", "blank or near-constant"), ("colour", "coloured image"),
                                          ("aspect", "extreme aspect ratio"), ("gate", "out-of-distribution score")])
def test_not_brain_mri_names_the_check_and_its_numbers(check, words):
    flag = EXAMPLES[check]
    text = flag_text(flag)
    assert text.startswith(f"{NOT_BRAIN_MRI_FLAG} (") and words in text
    digits = {"blank": 3, "colour": 3, "aspect": 1, "gate": 2}[check]
    assert f"{flag.value:.{digits}f} " in text and f"{flag.limit:g}" in text


def test_outside_training_gives_the_score_and_the_threshold():
    text = flag_text(OUTSIDE)
    assert text.startswith(OUTSIDE_TRAINING_FLAG) and f"{OUTSIDE.value:.2f} > {OUTSIDE.limit:g}" in text


def test_low_confidence_gives_the_confidence_and_the_threshold():
    assert flag_text(LOW) == f"low confidence ({LOW.value:.1%}, below {LOW.limit:.0%})"


def test_weak_negative_names_the_runner_up_and_the_cosine():
    text = flag_text(WEAK)
    assert text.startswith(WEAK_NEGATIVE_FLAG)
    assert f"no tumour at {WEAK.confidence:.1%}" in text
    assert f"but {CLASS_LABELS['meningioma'].lower()} stands out" in text
    assert f"answer cosine {WEAK.value:.3f}, needs {WEAK.limit:.3f}" in text


def test_mirror_disagreement_names_both_classes():
    text = flag_text(MIRROR)
    assert text.startswith("the mirror image of the scan is classified differently")
    assert f"({CLASS_LABELS['glioma']} vs {CLASS_LABELS['pituitary']})" in text


def test_a_confidence_just_below_the_threshold_reads_below_it():
    text = flag_text(Flag(LOW_CONFIDENCE, 0.6496, 0.65))
    shown, limit = text.split("(")[1].rstrip(")").split(", below ")
    assert float(shown.rstrip("%")) < float(limit.rstrip("%"))


# ---------------------------------------------------------------------- one schema
def _predictions() -> list[Prediction]:
    return [
        Prediction("notumor", 0.6765433, PROBS, flags=(LOW, WEAK)),
        Prediction("glioma", 0.9, PROBS, outside_training=True, ood_score=1.234, flags=(OUTSIDE,)),
        Prediction("glioma", 0.9, PROBS, is_brain_mri=False, ood_score=3.456, flags=(GATE, MIRROR)),
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


def test_flags_are_written_as_sentences_and_as_kinds():
    """The ``flags`` column holds the sentences, joined by "; ", and ``flag_kinds``, right after
    it, the kinds, joined by spaces, in the same order."""
    assert CSV_COLUMNS.index("flag_kinds") == CSV_COLUMNS.index("flags") + 1
    predictions = _predictions()
    rows = list(csv.DictReader(io.StringIO(_cli_text([result_record("x", p) for p in predictions], "csv"))))
    for row, prediction in zip(rows, predictions):
        assert row["flags"] == "; ".join(flag_text(flag) for flag in prediction.flags)
        assert row["flag_kinds"].split(" ") == list(prediction.flag_kinds)
    assert rows[0]["flag_kinds"] == f"{LOW_CONFIDENCE} {WEAK_NEGATIVE}"


def test_json_lines_carry_the_same_fields_and_precision():
    prediction = _predictions()[0]
    record = result_record("a.jpg", prediction)
    line = json.loads(_cli_text([record], "jsonl"))
    assert line == record
    flat = set(CSV_COLUMNS) - {f"p_{n}" for n in CLASS_NAMES}
    assert set(line) == flat | {"probabilities"}
    assert line["probabilities"]["glioma"] == round(0.1234567, DECIMALS)
    assert line["flags"] == [flag_text(flag) for flag in prediction.flags]
    assert line["flag_kinds"] == list(prediction.flag_kinds)


def test_an_error_record_has_no_prediction():
    record = result_record("bad.jpg", error="cannot read")
    assert record["status"] == "error" and record["label"] is None and record["error"] == "cannot read"
    assert record["flags"] == record["flag_kinds"] == []
    assert set(record) == set(result_record("a.jpg", _predictions()[0]))
    with pytest.raises(ValueError, match="either a prediction or an error"):
        result_record("x")


@pytest.mark.parametrize("text", ["=1+1", "+a", "-a", "@a", "\tx"])
def test_formulas_are_quoted(text):
    assert spreadsheet_safe(text) == "'" + text
    assert spreadsheet_safe("a" + text) == "a" + text
