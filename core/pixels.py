"""What reading a scan needs in both readers (Pillow in :mod:`core.scan`, pydicom in
:mod:`core.dicom`): the error type, the size checks, the percentile stretch to 8 bits and the
lock around process-wide warning filters."""

from __future__ import annotations

import threading

import numpy as np

from .constants import MAX_PIXELS, MIN_SIDE, READ_MAX_ASPECT

__all__ = ["WARNINGS_LOCK", "ScanError", "check_dimensions", "stretch_to_uint8", "tag_float"]

#: ``warnings.catch_warnings`` swaps process-wide state; reads that use it take turns, so two
#: threads cannot leave each other's filter behind.
WARNINGS_LOCK = threading.Lock()


class ScanError(ValueError):
    """A scan could not be read; the message says why in plain words."""


def check_dimensions(width: int, height: int, what: str = "image") -> None:
    """Refuse sizes that cannot be one MRI slice: too small, too many pixels, or a thin strip."""
    if width * height > MAX_PIXELS:
        raise ScanError(
            f"The {what} is {width} x {height} pixels; images up to "
            f"{MAX_PIXELS // 1_000_000} million pixels are accepted."
        )
    if min(width, height) < MIN_SIDE:
        raise ScanError(
            f"The {what} is only {width} x {height} pixels; a brain MRI slice needs at least "
            f"{MIN_SIDE} x {MIN_SIDE}."
        )
    if max(width, height) > READ_MAX_ASPECT * min(width, height):
        raise ScanError(
            f"The {what} is {width} x {height} pixels, a long thin strip rather than one MRI "
            "slice; upload a single slice."
        )


#: Percentiles are estimated on at most this many evenly strided values (exact below it).
_STRETCH_SAMPLE = 1_000_000


def stretch_to_uint8(array: np.ndarray, low_pct: float = 0.5, high_pct: float = 99.5) -> np.ndarray:
    """Map an array of any range to 0..255 with a percentile stretch (robust to outliers)."""
    array = np.asarray(array)
    if array.dtype.kind not in "biuf":
        array = array.astype(np.float64)
    sample = array.ravel()
    if sample.size > _STRETCH_SAMPLE:
        sample = sample[:: -(-sample.size // _STRETCH_SAMPLE)]
    if sample.dtype.kind == "f":
        sample = sample[np.isfinite(sample)]
    if sample.size == 0:
        return np.zeros(array.shape, dtype=np.uint8)
    low, high = (float(v) for v in np.percentile(sample, [low_pct, high_pct]))
    if high <= low:
        low, high = float(sample.min()), float(sample.max())
    if high <= low:
        return np.zeros(array.shape, dtype=np.uint8)
    scaled = np.array(array, dtype=np.float64)  # a copy, then in place
    if array.dtype.kind == "f":
        scaled[np.isnan(scaled)] = low  # infinities are clipped below
    scaled -= low
    scaled *= 255.0 / (high - low)
    np.clip(scaled, 0.0, 255.0, out=scaled)
    scaled += 0.5
    return scaled.astype(np.uint8)


def tag_float(value) -> float | None:
    """A number tag's (first) value as a finite float; None when absent or unusable."""
    from collections.abc import Sequence

    if isinstance(value, Sequence) and not isinstance(value, str):
        value = value[0] if len(value) else None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if np.isfinite(number) else None
