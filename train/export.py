"""``python -m train.export``: write ``model.onnx`` beside trained weights for ONNX Runtime.

The exported graph is the network of the weights with two outputs: the logits and the block
statistics that the out-of-distribution gate taps (``card["ood"]["stages"]``; logits only when
the card has no gate). It is checked against PyTorch on random inputs before the model card
records it (``card["onnx"]``: file, sha256, stages, opset, the weights' sha256 and the largest
difference measured). ``train.finalize`` runs this step itself; run it by hand after changing
the gate of a model::

    python -m train.export --weights assets/model.safetensors
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import logging
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from core.model import build_network
from core.ood import forward_with_taps
from core.ort import INPUT_NAME, ONNX_NAME, OUTPUT_NAMES
from core.weights import load_weights, sha256_file, write_model_card

__all__ = ["export_onnx", "get_args_parser", "main"]

logger = logging.getLogger(__name__)

#: Largest absolute logit difference accepted between ONNX Runtime and PyTorch.
EXPORT_ATOL = 1e-4


class _WithTaps(torch.nn.Module):
    """The network's logits and the gate's tapped statistics, as one module to export."""

    def __init__(self, net: torch.nn.Module, stages: tuple[int, ...]):
        super().__init__()
        self.net = net
        self.stages = tuple(stages)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if not self.stages:
            return (self.net(x),)
        return forward_with_taps(self.net, x, self.stages)


@contextlib.contextmanager
def _quiet(*names: str) -> Iterator[None]:
    loggers = [logging.getLogger(name) for name in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(max(lg.level, logging.WARNING))
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def export_onnx(net: torch.nn.Module, card: dict[str, Any], folder: Path) -> dict[str, Any]:
    """Export ``net`` (the weights of ``card``) to ``folder/model.onnx``; returns ``card["onnx"]``.

    Raises RuntimeError when ONNX Runtime's outputs differ from PyTorch's by more than
    ``EXPORT_ATOL``.
    """
    import onnxruntime as ort

    stages = tuple(int(s) for s in (card.get("ood") or {}).get("stages", ()))
    size = int(card["image_size"])
    net = copy.deepcopy(net).cpu().float().eval().to(memory_format=torch.contiguous_format)
    module = _WithTaps(net, stages).eval()
    example = torch.rand(2, 3, size, size) * 2 - 1
    path = Path(folder) / ONNX_NAME
    with _quiet("onnxscript", "onnx_ir"):  # they log one line per graph pass
        program = torch.onnx.export(
            module,
            (example,),
            input_names=[INPUT_NAME],
            output_names=list(OUTPUT_NAMES[: 1 + bool(stages)]),
            dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=4096)},),
            dynamo=True,
            verbose=False,
        )
    program.save(str(path))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    generator = torch.Generator().manual_seed(0)
    worst = 0.0
    for n in (1, 3):
        x = torch.rand(n, 3, size, size, generator=generator) * 2 - 1
        with torch.inference_mode():
            expected = module(x)
        got = session.run(None, {INPUT_NAME: x.numpy()})
        for e, g in zip(expected, got):
            worst = max(worst, float(np.abs(e.numpy() - g).max()))
    if worst > EXPORT_ATOL:
        path.unlink(missing_ok=True)
        raise RuntimeError(f"ONNX Runtime differs from PyTorch by {worst:.2e} (> {EXPORT_ATOL}); {path} removed.")
    info = {
        "file": path.name,
        "sha256": sha256_file(path),
        "weights_sha256": card["weights_sha256"],
        "stages": list(stages),
        "opset": int(program.model_proto.opset_import[0].version),
        "torch": torch.__version__,
        "onnxruntime": ort.__version__,
        "max_abs_diff": worst,
    }
    logger.info("exported %s (%.1f MB); ONNX Runtime within %.1e of PyTorch", path, path.stat().st_size / 1e6, worst)
    return info


def export_beside(weights: Path) -> dict[str, Any]:
    """Export the network of ``weights`` beside it and record it in its model card."""
    state, card = load_weights(weights)
    net = build_network(card["arch"], num_classes=len(card["class_names"]))
    net.load_state_dict(state)
    card["onnx"] = export_onnx(net, card, weights.parent)
    write_model_card(weights, card)
    return card


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m train.export", description=__doc__.split("\n\n")[0])
    parser.add_argument("--weights", type=Path, required=True, help="safetensors weights with their model_card.json")
    return parser


def main(args: argparse.Namespace) -> dict[str, Any]:
    return export_beside(args.weights)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    main(get_args_parser().parse_args(sys.argv[1:]))
