"""``python -m benchmarks.series``: speed and memory of whole series on this machine.

Writes a generated head-like MR series (uncompressed DICOM, ``--slices`` of ``--size`` pixels)
to a temporary folder, then measures in one run:

- ``read_series`` of the folder;
- ``predict_series`` on it against ``predict`` called on each slice, rounds interleaved;
- the resident memory a series adds while it is read and scored (in a fresh process, on a
  series of ``--memory-slices``), what is left once it is dropped, and once the app's
  ``release_freed_memory`` has handed the freed heap back.

Writes JSON (``--output``, default ``benchmarks/series.json``) with the CPU model and flags.
"""

from __future__ import annotations

import argparse
import gc
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from core.constants import PROJECT_ROOT

from .inference import environment

__all__ = ["main", "write_series"]

DEFAULT_OUTPUT = PROJECT_ROOT / "benchmarks" / "series.json"


def write_series(folder: Path, slices: int, size: int, seed: int = 0) -> list[Path]:
    """An axial MR series of ``slices`` head-like slices of ``size`` x ``size``, one DICOM file
    each (16-bit, uncompressed), with a bright lesion in the middle slices."""
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

    rng = np.random.default_rng(seed)
    y, x = np.mgrid[:size, :size]
    series_uid, study_uid = generate_uid(), generate_uid()
    paths = []
    for k in range(slices):
        scale = 0.3 + 0.6 * np.sin(np.pi * (k + 0.5) / slices)  # smaller head at the top and bottom
        head = ((y - size / 2) / (size * 0.42 * scale)) ** 2 + ((x - size / 2) / (size * 0.34 * scale)) ** 2 < 1
        image = np.where(head, 500 + 120 * np.sin(x / 9.0) * np.cos(y / 13.0), 0) + rng.normal(0, 20, (size, size))
        if abs(k - slices / 2) < slices / 8:
            image += 600 * (((y - size * 0.4) ** 2 + (x - size * 0.55) ** 2) < (size * 0.06) ** 2)
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = MRImageStorage, generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = pydicom.Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = MRImageStorage, meta.MediaStorageSOPInstanceUID
        ds.Modality, ds.SeriesInstanceUID, ds.StudyInstanceUID = "MR", series_uid, study_uid
        ds.SeriesNumber, ds.SeriesDescription, ds.InstanceNumber = 3, "AX T1 POST GD", k + 1
        ds.ImageOrientationPatient, ds.ImagePositionPatient = [1, 0, 0, 0, 1, 0], [0, 0, float(k)]
        ds.PixelSpacing, ds.SliceThickness = [0.5, 0.5], 1.0
        ds.Rows = ds.Columns = size
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.PixelData = np.clip(image, 0, 65535).astype(np.uint16).tobytes()
        path = folder / f"{k:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


_MEMORY = r"""
import gc, json, sys
import psutil
from core import load_model, read_series
model = load_model(device="cpu")
model.predict_series(read_series([sys.argv[2]])[0])  # warm up: the runtime's buffers for full batches
gc.collect()
process = psutil.Process()
before = process.memory_info().rss
series = read_series([sys.argv[1]])[0]
read = process.memory_info().rss
prediction = model.predict_series(series)
scored = process.memory_info().rss
del series, prediction
gc.collect()
after = process.memory_info().rss
from app.series_view import release_freed_memory  # what the app runs after a series
release_freed_memory()
trimmed = process.memory_info().rss
print(json.dumps({"read_mb": (read - before) / 2**20, "scored_mb": (scored - before) / 2**20,
                  "left_after_drop_mb": (after - before) / 2**20, "left_after_release_mb": (trimmed - before) / 2**20}))
"""


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.series", description=__doc__.split("\n\n")[0])
    parser.add_argument("--slices", type=int, default=150, help="slices of the timed series (default: 150)")
    parser.add_argument("--size", type=int, default=512, help="rows and columns (default: 512)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default: 3)")
    parser.add_argument("--memory-slices", type=int, default=300, help="slices of the memory series (default: 300)")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="JSON file for the figures")
    args = parser.parse_args(argv)
    from core import load_model, read_series

    model = load_model(device="cpu")
    with tempfile.TemporaryDirectory(prefix="btmri-series-") as tmp:
        timed, small, large = Path(tmp) / "timed", Path(tmp) / "small", Path(tmp) / "large"
        # the small series fills a whole batch, so that warming up sizes the runtime's buffers
        for folder, count in ((timed, args.slices), (small, 40), (large, args.memory_slices)):
            folder.mkdir()
            write_series(folder, count, args.size)
        start = time.perf_counter()
        series = read_series([timed])[0]
        read_s = time.perf_counter() - start
        model.predict_series(read_series([small])[0])  # warm-up
        series_s, single_s = [], []
        for _ in range(args.rounds):
            start = time.perf_counter()
            prediction = model.predict_series(series)
            series_s.append(time.perf_counter() - start)
            start = time.perf_counter()
            for image in series.slices:
                model.predict(image)
            single_s.append(time.perf_counter() - start)
        memory = json.loads(subprocess.run(
            [sys.executable, "-c", _MEMORY, str(large), str(small)], capture_output=True, text=True, check=True,
            cwd=PROJECT_ROOT, env={**__import__("os").environ, "PYTHONPATH": str(PROJECT_ROOT)},
        ).stdout)
    del series
    gc.collect()
    result = {
        "environment": environment(),
        "series": {"slices": args.slices, "size": args.size, "assessed": prediction.assessed},
        "read_series_s": read_s,
        "predict_series_s": float(np.median(series_s)),
        "single_predicts_s": float(np.median(single_s)),
        "speedup": float(np.median(single_s) / np.median(series_s)),
        "rounds": {"predict_series_s": series_s, "single_predicts_s": single_s},
        "memory": {"slices": args.memory_slices, "size": args.size, **memory},
    }
    text = json.dumps(result, indent=1)
    args.output.write_text(text + "\n", encoding="utf-8")
    print(text)
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
