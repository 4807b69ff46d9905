"""``python -m train``: rebuild the classifier's weights from the Kaggle Brain Tumor MRI Dataset.

The defaults are the shipped recipe (``train.config.TrainConfig``). One process (CPU or one GPU)::

    python -m train --data-dir ../shared/datasets/brain-tumor-mri \\
        --extra-data ../shared/datasets/extra-train/tcga-lgg --output runs/cpu

Several GPUs or CPU processes (DistributedDataParallel)::

    torchrun --nproc_per_node 4 -m train --data-dir DIR --extra-data EXTRA --output runs/ddp
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import os
import platform
import random
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Subset
from tqdm import tqdm

from core.runtime import TorchRuntime
from core.constants import CLASS_NAMES, HISTORY_NAME, INPUT_MEAN, INPUT_STD, WEIGHTS_NAME
from core.model import build_network
from core.optimize import optimize_for_inference
from core.weights import save_weights, write_model_card

from . import metrics
from .config import SPLITS, TrainConfig
from .data import ScanFolder
from .engine import load_checkpoint, lr_factor, predict_probs, save_checkpoint, train_one_epoch
from .finalize import finalize, write_json
from .presets import ClassificationPresetEval, ClassificationPresetTrain, SyntheticT2
from .pretrained import load_imagenet_weights
from .splits import load_data

logger = logging.getLogger("train")

CHECKPOINT_NAME = "checkpoint.safetensors"
DIST_TIMEOUT = dt.timedelta(minutes=60)


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    """The command line of ``python -m train``; its defaults are :class:`TrainConfig`'s, the
    shipped recipe."""
    defaults = TrainConfig()  # read at call time ($BTMRI_DATA)
    parser = argparse.ArgumentParser(
        prog="python -m train",
        description="Train the brain-MRI tumour classifier (a timm network, transfer learning from ImageNet). "
        "The defaults are the shipped recipe (assets/model_card.json, training.config).",
        add_help=add_help,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--data-dir", type=Path, default=defaults.data_dir, help="folder holding Training/ and Testing/ ($BTMRI_DATA when set)")
    parser.add_argument(
        "--extra-data", type=Path, action="append", default=[], metavar="DIR",
        help="an extra training source (repeatable): a folder with CSV manifests (path, patient, "
        "optional sequence and label columns), e.g. ../shared/datasets/extra-train/tcga-lgg; "
        "split into train and validation by patient",
    )
    parser.add_argument("--output", type=Path, default=defaults.output, help="folder for weights, model card, metrics and checkpoint")
    parser.add_argument("--arch", default=defaults.arch, help="timm architecture name")
    parser.add_argument("--epochs", type=int, default=defaults.epochs, help=f"total epochs, the {defaults.freeze_epochs} head-only epoch(s) included")
    parser.add_argument("--image-size", type=int, default=defaults.image_size, help="square input size in pixels")
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size, help="images per batch (per process)")
    parser.add_argument("--lr", type=float, default=defaults.lr, help="peak AdamW learning rate")
    parser.add_argument(
        "--freeze-stages", type=int, default=defaults.freeze_stages,
        help="keep the stem and the first N stages of the backbone at their ImageNet weights for the "
        "whole run (no gradients there: faster steps on a CPU; batch-norm statistics still adapt)",
    )
    parser.add_argument(
        "--synth-t2", type=float, default=defaults.synth_t2,
        help="probability of replacing an extra source's FLAIR scan by a T2-like image made from it and the "
        "slice's T1 (train.presets.SyntheticT2; 0 = off)",
    )
    parser.add_argument(
        "--crop-head", action=argparse.BooleanOptionalAction, default=defaults.crop_head,
        help="crop every scan to its head before resizing (core.preprocess.head_box), in training, "
        "evaluation and the app alike (recorded in the model card)",
    )
    parser.add_argument(
        "--split", default=defaults.split,
        help=f"one of {SPLITS}. group: validation carved from Training so that no near-duplicate group "
        "crosses train/validation; stratified: plain stratified split; group-strict: as group, and "
        "Training scans that the audit report (assets/audit.json, from python -m train.audit) puts in "
        "a group with a Testing scan are left out, so no group crosses train/validation/test either",
    )
    parser.add_argument("--seed", type=int, default=defaults.seed, help="seed for the split, the initialisation and the augmentation")
    parser.add_argument("--workers", type=int, default=defaults.workers, help="data-loading processes")
    parser.add_argument("--device", default=None, help="cpu or cuda (None: cuda when present)")
    parser.add_argument("--resume", action="store_true", help="continue from OUTPUT/checkpoint.safetensors (the remaining epochs draw shuffles of their own)")
    parser.add_argument("--max-per-class", type=int, default=None, help="use at most N images per class and split (smoke tests)")
    parser.add_argument("--no-test", action="store_true", help="skip the final evaluation on Testing")
    parser.add_argument(
        "--no-finalize", action="store_true",
        help="stop after training: write the selected weights, their card and history.json only, "
        "without calibration, the out-of-distribution gate, the Testing evaluation or the ONNX "
        "export (python -m train.finalize runs them later; train.compare evaluates on its own)",
    )
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    return parser


# ---------------------------------------------------------------------- distributed
def _init_distributed(device_arg: str | None) -> tuple[int, int, torch.device]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    use_cuda = torch.cuda.is_available() and device_arg != "cpu"
    if world > 1:
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        if use_cuda:
            torch.cuda.set_device(local_rank)
        if not dist.is_initialized():
            # Rank 0 alone evaluates on Testing and writes the artifacts at the end while the
            # others wait at a barrier: allow for that longer than the default 10 minutes.
            dist.init_process_group(backend="nccl" if use_cuda else "gloo", timeout=DIST_TIMEOUT)
        device = torch.device(f"cuda:{local_rank}" if use_cuda else "cpu")
        return dist.get_rank(), world, device
    return 0, 1, torch.device(device_arg or ("cuda" if use_cuda else "cpu"))


def _gather(array: np.ndarray, world: int) -> np.ndarray:
    """The concatenation of every rank's ``array`` (in rank order), on every rank."""
    if world == 1:
        return array
    parts: list[Any] = [None] * world
    dist.all_gather_object(parts, array)
    return np.concatenate(parts)


