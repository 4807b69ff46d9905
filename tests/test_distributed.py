"""``torchrun --nproc_per_node 2 -m train``: DistributedDataParallel on two CPU processes (gloo)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from core import load_model, read_scan
from core.constants import CLASS_NAMES

ROOT = Path(__file__).resolve().parent.parent
PER_CLASS = 6


@pytest.fixture()
def tiny_dataset(tmp_path, data_root) -> Path:
    """The Kaggle layout (Training/ and Testing/, one folder per class), 6 real scans each."""
    root = tmp_path / "data"
    for split in ("Training", "Testing"):
        for name in CLASS_NAMES:
            folder = root / split / name
            folder.mkdir(parents=True)
            for source in sorted((data_root / split / name).glob("*.jpg"))[:PER_CLASS]:
                shutil.copyfile(source, folder / source.name)
    return root


@pytest.mark.slow
def test_torchrun_two_cpu_processes(tiny_dataset, tmp_path):
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or shutil.which("torchrun")
    if torchrun is None:
        pytest.skip("torchrun not found")
    output = tmp_path / "run"
    workdir = tmp_path / "cwd"  # anything a rank writes outside --output would land here
    workdir.mkdir()
    cmd = [
        torchrun, "--nproc_per_node", "2", "--standalone", "-m", "train",
        "--data-dir", str(tiny_dataset), "--device", "cpu", "--workers", "0", "--epochs", "2",
        "--image-size", "64", "--batch-size", "8", "--max-per-class", str(PER_CLASS),
        "--split", "stratified", "--no-progress", "--output", str(output),
    ]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=workdir, env=env, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    # one set of artifacts, written by rank 0 only
    names = {p.name for p in output.iterdir()}
    assert {"checkpoint.safetensors", "evaluation.json", "history.json", "model.safetensors", "model_card.json"} <= names
    assert not [n for n in names if n.endswith(".tmp")]
    assert list(workdir.iterdir()) == []
    assert done.stderr.count("saved weights to") == 1  # rank 0 alone saves (and logs at INFO)

    card = json.loads((output / "model_card.json").read_text())
    history = json.loads((output / "history.json").read_text())["epochs"]
    assert [r["epoch"] for r in history] == [1, 2]
    assert "2 processes" in card["training"]["hardware"]
    # metrics gathered over both ranks: the whole validation set, each scan once
    n_val, n_train = card["data"]["val_images"], card["data"]["train_images"]
    assert n_val + n_train == 4 * PER_CLASS
    for record in history:
        assert record["val"]["n_images"] == n_val
        assert record["train"]["n_images"] == n_train + n_train % 2  # the sampler evens the ranks out

    model = load_model(output / "model.safetensors", device="cpu")
    scan = next((tiny_dataset / "Testing" / "glioma").glob("*.jpg"))
    assert model.predict(read_scan(scan)).label in CLASS_NAMES
