"""``python -m benchmarks.experiments.dedup_methods --data-dir DIR``: why the audit's
near-duplicate rule is normalised correlation (NC) of 48x48 thumbnails at 0.95, and not a
perceptual hash.

Builds same-scan pairs (200 sampled scans, each re-encoded at JPEG quality 40 and 95, gamma 0.7
and 1.4, contrast x0.6, resized to 160 and 288 px, mirrored, cropped by 1 % and 2 % per side) and
different-scan pairs (each sampled scan's most similar scan with another diagnosis, i.e. another
patient), and reports how NC and a 64-bit DCT perceptual hash (Hamming distance, mirror
included) separate them. Results: ``docs/audit.md``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from benchmarks.experiments import emit
from core.constants import data_dir
from core.preprocess import to_grayscale
from core.scan import read_scan
from train.audit import THUMBNAIL_SIZE, _normalise, mirror
from train.data import find_samples, split_dirs

def phash_bits(images: Sequence[Image.Image], hash_size: int = 8, size: int = 32) -> np.ndarray:
    """DCT perceptual hash (as ``imagehash.phash``): ``(N, hash_size**2)`` array of +-1."""
    from scipy.fft import dctn

    if not images:
        return np.zeros((0, hash_size * hash_size), dtype=np.float32)
    small = np.stack(
        [np.asarray(to_grayscale(im).resize((size, size), Image.Resampling.BILINEAR), dtype=np.float32) for im in images]
    )
    low = dctn(small, type=2, axes=(1, 2), norm="ortho")[:, :hash_size, :hash_size].reshape(len(images), -1)
    bits = low > np.median(low, axis=1, keepdims=True)
    return np.where(bits, 1.0, -1.0).astype(np.float32)


def _hamming(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a.shape[1] - a @ b.T) / 2.0


def _same_scan_variants(image: Image.Image) -> dict[str, Image.Image]:
    """Constructed copies of one scan (the ways copies in this dataset differ)."""
    from PIL import ImageOps

    grey = to_grayscale(image)
    w, h = grey.size
    arr = np.asarray(grey, dtype=np.float32) / 255.0

    def jpeg(im: Image.Image, quality: int) -> Image.Image:
        import io

        buffer = io.BytesIO()
        im.save(buffer, format="JPEG", quality=quality)
        return Image.open(io.BytesIO(buffer.getvalue())).convert("L")

    def crop(fraction: float) -> Image.Image:
        cx, cy = round(w * fraction), round(h * fraction)
        return grey.crop((cx, cy, w - cx, h - cy)).resize((w, h), Image.Resampling.BICUBIC)

    return {
        "jpeg_q40": jpeg(grey, 40),
        "jpeg_q95": jpeg(grey, 95),
        "gamma_0.7": jpeg(Image.fromarray((arr**0.7 * 255).astype(np.uint8)), 90),
        "gamma_1.4": jpeg(Image.fromarray((arr**1.4 * 255).astype(np.uint8)), 90),
        "contrast_0.6": jpeg(Image.fromarray((arr * 0.6 * 255 + 30).astype(np.uint8)), 90),
        "resize_160": jpeg(grey.resize((w * 160 // 224, h * 160 // 224), Image.Resampling.BICUBIC), 90),
        "resize_288": jpeg(grey.resize((w * 288 // 224, h * 288 // 224), Image.Resampling.BICUBIC), 90),
        "mirror": jpeg(ImageOps.mirror(grey), 90),
        "crop_1pct": jpeg(crop(0.01), 90),
        "crop_2pct": jpeg(crop(0.02), 90),
    }


def compare_methods(samples: Sequence, n: int = 200, seed: int = 0) -> dict:
    """Measure how NC of thumbnails and a DCT pHash separate same-scan from different-scan pairs.

    Same scan: ``n`` sampled scans against their constructed variants
    (:func:`_same_scan_variants`). Different scans: each sampled scan against its most similar
    scan (by that method) carrying another diagnosis, i.e. a different patient (a few of these
    are mislabelled copies of the same scan, which the audit reports as cross-class groups).
    """
    rng = np.random.default_rng(seed)
    chosen = sorted(rng.choice(len(samples), size=min(n, len(samples)), replace=False).tolist())
    images = [to_grayscale(read_scan(samples[k].path)) for k in chosen]
    labels = np.array([s.label for s in samples])

    # Features of every scan, for the hardest different-diagnosis neighbour.
    all_images = [to_grayscale(read_scan(s.path)) for s in samples]
    nc_all = _normalise(
        np.stack([np.asarray(im.resize((THUMBNAIL_SIZE,) * 2, Image.Resampling.BILINEAR), np.float32).reshape(-1) for im in all_images])
    )
    ph_all = phash_bits(all_images)
    from PIL import ImageOps

    ph_all_m = phash_bits([ImageOps.mirror(im) for im in all_images])
    del all_images
    nc_all_m = mirror(nc_all)

    results: dict = {"n_scans": len(chosen), "same_scan": {}, "different_scan": {}}
    base_nc = nc_all[chosen]
    base_ph = ph_all[chosen]
    for kind in _same_scan_variants(images[0]):
        variants = [_same_scan_variants(im)[kind] for im in images]
        v_nc = _normalise(
            np.stack([np.asarray(v.resize((THUMBNAIL_SIZE,) * 2, Image.Resampling.BILINEAR), np.float32).reshape(-1) for v in variants])
        )
        v_ph, v_ph_m = phash_bits(variants), phash_bits([ImageOps.mirror(v) for v in variants])
        nc = np.einsum("ij,ij->i", base_nc, v_nc)
        nc = np.maximum(nc, np.einsum("ij,ij->i", base_nc, mirror(v_nc)))
        ham = (base_ph.shape[1] - np.maximum(
            np.einsum("ij,ij->i", base_ph, v_ph), np.einsum("ij,ij->i", base_ph, v_ph_m)
        )) / 2.0
        results["same_scan"][kind] = {"nc": nc.tolist(), "phash": ham.tolist()}

    other = labels[None, :] != labels[chosen][:, None]
    nc_neg = np.maximum(base_nc @ nc_all.T, base_nc @ nc_all_m.T)
    ph_neg = np.minimum(_hamming(base_ph, ph_all), _hamming(base_ph, ph_all_m))
    results["different_scan"] = {
        "nc": np.where(other, nc_neg, -np.inf).max(axis=1).tolist(),
        "phash": np.where(other, ph_neg, np.inf).min(axis=1).tolist(),
    }
    return _summarise(results)


def _summarise(raw: dict) -> dict:
    """Per method and threshold: share of same-scan pairs found, share of different scans matched."""
    same_nc = np.concatenate([np.array(v["nc"]) for v in raw["same_scan"].values()])
    same_ph = np.concatenate([np.array(v["phash"]) for v in raw["same_scan"].values()])
    diff_nc, diff_ph = np.array(raw["different_scan"]["nc"]), np.array(raw["different_scan"]["phash"])
    summary: dict = {"n_scans": raw["n_scans"], "nc": {}, "phash": {}}
    for t in (0.90, 0.93, 0.95, 0.97, 0.98, 0.99):
        summary["nc"][f">={t:.2f}"] = {
            "same_scan_found": round(float(np.mean(same_nc >= t)), 4),
            "same_scan_found_by_kind": {
                k: round(float(np.mean(np.array(v["nc"]) >= t)), 3) for k, v in raw["same_scan"].items()
            },
            "different_scan_matched": round(float(np.mean(diff_nc >= t)), 4),
        }
    for d in (4, 6, 8, 10, 12, 14):
        summary["phash"][f"<={d}"] = {
            "same_scan_found": round(float(np.mean(same_ph <= d)), 4),
            "same_scan_found_by_kind": {
                k: round(float(np.mean(np.array(v["phash"]) <= d)), 3) for k, v in raw["same_scan"].items()
            },
            "different_scan_matched": round(float(np.mean(diff_ph <= d)), 4),
        }
    summary["different_scan_quantiles"] = {
        "nc_p50_p90_p99_max": [round(float(q), 4) for q in np.quantile(diff_nc, [0.5, 0.9, 0.99, 1.0])],
        "phash_min_p01_p10_p50": [round(float(q), 1) for q in np.quantile(diff_ph, [0.0, 0.01, 0.1, 0.5])],
    }
    return summary


# ----------------------------------------------------------------------- CLI

def main(argv: Sequence[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.experiments.dedup_methods", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, default=data_dir(), help="folder holding Training/ and Testing/")
    parser.add_argument("--n", type=int, default=200, help="sampled scans")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", type=Path, default=None, help="JSON file (default: print)")
    args = parser.parse_args(argv)
    train_dir, test_dir = split_dirs(args.data_dir)
    result = compare_methods(find_samples(train_dir) + find_samples(test_dir), n=args.n, seed=args.seed)
    emit(result, args.output)
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
