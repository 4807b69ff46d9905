"""benchmarks.experiments.crop_variants: the framings of the head it serves the network."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageOps

from benchmarks.experiments.crop_variants import CANDIDATES, VIEWS, square_box, view_probabilities
from core.preprocess import crop_to_head


def test_crop_variants_square_box_keeps_the_centre_and_takes_the_longer_side():
    assert square_box((10, 20, 110, 60)) == (10, -10, 110, 90)
    assert square_box((0, 0, 40, 40)) == (0, 0, 40, 40)


def test_crop_variants_views_frame_the_head_as_named():
    image = Image.new("L", (300, 200), 0)
    image.paste(Image.linear_gradient("L").resize((120, 160)), (40, 20))  # a tall, asymmetric "head"
    seen = {name: view(image) for name, view in VIEWS.items()}
    assert np.array_equal(np.asarray(seen["served"]), np.asarray(crop_to_head(image)))
    assert np.array_equal(np.asarray(seen["mirror"]), np.asarray(ImageOps.mirror(seen["served"])))
    assert seen["margin 0 %"].size[0] < seen["served"].size[0] < seen["margin 10 %"].size[0] < seen["margin 15 %"].size[0]
    assert seen["square box"].size[0] == seen["square box"].size[1] == seen["served"].size[1]
    assert all(set(c) <= set(VIEWS) for c in CANDIDATES) and tuple(VIEWS) in CANDIDATES


def test_crop_variants_probabilities_sum_to_one_per_view(tiny_model, data_root):
    paths = sorted(p for p in data_root.rglob("*.jpg"))[:5]
    probs = view_probabilities(tiny_model, paths, ["served", "mirror"], batch_size=2)
    assert set(probs) == {"served", "mirror"}
    for p in probs.values():
        assert p.shape == (len(paths), len(tiny_model.class_names))
        assert np.allclose(p.sum(1), 1.0)
