"""``python -m benchmarks``: runs end to end (tiny model, few repeats) and writes comparable JSON.

The figures themselves are not asserted here: timings belong to the benchmark, not to unit tests.
"""

from __future__ import annotations

import json

import numpy as np
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


def _scans(groups, truths, sources, sequences=None, leak_free=None):
    from benchmarks.experiments.ensemble import Scans

    n = len(groups)
    return Scans([f"scan{i}.png" for i in range(n)], np.array(groups), np.array(truths), np.array(sources),
                 np.array(sequences or [""] * n), np.array(leak_free or [False] * n))


def test_ensemble_candidates_are_every_small_subset_then_all():
    from benchmarks.experiments.ensemble import candidates

    assert candidates(3, 2) == [(0,), (1,), (2,), (0, 1), (0, 2), (1, 2), (0, 1, 2)]
    assert candidates(2, 3) == [(0,), (1,), (0, 1)]


def test_ensemble_score_fits_its_floor_on_validation_and_reports_per_source():
    from benchmarks.experiments.ensemble import OTHER, score

    clean = [0.02, 0.02, 0.94, 0.02]  # "no tumour", no runner-up standing out
    doubt = [0.30, 0.02, 0.66, 0.02]  # "no tumour", glioma stands out
    # Validation: 60 right clean negatives, 20 wrong doubtful ones: the floor must flag the doubtful ones.
    val_probs = [clean] * 60 + [doubt] * 20
    val_truths = [2] * 60 + [0] * 20
    ext_probs = [doubt, clean, [0.9, 0.05, 0.03, 0.02], [0.1, 0.8, 0.05, 0.05]]
    ext_truths = [OTHER, OTHER, 0, 0]
    test_probs = [clean, [0.05, 0.05, 0.05, 0.85]]
    test_truths = [2, 1]
    probs = np.array(val_probs + test_probs + ext_probs)
    scans = _scans(["validation"] * 80 + ["testing"] * 2 + ["external"] * 4, val_truths + test_truths + ext_truths,
                   ["validation"] * 80 + ["testing"] * 2 + ["radiopaedia"] * 4,
                   sequences=[""] * 82 + ["T2", "T2", "T1", "T2"], leak_free=[False] * 80 + [True, False] + [False] * 4)
    out = score(probs, scans, low_confidence=0.5)
    assert out["negative_floor"] is not None
    assert out["validation_accuracy"] == pytest.approx(60 / 80)
    assert out["testing_accuracy"] == 0.5 and out["testing_leak_free_accuracy"] == 1.0
    assert out["testing_flagged"] == 0.0
    rad = out["external"]["radiopaedia"]
    # Two other-type lesions called "no tumour": the doubtful one is flagged, the clean one is not.
    assert rad["other_notumor_unflagged"] == 0.5
    assert rad["accuracy"] == 0.5 and rad["unflagged_accuracy"] == 0.5
    assert rad["accuracy_by_sequence"] == {"T1": 1.0, "T2": 0.0}
    assert rad["recall"] == {"glioma": 0.5}


def test_stage_timers_count_nested_time_once():
    import time

    from benchmarks.experiments.predict_stages import Timers

    timers = Timers()
    inner = timers.wrap("inner", lambda: time.sleep(0.02))

    def outer_body():
        time.sleep(0.01)
        inner()

    timers.wrap("outer", outer_body)()
    assert 0.015 <= timers.seconds["inner"] < 0.05
    assert 0.005 <= timers.seconds["outer"] < 0.015  # its own 10 ms, not the inner 20 ms


def test_predict_stages_add_up_and_leave_the_pipeline_as_it_was(tiny_weights, data_root, tmp_path, keep_threads):
    from benchmarks.experiments.predict_stages import STAGES, main
    from core import model as model_module
    from core import preprocess as preprocess_module

    head_box, image_problem = preprocess_module.head_box, model_module.image_problem
    out = tmp_path / "stages.json"
    result = main(["--weights", str(tiny_weights), "--data-dir", str(data_root), "--scans", "6", "--threads", "1",
                   "--output", str(out)])
    assert json.loads(out.read_text())["scans"] == 6
    ms = result["stage_mean_ms"]
    assert set(ms) == set(STAGES) | {"other"}
    assert ms["network"] > 0 and all(ms[name] >= 0 for name in STAGES)
    assert sum(ms.values()) == pytest.approx(result["predict_mean_ms"])
    assert 0 <= result["rechecked_scans"] <= 6
    assert preprocess_module.head_box is head_box and model_module.image_problem is image_problem


def test_predict_stages_rejects_bad_counts():
    from benchmarks.experiments.predict_stages import main

    with pytest.raises(SystemExit, match="--scans"):
        main(["--scans", "0"])


def test_crop_variants_square_box_keeps_the_centre_and_takes_the_longer_side():
    from benchmarks.experiments.crop_variants import square_box

    assert square_box((10, 20, 110, 60)) == (10, -10, 110, 90)
    assert square_box((0, 0, 40, 40)) == (0, 0, 40, 40)


def test_crop_variants_views_frame_the_head_as_named():
    from PIL import Image, ImageOps

    from benchmarks.experiments.crop_variants import CANDIDATES, VIEWS
    from core.preprocess import crop_to_head

    image = Image.new("L", (300, 200), 0)
    image.paste(Image.linear_gradient("L").resize((120, 160)), (40, 20))  # a tall, asymmetric "head"
    seen = {name: view(image) for name, view in VIEWS.items()}
    assert np.array_equal(np.asarray(seen["served"]), np.asarray(crop_to_head(image)))
    assert np.array_equal(np.asarray(seen["mirror"]), np.asarray(ImageOps.mirror(seen["served"])))
    assert seen["margin 0 %"].size[0] < seen["served"].size[0] < seen["margin 10 %"].size[0] < seen["margin 15 %"].size[0]
    assert seen["square box"].size[0] == seen["square box"].size[1] == seen["served"].size[1]
    assert all(set(c) <= set(VIEWS) for c in CANDIDATES) and tuple(VIEWS) in CANDIDATES


