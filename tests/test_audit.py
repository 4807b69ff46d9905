"""The dataset audit: constructed same-scan and different-scan cases, and the CLI on a tiny folder."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from core.constants import CLASS_NAMES
from train.audit import THUMBNAIL_SIZE, duplicate_groups, get_args_parser, leak_free_testing, main, thumbnails


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


def test_thumbnails_are_normalised(scan_paths):
    features = thumbnails(list(scan_paths.values()))
    assert features.shape == (4, THUMBNAIL_SIZE**2)
    assert features.dtype == np.float32
    np.testing.assert_allclose(features.mean(axis=1), 0.0, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(features, axis=1), 1.0, atol=1e-4)


def test_constant_image_matches_nothing(tmp_path, scan_paths):
    flat = [_save(Image.new("L", (64, 64), 7), tmp_path / f"flat{k}.png") for k in range(2)]
    # Two different files of one constant grey level are not similar scans; identical bytes would be.
    _save(Image.new("L", (64, 64), 200), flat[1])
    assert not np.any(thumbnails(flat))
    groups = duplicate_groups([*flat, scan_paths["glioma"]])
    assert len(set(groups)) == 3


def test_lower_threshold_joins_more(scan_paths, variants):
    paths = [scan_paths["glioma"], variants["gamma"]]
    assert duplicate_groups(paths, threshold=0.5)[1] == 0
    assert duplicate_groups(paths, threshold=1.0)[1] == 1
    with pytest.raises(ValueError, match="1.5"):
        duplicate_groups(paths, threshold=1.5)


@pytest.fixture
def kaggle_folder(tmp_path, scan_paths) -> Path:
    """Training/Testing with known leaks: A copied, B mirrored, C relabelled, D twice in Testing only."""
    a, b, c, d = (_grey(scan_paths[name]) for name in CLASS_NAMES)
    root = tmp_path / "data"
    shutil.copyfile(scan_paths["glioma"], _save(a, root / "Training/glioma/a.jpg"))
    _save(b, root / "Training/glioma/b.jpg", quality=95)
    _save(c, root / "Training/meningioma/c.jpg")
    (root / "Testing/glioma").mkdir(parents=True)
    shutil.copyfile(root / "Training/glioma/a.jpg", root / "Testing/glioma/a_copy.jpg")
    _save(ImageOps.mirror(b), root / "Testing/glioma/b_mirror.jpg", quality=60)
    shifted = (np.asarray(c, dtype=np.float32) * 0.7 + 50).astype(np.uint8)
    _save(Image.fromarray(shifted), root / "Testing/pituitary/c_relabelled.jpg")
    _save(d, root / "Testing/meningioma/d.jpg")
    _save(d.resize((160, 160)), root / "Testing/meningioma/d_small.jpg", quality=50)
    return root


def test_cli_counts(kaggle_folder, tmp_path, capsys):
    output = tmp_path / "out" / "audit.json"
    args = get_args_parser().parse_args(["--data-dir", str(kaggle_folder), "--output", str(output)])
    main(args)
    assert "Testing scans with a near duplicate in Training: 3 of 5" in capsys.readouterr().out
    report = json.loads(output.read_text())
    counts = report["counts"]
    assert counts["training"] == 3 and counts["testing"] == 5
    assert counts["exact_pairs_training_testing"] == 1
    assert counts["exact_pairs_within_training"] == counts["exact_pairs_within_testing"] == 0
    assert counts["testing_with_exact_duplicate_in_training"] == 1
    assert counts["testing_with_near_duplicate_in_training"] == 3
    assert counts["near_pairs_training_testing"] == 3
    assert counts["near_pairs_within_testing"] == 1
    assert counts["near_pairs_within_training"] == 0
    assert counts["groups"] == 4
    assert counts["cross_split_groups"] == 3
    assert counts["cross_class_groups"] == 1
    assert report["testing_matches"]["Testing/glioma/b_mirror.jpg"]["training"] == "Training/glioma/b.jpg"
    assert report["testing_matches"]["Testing/glioma/b_mirror.jpg"]["mirrored"] is True
    assert report["exact_pairs"] == [["Training/glioma/a.jpg", "Testing/glioma/a_copy.jpg"]]
    expected = {"Testing/meningioma/d.jpg", "Testing/meningioma/d_small.jpg"}
    assert leak_free_testing(report) == expected
    assert leak_free_testing(output) == expected
    assert report["leak_free_testing"]["per_class"] == {"glioma": 0, "meningioma": 2, "notumor": 0, "pituitary": 0}
    relabelled = [g for g in report["groups"] if len(set(g["classes"])) > 1]
    assert relabelled == [
        {"files": ["Training/meningioma/c.jpg", "Testing/pituitary/c_relabelled.jpg"], "classes": ["meningioma", "pituitary"]}
    ]


def test_cli_threshold_one_keeps_only_identical(kaggle_folder):
    args = get_args_parser().parse_args(["--data-dir", str(kaggle_folder), "--output", "-", "--threshold", "1.0"])
    report = main(args)
    assert report["counts"]["testing_with_near_duplicate_in_training"] == 1
    assert report["leak_free_testing"]["count"] == 4


def test_bad_inputs_name_the_value(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        main(get_args_parser().parse_args(["--data-dir", str(tmp_path / "nowhere"), "--output", "-"]))
    with pytest.raises(SystemExit, match="2.0"):
        main(get_args_parser().parse_args(["--data-dir", str(tmp_path), "--threshold", "2.0"]))
    with pytest.raises(FileNotFoundError, match="missing.json"):
        leak_free_testing(tmp_path / "missing.json")
    with pytest.raises(ValueError, match="counts"):
        leak_free_testing({"counts": {}})
