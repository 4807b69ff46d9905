"""Synthetic scans and folders for the tests: head-like discs, an external set laid out
SOURCE/CLASS/FILE, and an extra training source with CSV manifests (no dataset image)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from PIL import Image


def synthetic_scan(seed: int, size: int = 96, bright_centre: bool = False) -> Image.Image:
    """A grey head-like disc with some texture (a synthetic scan)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    r = np.sqrt((yy - size / 2) ** 2 + (xx - size / 2) ** 2) / (size / 2.4)
    grey = np.where(r < 1, 90 + 40 * r, 0) + rng.normal(0, 8, (size, size))
    if bright_centre:
        grey = np.where(r < 0.4, 230, grey)
    return Image.fromarray(np.clip(grey, 0, 255).astype(np.uint8), mode="L")


def make_external_folder(root: Path) -> Path:
    """A small external set: two sources, a class, ``other`` lesions and a stray text file."""
    layout = {
        ("hospital_a", "glioma"): ["a_T1_1.jpg", "a_T2_2.jpg", "a_T2_3.png"],
        ("hospital_a", "other"): ["schwannoma_T1C_1.jpg", "schwannoma_T2_2.jpg"],
        ("hospital_b", "notumor"): ["b_1.jpg", "b_2.jpg"],
    }
    seed = 0
    for (source, label), names in layout.items():
        folder = root / source / label
        folder.mkdir(parents=True)
        for name in names:
            seed += 1
            synthetic_scan(seed).save(folder / name)
    (root / "hospital_b" / "notumor" / "notes.txt").write_text("not a scan")
    return root


def make_extra_source(root: Path) -> Path:
    """An extra training source like tcga-lgg: 10 patients, gliomas and tumour-free slices in
    two sequences, with their manifests."""
    (root / "glioma").mkdir(parents=True)
    (root / "notumor-slices").mkdir()
    rows, free = [], []
    for patient in range(10):
        for slice_ in range(3):
            for sequence in ("flair", "t1pre"):
                name = f"P{patient}_{slice_}_{sequence}.jpg"
                synthetic_scan(patient * 10 + slice_).save(root / "glioma" / name)
                rows.append((f"glioma/{name}", f"P{patient}", sequence))
                synthetic_scan(500 + patient).save(root / "notumor-slices" / name)
                free.append((f"notumor-slices/{name}", f"P{patient}", sequence))
    for file, data in (("manifest.csv", rows), ("notumor-slices.csv", free)):
        with (root / file).open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["path", "patient", "sequence"])
            writer.writerows(data)
    return root
