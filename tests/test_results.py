"""core.results: the sentence of each review flag, and one schema for the app's CSV, the CLI's
CSV and its JSON lines, for scans and for whole series."""

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
    SEQUENCE_NOT_LEARNED_FLAG,
    SERIES_CSV_COLUMNS,
    flag_text,
    result_record,
    series_csv,
    series_flag_text,
    series_record,
    slice_records,
    spreadsheet_safe,
    write_series_csv,
)
from core.rules import (
    FLAG_KINDS, LOW_CONFIDENCE, MIRROR_DISAGREES, NOT_BRAIN_MRI, OUTSIDE_TRAINING, SEQUENCE_NOT_LEARNED, WEAK_NEGATIVE, Flag,
)
from core.sequence import SequenceInfo
from core.series_rule import ISOLATED_TUMOUR_SLICES, SeriesPrediction, SeriesRule, decide

PROBS = {"glioma": 0.1234567, "meningioma": 0.2, "notumor": 0.6765433, "pituitary": 0.0}
LOW = Flag(LOW_CONFIDENCE, 0.6765433, 0.7)
OUTSIDE = Flag(OUTSIDE_TRAINING, 1.234, 1.0)
GATE = Flag(NOT_BRAIN_MRI, 3.456, 2.5, check="gate")
WEAK = Flag(WEAK_NEGATIVE, 0.98765, 0.993, classes=("meningioma",), confidence=0.9712)
MIRROR = Flag(MIRROR_DISAGREES, classes=("glioma", "pituitary"))
#: A glioma answer on T2, where training holds almost no meningiomas or pituitary tumours.
NOT_LEARNED = Flag(SEQUENCE_NOT_LEARNED, 0.0, 0.02, classes=("glioma", "meningioma", "pituitary"), sequence="T2")
#: One flag of each kind, and of each image check.
EXAMPLES = {
    "blank": Flag(NOT_BRAIN_MRI, 0.0123, 0.04, check="blank"),
    "colour": Flag(NOT_BRAIN_MRI, 0.2, 0.04, check="colour"),
    "aspect": Flag(NOT_BRAIN_MRI, 3.14, 2.5, check="aspect"),
    "gate": GATE, "outside": OUTSIDE, "low": LOW, "weak": WEAK, "mirror": MIRROR, "not_learned": NOT_LEARNED,
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


def test_sequence_not_learned_names_the_sequence_and_the_classes_it_lacks():
    assert flag_text(NOT_LEARNED) == (
        f"{SEQUENCE_NOT_LEARNED_FLAG}: the model learned almost no meningiomas or pituitary tumours on T2 "
        "(0.0% of their training scans, under 2%), so there it cannot tell glioma from meningioma or pituitary tumour"
    )
    # The answer's own class barely covered, alone: no "cannot tell" clause.
    alone = flag_text(Flag(SEQUENCE_NOT_LEARNED, 0.0048, 0.02, classes=("notumor", "notumor"), sequence="FLAIR"))
    assert alone == f"{SEQUENCE_NOT_LEARNED_FLAG}: the model learned almost no scans without a tumour on FLAIR " \
                    "(0.5% of their training scans, under 2%)"
    # A share just under the limit is never shown at it.
    assert "(1.9% of" in flag_text(Flag(SEQUENCE_NOT_LEARNED, 0.01999, 0.02, classes=("glioma", "glioma"), sequence="T1"))


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


# ---------------------------------------------------------------------- series schema
def _slice(label: str, p: float = 0.9, outside: bool = False, mri: bool = True) -> Prediction:
    rest = (1 - p) / 3
    probs = {c: (p if c == label else rest) for c in CLASS_NAMES}
    flags = (GATE,) if not mri else (OUTSIDE,) if outside else ()
    return Prediction(label, p, probs, is_brain_mri=mri, outside_training=outside, ood_score=1.5 if outside else 0.25,
                      flags=flags)


def _series_prediction(*labels: str, name: str = "Series 7: t1_mprage_tra_Gd", mri: bool = True) -> SeriesPrediction:
    """A SeriesPrediction from synthetic slice answers, as series_prediction builds it (the first
    slice has too little head to count)."""
    slices = [_slice(label, 0.8 + 0.01 * i, mri=mri) for i, label in enumerate(labels)]
    assessed = [False] + [True] * (len(labels) - 1)
    positions = tuple(-40.0 + 2.5 * i for i in range(len(labels)))
    decision = decide(SeriesRule(), slices, assessed, positions)
    return SeriesPrediction(
        name=name, source="/scans/drop", plane="axial", sequence=SequenceInfo("T1C", "tags"), label=decision.label,
        confidence=decision.confidence, flags=decision.flags, outside_training=decision.outside_training,
        key_slices=decision.key_slices, support=decision.support, slices=tuple(slices), assessed_mask=tuple(assessed),
        positions_mm=positions,
    )


SERIES_FIELDS = {"series", "source", "n_slices", "assessed", "plane", "sequence", "sequence_source", "label",
                 "confidence", "flags", "flag_kinds", "outside_training", "key_slices", "support", "error"}


def test_series_record_fields():
    prediction = _series_prediction("glioma", "notumor", "meningioma", "meningioma", "meningioma", "glioma")
    record = series_record(prediction, "drop/")
    assert set(record) == SERIES_FIELDS
    assert json.loads(json.dumps(record)) == record  # JSON-ready
    assert record["series"] == "Series 7: t1_mprage_tra_Gd" and record["source"] == "drop/"  # the user's source
    assert (record["n_slices"], record["assessed"], record["plane"]) == (6, 5, "axial")
    assert (record["sequence"], record["sequence_source"]) == ("T1C", "tags")
    assert record["label"] == "meningioma" and record["error"] is None
    assert record["confidence"] == round(prediction.confidence, DECIMALS)
    assert record["flags"] == [] and record["flag_kinds"] == [] and record["outside_training"] is False
    assert record["support"] == {"glioma": 1, "meningioma": 3, "pituitary": 0}
    assert [k["index"] for k in record["key_slices"]] == [4, 3, 2]
    assert record["key_slices"][0] == {"index": 4, "position_mm": -30.0, "label": "meningioma",
                                       "probability": round(0.84, DECIMALS)}


def test_series_flags_are_sentences_and_kinds():
    prediction = _series_prediction(*["notumor"] * 5, "glioma")
    record = series_record(prediction, "x.nii.gz")
    assert record["label"] == "notumor" and record["flag_kinds"] == [ISOLATED_TUMOUR_SLICES]
    assert record["flags"] == [series_flag_text(flag) for flag in prediction.flags]
    assert record["key_slices"][0]["index"] == 5  # the suspicious slice leads


def test_series_error_record():
    record = series_record(None, "broken.zip", error="No MR series could be read from the input.")
    assert set(record) == SERIES_FIELDS and record["error"].startswith("No MR series")
    assert record["source"] == "broken.zip" and record["series"] is None and record["label"] is None
    assert record["flags"] == record["flag_kinds"] == record["key_slices"] == [] and record["support"] is None
    for bad in ({}, {"prediction": _series_prediction("notumor", "notumor"), "error": "x"}):
        with pytest.raises(ValueError, match="either a prediction or an error"):
            series_record(bad.get("prediction"), "x", bad.get("error"))


def test_slice_records_hold_the_slice_schema():
    prediction = _series_prediction("glioma", "notumor", "meningioma")
    records = slice_records(prediction, "drop/")
    assert [r["slice"] for r in records] == [0, 1, 2]
    assert [r["position_mm"] for r in records] == [-40.0, -37.5, -35.0]
    assert [r["assessed"] for r in records] == [False, True, True]
    slice_fields = set(result_record("a", prediction.slices[0])) - {"file", "error"}
    for record, slice_prediction in zip(records, prediction.slices):
        assert set(record) == {"series", "source", "slice", "position_mm", "assessed"} | slice_fields
        assert record["series"] == prediction.name and record["source"] == "drop/"
        expected = result_record("a", slice_prediction)
        assert all(record[key] == expected[key] for key in slice_fields)
    assert json.loads(json.dumps(records)) == records


def test_slices_not_recognised_as_brain_mri_withhold_their_label():
    records = slice_records(_series_prediction("glioma", "glioma", mri=False), "x")
    assert all(r["status"] == "not_brain_mri" and r["label"] is None for r in records)
    assert all(r["flag_kinds"] == [NOT_BRAIN_MRI] for r in records)


def _series_rows(data: bytes) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(data.decode("utf-8"))))


