"""A set of images that are *not* brain MRI slices, built without downloads.

Natural photos come from files that installed packages ship (matplotlib's and scikit-learn's
sample images); everything else is generated: noise, gradients, checkerboards, text
renderings (documents and screenshots), blank and near-constant images, a synthetic
chest-X-ray-like image, elevation maps rendered in grey, and heavily cropped fragments of
real MRI scans (when the dataset is at hand).

``non_mri_images()`` returns ``(kind, image)`` pairs; every image is an 8-bit PIL image in
mode ``"L"`` or ``"RGB"``, as :func:`core.read_scan` would return it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

__all__ = ["KINDS", "non_mri_images", "photo_files", "mri_fragments"]

logger = logging.getLogger(__name__)

KINDS = (
    "photo", "photo_grey", "photo_crop", "uniform_noise", "gaussian_noise", "gradient",
    "checkerboard", "document", "screenshot", "blank", "near_constant", "chest_xray",
    "elevation_map", "mri_fragment",
)

_WORDS = (
    "patient report summary findings the of and for with scan results review table total "
    "invoice page section figure data value model image date account payment chapter notes"
).split()


def photo_files() -> list[Path]:
    """Natural photos shipped by installed packages (matplotlib, scikit-learn)."""
    files: list[Path] = []
    try:
        import matplotlib

        sample = Path(matplotlib.get_data_path()) / "sample_data"
        files += [sample / "grace_hopper.jpg", sample / "Minduka_Present_Blue_Pack.png", sample / "logo2.png"]
    except ImportError:
        logger.warning("matplotlib not installed: its sample photos are left out")
    try:
        import sklearn

        images = Path(sklearn.__file__).parent / "datasets" / "images"
        files += [images / "china.jpg", images / "flower.jpg"]
    except ImportError:
        logger.warning("scikit-learn not installed: its sample photos are left out")
    return [f for f in files if f.is_file()]


def _rgb(path: Path) -> Image.Image:
    with Image.open(path) as image:
        image.load()
        if image.mode in ("RGBA", "LA", "P"):
            image = image.convert("RGBA")
            flat = Image.new("RGB", image.size, (255, 255, 255))
            flat.paste(image, mask=image.getchannel("A"))
            return flat
        return image.convert("RGB")


def _crops(image: Image.Image, rng: np.random.Generator, n: int) -> list[Image.Image]:
    width, height = image.size
    out = []
    for _ in range(n):
        scale = rng.uniform(0.2, 0.6)
        w, h = int(width * scale), int(height * scale * rng.uniform(0.7, 1.3))
        h = min(h, height)
        x, y = int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - h + 1))
        out.append(image.crop((x, y, x + w, y + h)).resize((256, 256), Image.Resampling.BICUBIC))
    return out


def _photos(rng: np.random.Generator) -> Iterable[tuple[str, Image.Image]]:
    for path in photo_files():
        image = _rgb(path)
        yield "photo", image
        yield "photo_grey", image.convert("L")
        for crop in _crops(image, rng, 4):
            yield "photo_crop", crop
        for crop in _crops(image.convert("L"), rng, 2):
            yield "photo_crop", crop


def _noise(rng: np.random.Generator, size: int = 256) -> Iterable[tuple[str, Image.Image]]:
    for i in range(6):
        shape = (size, size) if i % 2 else (size, size, 3)
        yield "uniform_noise", Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8))
        mean, std = rng.uniform(60, 190), rng.uniform(10, 70)
        gauss = np.clip(rng.normal(mean, std, shape), 0, 255).astype(np.uint8)
        yield "gaussian_noise", Image.fromarray(gauss)


def _gradients(size: int = 256) -> Iterable[tuple[str, Image.Image]]:
    ramp = np.linspace(0, 255, size)
    yy, xx = np.mgrid[:size, :size] / (size - 1)
    yield "gradient", Image.fromarray(np.tile(ramp, (size, 1)).astype(np.uint8))
    yield "gradient", Image.fromarray(np.tile(ramp[:, None], (1, size)).astype(np.uint8))
    yield "gradient", Image.fromarray(((xx + yy) / 2 * 255).astype(np.uint8))
    radial = np.clip(1 - np.hypot(xx - 0.5, yy - 0.5) / 0.7, 0, 1)
    yield "gradient", Image.fromarray((radial * 255).astype(np.uint8))
    yield "gradient", Image.fromarray(((1 - radial) * 255).astype(np.uint8))
    colour = np.stack([xx * 255, yy * 255, (1 - xx) * 255], axis=-1).astype(np.uint8)
    yield "gradient", Image.fromarray(colour)


def _checkerboards(size: int = 256) -> Iterable[tuple[str, Image.Image]]:
    yy, xx = np.mgrid[:size, :size]
    for cell in (4, 8, 16, 32, 64):
        board = (((yy // cell) + (xx // cell)) % 2 * 255).astype(np.uint8)
        yield "checkerboard", Image.fromarray(board)


def _font(size: int) -> ImageFont.ImageFont:
    try:
        import matplotlib

        path = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"
        return ImageFont.truetype(str(path), size)
    except (ImportError, OSError):
        return ImageFont.load_default()


def _text_image(rng: np.random.Generator, size: tuple[int, int], fg: int, bg: int, font_size: int) -> Image.Image:
    image = Image.new("L", size, bg)
    draw = ImageDraw.Draw(image)
    font = _font(font_size)
    y = font_size
    while y < size[1] - font_size:
        words = " ".join(rng.choice(_WORDS, size=int(rng.integers(3, 12))))
        draw.text((font_size, y), words.capitalize(), fill=fg, font=font)
        y += int(font_size * 1.6)
    return image


def _texts(rng: np.random.Generator) -> Iterable[tuple[str, Image.Image]]:
    for font_size in (10, 14, 18, 24, 32):
        yield "document", _text_image(rng, (420, 594), fg=20, bg=250, font_size=font_size)
        yield "screenshot", _text_image(rng, (640, 400), fg=235, bg=15, font_size=font_size)
    page = _text_image(rng, (420, 594), fg=0, bg=255, font_size=14)
    ImageDraw.Draw(page).rectangle((40, 300, 380, 520), outline=0, width=2)
    yield "document", page


def _blanks(rng: np.random.Generator, size: int = 256) -> Iterable[tuple[str, Image.Image]]:
    for level in (0, 1, 40, 128, 200, 255):
        yield "blank", Image.new("L", (size, size), level)
    yield "blank", Image.new("RGB", (size, size), (30, 90, 200))
    for level in (0, 10, 60, 128, 220):
        noisy = np.clip(level + rng.normal(0, 2.0, (size, size)), 0, 255).astype(np.uint8)
        yield "near_constant", Image.fromarray(noisy)


def _chest_xrays(rng: np.random.Generator, size: int = 512) -> Iterable[tuple[str, Image.Image]]:
    """Bright body on a dark background, two dark lungs, bright ribs, spine and heart."""
    yy, xx = np.mgrid[:size, :size] / size
    for i in range(4):
        body = (((xx - 0.5) / 0.42) ** 2 + ((yy - 0.55) / 0.5) ** 2 < 1) * 170.0
        for side in (-1, 1):
            lung = ((xx - 0.5 - side * 0.17) / 0.13) ** 2 + ((yy - 0.5) / 0.3) ** 2 < 1
            body[lung] = 60
        for k in range(8):  # ribs: bright arcs across the lungs
            rib = np.abs(yy - 0.25 - 0.065 * k - 0.08 * (xx - 0.5) ** 2 * 4) < 0.008
            body[rib & (body > 0) & (body < 100)] = 150
        spine = np.abs(xx - 0.5) < 0.03
        body[spine & (yy > 0.1)] = 210
        heart = ((xx - 0.55) / 0.12) ** 2 + ((yy - 0.62) / 0.12) ** 2 < 1
        body[heart] = 190
        body = body + rng.normal(0, 6 + 3 * i, body.shape)
        image = Image.fromarray(np.clip(body, 0, 255).astype(np.uint8))
        yield "chest_xray", image.filter(ImageFilter.GaussianBlur(1.5 + i))


def _elevation_maps() -> Iterable[tuple[str, Image.Image]]:
    """Grey renderings of matplotlib's terrain samples: grey, smooth, not a head."""
    try:
        import matplotlib

        sample = Path(matplotlib.get_data_path()) / "sample_data"
    except ImportError:
        return
    for name, key in (("jacksboro_fault_dem.npz", "elevation"), ("topobathy.npz", "topo")):
        path = sample / name
        if not path.is_file():
            continue
        with np.load(path) as data:
            z = np.asarray(data[key], dtype=np.float64)
        z = (z - z.min()) / max(np.ptp(z), 1e-9) * 255
        image = Image.fromarray(z.astype(np.uint8)).resize((256, 256), Image.Resampling.BILINEAR)
        yield "elevation_map", image
        yield "elevation_map", Image.fromarray(255 - np.asarray(image))


