"""train.pointing: the pointing game of the heatmaps against tumour masks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from synthetic import make_extra_source, synthetic_scan
from train.data import Sample, find_extra_samples, patient_split

@pytest.fixture
def extra_source(tmp_path) -> Path:
    return make_extra_source(tmp_path / "lgg")


def test_pointing_game_hits_a_mask_around_the_heatmap_maximum(tmp_path, tiny_model, monkeypatch):
    from train.pointing import mask_path, pointing_game

    (tmp_path / "glioma").mkdir()
    (tmp_path / "masks").mkdir()
    image = synthetic_scan(0, size=64)
    samples = []
    heat = np.zeros((64, 64), dtype=np.float32)
    heat[10, 50] = 1.0
    monkeypatch.setattr(tiny_model, "explain", lambda image, target=None: heat)
    for i, (box, sequence) in enumerate((((45, 5, 55, 15), "flair"), ((5, 40, 20, 60), "flair"), ((45, 5, 55, 15), "t1pre"))):
        path = tmp_path / "glioma" / f"P0_{i}_{sequence}.jpg"
        image.save(path)
        sample = Sample(path, 0, "lgg", "P0", sequence)
        mask = Image.new("L", (64, 64))
        ImageDraw.Draw(mask).rectangle(box, fill=255)
        mask.save(mask_path(sample))
        samples.append(sample)
    result = pointing_game(tiny_model, samples, tolerance=0)
    assert result["overall"]["n_images"] == 3
    assert result["overall"]["hit_rate"] == pytest.approx(2 / 3)
    assert result["sequences"]["flair"]["hit_rate"] == pytest.approx(0.5)
    assert result["sequences"]["t1pre"]["hit_rate"] == pytest.approx(1.0)
    assert 0 < result["overall"]["random_hit_rate"] < 0.2


def test_pointing_game_scores_the_patients_the_run_held_out(extra_source):
    """The held-out patients are rebuilt with the run's seed and validation share."""
    from train.pointing import held_out_gliomas, mask_path

    samples = find_extra_samples(extra_source)
    (extra_source / "masks").mkdir()
    for sample in samples:
        if sample.class_name == "glioma":
            Image.new("L", (8, 8)).save(mask_path(sample))

    def held_out(**config) -> set[str]:
        card = {"training": {"config": {"val_fraction": 0.2, **config}}}
        return {s.patient for s in held_out_gliomas(extra_source, card)[0]}

    expected = {s.patient for s in patient_split(samples, 0.2, 0)[1]}
    assert held_out(seed=0) == expected

