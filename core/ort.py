"""The prediction network served by ONNX Runtime on the CPU.

``python -m train.export`` (and ``train.finalize``) writes ``model.onnx`` beside the weights: the
same network with two outputs, the logits and the statistics the out-of-distribution gate taps
(:func:`core.ood.forward_with_taps`), and records its sha256 in the model card (``card["onnx"]``).
:func:`load_runtime` opens it with ONNX Runtime; :class:`core.model.Classifier` then runs its
predictions through it on the CPU and keeps PyTorch for Grad-CAM (which needs gradients) and
for CUDA. When the card names no ONNX file, or ``onnxruntime`` is not installed, predictions run
through PyTorch as before.

Why: on the 2-core development CPU ONNX Runtime runs the shipped network about twice as fast as
PyTorch with the batch norms folded (figures in ``docs/performance.md``), with the same
probabilities within 1e-6.

Precision: ``python -m train.quantize`` writes ``model.int8.onnx`` beside it, the same graph
statically quantized to int8 (calibrated on validation scans), and records in the card
(``card["onnx_int8"]``) whether it passed the fidelity check against float32 (accuracy within
0.3 points on Testing, its leak-free subset and every external source; the same label and flags
for at least 99.5 % of Testing). :func:`load_runtime` serves that graph by default
(``precision="int8"``) when it passed, and the float32 graph otherwise or when asked
(``precision="float32"``, the reference). A batch is split across ``threads`` concurrent single-threaded runs
of one session (a session is safe to run from several threads): measured faster at batch 32
than one run with two intra-op threads. :meth:`OnnxNetwork.map` spreads the preprocessing the same
way.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch

from .weights import WeightsError, checked_companion

__all__ = ["INT8_NAME", "ONNX_NAME", "PRECISIONS", "OnnxNetwork", "load_runtime", "open_session"]

logger = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")

ONNX_NAME = "model.onnx"
INT8_NAME = "model.int8.onnx"
#: Precisions of the served graph: "int8" (when the card records a quantized graph that passed
#: its fidelity check; else float32) and "float32" (the exported graph, equal to PyTorch).
PRECISIONS = ("int8", "float32")
INPUT_NAME = "image"
OUTPUT_NAMES = ("logits", "taps")


class OnnxNetwork:
    """An ONNX Runtime session computing ``(logits, taps)`` for a float32 NCHW batch.

    ``taps`` is None when the exported network has no gate stages. Calls are thread-safe.
    """

    def __init__(self, session: Any, stages: tuple[int, ...], threads: int = 1, precision: str = "float32"):
        self.session = session
        #: "float32" or "int8" (see :data:`PRECISIONS`).
        self.precision = precision
        self.stages = tuple(stages)
        self.threads = max(1, int(threads))
        self._outputs = [o.name for o in session.get_outputs()]
        shape = session.get_inputs()[0].shape
        #: Input channels the graph takes: 1 when exported for grey input (see ``train.export``).
        self.channels = shape[1] if len(shape) == 4 and isinstance(shape[1], int) else 3
        self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="onnx") if self.threads > 1 else None

    def _run(self, array: np.ndarray) -> list[np.ndarray]:
        return self.session.run(self._outputs, {INPUT_NAME: array})

    def chunks(self, n: int) -> list[slice]:
        """``n`` rows cut into one consecutive slice per thread (fewer when ``n`` is smaller)."""
        k = min(self.threads, n) if self._pool is not None else 1
        bounds = np.linspace(0, n, max(k, 1) + 1).round().astype(int)
        return [slice(a, b) for a, b in zip(bounds[:-1], bounds[1:])]

    def _spread(self, fn: Callable[[slice], R], n: int) -> list[R]:
        """``fn`` of each of :meth:`chunks` ``(n)``, one per thread, results in order."""
        parts = self.chunks(n)
        # The calling thread takes the last chunk itself rather than wait idle.
        futures = [self._pool.submit(fn, part) for part in parts[:-1]] if self._pool is not None else []
        last = fn(parts[-1])
        return [future.result() for future in futures] + [last]

    def map(self, fn: Callable[[Sequence[T]], R], items: Sequence[T]) -> list[R]:
        """``fn`` over consecutive chunks of ``items``, one chunk per thread, in order (for the
        work before a run, such as preprocessing, that Pillow and NumPy do without the GIL)."""
        return self._spread(lambda part: fn(items[part]), len(items))

    def run(self, array: np.ndarray, mirror: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
        """Logits (N, classes) and taps (N, features; None without gate stages) of a float32
        NCHW array, split across the threads.

        ``mirror``: also of the horizontally mirrored images, as if ``array`` were followed by
        ``array[..., ::-1]`` (2N rows out); each thread copies its own rows, so the caller does
        not build the doubled array (measured 0.25 ms for one scan, on the critical path).
        """
        array = np.asarray(array, dtype=np.float32)
        if array.ndim != 4 or array.shape[1] != self.channels:
            raise ValueError(
                f"The ONNX network takes (N, {self.channels}, H, W) arrays, got shape {array.shape}."
            )
        n = len(array)

        def rows(part: slice) -> np.ndarray:
            pieces = []
            if part.start < n:
                pieces.append(array[part.start : min(part.stop, n)])
            if part.stop > n:
                pieces.append(array[max(part.start, n) - n : part.stop - n, ..., ::-1])
            if len(pieces) < 2:
                return np.ascontiguousarray(pieces[0] if pieces else array[:0])
            return np.concatenate(pieces)

        parts = self._spread(lambda part: self._run(rows(part)), 2 * n if mirror else n)
        logits = np.concatenate([p[0] for p in parts])
        taps = np.concatenate([p[1] for p in parts]) if len(self._outputs) > 1 else None
        return logits, taps


def load_runtime(
    folder: str | Path, card: dict[str, Any], threads: int | None = None, precision: str = "int8"
) -> OnnxNetwork | None:
    """The ONNX network named in the model card, refused unless its sha256 matches; None when
    the card names none or ``onnxruntime`` is not installed.

    ``precision``: "int8" serves ``card["onnx_int8"]`` when the card records one that passed its
    fidelity check, else the float32 graph (``card["onnx"]``) with a log message; "float32"
    always serves the float32 graph. ``threads``: concurrent runs a batch is split into
    (default: torch's thread count).
    """
    if precision not in PRECISIONS:
        raise ValueError(f"Unknown precision {precision!r}; choose one of {PRECISIONS}.")
    info = card.get("onnx")
    if not info:
        return None
    chosen, name = "float32", ONNX_NAME
    quantized = card.get("onnx_int8")
    if precision == "int8" and quantized:
        if quantized.get("passed") and quantized.get("float32_sha256") == info.get("sha256"):
            chosen, info, name = "int8", quantized, INT8_NAME
        else:
            logger.info("the int8 graph did not pass its fidelity check (or belongs to another graph): serving float32")
    what = "int8 ONNX file" if chosen == "int8" else "ONNX file"
    path = checked_companion(folder, info, name, what)
    if info.get("weights_sha256") != card.get("weights_sha256"):
        raise WeightsError(
            f"{what} {str(path)!r} was made from other weights than the card's "
            f"({str(info.get('weights_sha256'))[:12]}... vs {str(card.get('weights_sha256'))[:12]}...); "
            "run python -m train.export (and python -m train.quantize) again."
        )
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        logger.warning("onnxruntime is not installed: predictions run through PyTorch")
        return None
    try:
        session = open_session(path)
    except Exception as exc:  # onnxruntime raises its own exception types
        raise WeightsError(f"{what} {str(path)!r} could not be loaded: {exc}") from exc
    stages = tuple(int(s) for s in card["onnx"].get("stages", ()))
    return OnnxNetwork(session, stages, threads if threads is not None else torch.get_num_threads(), chosen)


def open_session(path: str | Path) -> Any:
    """An ONNX Runtime CPU session for ``path`` as predictions use it: one intra-op thread per
    run (a batch is split across concurrent runs), threads that do not spin."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # Threads that spin after a run would take the CPU from the Grad-CAM pass that follows.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