def test_series_csv_rows_and_columns():
    first = _series_prediction("notumor", "meningioma", "meningioma", "notumor")
    second = _series_prediction("notumor", "notumor", name="Series 9: AX FLAIR")
    items = [(first, "drop/", None), (None, "bad.zip", "No files were found in the input."), (second, "drop/", None)]
    plain = _series_rows(series_csv(items))
    assert tuple(plain[0]) == SERIES_CSV_COLUMNS
    assert [r["row"] for r in plain] == ["series"] * 3
    rows = _series_rows(series_csv(items, slices=True))
    assert [r["row"] for r in rows] == ["series", *["slice"] * 4, "series", "series", "slice", "slice"]
    head, slices = rows[0], rows[1:5]
    assert head["series"] == first.name and head["n_slices"] == "4" and head["assessed"] == "3"
    assert head["label"] == "meningioma" and head["sequence"] == "T1C" and head["sequence_source"] == "tags"
    assert head["key_slices"] == "2@-35.0mm; 1@-37.5mm"
    assert head["slice"] == head["position_mm"] == head["error"] == "" and head["outside_training"] == "false"
    assert all(head[f"p_{n}"] == "" for n in CLASS_NAMES)  # no probabilities for a series
    assert [r["slice"] for r in slices] == ["0", "1", "2", "3"] and slices[1]["position_mm"] == f"{-37.5:.{DECIMALS}f}"
    assert [r["assessed"] for r in slices] == ["false", "true", "true", "true"]
    assert all(r["series"] == first.name and r["source"] == "drop/" for r in slices)
    assert all(r["n_slices"] == r["plane"] == r["key_slices"] == "" for r in slices)
    assert slices[1]["p_meningioma"] == f"{first.slices[1].probabilities['meningioma']:.{DECIMALS}f}"
    error = rows[5]
    assert error["source"] == "bad.zip" and error["error"] == "No files were found in the input."
    assert error["series"] == error["label"] == error["n_slices"] == ""


def test_series_csv_flags_and_formulas():
    prediction = _series_prediction(*["notumor"] * 5, "glioma", name="=HYPERLINK(1)")
    [row] = _series_rows(series_csv([(prediction, "-rm.zip", None)]))
    assert row["series"] == "'=HYPERLINK(1)" and row["source"] == "'-rm.zip"  # no spreadsheet formula
    assert row["flags"] == "; ".join(series_flag_text(f) for f in prediction.flags)
    assert row["flag_kinds"] == ISOLATED_TUMOUR_SLICES


def test_series_csv_streams_in_parts():
    """The CLI writes the header, then each record as it comes: the same document."""
    items = [(_series_prediction("notumor", "glioma", "glioma"), "a", None), (None, "b", "unreadable")]
    stream = io.StringIO()
    write_series_csv([], stream)
    for prediction, source, error in items:
        write_series_csv([series_record(prediction, source, error)], stream, header=False)
        if prediction is not None:
            write_series_csv(slice_records(prediction, source), stream, header=False)
    assert stream.getvalue().encode("utf-8") == series_csv(items, slices=True)
