"""Property-based fuzzing of ``read_scan`` (core.scan): mutated real scans never crash it.

Real scans are encoded as JPEG, PNG and DICOM, then damaged by bit flips, truncation, byte
insertions and deletions and header corruption. Whatever comes out, ``read_scan`` either
returns a sane image or raises ``ScanError``; nothing else, and never slowly.
"""

from __future__ import annotations

import io
import time

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from core import ScanError, read_scan
from core.constants import MIN_SIDE
from core.scan import MAX_SIDE
from dicom_factory import dicom_bytes, mr_dataset

#: About 200 examples in all (three tests); derandomised so that a failure reproduces.
FUZZ = settings(
    max_examples=70,
    deadline=None,  # timing is asserted below, per example, with a clearer message
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
#: Generous (the shared test machine is busy) but far below what a hang would take.
TIME_LIMIT_S = 2.0


def _encode(image: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt)
    return buffer.getvalue()


def _dicom(pixels: np.ndarray) -> bytes:
    ds = mr_dataset()
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.RescaleSlope, ds.RescaleIntercept = 1, 0
    ds.WindowCenter, ds.WindowWidth = 2048, 4096
    ds.PixelData = pixels.astype("<u2").tobytes()
    return dicom_bytes(ds)


@pytest.fixture(scope="module")
def seeds(scan_paths) -> dict[str, list[bytes]]:
    """Each real scan as JPEG, PNG and DICOM bytes (the DICOM ones cropped to keep them small)."""
    out: dict[str, list[bytes]] = {"JPEG": [], "PNG": [], "DICOM": []}
    for path in scan_paths.values():
        with Image.open(path) as image:
            grey = image.convert("L")
        out["JPEG"].append(_encode(grey, "JPEG"))
        out["PNG"].append(_encode(grey, "PNG"))
        pixels = np.asarray(grey, dtype=np.uint16)[::2, ::2] * 16
        out["DICOM"].append(_dicom(pixels))
    read_scan(out["DICOM"][0])  # import pydicom before any timing
    return out


@st.composite
def mutations(draw, size: int):
    """A short list of edits; positions favour the first bytes, where the headers live."""
    header = min(size, 400)
    position = st.one_of(st.integers(0, header - 1), st.integers(0, size - 1))
    edits = []
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["flip", "truncate", "insert", "delete", "header", "zero-run"]))
        if kind == "flip":
            edits.append(("flip", draw(position), draw(st.integers(0, 7))))
        elif kind == "truncate":
            edits.append(("truncate", draw(st.integers(1, size)), 0))
        elif kind == "insert":
            edits.append(("insert", draw(position), draw(st.binary(min_size=1, max_size=16))))
        elif kind == "delete":
            edits.append(("delete", draw(position), draw(st.integers(1, 64))))
        elif kind == "header":
            edits.append(("header", draw(st.integers(0, header - 1)), draw(st.sampled_from([0, 1, 0x7F, 0x80, 0xFF]))))
        else:
            edits.append(("zero-run", draw(position), draw(st.integers(1, 256))))
    return edits


def _mutate(data: bytes, edits) -> bytes:
    buffer = bytearray(data)
    for kind, at, arg in edits:
        at = min(at, max(len(buffer) - 1, 0))
        if not buffer:
            break
        if kind == "flip":
            buffer[at] ^= 1 << arg
        elif kind == "truncate":
            del buffer[at:]
        elif kind == "insert":
            buffer[at:at] = arg
        elif kind == "delete":
            del buffer[at : at + arg]
        elif kind == "header":
            buffer[at] = arg
        else:
            buffer[at : at + arg] = bytes(len(buffer[at : at + arg]))
    return bytes(buffer)


def _check(data: bytes) -> None:
    start = time.perf_counter()
    try:
        image = read_scan(data)
    except ScanError as exc:
        message = str(exc)
        assert message and "Traceback" not in message
        assert "pydicom" not in message.lower() and "PIL" not in message
    else:
        assert isinstance(image, Image.Image)
        assert image.mode in ("L", "RGB")
        assert MIN_SIDE <= min(image.size) and max(image.size) <= MAX_SIDE
        assert set(image.info) <= {"display_transform", "sequence"}
    elapsed = time.perf_counter() - start
    assert elapsed < TIME_LIMIT_S, f"read_scan took {elapsed:.2f} s"


def _fuzz(seeds, fmt, data):
    source = data.draw(st.sampled_from(seeds[fmt]))
    edits = data.draw(mutations(len(source)))
    _check(_mutate(source, edits))


@FUZZ
@given(data=st.data())
def test_fuzz_jpeg(seeds, data):
    _fuzz(seeds, "JPEG", data)


@FUZZ
@given(data=st.data())
def test_fuzz_png(seeds, data):
    _fuzz(seeds, "PNG", data)


@FUZZ
@given(data=st.data())
def test_fuzz_dicom(seeds, data):
    _fuzz(seeds, "DICOM", data)


def test_unmutated_seeds_are_read(seeds):
    """The seeds themselves are good scans (else the fuzzing above proves little)."""
    for fmt, items in seeds.items():
        for data in items:
            image = read_scan(data)
            assert MIN_SIDE <= min(image.size)
