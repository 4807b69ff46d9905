"""``python -m train.quantize``: an int8 graph for serving, checked against float32 on real scans.

Quantizes the float32 ``model.onnx`` of trained weights statically with ONNX Runtime (QDQ
format, int8 weights per output channel, uint8 activations), the activation ranges calibrated
on scans of the validation split the model was selected on: never on Testing, never on the
external development set. Writes ``model.int8.onnx`` beside the weights.

Then the fidelity check: the model is served through the float32 graph (the reference) and the
int8 graph, with the same calibration, gate and flags, over the official Testing split, its
leak-free subset and every source of the external development set. It passes when

- accuracy stays within :data:`MAX_ACCURACY_DROP_POINTS` of float32 on every one of those sets;
- the same label and the same flags (which flags are raised, :func:`flag_kinds`) come out for at
  least :data:`MIN_SAME_TESTING` of Testing.

The largest probability difference is reported too. The card records the graph with its
sha256, the check's figures and whether it passed (``card["onnx_int8"]``); ``core`` serves the
int8 graph only when it passed. The full report is written to ``--report`` (JSON)::

    python -m train.quantize --weights assets/model.safetensors --report benchmarks/fidelity.json
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from core.backend import OnnxBackend
from core.constants import CLASS_NAMES, NEGATIVE_CLASS, OTHER_LESION_CLASS, data_dir, default_weights, external_dir
from core.model import Classifier, Prediction, load_model
from core.ort import INPUT_NAME, INT8_NAME, ONNX_NAME, LazySession, OnnxNetwork, Recheck, open_session
from core.preprocess import input_array
from core.scan import read_scan
from core.weights import read_model_card, sha256_file, write_model_card

from .config import TrainConfig
from .evaluate import leak_free_mask, load_leak_free
from .external import find_external
from .splits import load_data

__all__ = [
    "CALIBRATION_METHODS",
    "MAX_ACCURACY_DROP_POINTS",
    "MIN_SAME_TESTING",
    "EvalSet",
    "NEGATIVE_QUANTILE",
    "RECHECK_QUANTILE",
    "compare",
    "fidelity",
    "fit_recheck",
    "flag_kinds",
    "get_args_parser",
    "main",
    "passes",
    "quantize_graph",
    "sensitive_nodes",
    "serve_graph",
]

logger = logging.getLogger("train")

#: Largest accuracy change (percentage points) allowed between int8 and float32 on any set.
MAX_ACCURACY_DROP_POINTS = 0.3
#: Smallest share of Testing scans that must get the same label and flags from both graphs.
MIN_SAME_TESTING = 0.995
#: How activation ranges are set from the calibration scans (ONNX Runtime's calibrators).
CALIBRATION_METHODS = ("minmax", "percentile", "entropy")
#: Quantile of the int8-float32 differences on validation scans the re-check bands cover.
RECHECK_QUANTILE = 0.995
#: The "no tumour" re-check band is fitted on the scans whose float32 value read by the floor of
#: negative answers (``Classifier.negative_values``) is at most this far below the floor, or above
#: it: where the floor decides.
NEGATIVE_WINDOW = 0.1
#: Quantile of those "no tumour" differences the floor's band covers. The band sits where
#: Testing's right "no tumour" answers are dense (answer cosines just under 1), so it decides how
#: many scans are run again: for the shipped weights, at 0.95 nearly every "no tumour" answer
#: (31 % of Testing), at 0.75 3.6 %, with the fidelity check still passed (``docs/performance.md``).
NEGATIVE_QUANTILE = 0.75
#: Scans per calibration batch.
_CALIBRATION_BATCH = 16


@dataclass(frozen=True)
class EvalSet:
    """Scans with their true labels (a class name, or ``"other"`` for lesions of no class)."""

    name: str
    paths: tuple[Path, ...]
    labels: tuple[str, ...]


def quantize_graph(
    source: Path,
    output: Path,
    calibration: Sequence[np.ndarray],
    exclude: Sequence[str] = (),
    method: str = "minmax",
    op_types: Sequence[str] | None = None,
    extra_options: dict[str, Any] | None = None,
) -> Path:
    """Static int8 quantization of the ONNX graph ``source`` into ``output``: QDQ, int8 weights
    per output channel, uint8 activations whose ranges come from ``calibration`` (network
    inputs, float32 NCHW batches) by ``method`` (one of :data:`CALIBRATION_METHODS`). Nodes
    named in ``exclude`` stay float32; ``op_types`` limits which operators are quantized
    (default: all ONNX Runtime can)."""
    from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if method not in CALIBRATION_METHODS:
        raise ValueError(f"Unknown calibration method {method!r}; choose one of {CALIBRATION_METHODS}.")
    methods = dict(zip(CALIBRATION_METHODS, (CalibrationMethod.MinMax, CalibrationMethod.Percentile, CalibrationMethod.Entropy)))
    if not calibration:
        raise ValueError("No calibration batches: quantization needs scans to set activation ranges.")

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter(calibration)

        def get_next(self) -> dict[str, np.ndarray] | None:
            batch = next(self.batches, None)
            return None if batch is None else {INPUT_NAME: batch}

    with tempfile.TemporaryDirectory() as folder:
        prepared = Path(folder) / "prepared.onnx"
        quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)
        quantize_static(
            str(prepared), str(output), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
            nodes_to_exclude=list(exclude), op_types_to_quantize=None if op_types is None else list(op_types),
            calibrate_method=methods[method], extra_options=dict(extra_options or {}),
        )
    return output


def sensitive_nodes(graph: Path) -> list[str]:
    """The nodes left in float32: the first convolution (it reads the image), the last one
    (the head) and the classifier (Gemm). Quantizing them moved the most answers
    (``docs/performance.md``)."""
    import onnx

    nodes = onnx.load(str(graph), load_external_data=False).graph.node
    convs = [n.name for n in nodes if n.op_type == "Conv"]
    return ([convs[0], convs[-1]] if convs else []) + [n.name for n in nodes if n.op_type == "Gemm"]


def serve_graph(model: Classifier, graph: Path, precision: str, threads: int = 1, recheck: Recheck | None = None) -> Classifier:
    """``model`` (loaded on the CPU, float32 ONNX Runtime) served through the ONNX graph
    ``graph``: the same card, calibration, gate and flags, only the prediction network swapped.
    ``recheck``: run near-boundary answers again through ``model``'s float32 graph."""
    if not isinstance(model.backend, OnnxBackend):
        raise ValueError(f"The model is served by {model.backend.name}, not ONNX Runtime: nothing to swap.")
    reference = model.backend.runtime if recheck is not None else None
    runtime = OnnxNetwork(open_session(graph), model.backend.stages, threads=threads, precision=precision,
                          reference=reference, recheck=recheck,
                          wide=LazySession(lambda: open_session(graph, threads)) if threads > 1 else None)
    served = Classifier(model.network, model.card, "cpu", tta=model.tta, gate=model.gate, mirror_check=model.mirror_check)
    served.backend = OnnxBackend(runtime, model.image_size, model.card["mean"], model.card["std"], model.crop_head)
    return served


