"""One result schema for a prediction: the app's CSV download, ``python -m core``'s CSV and its
JSON lines all write :func:`result_record`, with the same field names and precision.

Fields, in order: ``file``, ``status`` (``ok``, ``outside_training``, ``not_brain_mri`` or
``error``), ``label`` (empty when the scan is not a brain MRI or could not be read),
``confidence``, ``is_brain_mri``, ``outside_training``, ``ood_score``, ``flags`` (sentences),
``flag_kinds`` (``core.rules.FLAG_KINDS``), ``sequence`` and ``sequence_source`` (where it came
from: tags, name, image, user or unknown), one ``p_CLASS`` per class (JSON: a
``probabilities`` object), ``error``. Only the name the user gave the file and the model's
outputs are written: no DICOM tag.

:func:`flag_text` is where a review flag (``core.rules.Flag``) becomes the sentence a clinician
reads, in the app, the CSV and the CLI alike.

A whole series (``core.series_rule.SeriesPrediction``) has its own record, :func:`series_record`,
and one per slice, :func:`slice_records` (:func:`result_record`'s fields for the slice, under the
series' name). :func:`series_csv` writes both in one table, :data:`SERIES_CSV_COLUMNS`: a
``series`` row, then (with ``slices``) one ``slice`` row per slice, the cells that do not apply
left empty. A series is named by its number and description (``Series.name``) and the source
the user gave: no other DICOM tag, never a patient tag.
"""

from __future__ import annotations

import csv
import io
import itertools
import math
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, TextIO

from .constants import CLASS_LABELS, CLASS_NAMES, NEGATIVE_CLASS, WEAK_NEGATIVE_FLAG
from .rules import LOW_CONFIDENCE, MIRROR_DISAGREES, NOT_BRAIN_MRI, OUTSIDE_TRAINING, SEQUENCE_NOT_LEARNED, WEAK_NEGATIVE, Flag
from .series_rule import DISAGREEMENT, FEW_ASSESSED, ISOLATED_TUMOUR_SLICES, SeriesFlag, SeriesPrediction

if TYPE_CHECKING:  # the CLI imports this module before the model (and torch) is loaded
    from .model import Prediction

__all__ = [
    "CSV_COLUMNS", "DECIMALS", "NOT_BRAIN_MRI_FLAG", "OUTSIDE_TRAINING_FLAG", "SEQUENCE_NOT_LEARNED_FLAG", "SERIES_CSV_COLUMNS", "csv_row",
    "flag_text", "plural_of", "result_record", "results_csv", "series_csv", "series_csv_row", "series_flag_text", "series_record",
    "series_records", "slice_records", "spreadsheet_safe", "status_of", "write_csv", "write_series_csv",
]

NOT_BRAIN_MRI_FLAG = "not recognised as a brain MRI"
SEQUENCE_NOT_LEARNED_FLAG = "sequence not learned for this answer"
OUTSIDE_TRAINING_FLAG = "outside the training data: the prediction is unreliable"
#: Each image check's wording: its value against its limit, "<" for a floor, ">" for a ceiling.
_IMAGE_CHECKS = {
    "blank": ("blank or near-constant image (grey-level spread {value} < {limit})", 3, -1),
    "colour": ("coloured image (channel spread {value} > {limit}); MRI is grey", 3, 1),
    "aspect": ("extreme aspect ratio ({value} > {limit})", 1, 1),
    "gate": ("far from any brain MRI the model learned from: out-of-distribution score {value} > {limit}", 2, 1),
}


def _shown(value: float, decimals: int, side: int, limit: float, percent: bool = False) -> str:
    """``value`` with ``decimals`` (of a percentage when ``percent``), rounded as usual unless
    that would show it at or across the ``limit`` it crossed (``side`` -1: it lies below, 1:
    above); then rounded away from the limit, so a value just under 65 % never reads "65.0 %"."""
    scale = 10 ** decimals * (100 if percent else 1)
    rounded = round(value * scale) / scale
    if (side < 0 and rounded >= limit) or (side > 0 and rounded <= limit):
        rounded = (math.floor if side < 0 else math.ceil)(value * scale) / scale
    return f"{rounded:.{decimals}%}" if percent else f"{rounded:.{decimals}f}"


