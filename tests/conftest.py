"""Shared fixtures: the dataset folder, real scans, and a small randomly initialised model."""

from __future__ import annotations

from pathlib import Path

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
    """The committed default model; skipped while assets/ holds none."""
    from core.constants import default_weights
    from core import load_model

    if not default_weights().is_file():
        pytest.skip("no shipped weights in assets/ yet")
    return load_model(device="cpu")


@pytest.fixture(scope="session")
def shipped_float32_model():
    """The committed default model served in float32 (the reference the int8 graph is checked
    against); skipped while assets/ holds none."""
    from core.constants import default_weights
    from core import load_model

    if not default_weights().is_file():
        pytest.skip("no shipped weights in assets/ yet")
    return load_model(device="cpu", precision="float32")


@pytest.fixture(autouse=True)
def _restore_torch_threads():
    """The app sets torch's process-wide thread count (core.load_model(threads=1)); AppTest runs
    it inside this process, so each test gets the count back afterwards."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)