def flag_kinds(prediction: Prediction) -> tuple[str, ...]:
    """Which flags a prediction carries, without their figures: each flag's words before its
    parenthesis (e.g. "low confidence"), so that a score of 1.31 instead of 1.30 in the text is
    not counted as another flag."""
    return tuple(flag.split(" (", 1)[0] for flag in prediction.flags)


def fit_recheck(reference: Classifier, candidate: Classifier, images: Sequence[Any], quantile: float = RECHECK_QUANTILE,
                batch_size: int = 32, negative_quantile: float | None = None, confirm_gate: bool = True) -> tuple[Recheck, dict[str, Any]]:
    """The re-check bands from scans (validation, not those calibrated on): the ``quantile`` of
    the largest probability difference between ``candidate`` (int8, no re-check) and
    ``reference`` (float32) over the served, the scan's and the mirror image's probabilities,
    and the (1 - ``quantile``, ``quantile``) range of the ratio of their out-of-distribution
    scores; and the ``quantile`` of the difference in the value the floor of negative answers
    reads (``Classifier.negative_values``: the answer cosine) over the scans both answer "no
    tumour" with a float32 value at most :data:`NEGATIVE_WINDOW` under that floor, or above it
    (``negative_quantile`` of it when given: that band sits where Testing's "no tumour" values
    are dense, so its width decides how many scans are re-run). ``confirm_gate``: also run again every scan whose int8 score raises a gate state
    (see :class:`core.ort.Recheck`). Also a summary of those differences."""
    if not images:
        raise ValueError("No scans to fit the re-check bands on.")
    diffs, ratios, negative = [], [], []
    index = list(reference.class_names).index(NEGATIVE_CLASS)
    floor = reference.negative_floor if reference.negative_floor is not None else reference.low_confidence
    for start in range(0, len(images), batch_size):
        chunk = images[start : start + batch_size]
        a, _ = reference._outputs(chunk)
        b, _ = candidate._outputs(chunk)
        views = [(a.probs, b.probs), (a.plain, b.plain)] + ([(a.mirror, b.mirror)] if a.mirror is not None and b.mirror is not None else [])
        diffs.append(np.max([(x - y).abs().max(dim=1).values.numpy() for x, y in views], axis=0))
        # Where the floor decides: both answer "no tumour", float32 within NEGATIVE_WINDOW of the
        # floor or above (a change of label or of the low-confidence flag has its own band).
        va, vb = reference.negative_values(a.probs.numpy()), candidate.negative_values(b.probs.numpy())
        answered = ((a.probs.argmax(1) == index) & (b.probs.argmax(1) == index)).numpy() & (va >= floor - NEGATIVE_WINDOW)
        negative.append(np.abs(va - vb)[answered])
        sa, sb = reference._scores(a).numpy(), candidate._scores(b).numpy()
        kept = np.array([problem is None for problem in a.problems]) & (sa > 0)
        ratios.append(sb[kept] / sa[kept])
    diff, ratio, negative_diff = np.concatenate(diffs), np.concatenate(ratios), np.concatenate(negative)
    recheck = Recheck(
        round(float(np.quantile(diff, quantile)), 5),
        (round(float(np.quantile(ratio, 1 - quantile)), 5), round(float(np.quantile(ratio, quantile)), 5)) if len(ratio) else (1.0, 1.0),
        round(float(np.quantile(negative_diff, negative_quantile or quantile)), 5) if len(negative_diff) else None,
        confirm_gate,
    )
    summary = {"scans": len(images), "quantile": quantile, "negative_quantile": negative_quantile or quantile, "max_prob_diff": float(diff.max()),
               "median_prob_diff": float(np.median(diff)),
               "score_ratio_range": [float(ratio.min()), float(ratio.max())] if len(ratio) else None,
               "negative_answers": len(negative_diff),
               "max_negative_value_diff": float(negative_diff.max()) if len(negative_diff) else None}
    return recheck, summary


