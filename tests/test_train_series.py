"""train.series: validation series, the fit of the series rule, and the report on real series."""

from __future__ import annotations

import csv
import json

import nibabel as nib
import numpy as np
import pytest

from core.constants import CLASS_NAMES
from core.model import Prediction
from core.series_rule import SeriesRule
from synthetic import make_extra_source, synthetic_scan
from train.data import Sample, find_extra_samples
from train.series import ValidationSeries, evaluate_series, fit_rule, score_rule, validation_series


def _answer(label: str, p: float = 0.9) -> Prediction:
    rest = (1 - p) / 3
    return Prediction(label, p, {c: (p if c == label else rest) for c in CLASS_NAMES})


def _vseries(label: str, labels: list[str], p: float = 0.9) -> ValidationSeries:
    return ValidationSeries(label, label, tuple(_answer(x, p) for x in labels), (True,) * len(labels))


def _validation() -> list[ValidationSeries]:
    tumours = [_vseries("glioma", ["glioma"] * 3 + ["notumor"] * 10) for _ in range(5)]
    negatives = [_vseries("notumor", ["glioma"] + ["notumor"] * 12) for _ in range(5)]
    return tumours + negatives


def test_score_counts_each_class_and_the_negatives_called_tumour():
    score = score_rule(SeriesRule(min_slices=2), _validation())
    assert score["accuracy"] == {"glioma": 1.0, "notumor": 1.0} and score["notumor_called_tumour"] == 0.0
    strict = score_rule(SeriesRule(min_slices=4), _validation())
    assert strict["accuracy"]["glioma"] == 0.0 and strict["balanced_accuracy"] == 0.5


def test_fit_picks_the_simplest_best_rule_and_never_one_slice():
    rule, score = fit_rule(_validation())
    assert score["balanced_accuracy"] == 1.0
    assert (rule.min_slices, rule.min_share, rule.min_probability) == (2, 0.0, 0.5)


def test_validation_series_from_a_patient_source_and_kaggle_scans(tmp_path, tiny_model):
    extra = find_extra_samples(make_extra_source(tmp_path / "lgg"))
    patient = [s for s in extra if s.patient == "P0"]
    kaggle = []
    for label, name in enumerate(CLASS_NAMES):
        for i in range(25 if name == "notumor" else 8):
            path = tmp_path / "kaggle" / name / f"{i}.jpg"
            path.parent.mkdir(parents=True, exist_ok=True)
            synthetic_scan(100 * label + i).save(path)
            kaggle.append(Sample(path, label))
    series = validation_series(tiny_model, patient + kaggle, seed=0, batch_size=16)
    patients = [s for s in series if s.name.startswith("lgg/")]
    assert {s.name for s in patients} == {f"lgg/P0/{q}/{label}" for q in ("flair", "t1pre") for label in ("glioma", "notumor")}
    assert all(len(s.predictions) == len(s.assessed) for s in series)
    kaggle_series = [s for s in series if s.name.startswith("kaggle/")]
    assert {s.label for s in kaggle_series} == set(CLASS_NAMES) and all(len(s.predictions) == 20 for s in kaggle_series)


def test_evaluate_series_reads_a_manifest_folder(tmp_path, tiny_model):
    folder = tmp_path / "series"
    rows = []
    for i, label in enumerate(("notumor", "glioma")):
        volume = np.stack([np.asarray(synthetic_scan(10 * i + k, size=64)) for k in range(8)], axis=-1).astype(np.uint8)
        path = folder / "src" / label / f"case{i}.nii.gz"
        path.parent.mkdir(parents=True, exist_ok=True)
        nib.save(nib.Nifti1Image(volume, np.diag([1.0, 1.0, 4.0, 1.0])), path)
        rows.append({"path": str(path.relative_to(folder)), "source": "src", "label": label, "sequence": "T1C", "case": f"c{i}"})
    rows.append({"path": "src/glioma/missing.nii.gz", "source": "src", "label": "glioma", "sequence": "T1C", "case": "gone"})
    with (folder / "manifest.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    report = evaluate_series(tiny_model, folder)
    assert report["overall"]["series"] == 3 and report["overall"]["unreadable"] == 1
    assert set(report["classes"]) == {"src/notumor", "src/glioma"}
    read = [r for r in report["records"] if r["error"] is None]
    assert all(r["n_slices"] == 8 and r["plane"] == "axial" and r["seconds"] > 0 for r in read)
    json.dumps(report)  # JSON-ready


def test_evaluate_series_needs_a_manifest(tmp_path, tiny_model):
    with pytest.raises(FileNotFoundError, match="manifest.csv"):
        evaluate_series(tiny_model, tmp_path)
