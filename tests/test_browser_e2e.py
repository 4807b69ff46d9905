"""End to end in a real browser: ``streamlit run`` + Debian's headless Chromium via Playwright.

Skipped only when /usr/bin/chromium is absent (``.ci/run`` installs it); no browser is downloaded.
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from app_assets import make_assets
from core import CLASS_LABELS, load_model, read_scan, read_series
from core.constants import ASSETS_DIR, WEIGHTS_NAME, series_dir

logger = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
STARTUP_TIMEOUT_S = 60
BANNER = "Research demonstration — not for diagnostic use"
#: A real DICOM series (40 files, 512 x 512, RLE) among the development series.
VSSEG = Path("vsseg") / "other" / "vsseg_001_schwannoma"
SCREENSHOT = Path("/tmp/series_review.png")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_healthy(url: str, process: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"streamlit exited early with code {process.returncode}")
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    raise TimeoutError(f"streamlit did not answer at {url} within {timeout} s")


@pytest.fixture(scope="module")
def assets(tmp_path_factory) -> Path:
    if (ASSETS_DIR / WEIGHTS_NAME).is_file():
        return ASSETS_DIR
    return make_assets(tmp_path_factory.mktemp("browser_assets"))


@pytest.fixture(scope="module")
def server(assets, tmp_path_factory):
    port = _free_port()
    env = {**os.environ, "BTMRI_ASSETS": str(assets)}
    log = tmp_path_factory.mktemp("server") / "streamlit.log"
    with open(log, "wb") as handle:
        process = subprocess.Popen(
            [sys.executable, "-m", "streamlit", "run", "streamlit_app.py", "--server.headless", "true",
             "--server.port", str(port), "--server.address", "127.0.0.1", "--browser.gatherUsageStats", "false"],
            cwd=ROOT, env=env, stdout=handle, stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(url, process, STARTUP_TIMEOUT_S)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
    text = log.read_text(errors="replace")
    assert "Traceback" not in text, text[-3000:]


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} not found: install Debian's chromium package (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


_RENDERED = """() => {
    const stale = document.querySelectorAll('[data-stale="true"]').length;
    const images = [...document.querySelectorAll('[data-testid="stImage"] img')];
    const charts = document.querySelectorAll('.js-plotly-plot .main-svg').length;
    return stale === 0 && images.length >= 3 && images.every(i => i.complete && i.naturalWidth > 0) && charts > 0;
}"""


def _upload_and_wait(page, path: Path, expected: str) -> tuple[float, float]:
    """Seconds from choosing the file to (the predicted class shown, the whole review rendered:
    class, probability chart, original, heatmap and overlay images)."""
    page.wait_for_selector("input[type=file]", state="attached", timeout=30_000)
    started = time.perf_counter()
    page.set_input_files("input[type=file]", str(path))
    page.get_by_role("heading", name=f"Review: {path.name}").wait_for(timeout=60_000)
    page.get_by_test_id("stMetricValue").filter(has_text=expected).first.wait_for(timeout=60_000)
    shown = time.perf_counter() - started
    page.wait_for_function(_RENDERED, timeout=60_000, polling=20)
    return shown, time.perf_counter() - started


@pytest.mark.browser
@pytest.mark.slow
def test_upload_a_scan_and_see_the_prediction(server, browser, assets, scan_paths, tmp_path):
    model = load_model(assets / WEIGHTS_NAME, device="cpu")
    warm_path, timed_path = scan_paths["pituitary"], scan_paths["glioma"]
    context = browser.new_context(viewport={"width": 1440, "height": 2000})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))

    # first request to the fresh server: a page opened by its address still carries the banner
    page.goto(f"{server}/model_performance", wait_until="domcontentloaded")
    page.get_by_text("Accuracy (Testing)").wait_for(timeout=60_000)
    assert page.get_by_text(BANNER).first.is_visible()
    # ... and the app's own navigation, not Streamlit's legacy pages/ list ("streamlit app",
    # "model performance", "scan review")
    nav = page.get_by_test_id("stSidebarNav")
    nav.get_by_role("link", name="Scan review", exact=True).wait_for(timeout=30_000)
    assert nav.get_by_role("link").count() == 2
    assert nav.get_by_role("link", name="streamlit app").count() == 0

    page.goto(server, wait_until="domcontentloaded")
    page.get_by_text(BANNER).first.wait_for(timeout=30_000)
    first = _upload_and_wait(page, warm_path, CLASS_LABELS[model.predict(read_scan(warm_path)).label])

    # the same session, model loaded: another scan added to the batch comes under review
    expected = CLASS_LABELS[model.predict(read_scan(timed_path)).label]
    warm = _upload_and_wait(page, timed_path, expected)
    assert page.get_by_test_id("stDataFrame").count() == 1
    page.screenshot(path=str(tmp_path / "scan_review.png"), full_page=True)
    assert page.get_by_text("Traceback").count() == 0
    report = (
        f"upload -> result, first scan of the process (model loading): class {first[0]:.2f} s, all {first[1]:.2f} s\n"
        f"upload -> result, model loaded: class {warm[0]:.2f} s, all {warm[1]:.2f} s\n"
    )
    print("\n" + report)
    (tmp_path / "timings.txt").write_text(report)

    # picking a row of the summary table brings that scan under review
    grid = page.get_by_test_id("stDataFrame").first.bounding_box()
    row_height = 35  # Streamlit's default: header and rows alike
    page.mouse.click(grid["x"] + 15, grid["y"] + row_height + row_height / 2)  # row 1's selection box
    page.get_by_role("heading", name=f"Review: {warm_path.name}").wait_for(timeout=60_000)

    page.get_by_role("link", name="Model performance").click()
    started = time.perf_counter()
    page.get_by_text("Accuracy (Testing)").wait_for(timeout=30_000)
    page.locator(".js-plotly-plot").first.wait_for(timeout=30_000)
    assert page.get_by_text(BANNER).first.is_visible()
    performance = time.perf_counter() - started
    page.wait_for_timeout(1000)
    page.screenshot(path=str(tmp_path / "model_performance.png"), full_page=True)
    print(f"model performance page: {performance:.2f} s")
    # only the open tab is drawn: opening another one brings its chart
    page.get_by_role("tab", name="Calibration").click()
    page.get_by_text("Expected calibration error").first.wait_for(timeout=30_000)
    page.locator(".js-plotly-plot").first.wait_for(timeout=30_000)
    page.screenshot(path=str(tmp_path / "model_performance_calibration.png"), full_page=True)
    assert page.get_by_text("Traceback").count() == 0
    assert not errors, errors
    context.close()
    assert warm[1] < 15.0  # a loose guard against hangs; the measured figures are printed above


_SERIES_RENDERED = """() => {
    const stale = document.querySelectorAll('[data-stale="true"]').length;
    const images = [...document.querySelectorAll('[data-testid="stImage"] img')];
    const charts = document.querySelectorAll('.js-plotly-plot .main-svg').length;
    return stale === 0 && images.length >= 2 && images.every(i => i.complete && i.naturalWidth > 0) && charts > 0;
}"""


@pytest.mark.browser
@pytest.mark.slow
def test_upload_a_real_series_and_see_its_answer(server, browser, assets):
    """The 40 files of a real DICOM series dropped at once: one series row, its answer, the chart,
    the slider and the key slices; a screenshot of the whole page goes to /tmp."""
    folder = series_dir() / VSSEG
    if not folder.is_dir():
        pytest.skip(f"development series not found at {folder}")
    paths = sorted(p for p in folder.iterdir() if p.suffix == ".dcm")
    model = load_model(assets / WEIGHTS_NAME, device="cpu")
    [series] = read_series(paths)
    expected = model.predict_series(series)
    context = browser.new_context(viewport={"width": 1440, "height": 3000})  # the whole page in one screenshot
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(server, wait_until="domcontentloaded")
    page.wait_for_selector("input[type=file]", state="attached", timeout=30_000)
    started = time.perf_counter()
    page.set_input_files("input[type=file]", [str(p) for p in paths])
    page.get_by_role("heading", name=f"Series: {series.name}").wait_for(timeout=120_000)
    page.get_by_test_id("stMetricValue").filter(has_text=CLASS_LABELS[expected.label]).first.wait_for(timeout=60_000)
    shown = time.perf_counter() - started
    page.wait_for_function(_SERIES_RENDERED, timeout=60_000, polling=50)
    rendered = time.perf_counter() - started
    page.screenshot(path=str(SCREENSHOT), full_page=True)
    assert page.get_by_test_id("stDataFrame").count() == 1  # the series table (its row is drawn on a canvas)
    assert page.get_by_test_id("stSlider").count() >= 2  # the slice slider and the heatmap opacity
    assert page.get_by_role("button", name="Show", exact=True).count() == len(expected.key_slices)
    assert page.get_by_text("Traceback").count() == 0
    print(f"\n40-file series, drop -> answer shown {shown:.2f} s, page rendered {rendered:.2f} s")

    # a NIfTI volume added to the same drop: its own series, and the plane choice appears
    volume = series_dir() / "tiantan" / "pituitary" / "tiantan_1.nii.gz"
    if volume.is_file():
        page.set_input_files("input[type=file]", str(volume))
        page.get_by_text("Cut NIfTI volumes in the").wait_for(timeout=60_000)
        page.get_by_text("Series under review").wait_for(timeout=60_000)
        assert page.get_by_text("Traceback").count() == 0
    assert not errors, errors
    context.close()


def test_waiting_for_the_server_stops_when_it_exits():
    """A server that dies at start-up is reported at once, not after the whole timeout."""
    process = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])
    process.wait(timeout=30)
    started = time.monotonic()
    with pytest.raises(RuntimeError, match="exited early with code 3"):
        _wait_healthy(f"http://127.0.0.1:{_free_port()}", process, timeout=30)
    assert time.monotonic() - started < 5
