"""train.presets: the T2-like training images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from core.constants import CLASS_NAMES
from train.data import Sample

def _slice_pair(folder: Path, name: str) -> tuple[Path, Path, np.ndarray, np.ndarray]:
    """A generated FLAIR and T1 image of one slice: a head with dark fluid (ventricle) on both,
    a bright lesion on FLAIR only and bright scalp on T1."""
    yy, xx = np.mgrid[:96, :96]
    head = (yy - 48) ** 2 + (xx - 48) ** 2 < 40**2
    scalp = head & ((yy - 48) ** 2 + (xx - 48) ** 2 > 36**2)
    fluid = (abs(yy - 48) < 6) & (abs(xx - 40) < 4)
    lesion = (yy - 35) ** 2 + (xx - 62) ** 2 < 7**2
    flair = np.where(head, 110, 0) + np.where(lesion, 120, 0) - np.where(fluid, 95, 0)
    t1 = np.where(head, 150, 0) + np.where(scalp, 100, 0) - np.where(fluid, 130, 0) - np.where(lesion, 40, 0)
    flair_path, t1_path = folder / f"{name}_flair.png", folder / f"{name}_t1pre.png"
    Image.fromarray(flair.astype(np.uint8)).save(flair_path)
    Image.fromarray(t1.astype(np.uint8)).save(t1_path)
    return flair_path, t1_path, fluid, lesion


def test_synthetic_t2_makes_fluid_and_lesion_bright_and_keeps_the_label(tmp_path):
    from train.data import ScanFolder
    from train.presets import SyntheticT2

    flair_path, t1_path, fluid, lesion = _slice_pair(tmp_path, "P1_07")
    flair = Image.open(flair_path).convert("L")
    synth = SyntheticT2(p=1.0)
    assert synth.partner_of(flair_path) == t1_path and synth.partner_of(t1_path) is None
    sample = Sample(flair_path, CLASS_NAMES.index("glioma"), "src", "P1", "flair")
    out = np.asarray(synth(sample, flair))
    assert out.dtype == np.uint8 and out.shape == (96, 96)
    tissue = np.asarray(flair) == 110
    # Fluid: dark on FLAIR, bright on the T2-like image; the lesion stays bright; tissue below both.
    assert np.asarray(flair)[fluid].mean() < np.asarray(flair)[tissue].mean() < out[fluid].mean()
    assert out[lesion].mean() > out[tissue].mean() and out[fluid].mean() > out[tissue].mean()
    assert out[0, 0] == 0  # the background stays dark
    # Other sequences, scans without a partner and p = 0 pass unchanged; the label is kept.
    t1_sample = Sample(t1_path, sample.label, "src", "P1", "t1pre")
    t1 = Image.open(t1_path).convert("L")
    assert synth(t1_sample, t1) is t1
    (tmp_path / "alone").mkdir()
    alone = tmp_path / "alone" / "P2_01_flair.png"
    flair.save(alone)
    assert synth(Sample(alone, sample.label, "src", "P2", "flair"), flair) is flair
    assert SyntheticT2(p=0.0)(sample, flair) is flair
    dataset = ScanFolder([sample, t1_sample], transform=None, synthesise=synth)
    image, label = dataset[0]
    assert label == sample.label and np.array_equal(np.asarray(image), out)
    assert np.array_equal(np.asarray(dataset[1][0]), np.asarray(t1))
    with pytest.raises(ValueError, match="p must be"):
        SyntheticT2(p=1.5)
    with pytest.raises(ValueError, match="one shape"):
        SyntheticT2.synthesise(np.zeros((4, 4)), np.zeros((5, 5)))

