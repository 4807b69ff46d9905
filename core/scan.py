"""Reading one scan from bytes, a path or a file object into a clean PIL image.

Everything that can go wrong with an upload ends as a :class:`ScanError` whose message is
plain words for a clinician: no traceback text, no library names.
"""

from __future__ import annotations

import io
import logging
import warnings
from pathlib import Path
from typing import BinaryIO, Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .constants import MAX_PIXELS, MAX_UPLOAD_BYTES, MIN_SIDE

__all__ = ["ScanError", "ScanSource", "read_scan", "MAX_SIDE"]

logger = logging.getLogger(__name__)

ScanSource = Union[bytes, bytearray, memoryview, str, Path, BinaryIO]

#: Larger images are downscaled on reading (the model sees 224 px; the viewer needs no more).
MAX_SIDE = 2048

_PIL_FORMATS = {"JPEG", "MPO", "PNG", "BMP", "TIFF", "WEBP"}
_FORMATS_TEXT = "JPEG, PNG, BMP, TIFF, WebP or DICOM"
_GRAY_MODES = {"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"}

# Pillow refuses (rather than warns about) anything above twice its limit; we refuse above ours.
Image.MAX_IMAGE_PIXELS = MAX_PIXELS


class ScanError(ValueError):
    """A scan could not be read; the message says why in plain words."""


def read_scan(source: ScanSource) -> Image.Image:
    """Read one 2D scan and return it as an 8-bit PIL image (mode ``"L"`` or ``"RGB"``).

    ``source`` is the file's bytes, a path (``str`` or :class:`~pathlib.Path`) or a binary file
    object. JPEG, PNG, BMP, TIFF and WebP are read with Pillow (EXIF orientation honoured,
    16-bit data stretched to 8 bits, transparency flattened onto black); DICOM with pydicom
    (see :func:`core.dicom.read_dicom`). For DICOM the returned image's ``info`` holds
    ``"display_transform"``: how the stored values were mapped to grey levels.

    Raises:
        ScanError: the data is empty, damaged, too large, too small, not an image, a
            multi-frame file, or in an unsupported format.
    """
    data = _read_bytes(source)
    if not data:
        raise ScanError("The file is empty (0 bytes).")
    if _is_dicom(data):
        from .dicom import read_dicom

        image = read_dicom(data)
    else:
        image = _read_pil(data)
    return _limit_size(image)


def _read_bytes(source: ScanSource) -> bytes:
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
    elif isinstance(source, (str, Path)):
        path = Path(source)
        if not path.is_file():
            raise ScanError(f"No file found at {str(path)!r}.")
        if path.stat().st_size > MAX_UPLOAD_BYTES:
            raise ScanError(_too_big_message(path.stat().st_size))
        data = path.read_bytes()
    elif hasattr(source, "read"):
        try:
            data = source.read(MAX_UPLOAD_BYTES + 1)
        except (OSError, ValueError) as exc:
            raise ScanError("The file could not be read.") from exc
        if not isinstance(data, (bytes, bytearray)):
            raise ScanError("The file must be opened in binary mode.")
        data = bytes(data)
    else:
        raise ScanError(
            f"Cannot read a scan from a {type(source).__name__}; "
            "pass the file's bytes, its path or a binary file object."
        )
    if len(data) > MAX_UPLOAD_BYTES:
        raise ScanError(_too_big_message(len(data)))
    return data


def _too_big_message(size: int) -> str:
    return (
        f"The file is {size / 2**20:.0f} MB; scans up to {MAX_UPLOAD_BYTES // 2**20} MB "
        "are accepted."
    )


def _is_dicom(data: bytes) -> bool:
    return len(data) >= 132 and data[128:132] == b"DICM"


def _describe_non_image(data: bytes) -> str:
    head = data[:1024].lstrip().lower()
    if head.startswith(b"%pdf"):
        return "The file is a PDF document, not an image. Upload the scan as an image file."
    if head.startswith((b"<!doctype html", b"<html")) or b"<html" in head:
        return "The file is a web page (HTML), not an image."
    if head.startswith(b"gif8"):
        return "GIF files are not supported; use " + _FORMATS_TEXT + "."
    try:
        head.decode("utf-8")
        printable = True
    except UnicodeDecodeError:
        printable = False
    if printable:
        return "The file holds text, not an image."
    return (
        "The file is not an image in a supported format "
        f"({_FORMATS_TEXT}), or it is damaged."
    )


