"""core.cam: Grad-CAM's heatmap placed back into the head's box."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from core.cam import GradCamExplainer, paste_heatmap
from core.model import build_network


def test_paste_keeps_the_box_and_fades_to_zero_within_one_cell():
    rng = np.random.default_rng(0)
    box, size, cells = (30, 20, 90, 80), (130, 100), 6  # 60 x 60 box: cells of 10 px
    inside = rng.uniform(0.5, 1.0, (60, 60)).astype(np.float32)
    pasted = paste_heatmap(inside, box, size, cells)
    assert pasted.shape == (100, 130) and pasted.dtype == np.float32
    assert np.array_equal(pasted[20:80, 30:90], inside)
    far = np.ones_like(pasted, dtype=bool)
    far[10:90, 20:100] = False  # the box and one cell around it
    assert pasted[far].max() == 0.0
    # no step at the edge: a pixel beyond the box is the edge value, slightly weighted down
    assert pasted[50, 90] == pytest.approx(inside[30, 59] * 0.9, rel=1e-5)
    assert pasted[19, 40] == pytest.approx(inside[0, 10] * 0.9, rel=1e-5)
    assert np.all(np.diff(pasted[50, 89:101]) <= 0) and pasted[50, 100] == 0.0
    assert pasted.min() >= 0.0 and pasted.max() <= inside.max()


def test_paste_of_the_whole_image_is_the_heatmap_itself():
    inside = np.linspace(0, 1, 48, dtype=np.float32).reshape(6, 8)
    assert np.array_equal(paste_heatmap(inside, (0, 0, 8, 6), (8, 6), 6), inside)


@pytest.mark.parametrize(
    "inside, box, cells, message",
    [(np.zeros((5, 5), np.float32), (0, 0, 6, 6), 6, "shape"), (np.zeros((6, 6), np.float32), (0, 0, 6, 6), 0, "cells")],
)
def test_paste_names_the_bad_value(inside, box, cells, message):
    with pytest.raises(ValueError, match=message):
        paste_heatmap(inside, box, (10, 10), cells)


def test_cells_is_the_target_layers_map_size():
    explainer = GradCamExplainer(build_network("efficientnet_lite0", num_classes=4))
    assert explainer.cells(192) == 6 and explainer.cells(224) == 7
    assert not any(p.requires_grad for p in explainer.net.conv_stem.parameters())
    batch = torch.rand(1, 3, 192, 192)
    assert explainer(batch, 0, (50, 40)).shape == (40, 50)
