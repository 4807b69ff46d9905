"""DICOM reading with pydicom: one 2D slice to an 8-bit grey image.

Only pixel data and the few display tags are used; no patient tag is read, logged or kept.
"""

from __future__ import annotations

import io
import logging

import numpy as np
from PIL import Image

from .constants import MAX_PIXELS, MIN_SIDE
from .scan import ScanError, stretch_to_uint8

__all__ = ["read_dicom", "STORED_WINDOW", "PERCENTILE_STRETCH"]

logger = logging.getLogger(__name__)

#: Values of ``image.info["display_transform"]``.
STORED_WINDOW = "stored window"
PERCENTILE_STRETCH = "percentile stretch"


def read_dicom(data: bytes) -> Image.Image:
    """Decode one single-frame DICOM image.

    Rescale slope and intercept are applied, then the stored window (centre and width) if
    the file has one, else a 0.5-99.5 percentile stretch; MONOCHROME1 is inverted. The
    choice is recorded in ``image.info["display_transform"]`` so the app can announce it.
    """
    import pydicom
    from pydicom.errors import InvalidDicomError
    from pydicom.pixels import apply_modality_lut

    try:
        dataset = pydicom.dcmread(io.BytesIO(data))
    except (InvalidDicomError, EOFError, OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ScanError("The DICOM file is damaged and could not be read.") from exc
    except Exception as exc:  # pydicom raises many types on hostile files
        raise ScanError("The DICOM file is damaged and could not be read.") from exc

    if "PixelData" not in dataset and "FloatPixelData" not in dataset:
        raise ScanError("The DICOM file holds no image (it has no pixel data).")
    frames = int(getattr(dataset, "NumberOfFrames", 1) or 1)
    if frames > 1:
        raise ScanError(
            f"The DICOM file holds {frames} frames (a series or a volume); "
            "export and upload one 2D slice."
        )
    rows, cols = int(getattr(dataset, "Rows", 0) or 0), int(getattr(dataset, "Columns", 0) or 0)
    if rows * cols > MAX_PIXELS:
        raise ScanError(f"The DICOM image is {cols} x {rows} pixels; that is not a single MRI slice.")
    try:
        pixels = dataset.pixel_array
    except Exception as exc:
        syntax = getattr(getattr(dataset, "file_meta", None), "TransferSyntaxUID", None)
        name = getattr(syntax, "name", None) or "an unknown encoding"
        raise ScanError(
            f"The DICOM image is stored with a compression ({name}) that this app cannot "
            "decode. Export it uncompressed or as PNG."
        ) from exc

    if pixels.ndim == 3 and pixels.shape[-1] in (3, 4) and str(
        getattr(dataset, "PhotometricInterpretation", "")
    ).startswith(("RGB", "YBR")):
        pixels = pixels[..., :3].mean(axis=-1)
    if pixels.ndim != 2:
        raise ScanError("The DICOM file does not hold a single 2D slice.")
    if min(pixels.shape) < MIN_SIDE:
        raise ScanError(
            f"The DICOM image is only {pixels.shape[1]} x {pixels.shape[0]} pixels; "
            f"a brain MRI slice needs at least {MIN_SIDE} x {MIN_SIDE}."
        )

    values = apply_modality_lut(pixels, dataset).astype(np.float64)
    window = _stored_window(dataset)
    if window is not None:
        low, high = window
        grey = (np.clip((values - low) / (high - low), 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
        transform = STORED_WINDOW
    else:
        grey = stretch_to_uint8(values)
        transform = PERCENTILE_STRETCH
    if str(getattr(dataset, "PhotometricInterpretation", "")).upper() == "MONOCHROME1":
        grey = 255 - grey
    image = Image.fromarray(grey, mode="L")
    image.info["display_transform"] = transform
    return image


def _stored_window(dataset) -> tuple[float, float] | None:
    """The first stored (centre, width) window as (low, high), or None if absent or unusable."""
    try:
        centre, width = dataset.WindowCenter, dataset.WindowWidth
    except AttributeError:
        return None
    try:
        centre, width = float(_first(centre)), float(_first(width))
    except (TypeError, ValueError, IndexError):
        return None
    if not np.isfinite(centre) or not np.isfinite(width) or width <= 1:
        return None
    return centre - width / 2.0, centre + width / 2.0


def _first(value):
    from collections.abc import Sequence

    return value[0] if isinstance(value, Sequence) and not isinstance(value, str) else value
