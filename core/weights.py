"""Weights on disk: safetensors beside a JSON model card that holds their sha256.

Nothing here unpickles: weights are read with safetensors only, and refused unless their
sha256 matches the model card.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .constants import MODEL_CARD_NAME

__all__ = [
    "WeightsError",
    "card_path_for",
    "checked_companion",
    "load_weights",
    "read_model_card",
    "save_weights",
    "sha256_file",
    "write_model_card",
]

logger = logging.getLogger(__name__)

#: Keys every model card must have for ``core`` to rebuild the network.
REQUIRED_CARD_KEYS = ("arch", "image_size", "mean", "std", "class_names", "weights_sha256")


class WeightsError(RuntimeError):
    """Weights or their model card are missing, corrupt or do not match; names the file."""


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def card_path_for(weights: str | Path) -> Path:
    """The model card that belongs to a weights file: ``model_card.json`` in the same folder."""
    return Path(weights).with_name(MODEL_CARD_NAME)


def read_model_card(weights: str | Path) -> dict[str, Any]:
    path = card_path_for(weights)
    if not path.is_file():
        raise WeightsError(f"Model card {str(path)!r} not found (it must sit beside the weights).")
    try:
        card = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise WeightsError(f"Model card {str(path)!r} is not valid JSON: {exc}") from exc
    if not isinstance(card, dict):
        raise WeightsError(f"Model card {str(path)!r} must hold a JSON object.")
    missing = [key for key in REQUIRED_CARD_KEYS if key not in card]
    if missing:
        raise WeightsError(f"Model card {str(path)!r} lacks the keys {missing}.")
    return card


def save_weights(model: torch.nn.Module, path: str | Path, card: dict[str, Any]) -> dict[str, Any]:
    """Write ``model``'s weights as safetensors and the card (with their sha256) beside them."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    metadata = {"arch": str(card["arch"]), "image_size": str(card["image_size"])}
    save_file(state, str(path), metadata=metadata)
    card = {**card, "weights_file": path.name, "weights_sha256": sha256_file(path)}
    write_model_card(path, card)
    logger.info("saved weights to %s", path)
    return card


def write_model_card(weights: str | Path, card: dict[str, Any]) -> None:
    """Write the model card that belongs to ``weights`` (``model_card.json`` beside them)."""
    card_path_for(weights).write_text(json.dumps(card, indent=2) + "\n", encoding="utf-8")


def checked_companion(folder: str | Path, info: dict[str, Any], default_name: str, what: str) -> Path:
    """The file a model card names beside the weights (``info["file"]``), refused with a
    :class:`WeightsError` naming it (``what``: e.g. "ONNX file") when missing or when its
    sha256 differs from ``info["sha256"]``."""
    path = Path(folder) / str(info.get("file", default_name))
    if not path.is_file():
        raise WeightsError(f"{what} {str(path)!r} named by the model card not found.")
    actual = sha256_file(path)
    if actual != info.get("sha256"):
        raise WeightsError(
            f"{what} {str(path)!r} does not match its model card (sha256 {actual[:12]}... "
            f"instead of {str(info.get('sha256'))[:12]}...). Refusing to load it."
        )
    return path


def load_weights(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read the card and the weights, refusing a file whose sha256 differs from the card's."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"Weights file {str(path)!r} not found.")
    card = read_model_card(path)
    actual = sha256_file(path)
    if actual != card["weights_sha256"]:
        raise WeightsError(
            f"Weights file {str(path)!r} does not match its model card (sha256 {actual[:12]}... "
            f"instead of {str(card['weights_sha256'])[:12]}...): it is corrupt, truncated or "
            "was replaced. Refusing to load it."
        )
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise WeightsError(f"Weights file {str(path)!r} is not a valid safetensors file: {exc}") from exc
    return state, card