def _sync_buffers(model: torch.nn.Module, world: int) -> None:
    """Give every rank rank 0's buffers (batch-norm running statistics).

    DDP broadcasts them at the start of each training forward pass only, so after an epoch each
    rank holds statistics updated by its own last batch; validation, split across the ranks,
    must run the weights rank 0 saves.
    """
    if world == 1:
        return
    for buffer in model.buffers():
        dist.broadcast(buffer, src=0)


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _seed_worker(worker_id: int) -> None:
    seed = torch.initial_seed() % 2**32
    random.seed(seed)
    np.random.seed(seed)


# ---------------------------------------------------------------------- data
def training_set(config: TrainConfig, train_samples) -> ScanFolder:
    """The training scans as the training loop draws them: augmented, and T2-like images as
    ``config`` asks."""
    return ScanFolder(
        train_samples, ClassificationPresetTrain(config.image_size, strength=config.augment, crop_head=config.crop_head),
        synthesise=SyntheticT2(config.synth_t2) if config.synth_t2 > 0 else None,
    )


def _loader(dataset, batch_size: int, workers: int, shuffle: bool, seed: int, sampler=None) -> DataLoader:
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle and sampler is None,
        sampler=sampler,
        num_workers=workers,
        pin_memory=torch.cuda.is_available(),
        persistent_workers=workers > 0,
        worker_init_fn=_seed_worker,
        generator=generator,
        drop_last=False,
    )


#: Spaces the seeds of resumed shuffles away from the seeds runs start from (seed, seed + rank).
_RESUME_SEED_STRIDE = 1_000_003


def _resume_shuffle(loader: DataLoader, seed: int, start_epoch: int) -> None:
    """Give a resumed run shuffles of its own.

    A loader's shuffle comes from a generator seeded once per run, so a run resumed at epoch
    ``start_epoch`` would replay epoch 1's order. The generator is reseeded from ``seed`` and
    ``start_epoch`` instead: the resumed epochs draw fresh, reproducible orders, though not
    those of an uninterrupted run. A ``DistributedSampler`` needs nothing: ``set_epoch`` seeds
    each epoch's order.
    """
    if start_epoch > 0 and not hasattr(loader.sampler, "set_epoch"):
        loader.generator.manual_seed(seed + _RESUME_SEED_STRIDE * start_epoch)


# ---------------------------------------------------------------------- main
def _frozen_stage_modules(model: torch.nn.Module, stages: int) -> list[torch.nn.Module]:
    """The stem and the first ``stages`` stages of a timm EfficientNet (``--freeze-stages``)."""
    if stages <= 0:
        return []
    blocks = getattr(model, "blocks", None)
    if blocks is None or not hasattr(model, "conv_stem"):
        raise SystemExit(f"--freeze-stages needs an EfficientNet-style network (conv_stem, blocks); got {type(model).__name__}.")
    if stages > len(blocks):
        raise SystemExit(f"--freeze-stages must be in [0, {len(blocks)}] for this network, got {stages}.")
    return [model.conv_stem, model.bn1, *list(blocks)[:stages]]


