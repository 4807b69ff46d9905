"""The stored metrics of the shipped model, read for the model-performance page.

The page reads only these files (written by ``python -m train``, ``python -m train.evaluate``
and ``python -m train.audit``); nothing is recomputed. Layouts: :mod:`train.metrics`.
A missing or malformed file becomes a plain message in :attr:`Artifacts.problems`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.constants import (
    AUDIT_NAME,
    COMPARISON_NAME,
    EVALUATION_NAME,
    EXTERNAL_NAME,
    HISTORY_NAME,
    MODEL_CARD_NAME,
    SERIES_NAME,
    assets_dir,
)

__all__ = [
    "EMPTY_CELL",
    "ArtifactError",
    "Artifacts",
    "artifact_stamp",
    "calibration_views",
    "comparison_rows",
    "evaluation_title",
    "external_rows",
    "percent_cells",
    "sequence_rows",
    "recogniser_text",
    "training_sequence_rows",
    "series_rows",
    "load_artifacts",
    "per_class_rows",
    "perturbed_rows",
    "read_artifact",
    "review_rules",
]

logger = logging.getLogger(__name__)

#: Keys a report must have for the page to draw it (see :mod:`train.metrics`).
REPORT_KEYS = ("n_images", "accuracy", "macro_f1", "per_class", "confusion_matrix")


class ArtifactError(ValueError):
    """A stored metrics file is missing or malformed; the message names the file and the fault."""


@dataclass(frozen=True)
class Artifacts:
    """What was found in the assets folder: each file's content, or ``None`` with a problem."""

    folder: Path
    model_card: dict[str, Any] | None = None
    history: dict[str, Any] | None = None
    evaluation: dict[str, Any] | None = None
    audit: dict[str, Any] | None = None
    #: The evaluation on scans from other sources (``python -m train.evaluate --external``).
    external: dict[str, Any] | None = None
    #: The architecture comparison (``python -m train.compare``).
    comparison: dict[str, Any] | None = None
    #: Whole series from other sources (``python -m train.evaluate --series``).
    series: dict[str, Any] | None = None
    #: File name -> plain message, for each required file that is missing or malformed.
    problems: dict[str, str] = field(default_factory=dict)

    @property
    def evaluations(self) -> dict[str, dict[str, Any]]:
        """The stored evaluation reports by name (``testing`` first), valid ones only."""
        if self.evaluation is None:
            return {}
        return dict(self.evaluation["evaluations"])

    @property
    def testing(self) -> dict[str, Any] | None:
        return self.evaluations.get("testing")


def read_artifact(path: Path) -> dict[str, Any]:
    """Parse one JSON artifact and check its layout; raises :class:`ArtifactError`."""
    name = path.name
    if not path.is_file():
        raise ArtifactError(f"{name} was not found in {str(path.parent)!r}.")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ArtifactError(f"{name} is not valid JSON ({exc}).") from exc
    except OSError as exc:
        raise ArtifactError(f"{name} could not be read ({exc.strerror or exc}).") from exc
    if not isinstance(data, dict):
        raise ArtifactError(f"{name} must hold a JSON object, found a {type(data).__name__}.")
    _CHECKS.get(name, _check_nothing)(name, data)
    return data


def _check_nothing(name: str, data: dict[str, Any]) -> None:
    return None


def _check_card(name: str, data: dict[str, Any]) -> None:
    for key in ("arch", "image_size", "class_names"):
        if key not in data:
            raise ArtifactError(f"{name} lacks the key {key!r}.")


def _check_history(name: str, data: dict[str, Any]) -> None:
    epochs = data.get("epochs")
    if not isinstance(epochs, list) or not epochs:
        raise ArtifactError(f"{name} must hold a non-empty list under 'epochs'.")
    for i, record in enumerate(epochs):
        if not isinstance(record, Mapping) or not all(
            isinstance(record.get(split), Mapping) for split in ("train", "val")
        ):
            raise ArtifactError(f"{name}: epoch entry {i} lacks its 'train' and 'val' metrics.")


