"""The public contract of ``core`` (foundation issue), on a random model and on real scans."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from dataclasses import FrozenInstanceError
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import core
from core import CLASS_NAMES, ScanError, WeightsError, load_model, read_scan
from core.preprocess import eval_transform
from core.results import result_record
from core.weights import card_path_for

ROOT = Path(__file__).resolve().parent.parent


def test_public_names():
    assert CLASS_NAMES == ("glioma", "meningioma", "notumor", "pituitary")
    assert issubclass(ScanError, ValueError)
    for name in ("CLASS_NAMES", "ScanError", "load_model", "read_scan"):
        assert name in core.__all__


@pytest.mark.parametrize("kind", ["bytes", "str", "path", "file"])
def test_read_scan_sources(scan_paths, kind):
    path = scan_paths["glioma"]
    source = {
        "bytes": path.read_bytes(),
        "str": str(path),
        "path": path,
        "file": io.BytesIO(path.read_bytes()),
    }[kind]
    image = read_scan(source)
    assert isinstance(image, Image.Image)
    assert image.size == Image.open(path).size
    assert image.mode in ("L", "RGB")


@pytest.mark.parametrize(
    "data, words",
    [
        (b"", "empty"),
        (b"hello, this is a text file\n" * 10, "text"),
    ],
)
def test_read_scan_bad_input(data, words):
    with pytest.raises(ScanError) as info:
        read_scan(data)
    assert words in str(info.value).lower()
    assert "Traceback" not in str(info.value)


def test_read_scan_truncated_jpeg(scan_paths):
    data = scan_paths["meningioma"].read_bytes()
    with pytest.raises(ScanError, match="damaged|truncated"):
        read_scan(data[: len(data) // 2])


def test_read_scan_missing_file(tmp_path):
    with pytest.raises(ScanError, match="No file"):
        read_scan(tmp_path / "nope.jpg")


def test_prediction_contract(tiny_model, scan_paths):
    image = read_scan(scan_paths["pituitary"])
    prediction = tiny_model.predict(image)
    assert prediction.label in CLASS_NAMES
    assert 0.0 <= prediction.confidence <= 1.0
    assert set(prediction.probabilities) == set(CLASS_NAMES)
    assert sum(prediction.probabilities.values()) == pytest.approx(1.0, abs=1e-6)
    assert prediction.confidence == max(prediction.probabilities.values())
    assert prediction.label == max(prediction.probabilities, key=prediction.probabilities.get)
    with pytest.raises(FrozenInstanceError):
        prediction.label = "glioma"  # type: ignore[misc]


def test_predict_batch_equals_predict(tiny_model, scan_paths):
    images = [read_scan(p) for p in scan_paths.values()] * 2
    batch = tiny_model.predict_batch(images, batch_size=3)
    assert len(batch) == len(images)
    for image, from_batch in zip(images, batch):
        single = tiny_model.predict(image)
        assert single.label == from_batch.label
        for name in CLASS_NAMES:
            assert single.probabilities[name] == pytest.approx(from_batch.probabilities[name], abs=1e-4)


def test_predict_rejects_non_images(tiny_model):
    with pytest.raises(TypeError, match="PIL image"):
        tiny_model.predict(np.zeros((64, 64)))


@pytest.mark.parametrize("size", [(224, 224), (300, 180)])
def test_explain_contract(tiny_model, scan_paths, size):
    image = read_scan(scan_paths["glioma"]).resize(size)
    before = np.asarray(image).copy()
    heatmap = tiny_model.explain(image)
    assert heatmap.dtype == np.float32
    assert heatmap.shape == (size[1], size[0])
    assert heatmap.min() >= 0.0 and heatmap.max() <= 1.0
    assert np.array_equal(before, np.asarray(image)), "explain must not modify its input"
    # Hooks are released after each call: no forward or backward hooks remain on the network.
    for module in tiny_model.cam.net.modules():
        assert not module._forward_hooks and not module._backward_hooks


def test_explain_target_changes_heatmap(tiny_model, scan_paths):
    image = read_scan(scan_paths["meningioma"])
    maps = {name: tiny_model.explain(image, target=name) for name in CLASS_NAMES}
    predicted = tiny_model.predict(image).label
    assert np.allclose(tiny_model.explain(image), maps[predicted])
    assert any(not np.allclose(maps[a], maps[b]) for a in CLASS_NAMES for b in CLASS_NAMES if a != b)
    with pytest.raises(ValueError, match="Unknown target"):
        tiny_model.explain(image, target="tumour")


def test_shared_preprocessing(tiny_model, scan_paths):
    """train's evaluation transform and core's prediction transform are the same function."""
    from train.presets import ClassificationPresetEval

    image = read_scan(scan_paths["notumor"])
    expected = eval_transform(tiny_model.image_size, tiny_model.card["mean"], tiny_model.card["std"])(image)
    assert torch.equal(ClassificationPresetEval(tiny_model.image_size)(image), expected)
    assert torch.equal(tiny_model.preprocess([image])[0].contiguous(), expected)
    # grey and RGB versions of the same scan give the same input
    assert torch.equal(tiny_model.transform(image.convert("RGB")), tiny_model.transform(image.convert("L")))


def test_input_array_equals_the_transform(tiny_model, scan_paths):
    """The NumPy preprocessing of the ONNX Runtime path gives the transform's numbers, for every
    kind of image read_scan or a caller may hand over."""
    from core.preprocess import input_array

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
    size, mean, std = tiny_model.image_size, tiny_model.card["mean"], tiny_model.card["std"]
    got = input_array(images, size, mean, std)
    expected = torch.stack([eval_transform(size, mean, std)(image) for image in images]).numpy()
    assert got.dtype == np.float32 and got.shape == expected.shape == (len(images), 3, size, size)
    assert np.abs(got - expected).max() < 1e-6


def test_load_model_missing_and_corrupt(tmp_path, tiny_weights):
    missing = tmp_path / "absent.safetensors"
    with pytest.raises(WeightsError, match="absent.safetensors"):
        load_model(missing)
    corrupt = tmp_path / "model.safetensors"
    corrupt.write_bytes(b"not a safetensors file")
    card = json.loads(card_path_for(tiny_weights).read_text())
    card_path_for(corrupt).write_text(json.dumps(card))
    with pytest.raises(WeightsError, match=str(corrupt.name)):
        load_model(corrupt)


def test_load_model_default_uses_assets(monkeypatch, tiny_weights):
    monkeypatch.setenv("BTMRI_ASSETS", str(tiny_weights.parent))
    model = load_model(device="cpu")
    assert model.card["weights_sha256"] == json.loads(card_path_for(tiny_weights).read_text())["weights_sha256"]


def test_cli(tiny_weights, scan_paths, tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_text("not an image")
    good = [str(scan_paths["glioma"]), str(scan_paths["notumor"])]
    cmd = [sys.executable, "-m", "core", "--weights", str(tiny_weights), "--device", "cpu"]
    ok = subprocess.run(cmd + good, capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert ok.returncode == 0, ok.stderr
    lines = [json.loads(line) for line in ok.stdout.splitlines()]
    assert [line["file"] for line in lines] == good
    for line in lines:
        assert set(line) == set(result_record("x", error="e"))  # the one result schema
        assert line["label"] in CLASS_NAMES and line["status"] in ("ok", "outside_training")
    failed = subprocess.run(cmd + [good[0], str(bad)], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert failed.returncode == 1
    records = [json.loads(line) for line in failed.stdout.splitlines()]
    assert "label" in records[0]
    assert records[1]["status"] == "error" and records[1]["label"] is None and records[1]["file"] == str(bad)


def test_shipped_model_on_real_scans(shipped_model, scan_paths):
    """The committed model recognises one clear scan of each class."""
    for name, path in scan_paths.items():
        assert shipped_model.predict(read_scan(path)).label == name


def test_a_scan_runs_alone_unless_the_mirror_check_is_asked_for(tiny_model, scan_paths):
    """By default one pass per scan and no mirror flag; mirror_check=True (or tta) adds the
    mirror images to the same pass, with the same probabilities for the scans themselves."""
    from core.model import Classifier

    assert not tiny_model.mirror_check and not tiny_model.tta
    assert Classifier(tiny_model.network, tiny_model.card, tta=True).mirror_check
    images = [read_scan(scan_paths[name]) for name in CLASS_NAMES]

    def passes(model: Classifier) -> tuple[list, list]:
        seen: list[tuple[int, bool]] = []
        run = model.backend.run
        model.backend.run = lambda batch, mirror=False: seen.append((len(batch), mirror)) or run(batch, mirror)
        return model.predict_batch(images), seen

    got, plain_calls = passes(Classifier(tiny_model.network, tiny_model.card))
    expected, checked_calls = passes(Classifier(tiny_model.network, tiny_model.card, mirror_check=True))
    assert plain_calls == [(len(images), False)] and checked_calls == [(len(images), True)]
    for a, b in zip(got, expected):
        assert a.label == b.label
        assert all(abs(a.probabilities[c] - b.probabilities[c]) < 1e-6 for c in CLASS_NAMES)
        assert not any(f.startswith("the mirror image") for f in a.flags)
        assert set(a.flags) <= set(b.flags)
    with_tta = Classifier(tiny_model.network, tiny_model.card, tta=True, mirror_check=False)
    assert with_tta.predict(images[0]).probabilities == pytest.approx(Classifier(tiny_model.network, tiny_model.card, tta=True).predict(images[0]).probabilities)
