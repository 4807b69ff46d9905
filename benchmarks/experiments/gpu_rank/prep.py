"""``python -m benchmarks.experiments.gpu_rank.prep --out data/gpu``: the reduced data and
weights for one GPU ranking call, zipped into ``OUT/blob.zip`` (see the package docstring)."""

from __future__ import annotations

import argparse
import importlib
import io
import json
import zipfile
from pathlib import Path

import torch
from PIL import Image

from core.constants import CLASS_NAMES, data_dir, external_dir
from train.audit import leak_free_testing
from train.data import find_extra_samples, find_samples, split_dirs
from train.external import find_external
from train.config import TrainConfig
from train.pretrained import PRETRAINED_PACKAGES

SIZE, QUALITY = 192, 55
PACKAGE_INIT = """from pathlib import Path


class {cls}:
    @staticmethod
    def get_model_file_path():
        return str(Path(__file__).with_name("weights_fp16.pth"))
"""


def _shrink(src: Path, zf: zipfile.ZipFile, name: str) -> None:
    """A scan as a small grey JPEG."""
    image = Image.open(src).convert("L")
    image.thumbnail((SIZE, SIZE), Image.LANCZOS)
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=QUALITY)
    zf.writestr(name, buffer.getvalue())


def main(args: argparse.Namespace) -> None:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    train_dir, test_dir = split_dirs(args.data_dir)
    extra = Path(args.extra_data)
    with zipfile.ZipFile(out / "blob.zip", "w", zipfile.ZIP_STORED) as zf:
        for s in find_samples(train_dir):
            _shrink(s.path, zf, f"btmri/Training/{s.path.parent.name}/{s.path.name}")
        for csv in sorted(extra.glob("*.csv")):
            zf.write(csv, f"{extra.name}/{csv.name}")
        for s in find_extra_samples(extra):
            _shrink(s.path, zf, f"{extra.name}/{s.path.relative_to(extra).as_posix()}")
        rows = []
        leak_free = leak_free_testing(Path("assets/audit.json"))
        for s in find_samples(test_dir):
            rel = s.path.relative_to(Path(args.data_dir)).as_posix()
            _shrink(s.path, zf, f"eval/{rel}")
            rows.append({"file": rel, "label": s.label, "group": "testing", "seq": None, "leakfree": rel in leak_free})
        for i, s in enumerate(find_external(args.external)):
            _shrink(s.path, zf, f"eval/external/{i:05d}.jpg")
            label = CLASS_NAMES.index(s.label) if s.label in CLASS_NAMES else len(CLASS_NAMES)
            rows.append({"file": f"external/{i:05d}.jpg", "label": label, "group": s.source, "seq": s.sequence, "leakfree": False})
        zf.writestr("eval/manifest.json", json.dumps(rows))
        module_name, cls = PRETRAINED_PACKAGES[args.arch]
        module = importlib.import_module(module_name)
        state = torch.load(getattr(module, cls).get_model_file_path(), map_location="cpu", weights_only=True)
        state = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
        buffer = io.BytesIO()
        torch.save(state, buffer)
        zf.writestr(f"pkgs/{module_name}/weights_fp16.pth", buffer.getvalue())
        zf.writestr(f"pkgs/{module_name}/__init__.py", PACKAGE_INIT.format(cls=cls))
    print(f"wrote {out / 'blob.zip'} ({(out / 'blob.zip').stat().st_size / 2**20:.1f} MiB)")


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--data-dir", default=str(data_dir()))
    parser.add_argument("--extra-data", default="../shared/datasets/extra-train/tcga-lgg")
    parser.add_argument("--external", default=str(external_dir()))
    parser.add_argument("--arch", default=TrainConfig().arch, choices=sorted(PRETRAINED_PACKAGES))
    parser.add_argument("--out", default="data/gpu", help="a git-ignored folder named in the call's carry")
    return parser


if __name__ == "__main__":
    main(get_args_parser().parse_args())