def _accuracy(predictions: Sequence[Prediction], labels: Sequence[str]) -> float | None:
    known = [(p, t) for p, t in zip(predictions, labels) if t != OTHER_LESION_CLASS]
    return float(np.mean([p.label == t for p, t in known])) if known else None


def compare(a: Sequence[Prediction], b: Sequence[Prediction], labels: Sequence[str]) -> dict[str, Any]:
    """Predictions ``b`` (int8) against ``a`` (float32) of the same scans with true ``labels``:
    scans, the shares with the same label, with the same label and flags and with the same
    flags, the largest probability difference; and the accuracy of both (lesions of no class
    left out) with the change in points, where there are labelled scans."""
    entry: dict[str, Any] = {
        "n_images": len(a),
        "same_label": float(np.mean([x.label == y.label for x, y in zip(a, b)])),
        "same_label_and_flags": float(np.mean([x.label == y.label and flag_kinds(x) == flag_kinds(y) for x, y in zip(a, b)])),
        "same_flags": float(np.mean([flag_kinds(x) == flag_kinds(y) for x, y in zip(a, b)])),
        "max_prob_diff": float(max(abs(x.probabilities[c] - y.probabilities[c]) for x, y in zip(a, b) for c in CLASS_NAMES)),
    }
    acc_a, acc_b = _accuracy(a, labels), _accuracy(b, labels)
    if acc_a is not None and acc_b is not None:
        entry.update(accuracy_float32=acc_a, accuracy_int8=acc_b, accuracy_change_points=100 * (acc_b - acc_a))
    return entry