def test_crop_variants_probabilities_sum_to_one_per_view(tiny_model, data_root):
    from benchmarks.experiments.crop_variants import view_probabilities

    paths = sorted(p for p in data_root.rglob("*.jpg"))[:5]
    probs = view_probabilities(tiny_model, paths, ["served", "mirror"], batch_size=2)
    assert set(probs) == {"served", "mirror"}
    for p in probs.values():
        assert p.shape == (len(paths), len(tiny_model.class_names))
        assert np.allclose(p.sum(1), 1.0)


def test_inference_variants_time_the_grey_float32_graph(tmp_path, data_root, keep_threads):
    """Every option, the ONNX Runtime ones included, runs on a model exported for grey input and
    gives the plain network's probabilities."""
    from benchmarks.experiments.inference_variants import compare_variants
    from tests.conftest import make_model_dir
    from train.export import export_beside

    weights = make_model_dir(tmp_path / "model", seed=5)
    export_beside(weights)
    result = compare_variants(weights, data_root, repeats=1, threads=(1,))
    onnx_rows = [name for name in result if name.startswith("ONNX Runtime")]
    assert len(onnx_rows) == 2
    for name, row in result.items():
        assert isinstance(row, dict), f"{name}: {row}"
        assert row["max_prob_diff"] < 1e-4, name
        assert row["threads_1"]["batch1_p50_ms"] > 0


def test_soup_averages_floating_tensors_and_keeps_the_first_counters():
    from benchmarks.experiments.soup import average_states

    a = {"w": torch.tensor([1.0, 2.0]), "bn.num_batches_tracked": torch.tensor(5)}
    b = {"w": torch.tensor([3.0, 6.0]), "bn.num_batches_tracked": torch.tensor(9)}
    soup = average_states([a, b])
    assert torch.equal(soup["w"], torch.tensor([2.0, 4.0])) and soup["w"].dtype == torch.float32
    assert int(soup["bn.num_batches_tracked"]) == 5
    with pytest.raises(ValueError, match="other tensors"):
        average_states([a, {"v": torch.zeros(2), "bn.num_batches_tracked": torch.tensor(1)}])
    with pytest.raises(ValueError, match="'w' is \\(3,\\)"):
        average_states([a, {"w": torch.zeros(3), "bn.num_batches_tracked": torch.tensor(1)}])
    with pytest.raises(ValueError, match="at least one"):
        average_states([])


def test_soup_of_one_network_is_that_network():
    from benchmarks.experiments.soup import average_states
    from core.model import build_network

    torch.manual_seed(0)
    net = build_network("efficientnet_lite0").eval()
    copy = build_network("efficientnet_lite0")
    copy.load_state_dict(average_states([net.state_dict(), net.state_dict()]))
    x = torch.randn(2, 3, 64, 64)
    with torch.inference_mode():
        assert torch.allclose(copy.eval()(x), net(x), atol=1e-6)


def test_soup_greedy_order_goes_from_the_best_validation_accuracy_down():
    from benchmarks.experiments.soup import greedy_order

    assert greedy_order([0.90, 0.93, 0.90, 0.95]) == [3, 1, 0, 2]


def test_soup_recomputes_batch_norm_statistics_on_the_given_batches():
    from benchmarks.experiments.soup import recompute_batch_norm

    net = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 1, bias=False), torch.nn.BatchNorm2d(2))
    with torch.no_grad():
        net[0].weight.fill_(1.0)
    net[1].running_mean.fill_(-7.0)
    batches = [(torch.full((4, 1, 3, 3), 2.0), torch.zeros(4)), (torch.full((4, 1, 3, 3), 4.0), torch.zeros(4)),
               (torch.full((4, 1, 3, 3), 100.0), torch.zeros(4))]
    recompute_batch_norm(net, iter(batches), batches=2)  # the third batch must not count
    assert torch.allclose(net[1].running_mean, torch.tensor([3.0, 3.0]))
    assert not net.training


def test_int8_study_times_the_variants_interleaved_against_the_baseline():
    import time

    from benchmarks.experiments.int8 import BASELINE, speed

    calls: list[str] = []

    class Fake:
        def __init__(self, name: str, seconds: float):
            self.name, self.seconds = name, seconds

        def predict(self, image):
            calls.append(self.name)
            time.sleep(self.seconds)

        def predict_batch(self, images):
            time.sleep(self.seconds * len(images) / 8)

    out = speed({BASELINE: Fake("base", 0.010), "fast": Fake("fast", 0.001)}, images=[object()] * 40, repeats=6)
    # One warm-up call each, then rounds that call every variant once, in turn.
    assert calls == ["base", "fast"] + ["base", "fast"] * 6
    assert out[BASELINE]["predict_speedup"] == 1.0 and out[BASELINE]["batch_speedup"] == 1.0
    assert out["fast"]["predict_p50_ms"] < out[BASELINE]["predict_p50_ms"]
    assert out["fast"]["predict_speedup"] == round(out[BASELINE]["predict_p50_ms"] / out["fast"]["predict_p50_ms"], 2) > 1.5
    assert out["fast"]["batch32_scans_per_s"] > out[BASELINE]["batch32_scans_per_s"]
