"""core.preprocess: the head crop, and the same numbers from the transform (Grad-CAM, training)
and from the NumPy input of predictions."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from conftest import RecordingRuntime
from core import read_scan
from core.model import Classifier
from core.preprocess import HEAD_MARGIN, crop_to_head, eval_transform, head_box, input_array


def head_image(size=(400, 300), box=(120, 40, 300, 250), background=0, letters=True) -> Image.Image:
    """A grey 'head' (a bright ellipse with darker tissue inside) on a dark canvas, with a
    thin bright label in a corner as scanners burn in."""
    image = Image.new("L", size, background)
    draw = ImageDraw.Draw(image)
    draw.ellipse(box, fill=200)
    left, top, right, bottom = box
    inset = min(20, (right - left) // 4, (bottom - top) // 4)
    draw.ellipse((left + inset, top + inset, right - inset, bottom - inset), fill=90)
    if letters:
        draw.line((5, 5, 5, 25), fill=255, width=1)  # an "L" one pixel wide
        draw.line((5, 25, 15, 25), fill=255, width=1)
    return image


def test_head_box_frames_the_head_with_a_margin():
    box = (120, 40, 300, 250)
    left, top, right, bottom = head_box(head_image(box=box))
    width, height = box[2] - box[0], box[3] - box[1]
    slack_x, slack_y = 2 * HEAD_MARGIN * width + 4, 2 * HEAD_MARGIN * height + 4  # margin + the probe's rounding
    assert box[0] - slack_x <= left <= box[0] and box[2] <= right <= box[2] + slack_x
    assert box[1] - slack_y <= top <= box[1] and box[3] <= bottom <= box[3] + slack_y


def test_head_box_margin_widens_the_box_by_its_share_of_the_head():
    image = head_image(box=(120, 40, 300, 250))
    tight, served, wide = (head_box(image, m) for m in (0.0, HEAD_MARGIN, 0.15))
    assert served == head_box(image)
    for inner, outer in ((tight, served), (served, wide)):
        assert outer[0] < inner[0] and outer[1] < inner[1] and outer[2] > inner[2] and outer[3] > inner[3]
    head_width = tight[2] - tight[0]
    assert abs((wide[2] - wide[0]) - 1.3 * head_width) <= 2
    with pytest.raises(ValueError, match="-0.1"):
        head_box(image, -0.1)


@pytest.mark.parametrize(
    "image",
    [
        Image.new("L", (200, 150), 0),  # blank
        Image.new("L", (200, 150), 180),  # uniformly bright
        head_image(size=(400, 300), box=(190, 140, 210, 160), letters=False),  # a speck, not a head
        Image.fromarray(np.random.default_rng(0).integers(0, 256, (120, 160), dtype=np.uint8)),  # noise
    ],
    ids=["blank", "bright", "speck", "noise"],
)
def test_head_box_keeps_the_whole_image_when_no_head_stands_out(image):
    assert head_box(image) == (0, 0, *image.size)
    assert crop_to_head(image) is image


def test_black_margins_do_not_change_the_network_input():
    """The field of view is taken out: the same head with wider black margins gives (nearly)
    the same input when cropped, and a very different one when not."""
    tight = head_image(size=(220, 230), box=(20, 10, 200, 220))
    wide = Image.new("L", (500, 400), 0)
    wide.paste(tight, (140, 60))
    cropped = input_array([tight, wide], 64, crop_head=True)
    plain = input_array([tight, wide], 64)
    assert np.abs(cropped[0] - cropped[1]).mean() < 0.25 * np.abs(plain[0] - plain[1]).mean()


def test_input_array_equals_the_transform_with_the_head_crop(scan_paths):
    scan = read_scan(scan_paths["meningioma"])
    images = [scan, scan.convert("RGB"), head_image(), Image.new("L", (90, 70), 0)]
    got = input_array(images, 64, crop_head=True)
    expected = torch.stack([eval_transform(64, crop_head=True)(image) for image in images]).numpy()
    assert np.abs(got - expected).max() < 1e-6


def test_input_array_equals_the_transform(scan_paths):
    """The NumPy preprocessing that predictions use gives the transform's numbers, for every
    kind of image read_scan or a caller may hand over; a one-value mean and std give the one
    grey channel of a grey graph."""
    scan = read_scan(scan_paths["glioma"])
    rng = np.random.default_rng(0)
    images = [
        scan,
        scan.convert("RGB"),
        scan.resize((300, 211)),
        Image.fromarray(rng.integers(0, 256, (97, 130, 3), dtype=np.uint8)),
        Image.fromarray(rng.integers(0, 256, (50, 40, 4), dtype=np.uint8), "RGBA"),
        Image.fromarray(rng.integers(0, 65535, (64, 64), dtype=np.uint16).astype(np.int32), "I"),
    ]
    mean, std = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
    got = input_array(images, 64, mean, std)
    expected = torch.stack([eval_transform(64, mean, std)(image) for image in images]).numpy()
    assert got.dtype == np.float32 and got.shape == expected.shape == (len(images), 3, 64, 64)
    assert np.abs(got - expected).max() < 1e-6
    grey = input_array(images, 64, mean[:1], std[:1])
    assert grey.shape == (len(images), 1, 64, 64) and np.array_equal(grey[:, 0], got[:, 0])


def test_train_and_core_share_the_evaluation_transform(scan_paths):
    """train's evaluation preset is core's transform; grey and RGB copies give the same input."""
    from train.presets import ClassificationPresetEval

    image = read_scan(scan_paths["notumor"])
    transform = eval_transform(64)
    assert torch.equal(ClassificationPresetEval(64)(image), transform(image))
    assert torch.equal(transform(image.convert("RGB")), transform(image.convert("L")))


def test_weights_trained_with_the_head_crop_are_served_with_it(tiny_model):
    """The model card's crop_head reaches the prediction's input and Grad-CAM: the heatmap covers
    the head's box, fades out within one Grad-CAM cell beyond it, and keeps the scan's size."""
    recording = RecordingRuntime(tiny_model.runtime)
    model = Classifier(tiny_model.network, dict(tiny_model.card, crop_head=True), runtime=recording)
    assert model.crop_head and not tiny_model.crop_head
    image = head_image(size=(400, 300), box=(150, 60, 330, 260))
    expected = eval_transform(model.image_size, model.card["mean"], model.card["std"], crop_head=True)(image)
    assert model.predict(image).label in model.class_names
    (batch,) = recording.batches
    assert np.abs(batch[0] - expected.numpy()).max() < 1e-6
    plain = eval_transform(model.image_size, model.card["mean"], model.card["std"])(image)
    assert not torch.allclose(plain, expected)
    left, top, right, bottom = head_box(image)
    heatmap = model.explain(image)
    assert heatmap.shape == (image.height, image.width)
    cells = model.cam.cells(model.image_size)
    cell_x, cell_y = (right - left) / cells, (bottom - top) / cells
    far = np.ones_like(heatmap, dtype=bool)
    far[max(0, int(top - cell_y)) : int(np.ceil(bottom + cell_y)), max(0, int(left - cell_x)) : int(np.ceil(right + cell_x))] = False
    assert far.any() and heatmap[far].max() == 0.0 and heatmap[top:bottom, left:right].max() > 0.0
    # explain finds the box once and feeds the network exactly what predict feeds it
    in_box = model.cam(expected.unsqueeze(0), None, (right - left, bottom - top))
    assert np.allclose(heatmap[top:bottom, left:right], in_box, atol=1e-6)
