"""``python -m benchmarks.train_speed``: training throughput on this machine, option by option.

Measures images per second of the real training step (forward, loss, backward, AdamW step) of
``efficientnet_lite0`` on random batches (data loading excluded), for the options the recipe
weighs: memory format, input size, a frozen backbone (the head-only first epoch), the stem and
first stages frozen (``--freeze-stages``) and bf16 autocast. From the measured rates it estimates the wall time of the default recipe.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import sys
import time
from pathlib import Path

import torch

from core.constants import CLASS_NAMES
from core.model import build_network
from train.train import set_backbone_trainable
from train.train import get_args_parser as train_parser

FULL = None  # the whole backbone frozen: the head-only first epoch

CONFIGS = [
    # name, image size, channels_last, frozen stages (0: none; FULL: whole backbone), bf16 autocast
    ("224 px, default memory format", 224, False, 0, False),
    ("224 px, channels_last", 224, True, 0, False),
    ("192 px, channels_last", 192, True, 0, False),
    ("160 px, channels_last", 160, True, 0, False),
    ("192 px, channels_last, backbone frozen (head epoch)", 192, True, FULL, False),
    ("192 px, channels_last, stem + 2 stages frozen (--freeze-stages 2)", 192, True, 2, False),
    ("192 px, channels_last, bf16 autocast", 192, True, 0, True),
]


def measure(size: int, channels_last: bool, frozen: int | None, bf16: bool, batch: int, steps: int) -> float:
    torch.manual_seed(0)
    net = build_network("efficientnet_lite0").train()
    set_backbone_trainable(net, trainable=frozen is not FULL, frozen_stages=frozen or 0)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    net = net.to(memory_format=fmt)
    optimizer = torch.optim.AdamW([p for p in net.parameters() if p.requires_grad], lr=1e-3)
    criterion = torch.nn.CrossEntropyLoss(label_smoothing=0.1)
    x = torch.randn(batch, 3, size, size).contiguous(memory_format=fmt)
    y = torch.randint(0, len(CLASS_NAMES), (batch,))
    cast = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()

    def step():
        with cast:
            loss = criterion(net(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    step()  # warm-up
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return batch * steps / (time.perf_counter() - start)


def main(args: argparse.Namespace) -> dict:
    results = {}
    for name, size, cl, frozen, bf16 in CONFIGS:
        rate = measure(size, cl, frozen, bf16, args.batch_size, args.steps)
        results[name] = round(rate, 1)
        print(f"{name:55s} {rate:6.1f} images/s", flush=True)
    recipe = train_parser().parse_args([])
    n_train = args.train_images
    head_rate = results["192 px, channels_last, backbone frozen (head epoch)"]
    full_rate = results["192 px, channels_last"]
    staged_rate = results["192 px, channels_last, stem + 2 stages frozen (--freeze-stages 2)"]
    estimate = (
        recipe.freeze_epochs * n_train / head_rate
        + (recipe.epochs - recipe.freeze_epochs) * n_train / full_rate
    )
    staged = recipe.freeze_epochs * n_train / head_rate + (recipe.epochs - recipe.freeze_epochs) * n_train / staged_rate
    print(
        f"estimated training compute for the default recipe ({recipe.epochs} epochs at {recipe.image_size} px, "
        f"{n_train} training images; validation and data loading not included): {estimate / 60:.0f} min; "
        f"with --freeze-stages 2: {staged / 60:.0f} min"
    )
    out = {
        "machine": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "batch_size": args.batch_size,
        "images_per_second": results,
        "default_recipe_estimate_min": round(estimate / 60, 1),
        "freeze_stages_2_estimate_min": round(staged / 60, 1),
    }
    if args.output:
        args.output.write_text(json.dumps(out, indent=1) + "\n")
    return out


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.train_speed", description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=3, help="timed steps per option")
    parser.add_argument("--train-images", type=int, default=4892, help="training images per epoch (default: the group split)")
    parser.add_argument("--output", type=Path, default=None, help="write the figures as JSON")
    return parser


if __name__ == "__main__":
    main(get_args_parser().parse_args(sys.argv[1:]))
