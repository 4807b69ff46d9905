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
(``precision="float32"``, the reference).

int8 answers are not trusted near a decision: a scan whose int8 probabilities or
out-of-distribution score lie so close to a boundary (the label's, the low-confidence
threshold's, the mirror flag's, the gate's) that float32 could fall on the other side is run
again through the float32 graph, and that answer is served (:class:`Recheck`; the bands are
fitted on validation scans by ``train.quantize`` and stored in ``card["onnx_int8"]["recheck"]``).
So an int8 answer differs from float32 only where int8 strays further than it did on any but
the rarest validation scans. A batch is split across ``threads`` concurrent single-threaded runs
of one session (a session is safe to run from several threads): measured faster at batch 32
than one run with two intra-op threads. A lone scan, which cannot be split, runs in a second
session of the same graph with ``threads`` intra-op threads (twice as fast on two cores).
:meth:`OnnxNetwork.map` spreads the preprocessing the same way.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from concurrent.futures import ThreadPoolExecutor
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch

from .weights import WeightsError, checked_companion

__all__ = ["INT8_NAME", "ONNX_NAME", "PRECISIONS", "LazySession", "OnnxNetwork", "Recheck", "load_runtime", "open_session"]

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


@dataclass(frozen=True)
class Recheck:
    """Which int8 answers are run again in float32: those that float32 could answer otherwise,
    assuming each float32 probability lies within ``prob_tolerance`` of int8's and the float32
    out-of-distribution score within ``score_ratio`` (low, high) of ``int8 score / ratio``."""

    #: Largest difference between an int8 and a float32 probability counted on.
    prob_tolerance: float
    #: Range of (int8 score / float32 score) counted on.
    score_ratio: tuple[float, float]
    #: Largest difference between the int8 and float32 value a "no tumour" answer's floor is
    #: compared with (its answer cosine, or for older cards its probability) counted on (None:
    #: ``prob_tolerance``).
    negative_tolerance: float | None = None
    #: Run again every scan whose int8 score raises a gate state, whatever the ratio band says.
    #: int8's scores run high, and on some sources (skull-stripped scans) higher than the band
    #: fitted on validation allows; float32 then decides every "outside the training data" flag.
    confirm_gate: bool = False

    def __post_init__(self) -> None:
        low, high = self.score_ratio
        if not (self.prob_tolerance >= 0 and 0 < low <= high) or (self.negative_tolerance is not None and self.negative_tolerance < 0):
            raise ValueError(
                f"Bad re-check bands: prob_tolerance={self.prob_tolerance!r}, score_ratio={self.score_ratio!r}, "
                f"negative_tolerance={self.negative_tolerance!r}."
            )

    @classmethod
    def from_card(cls, info: dict[str, Any] | None) -> Recheck | None:
        """From ``card["onnx_int8"]["recheck"]`` (None when absent)."""
        if not info:
            return None
        negative = info.get("negative_tolerance")
        return cls(float(info["prob_tolerance"]), (float(info["score_ratio"][0]), float(info["score_ratio"][1])),
                   None if negative is None else float(negative), bool(info.get("confirm_gate", False)))

    def to_card(self) -> dict[str, Any]:
        card: dict[str, Any] = {"prob_tolerance": self.prob_tolerance, "score_ratio": list(self.score_ratio)}
        if self.negative_tolerance is not None:
            card["negative_tolerance"] = self.negative_tolerance
        if self.confirm_gate:
            card["confirm_gate"] = True
        return card

    def rows(
        self,
        probs: Sequence[np.ndarray],
        scores: np.ndarray,
        low_confidence: float,
        score_thresholds: Sequence[float],
        negative: tuple[int, float] | None = None,
        negative_values: np.ndarray | None = None,
    ) -> np.ndarray:
        """Boolean mask of the scans to run again. ``probs``: the int8 probability arrays
        (N, classes) each decision reads (the served ones, the scan's, the mirror image's);
        ``scores``: int8 out-of-distribution scores (N,); ``low_confidence``: the confidence
        below which a scan is flagged; ``score_thresholds``: the scores above which it is;
        ``negative``: (class index, floor) when a "no tumour" answer under the floor is flagged;
        ``negative_values``: what the floor is compared with, per scan (default: the served
        probability of that class; ``Classifier.negative_values``)."""
        t = self.prob_tolerance
        near = np.zeros(len(scores), dtype=bool)
        for p in probs:
            p = np.asarray(p, dtype=np.float64)
            top = np.sort(p, axis=1)
            near |= top[:, -1] - top[:, -2] < 2 * t  # the label could change
        served = np.asarray(probs[0], dtype=np.float64)
        near |= np.abs(served.max(axis=1) - low_confidence) < t  # the low-confidence flag could change
        if negative is not None:  # the flag of a weak "no tumour" answer could change
            index, floor = negative
            tolerance = t if self.negative_tolerance is None else self.negative_tolerance
            values = served[:, index] if negative_values is None else np.asarray(negative_values, dtype=np.float64)
            near |= (served.argmax(axis=1) == index) & (np.abs(values - floor) < tolerance)
        low, high = self.score_ratio
        scores = np.asarray(scores, dtype=np.float64)
        for threshold in score_thresholds:
            if np.isfinite(threshold):  # float32's score lies in [score / high, score / low]
                near |= (scores / high <= threshold) & (threshold <= scores / low)
                if self.confirm_gate:  # int8 raises this state: float32 confirms it or not
                    near |= scores > threshold
        return near


class LazySession:
    """An ONNX Runtime session opened by ``opener`` on its first ``run``, so that a session only
    some calls need (the lone-scan one) adds nothing to start-up. Thread-safe."""

    def __init__(self, opener: Callable[[], Any]):
        self._opener = opener
        self._session: Any | None = None
        self._lock = threading.Lock()

    def run(self, *args: Any) -> Any:
        if self._session is None:
            with self._lock:
                if self._session is None:
                    self._session = self._opener()
        return self._session.run(*args)


class OnnxNetwork:
    """An ONNX Runtime session computing ``(logits, taps)`` for a float32 NCHW batch.

    ``taps`` is None when the exported network has no gate stages. Calls are thread-safe.
    An int8 network carries its float32 ``reference`` and the :class:`Recheck` bands that say
    which answers to run again through it. ``wide``: a session of the same graph with
    ``threads`` intra-op threads, for inputs of fewer rows than threads (a lone scan), which
    concurrent runs cannot share out (None: those run single-threaded too).
    """

    def __init__(
        self,
        session: Any,
        stages: tuple[int, ...],
        threads: int = 1,
        precision: str = "float32",
        reference: OnnxNetwork | None = None,
        recheck: Recheck | None = None,
        wide: Any | None = None,
    ):
        self.session = session
        #: The session with ``threads`` intra-op threads for a lone scan (None: none).
        self.wide = wide
        #: "float32" or "int8" (see :data:`PRECISIONS`).
        self.precision = precision
        #: The float32 network near-boundary int8 answers are run again through (None: none).
        self.reference = reference
        #: Which int8 answers to run again (None: none).
        self.recheck = recheck
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

        total = 2 * n if mirror else n
        if self.wide is not None and 0 < total < self.threads:
            # Too few rows to give each thread one: all threads work inside each operator.
            parts = [self.wide.run(self._outputs, {INPUT_NAME: rows(slice(0, total))})]
        else:
            parts = self._spread(lambda part: self._run(rows(part)), total)
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
    always serves the float32 graph. An int8 network carries the float32 one as its
    ``reference``, with the card's re-check bands. ``threads``: concurrent runs a batch is split into
    (default: torch's thread count).
    """
    if precision not in PRECISIONS:
        raise ValueError(f"Unknown precision {precision!r}; choose one of {PRECISIONS}.")
    info = card.get("onnx")
    if not info:
        return None
    quantized = card.get("onnx_int8")
    if precision == "int8" and quantized:
        if not (quantized.get("passed") and quantized.get("float32_sha256") == info.get("sha256")):
            logger.info("the int8 graph did not pass its fidelity check (or belongs to another graph): serving float32")
            precision = "float32"
    else:
        precision = "float32"
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        logger.warning("onnxruntime is not installed: predictions run through PyTorch")
        return None
    threads = threads if threads is not None else torch.get_num_threads()
    stages = tuple(int(s) for s in info.get("stages", ()))

    def sessions(info: dict[str, Any], name: str, what: str) -> tuple[Any, Any | None]:
        session = _session(folder, info, name, what, card)
        # Opened (and its file checked again, as it is read then) when a lone scan first needs it.
        wide = LazySession(lambda: open_session(checked_companion(folder, info, name, what), threads)) if threads > 1 else None
        return session, wide

    session, wide = sessions(info, ONNX_NAME, "ONNX file")
    reference = OnnxNetwork(session, stages, threads, wide=wide)
    if precision == "float32":
        return reference
    session, wide = sessions(quantized, INT8_NAME, "int8 ONNX file")
    return OnnxNetwork(session, stages, threads, "int8", reference, Recheck.from_card(quantized.get("recheck")), wide)


def _session(folder: str | Path, info: dict[str, Any], name: str, what: str, card: dict[str, Any]) -> Any:
    """The session of the graph ``info`` names, refused unless its sha256 matches and it was made
    from the card's weights."""
    path = checked_companion(folder, info, name, what)
    if info.get("weights_sha256") != card.get("weights_sha256"):
        raise WeightsError(
            f"{what} {str(path)!r} was made from other weights than the card's "
            f"({str(info.get('weights_sha256'))[:12]}... vs {str(card.get('weights_sha256'))[:12]}...); "
            "run python -m train.export (and python -m train.quantize) again."
        )
    try:
        return open_session(path)
    except Exception as exc:  # onnxruntime raises its own exception types
        raise WeightsError(f"{what} {str(path)!r} could not be loaded: {exc}") from exc


def open_session(path: str | Path, threads: int = 1) -> Any:
    """An ONNX Runtime CPU session for ``path`` as predictions use it: one intra-op thread per
    run by default (a batch is split across concurrent runs); with ``threads`` > 1, that many
    intra-op threads, for a lone scan. No thread spins once a run has returned."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = int(threads)
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads > 1:
        # Spinning between the operators of a run: without it the threads' wake-ups cost what
        # the second thread gains (int8, one scan, two cores: 2.1 ms with it, 4.2 ms without,
        # 4.1 ms on one thread). ``force_spinning_stop`` stops it when the run returns.
        options.add_session_config_entry("session.intra_op.allow_spinning", "1")
        options.add_session_config_entry("session.force_spinning_stop", "1")
    else:
        # Threads that spin after a run would take the CPU from the Grad-CAM pass that follows.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
