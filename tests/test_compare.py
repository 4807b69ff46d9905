"""train.compare: the architecture comparison, end to end on a tiny generated dataset."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from core.constants import CLASS_NAMES, COMPARISON_NAME
from core.model import build_network
from core.nets import SmallCNN
from train.compare import flops_per_scan, get_args_parser, main, parse_reductions

SIZE = 64


def _blobs(rng: np.random.Generator, label: int) -> Image.Image:
    """Random ellipses on a dark background; the class sets where a bright spot sits, so a
    network can learn something, and every image differs (no near-duplicate groups)."""
    yy, xx = np.mgrid[:SIZE, :SIZE]
    grey = rng.normal(30, 6, (SIZE, SIZE))
    for _ in range(rng.integers(3, 7)):
        cy, cx, ry, rx = rng.uniform(8, SIZE - 8, 2).tolist() + rng.uniform(3, 20, 2).tolist()
        grey += rng.uniform(20, 90) * ((((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2) < 1)
    spot_y, spot_x = [(16, 16), (16, 48), (48, 16), (48, 48)][label]
    grey[(yy - spot_y) ** 2 + (xx - spot_x) ** 2 < 36] = 250
    return Image.fromarray(np.clip(grey, 0, 255).astype(np.uint8), mode="L")


@pytest.fixture(scope="module")
def generated(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("compare")
    rng = np.random.default_rng(0)
    for split, n in (("Training", 10), ("Testing", 3)):
        for label, name in enumerate(CLASS_NAMES):
            folder = root / "data" / split / name
            folder.mkdir(parents=True)
            for i in range(n):
                _blobs(rng, label).save(folder / f"{name}_{i}.jpg")
    for source in ("hospital_a", "hospital_b"):
        for name in ("glioma", "notumor", "other"):
            folder = root / "external" / source / name
            folder.mkdir(parents=True)
            for i in range(2):
                _blobs(rng, 0 if name == "other" else CLASS_NAMES.index(name)).save(folder / f"{name}_T2_{i}.png")
    return root / "data", root / "external"


@pytest.mark.slow
def test_comparison_end_to_end(generated, tmp_path):
    data, external = generated
    out = tmp_path / "compare"
    args = get_args_parser().parse_args([
        "--data-dir", str(data), "--external", str(external), "--output", str(out),
        "--archs", "small_cnn", "efficientnet_lite0", "--epochs", "2", "--image-size", str(SIZE),
        "--reduce", "small_cnn:epochs=1", "--batch-size", "8", "--workers", "0", "--no-progress",
    ])
    result = main(args)
    stored = json.loads((out / COMPARISON_NAME).read_text())
    assert stored == json.loads(json.dumps(result))
    assert stored["class_names"] == list(CLASS_NAMES)
    assert stored["testing_images"] == 4 * 3
    by_arch = {e["arch"]: e for e in stored["architectures"]}
    assert list(by_arch) == ["small_cnn", "efficientnet_lite0"]

    small, lite = by_arch["small_cnn"], by_arch["efficientnet_lite0"]
    # from scratch, and its reduction stated; the pre-trained one keeps the common schedule
    assert small["pretrained"] is None and lite["pretrained"] == "ImageNet"
    assert small["schedule"]["epochs"] == 1 and small["schedule"]["reduced"] == "epochs 1 instead of 2"
    assert small["schedule"]["freeze_epochs"] == 0 and lite["schedule"]["freeze_epochs"] == 1
    assert lite["schedule"]["reduced"] is None
    assert len(small["history"]) == 1 and len(lite["history"]) == 2
    for entry in (small, lite):
        net = build_network(entry["arch"])
        assert entry["params"] == sum(p.numel() for p in net.parameters())
        assert entry["flops_per_scan"] > 2 * entry["params"] * 0.01
        assert entry["testing"]["n_images"] == 12 and 0 <= entry["testing"]["accuracy"] <= 1
        assert entry["predict_ms"]["p50"] > 0 and entry["predict_ms"]["interleaved"] and entry["training_s"] > 0
        assert set(entry["external"]) == {"hospital_a", "hospital_b"}
        for source in entry["external"].values():
            assert source["n_images"] == 4 and source["other_lesions"] == 2
            assert set(source["recall"]) == {"glioma", "notumor"}
        for record in entry["history"]:
            assert {"val_macro_precision", "val_macro_recall", "train_macro_f1"} <= set(record)
    assert lite["params"] > small["params"]


@pytest.mark.slow
def test_resume_reuses_finished_architectures(generated, tmp_path):
    data, _ = generated
    base = [
        "--data-dir", str(data), "--output", str(tmp_path), "--archs", "small_cnn", "--epochs", "1",
        "--image-size", "32", "--workers", "0", "--no-progress", "--batch-size", "8",
    ]
    first = main(get_args_parser().parse_args(base))
    again = main(get_args_parser().parse_args(base + ["--resume"]))
    # the trained entries are kept; only the latency is measured again (all in the same rounds)
    strip = lambda entries: [{k: v for k, v in e.items() if k != "predict_ms"} for e in entries]  # noqa: E731
    assert strip(again["architectures"]) == strip(first["architectures"])


def test_flops_scale_with_the_input_area():
    net = SmallCNN(num_classes=4)
    assert flops_per_scan(net, 64) == pytest.approx(4 * flops_per_scan(net, 32), rel=0.01)


def test_reductions_are_checked():
    assert parse_reductions(["vgg16_bn:epochs=2,image_size=96"], ["vgg16_bn"]) == {"vgg16_bn": {"epochs": 2, "image_size": 96}}
    with pytest.raises(SystemExit, match="not one of --archs"):
        parse_reductions(["vgg16:epochs=2"], ["vgg16_bn"])
    with pytest.raises(SystemExit, match="KEY=N"):
        parse_reductions(["vgg16_bn:lr=2"], ["vgg16_bn"])


def test_small_cnn_is_a_timm_model():
    net = build_network("small_cnn")
    assert net(torch.zeros(2, 3, 64, 64)).shape == (2, len(CLASS_NAMES))
    with pytest.raises(ValueError, match="no pretrained weights"):
        import timm

        timm.create_model("small_cnn", pretrained=True)