def flag_text(flag: Flag) -> str:
    """The sentence a clinician reads for one review flag."""
    if flag.kind == NOT_BRAIN_MRI:
        text, decimals, side = _IMAGE_CHECKS[flag.check or "gate"]
        limit = f"{flag.limit:.{decimals}f}" if flag.check == "gate" or flag.check is None else f"{flag.limit:g}"
        return f"{NOT_BRAIN_MRI_FLAG} ({text.format(value=_shown(flag.value, decimals, side, flag.limit), limit=limit)})"
    if flag.kind == OUTSIDE_TRAINING:
        return (f"{OUTSIDE_TRAINING_FLAG} (unlike the training scans: out-of-distribution score "
                f"{_shown(flag.value, 2, 1, flag.limit)} > {flag.limit:g})")
    if flag.kind == LOW_CONFIDENCE:
        return f"low confidence ({_shown(flag.value, 1, -1, flag.limit, percent=True)}, below {flag.limit:.0%})"
    if flag.kind == WEAK_NEGATIVE:
        return (
            f"{WEAK_NEGATIVE_FLAG} (no tumour at {flag.confidence:.1%}, but {CLASS_LABELS[flag.classes[0]].lower()} stands "
            f"out among the alternatives: answer cosine {_shown(flag.value, 3, -1, flag.limit)}, needs {flag.limit:.3f})"
        )
    if flag.kind == SEQUENCE_NOT_LEARNED:
        return _not_learned_text(flag)
    if flag.kind == MIRROR_DISAGREES:
        scan, mirror = (CLASS_LABELS[name] for name in flag.classes)
        return f"the mirror image of the scan is classified differently ({scan} vs {mirror})"
    raise ValueError(f"No wording for flag kind {flag.kind!r}.")


def plural_of(name: str) -> str:
    """A class in the plural, in words: "gliomas", "pituitary tumours", "scans without a tumour"."""
    return "scans without a tumour" if name == NEGATIVE_CLASS else CLASS_LABELS[name].lower() + "s"


def _either(words: list[str]) -> str:
    """"a", "a or b", "a, b or c"."""
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " or " + words[-1]


def _not_learned_text(flag: Flag) -> str:
    """``sequence_not_learned``: which classes training barely covers on the scan's sequence."""
    label, uncovered = flag.classes[0], flag.classes[1:]
    sequence = flag.sequence or "this sequence"
    where = f"on {sequence}" if sequence != "other" else "on sequences other than T1, T2 and FLAIR"
    names = _either([plural_of(name) for name in uncovered])
    share = f"{_shown(flag.value, 1, -1, flag.limit, percent=True)} of their training scans, under {flag.limit:.0%}"
    text = f"{SEQUENCE_NOT_LEARNED_FLAG}: the model learned almost no {names} {where} ({share})"
    others = [name for name in uncovered if name != label]
    if others:
        text += f", so there it cannot tell {CLASS_LABELS[label].lower()} from {_either([CLASS_LABELS[n].lower() for n in others])}"
    return text


def _classes(names: tuple[str, ...]) -> str:
    return " and ".join(CLASS_LABELS[name].lower() for name in names)


def series_flag_text(flag: SeriesFlag) -> str:
    """The sentence a clinician reads for one review flag of a whole series."""
    if flag.kind == OUTSIDE_TRAINING:
        return f"{OUTSIDE_TRAINING_FLAG} ({flag.value:.0%} of the assessed slices are unlike the training scans)"
    if flag.kind == SEQUENCE_NOT_LEARNED:
        return _not_learned_text(Flag(SEQUENCE_NOT_LEARNED, flag.value, flag.limit, classes=flag.classes, sequence=flag.sequence))
    if flag.kind == DISAGREEMENT:
        return (f"two tumour classes are each supported by enough slices ({_classes(flag.classes)}; "
                f"{flag.value:.0f} slices where {flag.limit:.0f} are needed)")
    if flag.kind == ISOLATED_TUMOUR_SLICES:
        count = f"{flag.value:.0f} slice" + ("s suggest" if flag.value != 1 else " suggests")
        return (f"no tumour class has enough slices behind it, but {count} {_classes(flag.classes)} "
                f"({flag.limit:.0f} are needed to call it): review the key slices")
    if flag.kind == FEW_ASSESSED:
        return f"too few slices could be assessed ({flag.value:.0f}; {flag.limit:.0f} are needed to call a tumour)"
    raise ValueError(f"No wording for series flag kind {flag.kind!r}.")