def _check_report(name: str, key: str, report: Any) -> None:
    if not isinstance(report, Mapping):
        raise ArtifactError(f"{name}: evaluation {key!r} must be an object.")
    missing = [k for k in REPORT_KEYS if k not in report]
    if missing:
        raise ArtifactError(f"{name}: evaluation {key!r} lacks {', '.join(map(repr, missing))}.")
    for k in ("n_images", "accuracy", "macro_f1"):
        value = report[k]
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ArtifactError(f"{name}: evaluation {key!r} has a non-numeric {k!r}: {value!r}.")
    matrix = report["confusion_matrix"]
    if not isinstance(matrix, list) or not all(isinstance(row, list) for row in matrix):
        raise ArtifactError(f"{name}: evaluation {key!r} has a malformed 'confusion_matrix'.")


def _check_comparison(name: str, data: dict[str, Any]) -> None:
    entries = data.get("architectures")
    if not isinstance(entries, list) or not entries:
        raise ArtifactError(f"{name} must hold a non-empty list under 'architectures'.")
    for i, entry in enumerate(entries):
        if not isinstance(entry, Mapping) or not isinstance(entry.get("arch"), str):
            raise ArtifactError(f"{name}: architecture entry {i} lacks its 'arch' name.")


def _check_evaluation(name: str, data: dict[str, Any]) -> None:
    evaluations = data.get("evaluations")
    if not isinstance(evaluations, Mapping) or "testing" not in evaluations:
        raise ArtifactError(f"{name} must hold an 'evaluations' object with a 'testing' report.")
    for key, report in evaluations.items():
        _check_report(name, key, report)


_CHECKS = {
    MODEL_CARD_NAME: _check_card,
    HISTORY_NAME: _check_history,
    EVALUATION_NAME: _check_evaluation,
    COMPARISON_NAME: _check_comparison,
}
#: Files the page shows when present; their absence is not a problem.
_OPTIONAL = (AUDIT_NAME, EXTERNAL_NAME, COMPARISON_NAME, SERIES_NAME)
_ALL = (MODEL_CARD_NAME, HISTORY_NAME, EVALUATION_NAME, *_OPTIONAL)


def artifact_stamp(folder: Path | None = None) -> tuple[tuple[str, int, int], ...]:
    """(name, size, mtime) of each artifact: a cache key that changes when a file does."""
    folder = Path(folder) if folder is not None else assets_dir()
    stamp = []
    for name in _ALL:
        path = folder / name
        try:
            info = path.stat()
            stamp.append((name, info.st_size, info.st_mtime_ns))
        except OSError:
            stamp.append((name, -1, -1))
    return tuple(stamp)


def load_artifacts(folder: Path | None = None) -> Artifacts:
    """Read every artifact in ``folder`` (default: :func:`core.constants.assets_dir`).

    Never raises for a missing or malformed file: its content is ``None`` and
    :attr:`Artifacts.problems` says why. ``audit.json``, ``external.json`` and ``comparison.json``
    are optional and are not a problem when absent.
    """
    folder = Path(folder) if folder is not None else assets_dir()
    found: dict[str, dict[str, Any] | None] = {}
    problems: dict[str, str] = {}
    for name in _ALL:
        path = folder / name
        if name in _OPTIONAL and not path.exists():
            found[name] = None
            continue
        try:
            found[name] = read_artifact(path)
        except ArtifactError as exc:
            logger.warning("%s", exc)
            found[name] = None
            problems[name] = str(exc)
    return Artifacts(
        folder=folder,
        model_card=found[MODEL_CARD_NAME],
        history=found[HISTORY_NAME],
        evaluation=found[EVALUATION_NAME],
        audit=found[AUDIT_NAME],
        external=found[EXTERNAL_NAME],
        comparison=found[COMPARISON_NAME],
        series=found[SERIES_NAME],
        problems=problems,
    )


