"""``python -m train.export``: write ``model.onnx`` beside trained weights for ONNX Runtime.

The exported graph is the network of the weights with two outputs: the logits and the block
statistics that the out-of-distribution gate taps (``card["ood"]["stages"]``; logits only when
the card has no gate). It is checked against PyTorch on random inputs before the model card
records it (``card["onnx"]``: file, sha256, stages, input channels, opset, the weights' sha256 and
the largest difference measured).

Grey input: when the card's normalisation is the same for every channel, the three input
channels (the grey scan repeated) are equal, so the exported graph takes the one grey channel
and its first convolution the sum of the stem's weights over the three (exact up to float
rounding): a third of the input to prepare, and a little less to compute.

``train.finalize`` runs this step itself; run it by hand after changing the gate of a model::

    python -m train.export --weights assets/model.safetensors
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import importlib.util
import logging
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from core.model import build_network
from core.ood import forward_with_taps
from core.runtime import INPUT_NAME, ONNX_NAME, OnnxRuntime, Runtime, TorchRuntime, open_session
from core.weights import load_weights, sha256_file, write_model_card

__all__ = ["export_onnx", "fold_grey_stem", "get_args_parser", "grey_input", "main", "scoring_runtime"]

logger = logging.getLogger(__name__)

#: Largest absolute logit difference accepted between ONNX Runtime and PyTorch.
EXPORT_ATOL = 1e-4
#: The graph's outputs: the logits, and the gate's tapped statistics when the card has a gate.
OUTPUT_NAMES = ("logits", "taps")


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


def grey_input(card: dict[str, Any]) -> bool:
    """Whether the network's input channels are always equal (``core.preprocess`` repeats the grey
    scan; the card's mean and std are the same for every channel)."""
    mean, std = card.get("mean"), card.get("std")
    return bool(mean) and bool(std) and len(set(mean)) == 1 and len(set(std)) == 1


def fold_grey_stem(net: torch.nn.Module) -> torch.nn.Module | None:
    """A copy of ``net`` that takes one grey channel: the stem convolution's weights summed over
    its three input channels. None when ``net`` has no such stem (timm's ``conv_stem``)."""
    stem = getattr(net, "conv_stem", None)
    if not isinstance(stem, torch.nn.Conv2d) or stem.in_channels != 3 or stem.groups != 1:
        return None
    folded = copy.deepcopy(net)
    folded.conv_stem.weight = torch.nn.Parameter(stem.weight.detach().sum(dim=1, keepdim=True))
    folded.conv_stem.in_channels = 1
    return folded


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
    reference = _WithTaps(net, stages).eval()
    grey = fold_grey_stem(net) if grey_input(card) else None
    module = _WithTaps(grey, stages).eval() if grey is not None else reference
    channels = 1 if grey is not None else 3
    example = torch.rand(2, channels, size, size) * 2 - 1
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
        x = torch.rand(n, channels, size, size, generator=generator) * 2 - 1
        with torch.inference_mode():
            # Checked against the network as trained, given the grey channel three times.
            expected = reference(x.expand(-1, 3, -1, -1))
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
        "input_channels": channels,
        "opset": int(program.model_proto.opset_import[0].version),
        "torch": torch.__version__,
        "onnxruntime": ort.__version__,
        "max_abs_diff": worst,
    }
    logger.info(
        "exported %s (%.1f MB, %d input channel%s); ONNX Runtime within %.1e of PyTorch",
        path, path.stat().st_size / 1e6, channels, "" if channels == 1 else "s", worst,
    )
    return info


def scoring_runtime(
    net: torch.nn.Module, card: dict[str, Any], device: torch.device, stages: tuple[int, ...]
) -> tuple[Runtime, tuple[bytes, dict[str, Any]] | None]:
    """What ``train.finalize`` scores scans with (calibration and gate features, the Testing
    reports), and the exported graph: on the CPU the network exported to a temporary ONNX file
    and run by ONNX Runtime, as the app predicts, with the file's bytes and its ``card["onnx"]``
    entry so that ``train.finalize`` writes it instead of exporting a second time (ONNX Runtime
    is about 3x faster than PyTorch here, ``docs/performance.md``); on CUDA, or without
    ``onnxruntime``, the PyTorch network (and None).
    """
    net = getattr(net, "module", net)  # DistributedDataParallel
    if device.type != "cpu" or importlib.util.find_spec("onnxruntime") is None:
        return TorchRuntime(net.eval(), device, stages), None
    scoring_card = {**card, "weights_sha256": "", "ood": {"stages": list(stages)}}
    with tempfile.TemporaryDirectory(prefix="btmri-onnx-") as folder:
        info = export_onnx(net, scoring_card, Path(folder))
        path = Path(folder) / ONNX_NAME
        session = open_session(path, torch.get_num_threads())  # read whole: the file may go
        data = path.read_bytes()
    return OnnxRuntime(session), (data, info)


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