def fidelity(reference: Classifier, candidate: Classifier, sets: Sequence[EvalSet], batch_size: int = 32) -> dict[str, Any]:
    """Per set: scans, accuracy of both (lesions of no class left out), the change in points,
    the share with the same label, with the same label and flags, the largest probability
    difference, and the share of scans ``candidate`` ran again in float32."""
    out: dict[str, Any] = {}
    for s in sets:
        images = [read_scan(p) for p in s.paths]
        a = reference.predict_batch(images, batch_size)
        before = candidate.rechecked_scans
        b = candidate.predict_batch(images, batch_size)
        entry = compare(a, b, s.labels)
        entry["rechecked_in_float32"] = (candidate.rechecked_scans - before) / max(len(images), 1)
        out[s.name] = entry
        logger.info("fidelity on %s: %s", s.name, {k: round(v, 4) if isinstance(v, float) else v for k, v in entry.items()})
    return out


def passes(report: dict[str, Any], testing: str = "testing") -> dict[str, bool]:
    """Each condition of the fidelity check, and ``passed`` for all of them."""
    checks = {
        f"accuracy within {MAX_ACCURACY_DROP_POINTS} points on {name}": abs(entry["accuracy_change_points"]) <= MAX_ACCURACY_DROP_POINTS + 1e-9
        for name, entry in report.items() if "accuracy_change_points" in entry
    }
    checks["every external source checked"] = any(name.startswith("external/") for name in report)
    checks[f"same label and flags on at least {MIN_SAME_TESTING:.1%} of {testing}"] = (
        testing in report and report[testing]["same_label_and_flags"] >= MIN_SAME_TESTING
    )
    return {**checks, "passed": all(checks.values())}


def calibration_batches(
    model: Classifier, config: TrainConfig, count: int, seed: int = 0
) -> tuple[list[np.ndarray], list[Path], list[Path]]:
    """Network inputs of ``count`` scans drawn at random from the validation split of ``config``
    (the split the model was selected on), in batches; their paths; and the paths of the other
    validation scans."""
    _, val, _ = load_data(config)
    if not val:
        raise SystemExit("The training configuration gives no validation scans to calibrate on.")
    rng = np.random.default_rng(seed)
    chosen = sorted(rng.choice(len(val), min(count, len(val)), replace=False))
    paths = [val[i].path for i in chosen]
    taken = set(chosen)
    rest = [s.path for i, s in enumerate(val) if i not in taken]
    backend = model.backend
    assert isinstance(backend, OnnxBackend)
    batches = [
        input_array([read_scan(p) for p in paths[i : i + _CALIBRATION_BATCH]], backend.image_size, backend.mean, backend.std, backend.crop_head)
        for i in range(0, len(paths), _CALIBRATION_BATCH)
    ]
    return batches, paths, rest


