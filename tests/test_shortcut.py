"""train.shortcut: the appearance numbers and the audit of appearance that predicts the class."""

from __future__ import annotations

import numpy as np
from PIL import Image

from synthetic import synthetic_scan

def test_appearance_numbers_are_finite_and_scale_free():
    from train.shortcut import FEATURE_NAMES, appearance

    image = synthetic_scan(3)
    values = appearance(image)
    assert values.shape == (len(FEATURE_NAMES),) and np.isfinite(values).all()
    darker = Image.eval(image, lambda v: v // 2)
    np.testing.assert_allclose(appearance(darker)[:8], values[:8], atol=0.05)  # profile after scaling


def test_shortcut_audit_finds_appearance_that_predicts_the_class(tmp_path):
    from train.shortcut import shortcut_audit

    paths, labels = [], []
    for i in range(80):
        label = 2 if i % 2 else 0  # "no tumour" scans look different (bright centre)
        path = tmp_path / f"{i}.png"
        synthetic_scan(i, bright_centre=label == 2).save(path)
        paths.append(path)
        labels.append(label)
    report = shortcut_audit(paths, labels, list(range(80)), clusters=2)
    assert report["appearance_only"]["accuracy"] > 0.9
    assert report["appearance_only"]["auc_no_tumour_vs_tumour"] > 0.9
    assert report["clusters"]["one_class_fraction"] > 0.9
    assert sum(r["n_images"] for r in report["clusters"]["rows"]) == 80


def test_shortcut_audit_is_near_chance_when_appearance_carries_no_label(tmp_path):
    from train.shortcut import shortcut_audit

    paths = []
    for i in range(80):
        path = tmp_path / f"{i}.png"
        synthetic_scan(i).save(path)
        paths.append(path)
    labels = [i % 2 * 2 for i in range(80)]
    report = shortcut_audit(paths, labels, list(range(80)), clusters=2)
    assert report["appearance_only"]["accuracy"] < 0.75

