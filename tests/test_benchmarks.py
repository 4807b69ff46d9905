"""``python -m benchmarks``: runs end to end (tiny model, few repeats) and writes comparable JSON.

The figures themselves are not asserted here: timings belong to the benchmark, not to unit tests.
The studies of ``benchmarks/experiments/`` are tested in ``tests/experiments/``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from benchmarks.inference import CPU_FLAGS, TARGETS, check_targets, cli, pytorch_baseline, scan_files
from conftest import make_model_dir


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> Path:
    """A tiny model with its ONNX graph beside it, so that it is served through ONNX Runtime."""
    from train.export import export_beside

    weights = make_model_dir(tmp_path_factory.mktemp("bench_model"), seed=3)
    export_beside(weights)
    return weights


@pytest.mark.slow
def test_benchmark_writes_json(exported, data_root, tmp_path, capsys):
    out = tmp_path / "results.json"
    status = cli(["--weights", str(exported), "--data-dir", str(data_root), "--threads", "1",
                  "--repeats", "2", "--memory-calls", "3", "--output", str(out), "--quiet"])
    assert status == 0
    report = json.loads(out.read_text())
    env = report["environment"]
    for key in ("torch", "onnxruntime", "threads", "cpu_model", "cpu_flags", "git_commit", "load_average_1min"):
        assert key in env
    assert env["threads"] == 1 and set(env["cpu_flags"]) <= set(CPU_FLAGS)
    res = report["results"]
    for name in ("read_scan", "predict", "explain", "page"):
        assert res[name]["p50_ms"] > 0 and res[name]["p95_ms"] >= res[name]["p50_ms"]
    assert res["predict_batch"]["batch_size"] == 32 and res["predict_batch"]["scans_per_s"] > 0
    assert res["memory"]["calls"] == 3 and res["memory"]["peak_rss_mb"] > 0
    assert set(report["targets"]) == set(TARGETS)
    # The served model runs the ONNX graph; the baseline, the same weights in PyTorch.
    assert res["model"]["predictions_by"] == "onnxruntime" and res["baseline"]["predictions_by"] == "pytorch"
    assert res["baseline"]["predict"]["n"] == res["predict"]["n"] == 2
    assert res["speedup"] == {
        "predict": round(res["baseline"]["predict"]["p50_ms"] / res["predict"]["p50_ms"], 2),
        "predict_batch": round(res["predict_batch"]["scans_per_s"] / res["baseline"]["predict_batch"]["scans_per_s"], 2),
    }
    assert "cli" not in res  # python -m core's throughput is timed only with --cli
    assert "predict_p50_ms" in capsys.readouterr().out


def _grey_images(count: int) -> list[Image.Image]:
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 255, (80, 72), dtype=np.uint8)) for _ in range(count)]


def test_pytorch_baseline_keeps_the_model_and_swaps_the_runtime(tiny_model):
    baseline = pytorch_baseline(tiny_model)
    assert baseline.runtime.name == "pytorch" and baseline.runtime is not tiny_model.runtime
    assert baseline.network is tiny_model.network and baseline.gate is tiny_model.gate and baseline.rules == tiny_model.rules
    assert baseline.card is tiny_model.card and baseline.tta == tiny_model.tta
    images = _grey_images(2)
    assert baseline.predict_batch(images) == tiny_model.predict_batch(images)


@pytest.mark.slow
def test_pytorch_baseline_gives_the_onnx_runtime_answers(exported):
    from core import load_model

    model = load_model(exported, device="cpu", threads=1)
    baseline = pytorch_baseline(model)
    assert model.runtime.name == "onnxruntime" and baseline.runtime.name == "pytorch"
    for a, b in zip(model.predict_batch(_grey_images(3)), baseline.predict_batch(_grey_images(3))):
        assert a.label == b.label and a.flag_kinds == b.flag_kinds
        assert max(abs(a.probabilities[c] - b.probabilities[c]) for c in a.probabilities) < 1e-4


def _results(**figures: float) -> dict:
    values = {"predict": 10.0, "explain": 20.0, "batch": 150.0, "page": 100.0, "growth": 1.0,
              "predict_speedup": 1.5, "batch_speedup": 2.0} | figures
    return {
        "predict": {"p50_ms": values["predict"]}, "explain": {"p50_ms": values["explain"]},
        "predict_batch": {"scans_per_s": values["batch"]}, "page": {"p50_ms": values["page"]},
        "memory": {"growth_mb": values["growth"]},
        "speedup": {"predict": values["predict_speedup"], "predict_batch": values["batch_speedup"]},
    }


def test_targets_are_met_at_their_limits_and_missed_beyond():
    targets = check_targets(_results())
    assert set(targets) == set(TARGETS) and all(t["met"] for t in targets.values())
    at_limits = check_targets(_results(predict=TARGETS["predict_p50_ms"][0], predict_speedup=TARGETS["predict_speedup"][0]))
    assert at_limits["predict_p50_ms"]["met"] and at_limits["predict_speedup"]["met"]
    missed = check_targets(_results(predict=16.0, batch_speedup=0.9, growth=60.0))
    assert {name for name, t in missed.items() if not t["met"]} == {"predict_p50_ms", "batch_speedup", "memory_growth_mb"}
    assert missed["batch_speedup"] == {"value": 0.9, "target": TARGETS["batch_speedup"][0], "kind": "min", "met": False}


def test_scan_files_take_turns_between_classes(data_root):
    files = scan_files(data_root, 8)
    assert len(files) == 8
    assert [f.parent.name for f in files[:4]] == ["glioma", "meningioma", "notumor", "pituitary"]


@pytest.mark.parametrize("argv, words", [(["--threads", "0"], "--threads"), (["--repeats", "0"], "--repeats"),
                                         (["--memory-calls", "0"], "--memory-calls"), (["--cli-rounds", "0"], "--cli-rounds")])
def test_bad_options(argv, words):
    with pytest.raises(SystemExit, match=words):
        cli(argv)


def test_generated_series_reads_back_in_order(tmp_path):
    from benchmarks.series import write_series
    from core import read_series

    paths = write_series(tmp_path, slices=6, size=64)
    series = read_series([tmp_path])
    assert len(paths) == 6 and len(series) == 1
    assert len(series[0].slices) == 6 and series[0].plane == "axial" and series[0].sequence.name == "T1C"
    assert list(series[0].positions_mm) == sorted(series[0].positions_mm)


@pytest.mark.slow
def test_series_benchmark_writes_its_figures(tmp_path):
    from benchmarks.series import main
    from core.constants import default_weights

    if not default_weights().is_file():
        pytest.skip("no shipped weights")
    out = tmp_path / "series.json"
    result = main(["--slices", "6", "--size", "96", "--memory-slices", "6", "--rounds", "1", "--output", str(out)])
    assert out.is_file() and result["series"]["slices"] == 6
    assert result["predict_series_s"] > 0 and result["single_predicts_s"] > 0 and "left_after_drop_mb" in result["memory"]