#: Decimals of confidences, probabilities and scores in every output.
DECIMALS = 6
CSV_COLUMNS: tuple[str, ...] = (
    "file", "status", "label", "confidence", "is_brain_mri", "outside_training", "ood_score", "flags", "flag_kinds",
    "sequence", "sequence_source", *(f"p_{name}" for name in CLASS_NAMES), "error",
)


def status_of(prediction: Prediction | None) -> str:
    """``error`` (no prediction), ``not_brain_mri``, ``outside_training`` or ``ok``."""
    if prediction is None:
        return "error"
    if not prediction.is_brain_mri:
        return "not_brain_mri"
    return "outside_training" if prediction.outside_training else "ok"


def result_record(file: str, prediction: Prediction | None = None, error: str | None = None) -> dict[str, Any]:
    """The JSON-ready record of one scan: a prediction, or the ``error`` that stopped it."""
    if (prediction is None) == (error is None):
        raise ValueError("Give either a prediction or an error, not both or neither.")
    if prediction is None:
        return {
            "file": file, "status": "error", "label": None, "confidence": None, "is_brain_mri": None,
            "outside_training": None, "ood_score": None, "flags": [], "flag_kinds": [], "sequence": None,
            "sequence_source": None, "probabilities": None, "error": error,
        }
    shown = prediction.is_brain_mri
    return {
        "file": file,
        "status": status_of(prediction),
        "label": prediction.label if shown else None,
        "confidence": round(prediction.confidence, DECIMALS) if shown else None,
        "is_brain_mri": prediction.is_brain_mri,
        "outside_training": prediction.outside_training,
        "ood_score": round(prediction.ood_score, DECIMALS),
        "flags": [flag_text(flag) for flag in prediction.flags],
        "flag_kinds": [flag.kind for flag in prediction.flags],
        "sequence": prediction.sequence.name,
        "sequence_source": prediction.sequence.source,
        "probabilities": {name: round(prediction.probabilities[name], DECIMALS) for name in CLASS_NAMES},
        "error": None,
    }


def spreadsheet_safe(text: str) -> str:
    """Text safe for a spreadsheet: a leading = + - @ (or tab, carriage return) would be read
    as a formula, so it gets a quote in front."""
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:.{DECIMALS}f}"
    return spreadsheet_safe(str(value))


def csv_row(record: dict[str, Any]) -> list[str]:
    """One record as CSV cells, in :data:`CSV_COLUMNS` order."""
    probabilities = record.get("probabilities") or {}
    values = {
        **record, "flags": "; ".join(record.get("flags") or ()), "flag_kinds": " ".join(record.get("flag_kinds") or ()),
        **{f"p_{n}": probabilities.get(n) for n in CLASS_NAMES},
    }
    return [_cell(values.get(column)) for column in CSV_COLUMNS]


def write_csv(records: Iterable[dict[str, Any]], stream: TextIO, header: bool = True) -> None:
    writer = csv.writer(stream, lineterminator="\n")
    if header:
        writer.writerow(CSV_COLUMNS)
    for record in records:
        writer.writerow(csv_row(record))


def results_csv(records: Iterable[dict[str, Any]]) -> bytes:
    """Records as one UTF-8 CSV document."""
    buffer = io.StringIO()
    write_csv(records, buffer)
    return buffer.getvalue().encode("utf-8")


# ---------------------------------------------------------------------- series
SERIES_CSV_COLUMNS: tuple[str, ...] = (
    "row", "series", "source", "slice", "position_mm", "n_slices", "assessed", "plane", "sequence", "sequence_source",
    "label", "confidence", "flags", "flag_kinds", "outside_training", "key_slices",
    *(f"p_{name}" for name in CLASS_NAMES), "error",
)


def _mm(value: float | None) -> float | None:
    return None if value is None else round(float(value), DECIMALS)


