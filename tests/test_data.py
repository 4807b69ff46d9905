"""train.data: extra training sources split by patient, and the external set kept out of training."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.constants import external_dir
from synthetic import make_extra_source
from train.data import Sample, check_not_external, find_extra_samples, patient_split

@pytest.fixture
def extra_source(tmp_path) -> Path:
    return make_extra_source(tmp_path / "lgg")


def test_extra_source_classes_come_from_folders(extra_source):
    samples = find_extra_samples(extra_source)
    assert len(samples) == 120
    labels = {s.path.parent.name: s.class_name for s in samples}
    assert labels == {"glioma": "glioma", "notumor-slices": "notumor"}
    assert {s.source for s in samples} == {"lgg"} and {s.sequence for s in samples} == {"flair", "t1pre"}


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_patient_split_keeps_every_patient_on_one_side(extra_source, seed):
    train, val = patient_split(find_extra_samples(extra_source), 0.2, seed)
    assert train and val
    assert not {s.patient for s in train} & {s.patient for s in val}
    assert len(train) + len(val) == 120


def test_extra_source_without_manifest_is_refused(tmp_path):
    (tmp_path / "glioma").mkdir()
    with pytest.raises(FileNotFoundError, match="CSV manifests"):
        find_extra_samples(tmp_path)


def test_external_scans_are_refused_as_training_data(tmp_path):
    inside = Sample(tmp_path / "external" / "src" / "glioma" / "a.jpg", 0)
    check_not_external([Sample(tmp_path / "train" / "a.jpg", 0)], tmp_path / "external")
    with pytest.raises(ValueError, match="must never be trained on"):
        check_not_external([inside], tmp_path / "external")


@pytest.mark.slow
def test_no_external_dev_file_among_the_training_inputs(data_root):
    """The default recipe's inputs, extra source included, hold no file of the external set,
    by path or by content."""
    import hashlib

    from core.constants import extra_dir
    from train.config import TrainConfig
    from train.splits import load_data
    from train.train import get_args_parser

    extra = extra_dir()
    argv = ["--data-dir", str(data_root), "--max-per-class", "40"] + (["--extra-data", str(extra)] if extra.is_dir() else [])
    train, val, _ = load_data(TrainConfig.from_namespace(get_args_parser().parse_args(argv)))
    external = external_dir()
    if not external.is_dir():
        pytest.skip(f"external set not found at {external}")
    base = external.resolve()
    assert not [s for s in train + val if s.path.resolve().is_relative_to(base)]
    external_hashes = {hashlib.sha256(p.read_bytes()).hexdigest() for p in base.rglob("*") if p.is_file() and p.suffix != ".csv"}
    assert not [s for s in train + val if hashlib.sha256(s.path.read_bytes()).hexdigest() in external_hashes]

