"""benchmarks.experiments.candidate_latency: a candidate's predict and explain latency against
the shipped model's, in one run."""

from __future__ import annotations

import json

import pytest

from benchmarks.experiments.candidate_latency import LIMITS, get_args_parser, main


def test_candidate_latency_compares_two_models_side_by_side(tiny_weights, data_root, tmp_path):
    out = tmp_path / "latency.json"
    result = main(get_args_parser().parse_args(["--candidate", str(tiny_weights), "--shipped", str(tiny_weights),
                                                "--data-dir", str(data_root), "--threads", "1", "--repeats", "3",
                                                "--output", str(out)]))
    assert json.loads(out.read_text())["predict_ratio"] == result["predict_ratio"]
    for call, limit in LIMITS.items():
        assert result["shipped"][call]["n"] == result["candidate"][call]["n"] == 3
        ratio = result["candidate"][call]["p50_ms"] / result["shipped"][call]["p50_ms"]
        assert result[f"{call}_ratio"]["value"] == round(ratio, 2) and result[f"{call}_ratio"]["met"] == (ratio <= limit)
    assert result["shipped"]["runtime"] == result["candidate"]["runtime"] == "pytorch"  # no ONNX graph beside the weights


@pytest.mark.parametrize("argv, words", [(["--repeats", "0"], "--repeats"), (["--threads", "0"], "--threads")])
def test_candidate_latency_refuses_bad_options(tiny_weights, argv, words):
    with pytest.raises(SystemExit, match=words):
        main(get_args_parser().parse_args(["--candidate", str(tiny_weights), *argv]))


def test_candidate_latency_refuses_missing_weights(tmp_path):
    with pytest.raises(SystemExit, match="No weights"):
        main(get_args_parser().parse_args(["--candidate", str(tmp_path / "none.safetensors")]))