def evaluation_sets(config: TrainConfig, external: Path | None, audit: Path | None) -> list[EvalSet]:
    """Official Testing, its leak-free subset (when an audit report is found) and every source
    of the external development set (when ``external`` is given)."""
    _, _, test = load_data(config.replace(no_test=False))
    if not test:
        raise SystemExit(f"No Testing scans under {str(config.data_dir)!r}; pass --data-dir.")
    sets = [EvalSet("testing", tuple(s.path for s in test), tuple(CLASS_NAMES[s.label] for s in test))]
    leak_free = load_leak_free(audit)
    if leak_free is not None:
        mask = leak_free_mask([s.path for s in test], config.data_dir, leak_free)
        kept = [s for s, keep in zip(test, mask) if keep]
        sets.append(EvalSet("testing_leak_free", tuple(s.path for s in kept), tuple(CLASS_NAMES[s.label] for s in kept)))
    if external is not None:
        scans = find_external(external)
        for source in sorted({s.source for s in scans}):
            mine = [s for s in scans if s.source == source]
            sets.append(EvalSet(f"external/{source}", tuple(s.path for s in mine), tuple(s.label for s in mine)))
    return sets


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m train.quantize",
        description="Write model.int8.onnx beside trained weights (static int8, calibrated on validation "
        "scans), check it against float32 on Testing, leak-free Testing and the external sources, and record "
        "the result in the model card.",
    )
    parser.add_argument("--weights", type=Path, default=None, help="safetensors weights with model.onnx beside them (default: the shipped model)")
    parser.add_argument("--data-dir", type=Path, default=None, help="folder holding Training/ and Testing/ (default: $BTMRI_DATA)")
    parser.add_argument("--extra-data", type=Path, action="append", default=None,
                        help="extra training sources, as trained with (default: those in the model card)")
    parser.add_argument("--external", type=Path, default=None, help="external development set, SOURCE/CLASS/FILE (default: $BTMRI_EXTERNAL)")
    parser.add_argument("--no-external", action="store_true", help="check on Testing only (the check then cannot pass)")
    parser.add_argument("--audit", type=Path, default=None, help="audit report for the leak-free subset (default: assets/audit.json)")
    parser.add_argument("--calibration", type=int, default=256, help="validation scans to calibrate on (default: 256)")
    parser.add_argument("--recheck-quantile", type=float, default=RECHECK_QUANTILE,
                        help=f"quantile of the int8-float32 differences on validation the re-check bands cover (default: {RECHECK_QUANTILE})")
    parser.add_argument("--negative-quantile", type=float, default=NEGATIVE_QUANTILE,
                        help="quantile of the 'no tumour' probability differences near the floor of negative answers that "
                        f"its band covers (default: {NEGATIVE_QUANTILE})")
    parser.add_argument("--confirm-gate", action=argparse.BooleanOptionalAction, default=True,
                        help="run every scan that int8 flags as outside the training data or not a brain MRI again in float32, "
                        "whatever the score-ratio band says (default: on)")
    parser.add_argument("--threads", type=int, default=2, help="ONNX Runtime concurrent runs while checking")
    parser.add_argument("--report", type=Path, default=None, help="JSON file for the full fidelity report")
    return parser