def series_record(prediction: SeriesPrediction | None, source: str, error: str | None = None) -> dict[str, Any]:
    """The JSON-ready record of one series: its answer, or the ``error`` that stopped the read.

    ``source`` is the input as the user gave it (a path, an upload's name). ``assessed`` counts
    the slices that decided the answer; ``support`` the slices behind each tumour class;
    ``key_slices`` the slices that drove the answer (index in the series, position in mm, label,
    probability).
    """
    if (prediction is None) == (error is None):
        raise ValueError("Give either a prediction or an error, not both or neither.")
    if prediction is None:
        return {
            "series": None, "source": source, "n_slices": None, "assessed": None, "plane": None, "sequence": None,
            "sequence_source": None, "label": None, "confidence": None, "flags": [], "flag_kinds": [],
            "outside_training": None, "key_slices": [], "support": None, "error": error,
        }
    return {
        "series": prediction.name,
        "source": source,
        "n_slices": prediction.n_slices,
        "assessed": prediction.assessed,
        "plane": prediction.plane,
        "sequence": prediction.sequence.name,
        "sequence_source": prediction.sequence.source,
        "label": prediction.label,
        "confidence": round(prediction.confidence, DECIMALS),
        "flags": [series_flag_text(flag) for flag in prediction.flags],
        "flag_kinds": list(prediction.flag_kinds),
        "outside_training": prediction.outside_training,
        "key_slices": [
            {"index": key.index, "position_mm": _mm(key.position_mm), "label": key.label,
             "probability": round(key.probability, DECIMALS)}
            for key in prediction.key_slices
        ],
        "support": {name: int(count) for name, count in prediction.support.items()},
        "error": None,
    }


def slice_records(prediction: SeriesPrediction, source: str) -> list[dict[str, Any]]:
    """One JSON-ready record per slice of the series, in series order: the series' name and
    ``source``, the slice's index and position, whether it counted towards the answer, then
    :func:`result_record`'s fields for the slice (without ``file`` and ``error``: a slice is
    read with its series)."""
    records = []
    rows = zip(prediction.slices, prediction.assessed_mask, prediction.positions_mm)
    for index, (slice_prediction, assessed, position) in enumerate(rows):
        fields = result_record("", slice_prediction)
        del fields["file"], fields["error"]
        records.append({"series": prediction.name, "source": source, "slice": index, "position_mm": _mm(position),
                        "assessed": bool(assessed), **fields})
    return records


def _key_slices_text(keys: Iterable[dict[str, Any]]) -> str:
    """Key slices as ``12@34.0mm; 13@35.0mm`` (the index alone where the position is unknown)."""
    return "; ".join(
        str(key["index"]) if key.get("position_mm") is None else f"{key['index']}@{key['position_mm']:.1f}mm"
        for key in keys
    )


def series_csv_row(record: dict[str, Any]) -> list[str]:
    """One record (:func:`series_record` or one of :func:`slice_records`) as CSV cells, in
    :data:`SERIES_CSV_COLUMNS` order; a slice record is told by its ``slice`` field. The columns
    the slice schema has too are its cells (:func:`csv_row`)."""
    shared = dict(zip(CSV_COLUMNS, csv_row(record)))
    own = {**record, "row": "slice" if "slice" in record else "series",
           "key_slices": _key_slices_text(record.get("key_slices") or ()) or None}
    return [shared[column] if column in shared else _cell(own.get(column)) for column in SERIES_CSV_COLUMNS]


def write_series_csv(records: Iterable[dict[str, Any]], stream: TextIO, header: bool = True) -> None:
    rows = (series_csv_row(record) for record in records)
    csv.writer(stream, lineterminator="\n").writerows(itertools.chain([SERIES_CSV_COLUMNS] if header else [], rows))


def series_records(
    items: Iterable[tuple[SeriesPrediction | None, str, str | None]], slices: bool = False
) -> Iterable[dict[str, Any]]:
    """Each ``(prediction, source, error)`` as its series record, followed, with ``slices``, by
    its slice records."""
    for prediction, source, error in items:
        yield series_record(prediction, source, error)
        if slices and prediction is not None:
            yield from slice_records(prediction, source)


def series_csv(items: Iterable[tuple[SeriesPrediction | None, str, str | None]], slices: bool = False) -> bytes:
    """``(prediction, source, error)`` items as one UTF-8 CSV document: a ``series`` row each and,
    with ``slices``, its ``slice`` rows after it."""
    buffer = io.StringIO()
    write_series_csv(series_records(items, slices), buffer)
    return buffer.getvalue().encode("utf-8")
