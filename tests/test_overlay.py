"""Display helpers: heatmap colouring, overlay blending, window adjustment, PNG encoding."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from app.overlay import adjust_display, colorize_heatmap, overlay_heatmap, to_png_bytes


@pytest.fixture
def scan() -> Image.Image:
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, size=(48, 64), dtype=np.uint8), mode="L")


@pytest.fixture
def heat() -> np.ndarray:
    ramp = np.linspace(0.0, 1.0, 64, dtype=np.float32)
    return np.tile(ramp, (48, 1))


def test_colorize_is_rgb_same_size_dark_to_bright(heat):
    coloured = colorize_heatmap(heat)
    assert coloured.mode == "RGB" and coloured.size == (64, 48)
    array = np.asarray(coloured, dtype=np.float64)
    luminance = array @ np.array([0.299, 0.587, 0.114])
    # perceptual colormap: luminance rises monotonically from cold to hot
    row = luminance[0]
    assert row[0] < 20 and row[-1] > 200
    assert np.all(np.diff(row) >= -1.0)


def test_colorize_rejects_non_2d_and_clips_nan():
    with pytest.raises(ValueError, match="2D"):
        colorize_heatmap(np.zeros((4, 4, 3)))
    out = np.asarray(colorize_heatmap(np.array([[np.nan, 2.0], [-1.0, 0.5]])))
    assert out.shape == (2, 2, 3)
    assert np.array_equal(out[0, 0], out[1, 0])  # NaN and negative both read as 0


def test_overlay_zero_opacity_is_plain_scan(scan, heat):
    out = overlay_heatmap(scan, heat, opacity=0.0)
    assert out.mode == "RGB" and out.size == scan.size
    grey = np.asarray(scan.convert("RGB"))
    assert np.array_equal(np.asarray(out), grey)


def test_overlay_colours_only_where_heat(scan, heat):
    out = np.asarray(overlay_heatmap(scan, heat, opacity=1.0)).astype(int)
    grey = np.asarray(scan.convert("RGB")).astype(int)
    assert np.array_equal(out[:, 0], grey[:, 0])  # heat 0: the scan shows through
    assert np.abs(out[:, -1] - grey[:, -1]).mean() > 20  # heat 1: coloured


def test_overlay_does_not_modify_inputs(scan, heat):
    before_img, before_heat = scan.tobytes(), heat.copy()
    overlay_heatmap(scan, heat, 0.7)
    assert scan.tobytes() == before_img and np.array_equal(heat, before_heat)


def test_overlay_rejects_bad_values(scan, heat):
    with pytest.raises(ValueError, match="opacity"):
        overlay_heatmap(scan, heat, 1.5)
    with pytest.raises(ValueError, match=r"\(10, 10\)"):
        overlay_heatmap(scan, np.zeros((10, 10)), 0.5)


def test_overlay_accepts_rgb(heat):
    rgb = Image.new("RGB", (64, 48), (10, 200, 30))
    assert overlay_heatmap(rgb, heat, 0.5).size == (64, 48)


def test_adjust_display_identity_and_no_mutation(scan):
    same = adjust_display(scan)
    assert same is not scan and same.tobytes() == scan.tobytes()
    brighter = adjust_display(scan, brightness=1.5)
    assert np.asarray(brighter).mean() > np.asarray(scan).mean()
    flatter = adjust_display(scan, contrast=0.5)
    assert np.asarray(flatter).std() < np.asarray(scan).std()
    assert scan.tobytes() == same.tobytes()  # original untouched


@pytest.mark.parametrize("kwargs", [{"brightness": 0.0}, {"contrast": -1.0}, {"brightness": 9.0}])
def test_adjust_display_rejects_out_of_range(scan, kwargs):
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        adjust_display(scan, **kwargs)


def test_png_round_trip_without_metadata(scan):
    scan.info["dpi"] = (300, 300)
    scan.info["comment"] = b"PATIENT^NAME"
    data = to_png_bytes(scan)
    assert data.startswith(b"\x89PNG")
    assert b"PATIENT" not in data
    back = Image.open(io.BytesIO(data))
    assert back.size == scan.size and back.tobytes() == scan.tobytes()