def set_backbone_trainable(model: torch.nn.Module, trainable: bool, frozen_stages: int = 0) -> None:
    """Which parameters get gradients: the classifier head always; the backbone when
    ``trainable``, except the stem and the first ``frozen_stages`` stages."""
    head = set(id(p) for p in model.get_classifier().parameters())
    frozen = {id(p) for m in _frozen_stage_modules(model, frozen_stages) for p in m.parameters()}
    for param in model.parameters():
        param.requires_grad_((trainable and id(param) not in frozen) or id(param) in head)


def _hardware(device: torch.device, world: int) -> str:
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        return f"{world} x {name}" if world > 1 else name
    return f"CPU ({platform.processor() or platform.machine()}), {torch.get_num_threads()} threads" + (
        f", {world} processes" if world > 1 else ""
    )


def main(args: argparse.Namespace | TrainConfig) -> dict[str, Any]:
    """Train, select the best epoch on validation, save weights and metrics, evaluate on Testing.

    ``args``: the parsed command line, or a :class:`~train.config.TrainConfig`.
    """
    config = args if isinstance(args, TrainConfig) else TrainConfig.from_namespace(args)
    config.check()
    rank, world, device = _init_distributed(config.device)
    is_main = rank == 0
    logging.basicConfig(level=logging.INFO if is_main else logging.WARNING, format="%(asctime)s %(message)s")
    _seed_everything(config.seed + rank)
    started = time.perf_counter()
    output: Path = config.output
    if is_main:
        output.mkdir(parents=True, exist_ok=True)

    train_samples, val_samples, test_samples = load_data(config)
    logger.info(
        "data: %d train, %d validation, %d test images (%s split)",
        len(train_samples), len(val_samples), len(test_samples), config.split,
    )
    train_set = training_set(config, train_samples)
    eval_tf = ClassificationPresetEval(config.image_size, crop_head=config.crop_head)
    val_set = ScanFolder(val_samples, eval_tf)
    sampler = None
    if world > 1:
        if len(val_set) < world:
            raise SystemExit(f"{len(val_set)} validation scans cannot be shared by {world} processes; use fewer processes or more data.")
        sampler = torch.utils.data.DistributedSampler(train_set, num_replicas=world, rank=rank, shuffle=True, seed=config.seed)
        val_set = Subset(val_set, list(range(rank, len(val_set), world)))
    train_loader = _loader(train_set, config.batch_size, config.workers, True, config.seed + rank, sampler)
    val_loader = _loader(val_set, config.batch_size * 2, config.workers, False, config.seed)

    model = build_network(config.arch, num_classes=len(CLASS_NAMES))
    _frozen_stage_modules(model, config.freeze_stages)  # refuses a stage count the network lacks
    if not config.no_pretrained:
        load_imagenet_weights(model, config.arch)
    # timm initialises a classifier in +-1/sqrt(num_classes): +-0.5 for four classes, which gives
    # logits of +-20 on pre-trained features. Start from uniform predictions instead.
    torch.nn.init.zeros_(model.get_classifier().weight)
    torch.nn.init.zeros_(model.get_classifier().bias)
    model = model.to(device).to(memory_format=torch.channels_last)
    ddp_model = torch.nn.parallel.DistributedDataParallel(model, find_unused_parameters=True) if world > 1 else model

    criterion = torch.nn.CrossEntropyLoss(label_smoothing=config.label_smoothing)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    steps_per_epoch = len(train_loader)
    head_steps = config.freeze_epochs * steps_per_epoch
    full_steps = (config.epochs - config.freeze_epochs) * steps_per_epoch
    warmup = max(1, steps_per_epoch // 3)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, head_steps, full_steps, warmup)
    )

    history: list[dict[str, Any]] = []
    best_state: dict[str, torch.Tensor] | None = None
    best_key = (-1.0, float("-inf"))
    start_epoch = 0
    elapsed_before = 0.0
    checkpoint_path = output / CHECKPOINT_NAME
    if config.resume:
        best_state, saved = load_checkpoint(checkpoint_path, model, optimizer, scheduler)
        start_epoch = saved["epoch"] + 1
        history = saved["history"]
        best_key = tuple(saved["best_key"])
        elapsed_before = saved.get("elapsed_s", 0.0)
        _resume_shuffle(train_loader, config.seed + rank, start_epoch)
        logger.info("resumed from %s at epoch %d", checkpoint_path, start_epoch + 1)

    progress = is_main and not config.no_progress
    epochs = tqdm(range(start_epoch, config.epochs), desc="epochs", disable=not progress, initial=start_epoch, total=config.epochs)
    for epoch in epochs:
        set_backbone_trainable(model, epoch >= config.freeze_epochs, config.freeze_stages)
        if hasattr(sampler, "set_epoch"):  # DistributedSampler reshuffles per epoch
            sampler.set_epoch(epoch)
        epoch_start = time.perf_counter()
        train_loss, train_probs, train_targets = train_one_epoch(
            ddp_model, criterion, optimizer, scheduler, train_loader, device,
            desc=f"epoch {epoch + 1}", progress=progress,
        )
        _sync_buffers(model, world)
        # Validated with the batch norms folded into the convolutions (core.optimize: same
        # logits within 1e-5; 1.5x faster on the CPU: 18.5 against 28 ms a scan).
        scorer = optimize_for_inference(model.eval(), config.image_size)
        val_probs, val_targets = predict_probs(TorchRuntime(scorer, device), val_loader, desc="validate", progress=progress)
        del scorer
        train_probs, train_targets = _gather(train_probs, world), _gather(train_targets, world)
        val_probs, val_targets = _gather(val_probs, world), _gather(val_targets, world)
        train_m = metrics.summary(train_probs, train_targets)
        train_m["loss"] = float(np.mean(_gather(np.array([train_loss]), world)))  # the smoothed training loss
        val_m = metrics.summary(val_probs, val_targets)
        # over all ranks: the whole validation set; the training set as the sampler dealt it
        # (DistributedSampler repeats a few scans so that every rank gets as many)
        train_m["n_images"], val_m["n_images"] = len(train_targets), len(val_targets)
        record = {
            "epoch": epoch + 1,
            "phase": "head" if epoch < config.freeze_epochs else "full",
            "lr": optimizer.param_groups[0]["lr"],
            "seconds": round(time.perf_counter() - epoch_start, 1),
            "train": train_m,
            "val": val_m,
        }
        history.append(record)
        key = (val_m["macro_f1"], -val_m["loss"])
        improved = key > best_key
        if improved:
            best_key = key
            best_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        if is_main:
            logger.info(
                "epoch %d/%d %s | train loss %.4f acc %.4f f1 %.4f | val loss %.4f acc %.4f "
                "prec %.4f rec %.4f f1 %.4f | %.0fs%s",
                epoch + 1, config.epochs, record["phase"], train_m["loss"], train_m["accuracy"], train_m["macro_f1"],
                val_m["loss"], val_m["accuracy"], val_m["macro_precision"], val_m["macro_recall"], val_m["macro_f1"],
                record["seconds"], " *" if improved else "",
            )
            write_json(output / HISTORY_NAME, {"class_names": list(CLASS_NAMES), "epochs": history})
            save_checkpoint(
                checkpoint_path, model, optimizer, scheduler, best_state,
                {
                    "epoch": epoch,
                    "history": history,
                    "best_key": list(best_key),
                    "elapsed_s": elapsed_before + time.perf_counter() - started,
                    "args": config.to_dict(),
                },
            )

    wall_time = elapsed_before + time.perf_counter() - started
    if world > 1:
        dist.barrier()
    result: dict[str, Any] = {"history": history}
    if is_main:
        model.load_state_dict(best_state)
        best_epoch = max(history, key=lambda r: (r["val"]["macro_f1"], -r["val"]["loss"]))["epoch"]
        card = {
            "arch": config.arch,
            "image_size": config.image_size,
            "mean": list(INPUT_MEAN),
            "std": list(INPUT_STD),
            "crop_head": config.crop_head,
            "class_names": list(CLASS_NAMES),
            "temperature": 1.0,
            "trained_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "training": {
                "config": config.to_dict(),
                "hardware": _hardware(device, world),
                "wall_time_s": round(wall_time, 1),
                "best_epoch": best_epoch,
                "selected_on": "validation macro F1 (ties: lower validation loss)",
                "torch": torch.__version__,
            },
        }
        if config.no_finalize:
            card["validation"] = history[best_epoch - 1]["val"]
            result["card"] = save_weights(model, output / WEIGHTS_NAME, card)
            logger.info("wrote %s: training %.0f s (post-training steps skipped: --no-finalize)", output, wall_time)
            if world > 1:
                dist.barrier()
                dist.destroy_process_group()
            return result
        finalize_started = time.perf_counter()
        card = finalize(model, card, config, output, device, history, progress, (train_samples, val_samples, test_samples))
        # wall_time_s is the training itself (data, epochs, validation); the recipe's whole run
        # adds calibration, the gate, the Testing evaluation and the ONNX export.
        post_training = time.perf_counter() - finalize_started
        card["training"]["post_training_s"] = round(post_training, 1)
        card["training"]["total_wall_time_s"] = round(wall_time + post_training, 1)
        write_model_card(output / WEIGHTS_NAME, card)
        result["card"] = card
        logger.info(
            "wrote %s: training %.0f s, then calibration, gate, evaluation and export %.0f s; %.0f s in all",
            output, wall_time, post_training, wall_time + post_training,
        )
    if world > 1:
        dist.barrier()
        dist.destroy_process_group()
    return result


def cli(argv: Sequence[str] | None = None) -> None:
    main(get_args_parser().parse_args(argv))


if __name__ == "__main__":
    cli(sys.argv[1:])
