"""Concurrency: one shared model, many threads, the same answers as one at a time.

Streamlit shares the cached model between sessions, so ``predict`` and ``explain`` run on it
from several threads at once; Grad-CAM's hooks on a shared network are the risk.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from core import CLASS_NAMES, read_scan

THREADS = 8
ROUNDS = 3
PROB_TOL = 1e-6
HEATMAP_TOL = 1e-5


@pytest.fixture(scope="module")
def scans(data_root):
    """Eight different real scans, two of each class."""
    images = []
    for name in CLASS_NAMES:
        paths = sorted((data_root / "Testing" / name).glob("*.jpg"))
        images += [read_scan(paths[5]), read_scan(paths[17])]
    assert len(images) == THREADS
    return images


def _work(model, image, index):
    """What one session does: predict, explain the prediction, explain a fixed other class."""
    prediction = model.predict(image)
    heatmap = model.explain(image)
    other = model.explain(image, target=CLASS_NAMES[index % len(CLASS_NAMES)])
    return np.array([prediction.probabilities[c] for c in CLASS_NAMES]), heatmap, other


@pytest.fixture(scope="module")
def sequential(tiny_model, scans):
    return [_work(tiny_model, image, i) for i, image in enumerate(scans)]


def test_sequential_results_tell_scans_apart(sequential):
    """Each pair differs by more than the tolerances: a mix-up between threads would show."""
    probabilities = [result[0] for result in sequential]
    heatmaps = [result[1] for result in sequential]
    for i in range(THREADS):
        for j in range(i + 1, THREADS):
            assert np.abs(probabilities[i] - probabilities[j]).max() > 2 * PROB_TOL
            if heatmaps[i].shape == heatmaps[j].shape:
                assert np.abs(heatmaps[i] - heatmaps[j]).max() > 2 * HEATMAP_TOL


def test_sequential_calls_are_repeatable(tiny_model, scans, sequential):
    again = _work(tiny_model, scans[0], 0)
    np.testing.assert_allclose(again[0], sequential[0][0], atol=PROB_TOL, rtol=0)
    np.testing.assert_allclose(again[1], sequential[0][1], atol=HEATMAP_TOL, rtol=0)


def _compare(result, expected, label):
    probabilities, heatmap, other = result
    np.testing.assert_allclose(probabilities, expected[0], atol=PROB_TOL, rtol=0, err_msg=label)
    assert heatmap.shape == expected[1].shape, label
    np.testing.assert_allclose(heatmap, expected[1], atol=HEATMAP_TOL, rtol=0, err_msg=label)
    np.testing.assert_allclose(other, expected[2], atol=HEATMAP_TOL, rtol=0, err_msg=label)


def test_threads_get_the_sequential_results(tiny_model, scans, sequential):
    barrier = threading.Barrier(THREADS)

    def session(index):
        results = []
        for round_ in range(ROUNDS):
            barrier.wait(timeout=60)  # all threads enter each round together
            # Vary the order of calls so that predictions and explanations overlap.
            if (index + round_) % 2:
                heatmap = tiny_model.explain(scans[index])
                prediction = tiny_model.predict(scans[index])
                other = tiny_model.explain(scans[index], target=CLASS_NAMES[index % len(CLASS_NAMES)])
                probabilities = np.array([prediction.probabilities[c] for c in CLASS_NAMES])
                results.append((probabilities, heatmap, other))
            else:
                results.append(_work(tiny_model, scans[index], index))
        return results

    with ThreadPoolExecutor(max_workers=THREADS) as pool:
        futures = [pool.submit(session, i) for i in range(THREADS)]
        outcomes = [future.result(timeout=600) for future in futures]

    for index, results in enumerate(outcomes):
        for round_, result in enumerate(results):
            _compare(result, sequential[index], f"scan {index}, round {round_}")


def test_threads_on_the_same_scan(tiny_model, scans, sequential):
    """Eight sessions explaining the very same image at once."""
    with ThreadPoolExecutor(max_workers=THREADS) as pool:
        results = list(pool.map(lambda _: _work(tiny_model, scans[3], 3), range(THREADS)))
    for result in results:
        _compare(result, sequential[3], "same scan")


def test_predict_batch_in_threads_matches_predict(tiny_model, scans, sequential):
    with ThreadPoolExecutor(max_workers=4) as pool:
        batches = list(pool.map(lambda k: tiny_model.predict_batch(scans[k:] + scans[:k]), range(4)))
    for k, batch in enumerate(batches):
        for offset, prediction in enumerate(batch):
            expected = sequential[(k + offset) % THREADS][0]
            got = np.array([prediction.probabilities[c] for c in CLASS_NAMES])
            np.testing.assert_allclose(got, expected, atol=PROB_TOL, rtol=0)


def test_explain_leaves_no_hooks_or_gradients(tiny_model, scans):
    """Grad-CAM's hooks are released and no gradient is kept after concurrent calls."""
    with ThreadPoolExecutor(max_workers=THREADS) as pool:
        list(pool.map(tiny_model.explain, scans))
    for net in (tiny_model.network, tiny_model.cam.net):
        for module in net.modules():
            assert not module._forward_hooks and not module._backward_hooks
            assert not getattr(module, "_forward_pre_hooks", {})
            assert not getattr(module, "_backward_pre_hooks", {})
        assert all(param.grad is None for param in net.parameters())
    assert not any(param.requires_grad for param in tiny_model.network.parameters())


def test_shipped_runtime_in_threads_matches_sequential(shipped_model, scans):
    """The served runtime (one ONNX Runtime session for the shipped model) shared by eight
    threads gives each of them its scan's sequential probabilities."""
    expected = [np.array([p.probabilities[c] for c in CLASS_NAMES]) for p in shipped_model.predict_batch(scans)]
    barrier = threading.Barrier(THREADS)

    def session(index):
        barrier.wait(timeout=60)
        return [shipped_model.predict(scans[index]) for _ in range(ROUNDS)]

    with ThreadPoolExecutor(max_workers=THREADS) as pool:
        outcomes = list(pool.map(session, range(THREADS)))
    for index, predictions in enumerate(outcomes):
        for prediction in predictions:
            got = np.array([prediction.probabilities[c] for c in CLASS_NAMES])
            np.testing.assert_allclose(got, expected[index], atol=1e-4, rtol=0, err_msg=f"scan {index}")