def _read_pil(data: bytes) -> Image.Image:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
    except (UnidentifiedImageError, Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        if isinstance(exc, (Image.DecompressionBombError, Image.DecompressionBombWarning)):
            raise ScanError(
                f"The image declares more than {MAX_PIXELS // 1_000_000} million pixels; "
                "that is not a single MRI slice."
            ) from exc
        raise ScanError(_describe_non_image(data)) from exc
    except Exception as exc:  # Pillow raises many types on hostile headers
        raise ScanError(_describe_non_image(data)) from exc

    if image.format not in _PIL_FORMATS:
        raise ScanError(
            f"{image.format or 'This'} files are not supported; use {_FORMATS_TEXT}."
        )
    width, height = image.size
    if width * height > MAX_PIXELS:
        raise ScanError(
            f"The image is {width} x {height} pixels; images up to "
            f"{MAX_PIXELS // 1_000_000} million pixels are accepted."
        )
    if min(width, height) < MIN_SIDE:
        raise ScanError(
            f"The image is only {width} x {height} pixels; a brain MRI slice needs at least "
            f"{MIN_SIDE} x {MIN_SIDE}."
        )
    n_frames = getattr(image, "n_frames", 1)
    if n_frames > 1 and image.format != "MPO":
        raise ScanError(
            f"The file holds {n_frames} frames (an animation or a stack); upload one 2D slice."
        )
    if image.format == "JPEG" and max(width, height) > 2 * MAX_SIDE:
        image.draft("RGB" if image.mode not in ("L",) else "L", (MAX_SIDE, MAX_SIDE))
    try:
        image.load()
        image = ImageOps.exif_transpose(image)
        return _to_8bit(image)
    except ScanError:
        raise
    except Exception as exc:  # truncated or corrupt pixel data
        raise ScanError(
            "The image data is damaged or incomplete (the file may be truncated)."
        ) from exc


def _to_8bit(image: Image.Image) -> Image.Image:
    """Normalise any Pillow mode to ``L`` (grey content) or ``RGB``."""
    mode = image.mode
    if mode in ("L", "RGB"):
        return image
    if mode in ("1",):
        return image.convert("L")
    if mode in ("LA", "La", "RGBA", "RGBa", "PA", "P"):
        rgba = image.convert("RGBA")
        flat = Image.alpha_composite(Image.new("RGBA", rgba.size, (0, 0, 0, 255)), rgba)
        return flat.convert("L" if mode in ("LA", "La") else "RGB")
    if mode.startswith("I") or mode == "F":
        return Image.fromarray(stretch_to_uint8(np.asarray(image, dtype=np.float64)), mode="L")
    if mode in ("CMYK", "YCbCr", "LAB", "HSV", "RGBX"):
        return image.convert("RGB")
    raise ScanError(f"Images with colour mode {mode} are not supported.")


def stretch_to_uint8(array: np.ndarray, low_pct: float = 0.5, high_pct: float = 99.5) -> np.ndarray:
    """Map an array of any range to 0..255 with a percentile stretch (robust to outliers)."""
    array = np.asarray(array, dtype=np.float64)
    finite = array[np.isfinite(array)]
    if finite.size == 0:
        return np.zeros(array.shape, dtype=np.uint8)
    low, high = np.percentile(finite, [low_pct, high_pct])
    if high <= low:
        low, high = float(finite.min()), float(finite.max())
    if high <= low:
        return np.zeros(array.shape, dtype=np.uint8)
    scaled = (np.nan_to_num(array, nan=low) - low) / (high - low)
    return (np.clip(scaled, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def _limit_size(image: Image.Image) -> Image.Image:
    if max(image.size) > MAX_SIDE:
        info = dict(image.info)
        image = image.copy()
        image.thumbnail((MAX_SIDE, MAX_SIDE), Image.Resampling.LANCZOS)
        image.info.update(info)
    return image