def calibration_views(report: Mapping[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """The reliability reports of one evaluation, labelled: before and after temperature
    scaling where both are stored, else the one there is."""
    views = []
    before = report.get("calibration_before")
    after = report.get("calibration_after")
    current = report.get("calibration")
    if isinstance(before, Mapping):
        views.append(("Before temperature scaling", dict(before)))
        if isinstance(current, Mapping) and not isinstance(after, Mapping):
            after = current
    elif isinstance(after, Mapping) and isinstance(current, Mapping):
        views.append(("Before temperature scaling", dict(current)))
    if isinstance(after, Mapping):
        views.append(("After temperature scaling", dict(after)))
    if not views and isinstance(current, Mapping):
        views.append(("Calibration", dict(current)))
    return [(label, view) for label, view in views if isinstance(view.get("bins"), list)]


#: Display names of the evaluations ``train.evaluate`` stores; others are shown by their key.
EVALUATION_TITLES = {
    "testing": "Official Testing split",
    "testing_tta": "Testing, flip test-time augmentation",
    "testing_leak_free": "Leak-free Testing subset",
    "testing_leak_free_tta": "Leak-free Testing subset, flip TTA",
    "group_split_testing": "Group-split model on Testing",
}


def evaluation_title(key: str) -> str:
    return EVALUATION_TITLES.get(key, key.replace("_", " ").capitalize())


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def comparison_rows(evaluations: Mapping[str, Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One row per stored evaluation: its size and headline metrics (percentages), side by side."""
    rows = []
    for key, report in evaluations.items():
        cal = report.get("calibration")
        ece = _number(cal.get("ece")) if isinstance(cal, Mapping) else None
        rows.append(
            {
                "Evaluation": evaluation_title(key),
                "Scans": int(report["n_images"]),
                "Accuracy (%)": 100.0 * float(report["accuracy"]),
                "Macro F1 (%)": 100.0 * float(report["macro_f1"]),
                "Macro precision (%)": _pct(report.get("macro_precision")),
                "Macro recall (%)": _pct(report.get("macro_recall")),
                "ECE (%)": _pct(ece),
            }
        )
    return rows


def _pct(value: Any) -> float | None:
    number = _number(value)
    return None if number is None else 100.0 * number


def per_class_rows(report: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Precision, recall, F1 (percentages), support and AUC for each class of one report."""
    from core.constants import CLASS_LABELS

    rows = []
    per_class = report.get("per_class", {})
    for name, values in per_class.items():
        if not isinstance(values, Mapping):
            continue
        roc = report.get("roc", {}).get(name, {})
        rows.append(
            {
                "Class": CLASS_LABELS.get(name, name),
                "Precision (%)": _pct(values.get("precision")),
                "Recall (%)": _pct(values.get("recall")),
                "F1 (%)": _pct(values.get("f1")),
                "Support": values.get("support"),
                "ROC AUC": _number(roc.get("auc")) if isinstance(roc, Mapping) else None,
            }
        )
    return rows


def perturbed_rows(perturbed: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Accuracy under each stored perturbation, next to the clean figure."""
    clean = _number(perturbed.get("clean"))
    rows = []
    for name, value in perturbed.items():
        accuracy = _number(value)
        if accuracy is None:
            continue
        rows.append(
            {
                "Condition": {"clean": "Clean (no perturbation)", "mean_perturbed": "Mean over perturbations"}.get(
                    name, name.replace("_", " ").capitalize()
                ),
                "Accuracy (%)": 100.0 * accuracy,
                "Change (points)": None if clean is None else 100.0 * (accuracy - clean),
            }
        )
    return rows


#: Display names of the sources of ``external.json`` (others are shown by their key).
SOURCE_TITLES = {
    "testing": "Official Testing split (Kaggle)",
    "testing_leak_free": "Leak-free Testing subset (Kaggle)",
    "radiopaedia": "Radiopaedia",
    "tiantan": "Pituitary series, second hospital",
    "pmram": "PMRAM (Bangladesh)",
    "oasis": "OASIS (healthy, skull-stripped)",
    "genoa": "3-D contrast T1, scanner DICOM (Genoa)",
    "vsseg": "Contrast-T1 DICOM (VS-SEG, TCIA)",
    "niivue": "Healthy volumes, T1, T1C and T2 (niivue)",
}


def _external_row(title: str, classes: str, report: Mapping[str, Any], sequence: str | None = None) -> dict[str, Any]:
    row: dict[str, Any] = {"Scans": title, "Classes": classes}
    if sequence is not None:
        row["Sequence"] = sequence
    row.update({
        "N": int(report.get("n_images", 0)),
        "Accuracy (%)": _pct(report.get("accuracy")),
        "Accuracy without flag (%)": _pct(report.get("unflagged_accuracy")),
        "'No tumour', no flag (%)": _pct(report.get("other_notumor_unflagged")),
        "Any flag (%)": _pct(report.get("flagged")),
        "Outside training data (%)": _pct(report.get("outside_training")),
        "Not a brain MRI (%)": _pct(report.get("rejected")),
    })
    return row


def external_rows(external: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The Kaggle Testing figures and each other source's, per class, side by side (percentages).

    The "other" rows are lesions the model never learned: no class is right, and "'No tumour', no
    flag" is the share given the most dangerous answer.
    """
    from core.constants import CLASS_LABELS

    rows = [
        _external_row(SOURCE_TITLES.get(key, key), "all four", report)
        for key, report in (external.get("reference") or {}).items()
        if isinstance(report, Mapping)
    ]
    for source, report in (external.get("sources") or {}).items():
        classes = report.get("classes") or {}
        for name, class_report in classes.items():
            label = "other lesion types" if name == "other" else CLASS_LABELS.get(name, name)
            rows.append(_external_row(SOURCE_TITLES.get(source, source), label, class_report))
    return rows


def series_rows(series: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One row per (source, class) of the stored series report, then each series (percentages)."""
    from core.constants import CLASS_LABELS

    rows = []
    for key, report in (series.get("classes") or {}).items():
        source, _, name = key.partition("/")
        label = "other lesion types" if name == "other" else CLASS_LABELS.get(name, name)
        rows.append({
            "Series from": SOURCE_TITLES.get(source, source), "Class": label, "N": int(report.get("series", 0)),
            "Accuracy (%)": _pct(report.get("accuracy")), "Any flag (%)": _pct(report.get("flagged")),
            "Accuracy without flag (%)": _pct(report.get("unflagged_accuracy")),
            "'No tumour', no flag (%)": _pct(report.get("other_notumor_unflagged")),
            "Seconds per series": round(float(report["seconds_per_series"]), 2) if report.get("seconds_per_series") else None,
        })
    return rows


#: How a cell is shown where a figure does not apply (the accuracy of lesions of no class).
EMPTY_CELL = "–"


def percent_cells(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> list[dict[str, Any]]:
    """``rows`` for display: the percentages of ``columns`` as text to one decimal ("98.4 %"),
    and :data:`EMPTY_CELL` where a figure does not apply, rather than a bare "None"."""
    return [
        {k: (EMPTY_CELL if v is None else f"{float(v):.1f} %") if k in columns else v for k, v in row.items()}
        for row in rows
    ]


def sequence_rows(external: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Per (source, class, sequence) where file names carry the sequence."""
    from core.constants import CLASS_LABELS

    rows = []
    for source, report in (external.get("sources") or {}).items():
        for key, sub in (report.get("class_sequences") or {}).items():
            name, sequence = key.split("/", 1)
            label = "other lesion types" if name == "other" else CLASS_LABELS.get(name, name)
            rows.append(_external_row(SOURCE_TITLES.get(source, source), label, sub, sequence))
    return rows


#: How each column of the class x sequence table is named on the page.
SEQUENCE_TITLES = {
    "T1": "T1", "T1C": "T1 with contrast", "T1w": "T1w (contrast not told)", "T2": "T2", "FLAIR": "FLAIR",
    "unknown": "not recognised",
}


def _external_by_cell(external: Mapping[str, Any] | None) -> dict[tuple[str, str], tuple[int, int]]:
    """(class, sequence) -> (labelled scans, right answers) over every source of ``external.json``,
    by the sequence the served model gave each scan (``recognised_sequences``)."""
    cells: dict[tuple[str, str], tuple[int, int]] = {}
    for report in ((external or {}).get("sources") or {}).values():
        for key, sub in (report.get("recognised_sequences") or {}).items():
            name, _, sequence = key.partition("/")
            n = int(sub.get("n_labelled") or 0)
            if not n or sub.get("accuracy") is None:
                continue
            seen, right = cells.get((name, sequence), (0, 0))
            cells[(name, sequence)] = (seen + n, right + round(float(sub["accuracy"]) * n))
    return cells


def recogniser_text(card: Mapping[str, Any] | None, external: Mapping[str, Any] | None = None) -> str | None:
    """How well the sequence recogniser reads the sequence: on its validation scans (the card) and
    on each source of ``external.json`` whose file names carry the sequence; None without one."""
    recogniser = (card or {}).get("sequence")
    if not recogniser:
        return None
    parts = []
    validation = (recogniser.get("validation") or {}).get("accuracy")
    if validation is not None:
        parts.append(f"{100 * float(validation):.1f} % right on its validation scans")
    for source, report in ((external or {}).get("sources") or {}).items():
        found = report.get("recogniser") or {}
        if found.get("t2_vs_t1_weighted") is not None:
            parts.append(f"T2 against T1-weighted right for {100 * float(found['t2_vs_t1_weighted']):.1f} % of "
                         f"{found['n_t2_vs_t1_weighted']} {SOURCE_TITLES.get(source, source)} slices whose file names "
                         "give the sequence (\"unknown\" counted wrong)")
    return "The sequence recogniser: " + "; ".join(parts) + "." if parts else None


def training_sequence_rows(card: Mapping[str, Any] | None, external: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
    """The training data's class x sequence table (``card["sequence_table"]``), one row per class
    and sequence: training scans, their share of the class, whether the ``sequence_not_learned``
    rule names the cell, and the accuracy on scans from other sources in that cell (by the
    sequence the model gave them) where there are any."""
    from core.constants import CLASS_LABELS
    from core.rules import SequenceCoverage

    table = (card or {}).get("sequence_table")
    if not table:
        return []
    coverage = SequenceCoverage.from_card(card)
    elsewhere = _external_by_cell(external)
    rows = []
    for name, counts in table["counts"].items():
        total = sum(int(v) for v in counts.values()) or 1
        for sequence, count in counts.items():
            seen, right = elsewhere.get((name, sequence), (0, 0))
            barely = sequence != "unknown" and coverage is not None and name in coverage.uncovered(sequence)
            rows.append({
                "Class": CLASS_LABELS.get(name, name), "Sequence": SEQUENCE_TITLES.get(sequence, sequence),
                "Training scans": int(count), "Share of the class (%)": 100.0 * int(count) / total,
                "Barely covered": "yes" if barely else "",
                "Scans from other sources": seen or None,
                "Accuracy there (%)": 100.0 * right / seen if seen else None,
            })
    return rows


#: Display names of the architectures of ``comparison.json`` (others are shown by their key).
ARCH_TITLES = {
    "small_cnn": "Small CNN",
    "efficientnet_lite0": "EfficientNet-Lite0",
    "efficientnet_lite1": "EfficientNet-Lite1",
    "efficientnet_lite2": "EfficientNet-Lite2",
    "vgg16_bn": "VGG16 (batch norm)",
    "vgg16": "VGG16",
}


def review_rules(card: Mapping[str, Any]) -> list[str]:
    """The review flags' rules as the model card records them, one sentence each (empty when the
    card fitted none): the low-confidence threshold and the floor of "no tumour" answers."""
    rules = card.get("uncertainty") if isinstance(card.get("uncertainty"), Mapping) else {}
    lines = []
    low = _number(rules.get("low_confidence_below"))
    if low is not None:
        lines.append(f"**Low confidence**: a calibrated confidence under {100 * low:.0f} %, set to flag at most 5 % "
                     "of the validation scans.")
    cosine = _number(rules.get("notumor_cosine_below"))
    fit = rules.get("notumor_fit") if isinstance(rules.get("notumor_fit"), Mapping) else {}
    precision = _number(fit.get("precision_above_floor"))
    kept = f" (validation: {100 * precision:.1f} % of the unflagged ones right)" if precision is not None else ""
    if cosine is not None:
        lines.append(f"**Not confident enough to rule out a tumour**: a \"no tumour\" answer whose answer cosine is under "
                     f"{cosine:.3f}, i.e. one tumour class stands out among the alternatives{kept}. The floor is set on "
                     "validation so that unflagged \"no tumour\" answers are right at least 98 % of the time.")
    return lines


def arch_title(arch: str) -> str:
    return ARCH_TITLES.get(arch, arch)


def external_mean(entry: Mapping[str, Any]) -> float | None:
    """Mean accuracy over the external sources of one comparison entry (each source counts once)."""
    values = [s["accuracy"] for s in (entry.get("external") or {}).values() if isinstance(s, Mapping) and "accuracy" in s]
    return sum(values) / len(values) if values else None


def _schedule_text(entry: Mapping[str, Any]) -> str:
    schedule = entry.get("schedule") or {}
    start = "ImageNet" if entry.get("pretrained") else "from scratch"
    text = f"{schedule.get('epochs', '?')} epochs at {schedule.get('image_size', '?')} px, {start}"
    return text + (f" (reduced: {schedule['reduced']})" if schedule.get("reduced") else "")


def architecture_rows(comparison: Mapping[str, Any], shipped_arch: str | None = None) -> list[dict[str, Any]]:
    """One row per architecture: schedule (any reduction stated), size, cost and accuracy."""
    sources = sorted({s for e in comparison.get("architectures", []) for s in (e.get("external") or {})})
    rows = []
    for entry in comparison.get("architectures", []):
        external = entry.get("external") or {}
        row: dict[str, Any] = {
            "Architecture": arch_title(entry["arch"]) + (" (shipped)" if entry["arch"] == shipped_arch else ""),
            "Training": _schedule_text(entry),
            "Parameters (M)": round(entry["params"] / 1e6, 2) if "params" in entry else None,
            "GFLOPs per scan": round(entry["flops_per_scan"] / 1e9, 2) if "flops_per_scan" in entry else None,
            "Testing (%)": _pct((entry.get("testing") or {}).get("accuracy")),
            "Testing macro F1": round(entry["testing"]["macro_f1"], 4) if "testing" in entry else None,
            "Leak-free (%)": _pct((entry.get("leak_free") or {}).get("accuracy")),
            "Other sources, mean (%)": _pct(external_mean(entry)),
        }
        for source in sources:
            row[f"{SOURCE_TITLES.get(source, source)} (%)"] = _pct((external.get(source) or {}).get("accuracy"))
        latency = (entry.get("predict_ms") or {}).get("p50")
        row["predict p50 (ms)"] = round(latency, 1) if latency is not None else None
        row["Training time (min)"] = round(entry["training_s"] / 60, 1) if "training_s" in entry else None
        rows.append(row)
    return rows


def architecture_points(comparison: Mapping[str, Any]) -> list[dict[str, Any]]:
    """(architecture, evaluation set, accuracy %, predict ms) for the accuracy-latency chart:
    one point per architecture per evaluation set."""
    points = []
    for entry in comparison.get("architectures", []):
        latency = (entry.get("predict_ms") or {}).get("p50")
        if latency is None:
            continue
        sets = [("Official Testing", (entry.get("testing") or {}).get("accuracy")),
                ("Leak-free Testing", (entry.get("leak_free") or {}).get("accuracy")),
                ("Other sources (mean)", external_mean(entry))]
        for name, accuracy in sets:
            if accuracy is not None:
                points.append({"arch": arch_title(entry["arch"]), "set": name, "accuracy": 100 * accuracy, "latency_ms": latency})
    return points


def shipped_reason(comparison: Mapping[str, Any], shipped_arch: str | None) -> str | None:
    """Which architecture is shipped and how it stands in the comparison, from the figures."""
    entries = [e for e in comparison.get("architectures", []) if "testing" in e]
    shipped = next((e for e in entries if e["arch"] == shipped_arch), None)
    if shipped is None:
        return None
    best_test = max(entries, key=lambda e: e["testing"]["accuracy"])
    best_external = max(entries, key=lambda e: external_mean(e) or 0.0)
    fastest = min(entries, key=lambda e: (e.get("predict_ms") or {}).get("p50", float("inf")))

    def who(entry: Mapping[str, Any]) -> str:
        return "it" if entry is shipped else arch_title(entry["arch"])

    parts = [
        f"{arch_title(shipped_arch)} is shipped.",
        f"Best on the official Testing split: {who(best_test)} ({100 * best_test['testing']['accuracy']:.1f} %);",
        f"best on other sources: {who(best_external)} ({100 * (external_mean(best_external) or 0):.1f} %);",
        f"fastest predict: {who(fastest)} ({(fastest.get('predict_ms') or {}).get('p50', float('nan')):.1f} ms).",
    ]
    return " ".join(parts)
