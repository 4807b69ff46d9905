"""Display helpers for the viewer: heatmap colouring, overlays, window adjustment, PNG encoding.

Everything here changes only what is shown: the model always sees the scan exactly as
:func:`core.read_scan` returned it.
"""

from __future__ import annotations

import io
import logging

import numpy as np
from PIL import Image, ImageEnhance

__all__ = [
    "HEATMAP_COLORMAP",
    "adjust_display",
    "colorize_heatmap",
    "overlay_heatmap",
    "to_png_bytes",
]

logger = logging.getLogger(__name__)

#: The perceptually uniform colormap of the heatmap (dark = little influence, yellow = most).
HEATMAP_COLORMAP = "inferno"

try:  # matplotlib comes with grad-cam; a coarse copy of inferno stands in without it
    from matplotlib import colormaps as _colormaps

    _HAS_MATPLOTLIB = True
except ImportError:  # pragma: no cover - exercised only without matplotlib
    _HAS_MATPLOTLIB = False

# Nine samples of matplotlib's "inferno" (at 0, 1/8, ..., 1), interpolated when matplotlib is absent.
_INFERNO_ANCHORS = np.array(
    [
        [0, 0, 4], [31, 12, 72], [85, 15, 109], [136, 34, 106], [186, 54, 85],
        [227, 89, 51], [249, 140, 10], [249, 201, 50], [252, 255, 164],
    ],
    dtype=np.float64,
)


def _build_lut(name: str) -> np.ndarray:
    """A 256 x 3 uint8 lookup table for ``name``."""
    if _HAS_MATPLOTLIB:
        return (_colormaps[name](np.linspace(0.0, 1.0, 256))[:, :3] * 255.0 + 0.5).astype(np.uint8)
    xs = np.linspace(0.0, 1.0, len(_INFERNO_ANCHORS))
    grid = np.linspace(0.0, 1.0, 256)
    lut = np.stack([np.interp(grid, xs, _INFERNO_ANCHORS[:, c]) for c in range(3)], axis=1)
    return (lut + 0.5).astype(np.uint8)


_LUT = _build_lut(HEATMAP_COLORMAP)


def _check_heatmap(heatmap: np.ndarray) -> np.ndarray:
    array = np.asarray(heatmap, dtype=np.float32)
    if array.ndim != 2:
        raise ValueError(f"A heatmap must be a 2D array, got shape {array.shape}.")
    return np.clip(np.nan_to_num(array, nan=0.0), 0.0, 1.0)


def colorize_heatmap(heatmap: np.ndarray) -> Image.Image:
    """An RGB image of ``heatmap`` (values in [0, 1]) in :data:`HEATMAP_COLORMAP`."""
    array = _check_heatmap(heatmap)
    indices = (array * 255.0 + 0.5).astype(np.uint8)
    return Image.fromarray(_LUT[indices], mode="RGB")


def overlay_heatmap(image: Image.Image, heatmap: np.ndarray, opacity: float = 0.5) -> Image.Image:
    """The scan in grey with the coloured heatmap blended over it.

    Each pixel's blend weight is ``opacity * heat``: where the model paid no attention the
    scan shows through unchanged; ``opacity`` 0 gives the plain scan.
    """
    if not 0.0 <= opacity <= 1.0:
        raise ValueError(f"opacity must be between 0 and 1, got {opacity!r}.")
    array = _check_heatmap(heatmap)
    if array.shape != (image.height, image.width):
        raise ValueError(
            f"The heatmap's shape {array.shape} differs from the image's size "
            f"{(image.height, image.width)} (height, width)."
        )
    base = np.asarray(image.convert("L").convert("RGB"), dtype=np.float32)
    colour = _LUT[(array * 255.0 + 0.5).astype(np.uint8)].astype(np.float32)
    weight = (opacity * array)[..., None]
    blended = base * (1.0 - weight) + colour * weight
    return Image.fromarray(np.clip(blended + 0.5, 0, 255).astype(np.uint8), mode="RGB")


def adjust_display(image: Image.Image, brightness: float = 1.0, contrast: float = 1.0) -> Image.Image:
    """A copy of ``image`` with display brightness and contrast (1.0 leaves it unchanged).

    The original image is not modified; use the result for display only.
    """
    for name, value in (("brightness", brightness), ("contrast", contrast)):
        if not 0.0 < value <= 4.0:
            raise ValueError(f"{name} must be in (0, 4], got {value!r}.")
    shown = image.copy()
    if brightness != 1.0:
        shown = ImageEnhance.Brightness(shown).enhance(brightness)
    if contrast != 1.0:
        shown = ImageEnhance.Contrast(shown).enhance(contrast)
    return shown


def to_png_bytes(image: Image.Image) -> bytes:
    """The image encoded as PNG, with no metadata carried over from the source file."""
    buffer = io.BytesIO()
    clean = Image.frombytes(image.mode, image.size, image.tobytes())
    clean.save(buffer, format="PNG", optimize=False)
    return buffer.getvalue()
