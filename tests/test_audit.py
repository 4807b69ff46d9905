"""The dataset audit: constructed same-scan and different-scan cases, and the CLI on a tiny folder."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from core.constants import CLASS_NAMES
from train.audit import THRESHOLD, duplicate_groups, thumbnails


def _grey(path: Path) -> Image.Image:
    return Image.open(path).convert("L")


def _save(image: Image.Image, path: Path, quality: int = 90) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, quality=quality)
    return path


def _variants(source: Path, folder: Path) -> dict[str, Path]:
    """The same scan, changed the ways this dataset's copies differ."""
    image = _grey(source)
    arr = np.asarray(image, dtype=np.float32) / 255.0
    w, h = image.size
    cx, cy = round(w * 0.01), round(h * 0.01)  # 2 px of 224: NC drops to ~0.94 at 2 %
    out = {"copy": folder / "copy.jpg"}
    shutil.copyfile(source, out["copy"])
    out["jpeg_q30"] = _save(image, folder / "q30.jpg", quality=30)
    out["jpeg_q98"] = _save(image, folder / "q98.jpg", quality=98)
    out["mirror"] = _save(ImageOps.mirror(image), folder / "mirror.jpg")
    out["contrast"] = _save(Image.fromarray((arr * 0.6 * 255 + 40).astype(np.uint8)), folder / "contrast.jpg")
    out["gamma"] = _save(Image.fromarray((arr**0.7 * 255).astype(np.uint8)), folder / "gamma.jpg")
    out["resize_small"] = _save(image.resize((w * 2 // 3, h * 2 // 3), Image.Resampling.BICUBIC), folder / "small.jpg")
    out["resize_large"] = _save(image.resize((w * 3 // 2, h * 3 // 2), Image.Resampling.BICUBIC), folder / "large.png")
    out["crop"] = _save(image.crop((cx, cy, w - cx, h - cy)).resize((w, h)), folder / "crop.jpg")
    return out


@pytest.fixture(scope="module")
def variants(scan_paths, tmp_path_factory) -> dict[str, Path]:
    return _variants(scan_paths["glioma"], tmp_path_factory.mktemp("variants"))


@pytest.mark.parametrize(
    "kind", ["copy", "jpeg_q30", "jpeg_q98", "mirror", "contrast", "gamma", "resize_small", "resize_large", "crop"]
)
def test_same_scan_is_grouped(scan_paths, variants, kind):
    groups = duplicate_groups([scan_paths["glioma"], variants[kind], scan_paths["meningioma"]])
    assert groups[0] == groups[1], kind
    assert groups[2] != groups[0]


def test_different_scans_are_not_grouped(scan_paths):
    paths = list(scan_paths.values())
    groups = duplicate_groups(paths)
    assert len(set(groups)) == len(paths)


def test_groups_are_transitive(scan_paths, variants):
    # original ~ mirror, original ~ contrast: all three in one group, the other scans apart.
    paths = [variants["mirror"], scan_paths["pituitary"], variants["contrast"], scan_paths["glioma"]]
    groups = duplicate_groups(paths)
    assert groups[0] == groups[2] == groups[3]
    assert groups[1] != groups[0]
    assert groups == [0, 1, 0, 0]
