"""Scans from other sources: how the served model does outside the Kaggle set.

The folder is laid out ``SOURCE/CLASS/FILE`` (as ``../shared/datasets/external-dev``). CLASS is
one of the four classes, or ``other``: a lesion of a type the model never learned, for which no
answer is right and "no tumour" without a flag is the dangerous one. Every scan goes through
:meth:`core.Classifier.predict_batch`, so the figures are those of the app: the gate, the review
flags and the "outside the training data" state included.

For each source, each (source, class), each (source, class, sequence the recogniser or the tags
gave: ``recognised_sequences``) and, where file names carry it, each (source, sequence)::

    n_images, accuracy, rejected (not a brain MRI), flagged (any flag or review state, rejection
    included), unflagged (shown without any), unflagged_accuracy, outside_training, predicted
    (the labels given)

plus ``sequence_not_learned`` (the share with that flag), and for ``other`` lesions
``notumor_unflagged``: the share called "no tumour" with no flag. Where file names carry the
sequence, ``recogniser`` sets the sequence recogniser against them (:func:`recogniser_report`).
These scans are for validation and reporting only: nothing here fits a threshold.
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.constants import CLASS_NAMES, OTHER_LESION_CLASS, SUPPORTED_EXTENSIONS
from core.model import Classifier, Prediction
from core.rules import SEQUENCE_NOT_LEARNED
from core.scan import read_scan

from .data import fingerprint, Sample

__all__ = ["ExternalScan", "build_report", "find_external", "recogniser_report", "sequence_of", "evaluate_external", "summarise"]

logger = logging.getLogger(__name__)

#: Sequence names found as a token of a file name (``oligodendroglioma_T1C_1234.jpeg``).
_SEQUENCES = {"t1": "T1", "t1c": "T1C", "t1ce": "T1C", "t1post": "T1C", "t1pre": "T1", "t2": "T2", "flair": "FLAIR"}
_TOKEN = re.compile(r"[_\-. ]+")


@dataclass(frozen=True)
class ExternalScan:
    path: Path
    source: str
    #: One of ``CLASS_NAMES`` or ``"other"``.
    label: str
    #: The sequence named in the file name (T1, T1C, T2, FLAIR), or None.
    sequence: str | None


def sequence_of(name: str) -> str | None:
    """The MRI sequence a file name carries as a token, e.g. ``x_T2_y.jpg`` -> ``"T2"``."""
    for token in _TOKEN.split(Path(name).stem.lower()):
        if token in _SEQUENCES:
            return _SEQUENCES[token]
    return None


def find_external(root: str | Path) -> list[ExternalScan]:
    """Every scan of a ``SOURCE/CLASS/FILE`` folder, sorted by path."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"External folder {str(root)!r} does not exist.")
    accepted = (*CLASS_NAMES, OTHER_LESION_CLASS)
    scans: list[ExternalScan] = []
    for source in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        for folder in sorted(p for p in source.iterdir() if p.is_dir() and not p.name.startswith(".")):
            if folder.name not in accepted:
                raise ValueError(
                    f"Unknown class folder {folder.name!r} in {str(source)!r}; accepted names are {list(accepted)}."
                )
            scans.extend(
                ExternalScan(path, source.name, folder.name, sequence_of(path.name))
                for path in sorted(folder.iterdir())
                if path.is_file() and path.suffix.lower() in SUPPORTED_EXTENSIONS
            )
    if not scans:
        raise FileNotFoundError(f"No scans found in {str(root)!r}; expected SOURCE/CLASS/FILE.")
    return scans


def _record(scan: ExternalScan, prediction: Prediction) -> dict[str, Any]:
    return {
        "source": scan.source,
        "label": scan.label,
        "sequence": scan.sequence,
        "predicted": prediction.label,
        "rejected": not prediction.is_brain_mri,
        "outside_training": prediction.outside_training,
        "flagged": bool(prediction.flags),
        "recognised": prediction.sequence.name,
        "not_learned": SEQUENCE_NOT_LEARNED in prediction.flag_kinds,
    }