def mri_fragments(scans: Sequence[Path], fraction: float = 0.15) -> Iterable[tuple[str, Image.Image]]:
    """Heavily cropped fragments of real scans: each corner and the centre, ``fraction`` of the
    side, upscaled to 256 px."""
    for path in scans:
        with Image.open(path) as image:
            grey = image.convert("L")
        width, height = grey.size
        w, h = max(int(width * fraction), 8), max(int(height * fraction), 8)
        boxes = [
            (0, 0, w, h), (width - w, 0, width, h), (0, height - h, w, height), (width - w, height - h, width, height),
            ((width - w) // 2, (height - h) // 2, (width + w) // 2, (height + h) // 2),
        ]
        for box in boxes:
            yield "mri_fragment", grey.crop(box).resize((256, 256), Image.Resampling.BICUBIC)


def _fragment_sources(data_root: Path | None, n: int) -> list[Path]:
    if data_root is None:
        return []
    testing = Path(data_root) / "Testing"
    if not testing.is_dir():
        logger.warning("no Testing folder under %s: MRI fragments are left out", data_root)
        return []
    from .data import find_samples

    samples = find_samples(testing)
    return [p for label in sorted({s.label for s in samples}) for p in [s.path for s in samples if s.label == label][: max(1, n // 4)]]


def non_mri_images(seed: int = 0, data_root: Path | None = None, n_fragment_scans: int = 8) -> list[tuple[str, Image.Image]]:
    """The whole non-MRI set as ``(kind, image)`` pairs (deterministic for a given seed).

    ``data_root``: the dataset folder, for fragments of real scans (left out when None).
    """
    rng = np.random.default_rng(seed)
    items: list[tuple[str, Image.Image]] = []
    for generator in (
        _photos(rng), _noise(rng), _gradients(), _checkerboards(), _texts(rng), _blanks(rng),
        _chest_xrays(rng), _elevation_maps(), mri_fragments(_fragment_sources(data_root, n_fragment_scans)),
    ):
        items.extend(generator)
    unknown = {kind for kind, _ in items} - set(KINDS)
    if unknown:
        raise ValueError(f"Unknown kinds {sorted(unknown)}; expected some of {KINDS}.")
    return items
