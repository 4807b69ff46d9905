"""``python -m benchmarks``: runs end to end (tiny model, few repeats) and writes comparable JSON.

The figures themselves are not asserted here: timings belong to the benchmark, not to unit tests.
"""

from __future__ import annotations

import json

import pytest
import torch

from benchmarks.inference import TARGETS, cli, scan_files


@pytest.fixture()
def keep_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_benchmark_writes_json(tiny_weights, data_root, tmp_path, capsys, keep_threads):
    out = tmp_path / "results.json"
    status = cli(["--weights", str(tiny_weights), "--data-dir", str(data_root), "--threads", "1",
                  "--repeats", "2", "--memory-calls", "3", "--output", str(out), "--quiet"])
    assert status == 0
    report = json.loads(out.read_text())
    env = report["environment"]
    for key in ("torch", "threads", "cpu_model", "git_commit", "load_average_1min"):
        assert key in env
    assert env["threads"] == 1
    res = report["results"]
    for name in ("read_scan", "predict", "explain", "page"):
        assert res[name]["p50_ms"] > 0 and res[name]["p95_ms"] >= res[name]["p50_ms"]
    assert res["predict_batch"]["batch_size"] == 32 and res["predict_batch"]["scans_per_s"] > 0
    assert res["memory"]["calls"] == 3 and res["memory"]["peak_rss_mb"] > 0
    # python -m core's throughput is timed only with --cli.
    assert set(report["targets"]) == set(TARGETS) - {"cli_speedup"}
    assert res["baseline"]["precision"] == "float32"
    # The baseline is the path served before issue 18 (scan and mirror); the served one, one pass.
    assert res["baseline"]["mirror_pass"] is True and res["model"]["mirror_pass"] is False
    for name in ("predict", "predict_batch", "explain"):
        assert res["speedup"][name] > 0
    assert "predict_p50_ms" in capsys.readouterr().out


def test_scan_files_take_turns_between_classes(data_root):
    files = scan_files(data_root, 8)
    assert len(files) == 8
    assert [f.parent.name for f in files[:4]] == ["glioma", "meningioma", "notumor", "pituitary"]


@pytest.mark.parametrize("argv, words", [(["--threads", "0"], "--threads"), (["--repeats", "0"], "--repeats")])
def test_bad_options(argv, words):
    with pytest.raises(SystemExit, match=words):
        cli(argv)


def test_candidate_latency_compares_two_models_side_by_side(tiny_weights, data_root, tmp_path, keep_threads):
    from benchmarks.experiments.candidate_latency import LIMITS, get_args_parser, main

    out = tmp_path / "latency.json"
    result = main(get_args_parser().parse_args(["--candidate", str(tiny_weights), "--shipped", str(tiny_weights),
                                                "--data-dir", str(data_root), "--threads", "1", "--repeats", "3",
                                                "--output", str(out)]))
    assert json.loads(out.read_text())["predict_ratio"] == result["predict_ratio"]
    for call, limit in LIMITS.items():
        assert result["shipped"][call]["n"] == result["candidate"][call]["n"] == 3
        ratio = result["candidate"][call]["p50_ms"] / result["shipped"][call]["p50_ms"]
        assert result[f"{call}_ratio"]["value"] == round(ratio, 2) and result[f"{call}_ratio"]["met"] == (ratio <= limit)
    with pytest.raises(SystemExit, match="No weights"):
        main(get_args_parser().parse_args(["--candidate", str(tmp_path / "none.safetensors")]))