def summarise(records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The figures of one group of records (see the module docstring)."""
    n = len(records)
    if n == 0:
        return {"n_images": 0}
    labelled = [r for r in records if r["label"] != OTHER_LESION_CLASS]
    unflagged = [r for r in records if not r["flagged"]]
    out: dict[str, Any] = {
        "n_images": n,
        "rejected": sum(r["rejected"] for r in records) / n,
        "outside_training": sum(r["outside_training"] for r in records) / n,
        "flagged": sum(r["flagged"] for r in records) / n,
        "unflagged": len(unflagged) / n,
        "sequence_not_learned": sum(r.get("not_learned", False) for r in records) / n,
        "predicted": dict(Counter(r["predicted"] for r in records).most_common()),
    }
    if labelled:
        out["n_labelled"] = len(labelled)
        out["accuracy"] = sum(r["predicted"] == r["label"] for r in labelled) / len(labelled)
        shown = [r for r in labelled if not r["rejected"]]
        out["accuracy_not_rejected"] = sum(r["predicted"] == r["label"] for r in shown) / len(shown) if shown else None
        clean = [r for r in labelled if not r["flagged"]]
        out["unflagged_accuracy"] = sum(r["predicted"] == r["label"] for r in clean) / len(clean) if clean else None
        out["recall"] = {
            name: sum(r["predicted"] == name for r in group) / len(group)
            for name in CLASS_NAMES
            if (group := [r for r in labelled if r["label"] == name])
        }
    others = [r for r in records if r["label"] == OTHER_LESION_CLASS]
    if others:
        out["n_other"] = len(others)
        out["other_notumor_unflagged"] = sum(r["predicted"] == "notumor" and not r["flagged"] for r in others) / len(others)
        out["other_flagged"] = sum(r["flagged"] for r in others) / len(others)
    return out


def _groups(records: Iterable[dict[str, Any]], *keys: str) -> dict[str, list[dict[str, Any]]]:
    groups: dict[str, list[dict[str, Any]]] = {}
    for record in records:
        if any(record.get(k) is None for k in keys):
            continue
        groups.setdefault("/".join(str(record[k]) for k in keys), []).append(record)
    return dict(sorted(groups.items()))


def _predict(classifier: Classifier, scans: Sequence[ExternalScan], batch_size: int) -> tuple[list[dict[str, Any]], list[str]]:
    records: list[dict[str, Any]] = []
    unreadable: list[str] = []
    for start in range(0, len(scans), batch_size):
        images, kept = [], []
        for scan in scans[start : start + batch_size]:
            try:
                images.append(read_scan(scan.path))
                kept.append(scan)
            except Exception as exc:  # noqa: BLE001 - an unreadable file is reported, not fatal
                logger.warning("%s: %s", scan.path.name, exc)
                unreadable.append(scan.path.name)
        for scan, prediction in zip(kept, classifier.predict_batch(images, batch_size)):
            records.append({**_record(scan, prediction), "path": scan.path})
    return records, unreadable


def recogniser_report(records: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """The recogniser against the sequences file names carry (None where none do).

    ``t2_vs_t1_weighted``: of the T2, T1 and T1C scans, the share named right at that level
    (T2 as T2; T1 or T1C as T1, T1C or T1w), "unknown" and FLAIR counted wrong;
    ``t1_named``: of the T1 and T1C scans, the share named T1 or T1C (not "T1w");
    ``t1_vs_t1c_when_named``: of those, the share named right; ``confusion``: counts per
    sequence in the name and sequence named.
    """
    named = [r for r in records if r.get("sequence") and r.get("recognised")]
    if not named:
        return None
    weighted = [r for r in named if r["sequence"] in ("T1", "T1C", "T2")]
    t1w = [r for r in weighted if r["sequence"] != "T2"]
    contrast = [r for r in t1w if r["recognised"] in ("T1", "T1C")]

    def level(r: dict[str, Any]) -> bool:
        return r["recognised"] == "T2" if r["sequence"] == "T2" else r["recognised"] in ("T1", "T1C", "T1w")

    confusion: dict[str, Counter] = {}
    for r in named:
        confusion.setdefault(r["sequence"], Counter())[r["recognised"]] += 1
    return {
        "n": len(named),
        "t2_vs_t1_weighted": sum(map(level, weighted)) / len(weighted) if weighted else None,
        "n_t2_vs_t1_weighted": len(weighted),
        "t1_named": len(contrast) / len(t1w) if t1w else None,
        "t1_vs_t1c_when_named": sum(r["recognised"] == r["sequence"] for r in contrast) / len(contrast) if contrast else None,
        "confusion": {k: dict(v.most_common()) for k, v in sorted(confusion.items())},
    }


def build_report(
    records: Sequence[dict[str, Any]],
    reference: Sequence[dict[str, Any]] | None = None,
    leak_free: Iterable[Path] | None = None,
) -> dict[str, Any]:
    """The report's figures from per-scan records (``source``, ``label``, ``sequence``,
    ``predicted``, ``rejected``, ``outside_training``, ``flagged``; ``path`` for ``leak_free``)."""
    report: dict[str, Any] = {
        "n_images": len(records),
        "overall": summarise(records),
        "sources": {
            source: {
                **summarise(group),
                "classes": {k.split("/", 1)[1]: summarise(v) for k, v in _groups(group, "source", "label").items()},
                "sequences": {
                    k.split("/", 1)[1]: summarise(v) for k, v in _groups(group, "source", "sequence").items()
                },
                "class_sequences": {
                    k.split("/", 1)[1]: summarise(v) for k, v in _groups(group, "source", "label", "sequence").items()
                },
                "recognised_sequences": {
                    k.split("/", 1)[1]: summarise(v) for k, v in _groups(group, "source", "label", "recognised").items()
                },
                "recogniser": recogniser_report(group),
            }
            for source, group in _groups(records, "source").items()
        },
    }
    if reference:
        report["reference"] = {"testing": summarise(reference)}
        if leak_free is not None:
            keep = {Path(p).resolve() for p in leak_free}
            report["reference"]["testing_leak_free"] = summarise([r for r in reference if Path(r["path"]).resolve() in keep])
    return report


def evaluate_external(
    classifier: Classifier,
    scans: Sequence[ExternalScan],
    root: str | Path | None = None,
    batch_size: int = 32,
    reference: Sequence[ExternalScan] = (),
    leak_free: Iterable[Path] | None = None,
) -> dict[str, Any]:
    """The report of ``classifier`` on ``scans`` (see the module docstring).

    ``reference``: the official Testing scans, scored the same way for the side-by-side table
    (under ``reference``: ``testing`` and, given ``leak_free`` paths, ``testing_leak_free``).
    """
    records, unreadable = _predict(classifier, scans, batch_size)
    reference_records = _predict(classifier, reference, batch_size)[0] if reference else None
    report = build_report(records, reference_records, leak_free)
    report["unreadable"] = unreadable
    if root is not None:
        report["data_fingerprint"] = fingerprint([Sample(s.path, 0) for s in scans], root)
    return report
