"""Shared fixtures: the dataset folder, real scans, and a small randomly initialised model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from core.constants import CLASS_NAMES, INPUT_MEAN, INPUT_STD, data_dir
from core.model import build_network
from core.weights import save_weights

TINY_IMAGE_SIZE = 64


@pytest.fixture(scope="session")
def data_root() -> Path:
    root = data_dir()
    if not (root / "Testing").is_dir():
        pytest.skip(f"dataset not found at {root} (set BTMRI_DATA)")
    return root


@pytest.fixture(scope="session")
def scan_paths(data_root) -> dict[str, Path]:
    """One real Testing scan per class."""
    return {name: sorted((data_root / "Testing" / name).glob("*.jpg"))[5] for name in CLASS_NAMES}


def make_model_dir(folder: Path, image_size: int = TINY_IMAGE_SIZE, seed: int = 0, crop_head: bool = False) -> Path:
    """Save a randomly initialised efficientnet_lite0 with its model card; returns the weights path."""
    torch.manual_seed(seed)
    net = build_network("efficientnet_lite0")
    card = {
        "arch": "efficientnet_lite0",
        "image_size": image_size,
        "mean": list(INPUT_MEAN),
        "std": list(INPUT_STD),
        "class_names": list(CLASS_NAMES),
        "temperature": 1.0,
    }
    if crop_head:
        card["crop_head"] = True
    path = folder / "model.safetensors"
    save_weights(net, path, card)
    return path


class RecordingRuntime:
    """A runtime (``core.runtime.Runtime``) that keeps a copy of every batch it is given and runs
    it in ``inner``: what a Classifier feeds its network, seen from outside."""

    def __init__(self, inner):
        self.inner, self.name, self.channels = inner, inner.name, inner.channels
        self.batches: list[np.ndarray] = []

    def run(self, batch):
        self.batches.append(np.array(batch))
        return self.inner.run(batch)


@pytest.fixture(scope="session")
def tiny_weights(tmp_path_factory) -> Path:
    """Weights of a random efficientnet_lite0 at 64 px (fast; predictions are meaningless)."""
    return make_model_dir(tmp_path_factory.mktemp("tiny_model"))


@pytest.fixture(scope="session")
def tiny_model(tiny_weights):
    from core import load_model

    return load_model(tiny_weights, device="cpu")


@pytest.fixture(scope="session")
def shipped_model():
    """The committed default model as load_model serves it (float32 ONNX Runtime on the CPU);
    skipped while assets/ holds none."""
    from core.constants import default_weights
    from core import load_model

    if not default_weights().is_file():
        pytest.skip("no shipped weights in assets/ yet")
    return load_model(device="cpu")


@pytest.fixture(autouse=True)
def _restore_torch_threads():
    """The app sets torch's process-wide thread count (core.load_model(threads=1)); AppTest runs
    it inside this process, so each test gets the count back afterwards."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)