def main(args: argparse.Namespace) -> dict[str, Any]:
    if args.calibration < 1:
        raise SystemExit(f"--calibration must be at least 1, got {args.calibration}.")
    for name in ("recheck_quantile", "negative_quantile"):
        if not 0.5 <= getattr(args, name) <= 1:
            raise SystemExit(f"--{name.replace('_', '-')} must lie in [0.5, 1], got {getattr(args, name)}.")
    weights = Path(args.weights or default_weights())
    folder = weights.parent
    card = read_model_card(weights)
    if not card.get("onnx"):
        raise SystemExit(f"The model card of {str(weights)!r} names no ONNX graph; run python -m train.export first.")
    config = TrainConfig.from_dict(card["training"]["config"]).replace(data_dir=args.data_dir or data_dir())
    if args.extra_data is not None:
        config = config.replace(extra_data=list(args.extra_data))
    external = None if args.no_external else Path(args.external or external_dir())
    if external is not None and not external.is_dir():
        raise SystemExit(f"External development set {str(external)!r} not found; pass --external DIR or --no-external.")

    reference = load_model(weights, device="cpu", threads=args.threads, precision="float32")
    if not isinstance(reference.backend, OnnxBackend):
        raise SystemExit("The float32 ONNX graph could not be served (is onnxruntime installed?).")
    batches, paths, rest = calibration_batches(reference, config, args.calibration, config.seed)
    logger.info("calibrating on %d validation scans", len(paths))
    source = folder / str(card["onnx"].get("file", ONNX_NAME))
    output = folder / INT8_NAME
    if not rest:
        raise SystemExit(f"All {len(paths)} validation scans went to calibration: none is left to fit the re-check "
                         "bands on; lower --calibration.")
    kept = sensitive_nodes(source)
    quantize_graph(source, output, batches, exclude=kept)
    raw = serve_graph(reference, output, "int8", args.threads)
    recheck, differences = fit_recheck(
        reference, raw, [read_scan(p) for p in rest], args.recheck_quantile, negative_quantile=args.negative_quantile,
        confirm_gate=args.confirm_gate,
    )
    logger.info("re-check bands from %d other validation scans: %s (%s)", len(rest), recheck, differences)
    candidate = serve_graph(reference, output, "int8", args.threads, recheck)

    report = fidelity(reference, candidate, evaluation_sets(config, external, args.audit))
    checks = passes(report)
    logger.info("fidelity check %s", "passed" if checks["passed"] else "FAILED")
    for name, ok in checks.items():
        if name != "passed":
            logger.info("  %s: %s", name, "yes" if ok else "NO")
    card = read_model_card(weights)  # as on disk now
    card["onnx_int8"] = {
        "file": INT8_NAME,
        "sha256": sha256_file(output),
        "weights_sha256": card["weights_sha256"],
        "float32_sha256": card["onnx"]["sha256"],
        "format": "ONNX Runtime static quantization: QDQ, int8 weights per output channel, uint8 activations (MinMax)",
        "kept_float32": kept,
        "calibration": {"split": "validation", "scans": len(paths), "seed": config.seed},
        "recheck": recheck.to_card() | {
            "rule": f"{args.recheck_quantile:.1%} quantile of the int8-float32 probability difference and (score ratio) "
            f"range, and {args.negative_quantile:.1%} quantile of the 'no tumour' difference near the floor of negative "
            "answers, on the validation scans not calibrated on; answers that float32 could give otherwise within "
            "them are run again in float32" + ("; so is every scan int8 puts in a gate state" if args.confirm_gate else ""),
            "fitted_on": differences,
        },
        "check": {"max_accuracy_change_points": MAX_ACCURACY_DROP_POINTS, "min_same_label_and_flags_testing": MIN_SAME_TESTING},
        "fidelity": {
            name: {k: round(v, 5) for k, v in entry.items() if k != "n_images"} | {"n_images": entry["n_images"]}
            for name, entry in report.items()
        },
        "passed": bool(checks["passed"]),
        "quantized_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }
    write_model_card(weights, card)
    # the report names the files by content too: a run folder's files are copied to assets/ to ship
    result = {"weights": str(weights), "weights_sha256": card["weights_sha256"], "graph": str(output),
              "graph_sha256": card["onnx_int8"]["sha256"], "checks": checks, "fidelity": report,
              "calibration_scans": [str(p) for p in paths]}
    if args.report is not None:
        args.report.parent.mkdir(parents=True, exist_ok=True)
        args.report.write_text(json.dumps({k: v for k, v in result.items() if k != "calibration_scans"}, indent=1) + "\n", encoding="utf-8")
        logger.info("wrote %s", args.report)
    return result


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    sys.exit(0 if main(get_args_parser().parse_args(sys.argv[1:]))["checks"]["passed"] else 1)
