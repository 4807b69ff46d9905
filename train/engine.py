"""One training epoch, one evaluation pass, the learning-rate schedule and safe checkpoints."""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from core.runtime import Runtime, with_mirror

from .calibrate import apply_temperature

__all__ = [
    "autocast",
    "train_one_epoch",
    "predict_logits",
    "predict_probs",
    "served_probs",
    "lr_factor",
    "save_checkpoint",
    "load_checkpoint",
]


def autocast(device: torch.device):
    """bf16 autocast on CUDA, where it is faster; plain float32 on the CPU, where bf16 is slower."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def lr_factor(step: int, head_steps: int, full_steps: int, warmup_steps: int, min_factor: float = 0.01) -> float:
    """Head-only phase at the full rate, then a short warm-up and a cosine decay to ``min_factor``."""
    if step < head_steps:
        return 1.0
    step -= head_steps
    if step < warmup_steps:
        return 0.1 + 0.9 * step / max(1, warmup_steps)
    progress = min(1.0, (step - warmup_steps) / max(1, full_steps - warmup_steps))
    return min_factor + (1.0 - min_factor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def _batches(loader: Iterable, desc: str, enabled: bool):
    return tqdm(loader, desc=desc, leave=False, disable=not enabled, dynamic_ncols=True)


def train_one_epoch(
    model: torch.nn.Module,
    criterion: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    loader: Iterable,
    device: torch.device,
    desc: str = "train",
    progress: bool = True,
) -> tuple[float, np.ndarray, np.ndarray]:
    """Returns (mean loss, probabilities, targets) over the epoch's training batches."""
    model.train()
    total_loss, count = 0.0, 0
    all_probs, all_targets = [], []
    for images, targets in _batches(loader, desc, progress):
        images = images.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
        targets = targets.to(device, non_blocking=True)
        with autocast(device):
            logits = model(images)
            loss = criterion(logits, targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        total_loss += float(loss.detach()) * len(targets)
        count += len(targets)
        all_probs.append(torch.softmax(logits.detach().float(), dim=1).cpu())
        all_targets.append(targets.cpu())
    return (
        total_loss / max(1, count),
        torch.cat(all_probs).numpy(),
        torch.cat(all_targets).numpy(),
    )


def predict_logits(
    runtime: Runtime,
    loader: Iterable,
    desc: str = "eval",
    progress: bool = True,
    mirror: bool = False,
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """Logits (float32 as the app computes them, returned as float64) for a whole loader, the
    logits of the horizontally mirrored images when ``mirror`` (else None), and the targets.
    ``runtime``: what runs the network (``core.runtime``, as the app runs it)."""
    all_logits, all_mirror, all_targets = [], [], []
    for images, targets in _batches(loader, desc, progress):
        n = len(images)
        logits, _ = runtime.run(with_mirror(images) if mirror else images)
        all_logits.append(logits[:n])
        if mirror:
            all_mirror.append(logits[n:])
        all_targets.append(np.asarray(targets))
    mirrored = np.concatenate(all_mirror) if mirror else None
    return np.concatenate(all_logits), mirrored, np.concatenate(all_targets)


def served_probs(logits: np.ndarray, mirrored: np.ndarray | None = None, temperature: float = 1.0) -> np.ndarray:
    """What ``core`` predicts from these logits: softmax at ``temperature``, averaged with the
    mirror images' when given (flip test-time augmentation)."""
    probs = apply_temperature(logits, temperature)
    return probs if mirrored is None else (probs + apply_temperature(mirrored, temperature)) / 2


def predict_probs(
    runtime: Runtime,
    loader: Iterable,
    desc: str = "eval",
    progress: bool = True,
    tta_flip: bool = False,
    temperature: float = 1.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities (float64) and targets for a whole loader (optionally averaged with a h-flip).

    The network runs in float32, as the app predicts, so that validation selects what the app
    will run.
    """
    logits, mirrored, targets = predict_logits(runtime, loader, desc, progress, mirror=tta_flip)
    return served_probs(logits, mirrored, temperature), targets


# ---------------------------------------------------------------------- checkpoints
# A checkpoint is a safetensors file (no pickle): tensors of the model, the best model so far
# and the optimizer state, plus a JSON string in the metadata for everything else.

def save_checkpoint(
    path: str | Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    best_state: dict[str, torch.Tensor] | None,
    state: dict[str, Any],
) -> None:
    tensors: dict[str, torch.Tensor] = {}
    for key, value in model.state_dict().items():
        tensors[f"model.{key}"] = value.detach().cpu().contiguous()
    for key, value in (best_state or {}).items():
        tensors[f"best.{key}"] = value.detach().cpu().contiguous()
    optim = optimizer.state_dict()
    optim_scalars: dict[str, dict[str, Any]] = {}
    for index, param_state in optim["state"].items():
        for name, value in param_state.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim.{index}.{name}"] = value.detach().cpu().contiguous()
            else:
                optim_scalars.setdefault(str(index), {})[name] = value
    sched = {k: v for k, v in scheduler.state_dict().items() if _jsonable(v)}
    meta = {
        **state,
        "optimizer_param_groups": optim["param_groups"],
        "optimizer_scalars": optim_scalars,
        "scheduler": sched,
    }
    path = Path(path)
    tmp = path.with_suffix(".tmp")
    save_file(tensors, str(tmp), metadata={"state": json.dumps(meta)})
    tmp.replace(path)  # atomic: an interrupted save never leaves a half-written checkpoint


def load_checkpoint(
    path: str | Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
) -> tuple[dict[str, torch.Tensor] | None, dict[str, Any]]:
    """Restore model, optimizer and scheduler in place; returns (best state, saved state)."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Checkpoint {str(path)!r} not found; nothing to resume.")
    with safe_open(str(path), framework="pt") as handle:
        meta = json.loads(handle.metadata()["state"])
    tensors = load_file(str(path))
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    best = {k[5:]: v for k, v in tensors.items() if k.startswith("best.")} or None
    optim_state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, index, name = key.split(".", 2)
            optim_state.setdefault(int(index), {})[name] = value
    for index, scalars in meta.pop("optimizer_scalars").items():
        optim_state.setdefault(int(index), {}).update(scalars)
    optimizer.load_state_dict({"state": optim_state, "param_groups": meta.pop("optimizer_param_groups")})
    scheduler_state = scheduler.state_dict()
    scheduler_state.update(meta.pop("scheduler"))
    scheduler.load_state_dict(scheduler_state)
    return best, meta


def _jsonable(value: Any) -> bool:
    try:
        json.dumps(value)
        return True
    except (TypeError, ValueError):
        return False
