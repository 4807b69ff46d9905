"""The scan review page, driven through Streamlit's AppTest with real scans.

Runs against a fixture model always, and against the shipped model when assets/ holds one.
"""

from __future__ import annotations

import csv
import io
import logging
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

import streamlit as st

import core.model
from app import review as app_review
from app_assets import make_assets
from core import CLASS_LABELS, CLASS_NAMES, Flag, flag_text, load_model, read_scan
from core.constants import ASSETS_DIR, USER_SEQUENCES, WEIGHTS_NAME
from core.results import SEQUENCE_NOT_LEARNED_FLAG
from core.rules import NOT_BRAIN_MRI, OUTSIDE_TRAINING, SEQUENCE_NOT_LEARNED, WEAK_NEGATIVE
from core.sequence import SequenceInfo, user_sequence
from app.review import AS_READ, NOT_BRAIN_MRI_TEXT, analyse_scan, results_csv, sequence_text, summary_rows
from synthetic import synthetic_scan

APP = str(Path(__file__).resolve().parent.parent / "streamlit_app.py")
BANNER = "Research demonstration — not for diagnostic use"
TIMEOUT = 120
PATIENT_NAME = "DOE^JANE"

#: The shipped model's runs of the page are slow (its network is 4x the fixture's): the fast lane
#: drives the page with the fixture model, the whole suite with both.
ASSET_KINDS = ["fixture"] + ([pytest.param("shipped", marks=pytest.mark.slow)] if (ASSETS_DIR / WEIGHTS_NAME).is_file() else [])


@pytest.fixture(scope="module")
def fixture_assets(tmp_path_factory) -> Path:
    return make_assets(tmp_path_factory.mktemp("app_assets"))


@pytest.fixture(scope="module", params=ASSET_KINDS)
def assets(request, fixture_assets) -> Path:
    """The assets folder the app reads: the fixture, then (when present) the shipped one."""
    return fixture_assets if request.param == "fixture" else ASSETS_DIR


@pytest.fixture(scope="module")
def model(assets):
    return load_model(assets / WEIGHTS_NAME, device="cpu")


@pytest.fixture
def app(assets, monkeypatch) -> AppTest:
    monkeypatch.setenv("BTMRI_ASSETS", str(assets))
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    at.run()
    assert not at.exception
    return at


@pytest.fixture
def downloads(monkeypatch) -> dict:
    """What each download button (by key) was given: its bytes, or the function that builds them."""
    given: dict = {}
    original = st.download_button

    def recording(label, data, *args, **kwargs):
        given[kwargs.get("key")] = data
        return original(label, data, *args, **kwargs)

    monkeypatch.setattr(st, "download_button", recording)
    return given


def fetched(downloads: dict, key: str) -> bytes:
    data = downloads[key]
    return data() if callable(data) else data


def _csv_rows(downloads: dict, key: str = "download_csv") -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(fetched(downloads, key).decode("utf-8"))))


def _upload(at: AppTest, files: list[tuple[str, bytes]]) -> AppTest:
    at.file_uploader(key="uploads").set_value([(name, data, "application/octet-stream") for name, data in files])
    at.run()
    return at


def _metric(at: AppTest, label: str) -> str | None:
    values = [m.value for m in at.metric if m.label == label]
    return values[0] if values else None


def _texts(at: AppTest) -> str:
    parts = []
    for kind in ("markdown", "caption", "info", "warning", "error", "success", "title", "header", "subheader"):
        parts.extend(str(e.value) for e in getattr(at, kind))
    parts.extend(str(m.value) for m in at.metric)
    return "\n".join(parts)


def _png_bytes(seed: int = 5) -> bytes:
    """A generated head-like PNG: no tags, so its sequence comes from the image or is unknown."""
    buffer = io.BytesIO()
    synthetic_scan(seed, size=128).save(buffer, format="PNG")
    return buffer.getvalue()


def _review_flags(at: AppTest) -> list[str]:
    return [w.value for w in at.warning if w.value.startswith("Review advised: ")]


def _dicom_bytes(window: bool = False, description: str | None = None) -> bytes:
    """A small single-frame MR DICOM, built in memory, with a patient name that must never show
    (``description``: its SeriesDescription, which names the sequence)."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MRImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(None, {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = MRImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "MR"
    ds.PatientName = PATIENT_NAME
    ds.PatientID = "ID-123456"
    yy, xx = np.mgrid[:96, :96]
    pixels = (1500 * np.exp(-((yy - 48) ** 2 + (xx - 48) ** 2) / 800.0)).astype(np.uint16)
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    if window:
        ds.WindowCenter, ds.WindowWidth = 700, 1400
    if description is not None:
        ds.SeriesDescription = description
    ds.PixelData = pixels.tobytes()
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


# ---------------------------------------------------------------------- page
def test_empty_page_has_banner_and_upload_prompt(app):
    assert any(BANNER in w.value for w in app.warning)
    uploader = app.file_uploader(key="uploads")
    assert uploader.accept_multiple_files
    assert {"jpg", "jpeg", "png", "bmp", "tif", "tiff", "webp", "dcm"} <= {t.lstrip(".") for t in uploader.allowed_type}
    assert any("Drag and drop" in i.value for i in app.info)
    assert not app.get("plotly_chart")


def test_batch_of_real_scans_matches_core(app, model, scan_paths):
    files = [(f"{name}.jpg", path.read_bytes()) for name, path in scan_paths.items()]
    _upload(app, files)
    assert not app.exception and not app.error
    assert app.get("progress"), "a progress bar is shown while scans are processed"

    expected = [model.predict(read_scan(data)) for _, data in files]
    table = app.dataframe[0].value
    assert list(table["File"]) == [name for name, _ in files]
    assert list(table["Predicted class"]) == [CLASS_LABELS[p.label] for p in expected]
    assert np.allclose(table["Confidence (%)"].astype(float), [round(100 * p.confidence, 1) for p in expected])

    # the first scan is under review: class in words, confidence, chart, three images
    assert _metric(app, "Predicted class") == CLASS_LABELS[expected[0].label]
    assert _metric(app, "Confidence") == f"{100 * expected[0].confidence:.1f} %"
    assert len(app.get("plotly_chart")) == 1
    captions = [c for img in app.get("image") for c in img.captions]
    assert len(captions) == 3 and captions[0] == "Original" and captions[1].startswith("Grad-CAM")
    assert any("not a tumour outline" in i.value for i in app.info)
    assert [b.label for b in app.get("download_button")] == ["Download results (CSV)", "Download overlay (PNG)"]
    assert app.selectbox(key=f"explain_{app_review.digest_of(files[0][1])}").value == expected[0].label

    # review another row of the batch
    app.selectbox(key="review_index").set_value(2)
    app.run()
    assert not app.exception
    assert app.header[0].value == f"Review: {files[2][0]}"
    assert _metric(app, "Predicted class") == CLASS_LABELS[expected[2].label]


def test_bad_file_gets_its_row_and_the_batch_goes_on(app, model, scan_paths):
    good = scan_paths["pituitary"].read_bytes()
    files = [("notes.png", b"these are my notes, not a scan"), ("scan.jpg", good), ("empty.jpg", b"")]
    _upload(app, files)
    assert not app.exception
    table = app.dataframe[0].value
    assert list(table["Predicted class"]) == [
        "Could not be read", CLASS_LABELS[model.predict(read_scan(good)).label], "Could not be read"
    ]
    assert table["Flags / message"][0] == "The file holds text, not an image."
    assert table["Flags / message"][2] == "The file is empty (0 bytes)."
    # the bad file under review shows its message, not a traceback
    assert app.selectbox(key="review_index").value == 0
    assert any("The file holds text, not an image." in e.value for e in app.error)
    assert "Traceback" not in _texts(app)
    # the good one in the same batch is reviewed in full
    app.selectbox(key="review_index").set_value(1)
    app.run()
    assert not app.exception and not app.error
    assert _metric(app, "Predicted class") == CLASS_LABELS[model.predict(read_scan(good)).label]
    assert len(app.get("image")) == 3


def test_reruns_reuse_the_analysis(app, scan_paths, monkeypatch):
    calls = []
    original = app_review.analyse_scan

    def counting(model, data):
        calls.append(len(data))
        return original(model, data)

    monkeypatch.setattr(app_review, "analyse_scan", counting)
    data = scan_paths["glioma"].read_bytes()
    _upload(app, [("a.jpg", data), ("same-bytes.jpg", data)])
    assert len(calls) == 1  # identical bytes are analysed once
    app.slider(key="opacity").set_value(0.9).run()
    app.slider(key="brightness").set_value(1.4).run()
    assert not app.exception and len(calls) == 1
    assert app.get("image")[2].captions[0] == "Overlay at 90% opacity"


def test_display_controls_never_change_the_model_input(app, model, scan_paths):
    data = scan_paths["meningioma"].read_bytes()
    _upload(app, [("m.jpg", data)])
    before = _metric(app, "Predicted class"), _metric(app, "Confidence")
    app.slider(key="brightness").set_value(1.8)
    app.slider(key="contrast").set_value(0.6)
    app.run()
    assert not app.exception
    assert (_metric(app, "Predicted class"), _metric(app, "Confidence")) == before
    analysis = app.session_state["scan_analyses"][app_review.digest_of(data)]
    assert analysis.image.tobytes() == read_scan(data).tobytes()


def test_explained_class_can_be_chosen(app, model, scan_paths):
    data = scan_paths["notumor"].read_bytes()
    _upload(app, [("n.jpg", data)])
    digest = app_review.digest_of(data)
    other = next(n for n in CLASS_NAMES if n != model.predict(read_scan(data)).label)
    app.selectbox(key=f"explain_{digest}").set_value(other)
    app.run()
    assert not app.exception
    assert app.get("image")[1].captions[0].startswith(f"Grad-CAM for {CLASS_LABELS[other]}")
    analysis = app.session_state["scan_analyses"][digest]
    assert np.allclose(analysis.heatmap(model, other), model.explain(read_scan(data), target=other), atol=1e-5)


def test_not_a_brain_mri_withholds_the_prediction(app, scan_paths, monkeypatch):
    original = core.model.Classifier.predict
    flag = Flag(NOT_BRAIN_MRI, 42.0, 20.0, check="gate")

    def gated(self, image):
        return replace(original(self, image), is_brain_mri=False, ood_score=42.0, flags=(flag,))

    monkeypatch.setattr(core.model.Classifier, "predict", gated)
    data = scan_paths["glioma"].read_bytes()
    _upload(app, [("photo.jpg", data)])
    assert not app.exception
    assert any("not recognised as a brain MRI" in w.value for w in app.warning)
    assert _metric(app, "Predicted class") is None and not app.get("plotly_chart")
    assert app.dataframe[0].value["Predicted class"][0] == NOT_BRAIN_MRI_TEXT
    assert app.dataframe[0].value["Flags / message"][0] == flag_text(flag)

    app.toggle(key=f"reveal_{app_review.digest_of(data)}").set_value(True)
    app.run()
    assert not app.exception
    assert _metric(app, "Predicted class") in set(CLASS_LABELS.values())
    assert any("Unreliable" in e.value for e in app.error)
    assert any(f"Review advised: {flag_text(flag)}" in w.value for w in app.warning)


@pytest.mark.parametrize("window, transform", [(False, "percentile stretch"), (True, "stored window")])
def test_dicom_is_announced_and_patient_tags_stay_hidden(app, window, transform, caplog):
    caplog.set_level(logging.DEBUG)
    _upload(app, [("DOE_JANE_slice.dcm", _dicom_bytes(window))])
    assert not app.exception and not app.error
    assert any(transform in i.value for i in app.info)
    # a synthetic blob: the shipped model's gate may (rightly) withhold the tumour prediction
    shown = _metric(app, "Predicted class")
    assert shown in set(CLASS_LABELS.values()) or NOT_BRAIN_MRI_TEXT.lower() in _texts(app).lower()
    assert PATIENT_NAME not in _texts(app) and "ID-123456" not in _texts(app)
    assert PATIENT_NAME not in caplog.text and "DOE_JANE_slice" not in caplog.text


def test_model_missing_gives_a_message(tmp_path, monkeypatch, scan_paths):
    monkeypatch.setenv("BTMRI_ASSETS", str(tmp_path))
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    at.run()
    _upload(at, [("a.jpg", scan_paths["glioma"].read_bytes())])
    assert not at.exception
    assert any("model could not be loaded" in e.value for e in at.error)


# ---------------------------------------------------------------------- helpers
def test_results_csv_has_outcomes_and_no_patient_tags(model, scan_paths):
    good = scan_paths["glioma"].read_bytes()
    items = [
        ("=cmd|calc.jpg", analyse_scan(model, good)),
        ("bad.png", analyse_scan(model, b"not an image")),
        ("x.dcm", analyse_scan(model, _dicom_bytes())),
    ]
    text = results_csv(items).decode("utf-8")
    rows = list(csv.DictReader(io.StringIO(text)))
    prediction = model.predict(read_scan(good))
    assert rows[0]["file"] == "'=cmd|calc.jpg"  # no spreadsheet formula injection
    assert rows[0]["status"] == "ok" and rows[0]["label"] == prediction.label
    assert float(rows[0]["confidence"]) == pytest.approx(prediction.confidence, abs=1e-4)
    assert sum(float(rows[0][f"p_{n}"]) for n in CLASS_NAMES) == pytest.approx(1.0, abs=1e-3)
    assert rows[1]["status"] == "error" and rows[1]["error"] == "The file holds text, not an image."
    assert PATIENT_NAME not in text and "ID-123456" not in text
    assert [r["File"] for r in summary_rows(items)] == [name for name, _ in items]


def test_analyse_scan_turns_unexpected_errors_into_a_message(model, monkeypatch):
    def broken(data):
        raise RuntimeError("internal detail")

    monkeypatch.setattr(app_review, "read_scan", broken)
    analysis = analyse_scan(model, b"anything")
    assert not analysis.ok and analysis.error == app_review.UNEXPECTED_ERROR_TEXT
    assert "internal detail" not in analysis.error


@pytest.mark.slow
def test_two_sessions_in_a_row_bad_then_good(assets, monkeypatch, scan_paths):
    """One session uploads a bad file, the next a good one; both behave, sharing the cached model."""
    monkeypatch.setenv("BTMRI_ASSETS", str(assets))
    first = AppTest.from_file(APP, default_timeout=TIMEOUT)
    first.run()
    _upload(first, [("broken.jpg", b"\xff\xd8\xff\xe0 truncated")])
    assert not first.exception
    assert list(first.dataframe[0].value["Predicted class"]) == ["Could not be read"]
    assert first.error and "Traceback" not in _texts(first)

    second = AppTest.from_file(APP, default_timeout=TIMEOUT)
    second.run()
    good = scan_paths["glioma"].read_bytes()
    _upload(second, [("scan.jpg", good)])
    assert not second.exception and not second.error
    expected = load_model(assets / WEIGHTS_NAME, device="cpu").predict(read_scan(good))
    assert _metric(second, "Predicted class") == CLASS_LABELS[expected.label]
    # the first session's state did not leak into the second
    assert list(second.dataframe[0].value["File"]) == ["scan.jpg"]


def test_outside_training_data_is_a_review_state_on_the_page_and_in_the_csv(app, model, scan_paths, monkeypatch):
    from app.review import OUTSIDE_TRAINING_TEXT

    original = core.model.Classifier.predict

    def outside(self, image):
        prediction = original(self, image)
        return replace(prediction, outside_training=True, flags=(Flag(OUTSIDE_TRAINING, 1.5, 1.0),))

    monkeypatch.setattr(core.model.Classifier, "predict", outside)
    data = scan_paths["notumor"].read_bytes()
    _upload(app, [("t2.jpg", data)])
    assert not app.exception
    assert any("Outside the training data" in e.value for e in app.error)
    assert _metric(app, "Predicted class") in set(CLASS_LABELS.values())  # still shown, marked unreliable
    assert OUTSIDE_TRAINING_TEXT in app.dataframe[0].value["Predicted class"][0]

    analysis = analyse_scan(model, data)
    monkeypatch.setattr(core.model.Classifier, "predict", original)
    row = next(csv.DictReader(io.StringIO(results_csv([("t2.jpg", replace(analysis, prediction=outside(model, analysis.image)))]).decode())))
    assert row["status"] == "outside_training" and row["outside_training"] == "true"
    assert row["flag_kinds"] == OUTSIDE_TRAINING


def test_weak_no_tumour_answer_is_flagged_on_the_page_and_in_the_csv(app, model, scan_paths, monkeypatch, request):
    from core.constants import NEGATIVE_CLASS, WEAK_NEGATIVE_FLAG

    data = scan_paths["notumor"].read_bytes()
    if model.predict(read_scan(data)).label != NEGATIVE_CLASS:
        pytest.skip("this model does not answer 'no tumour' on the sample scan")
    # A floor no answer reaches: every "no tumour" answer falls under it.
    original = core.model.Classifier.__init__

    def strict(self, *args, **kwargs):
        original(self, *args, **kwargs)
        self.rules = replace(self.rules, negative_floor=1.01)

    monkeypatch.setattr(core.model.Classifier, "__init__", strict)
    monkeypatch.setattr(model, "rules", replace(model.rules, negative_floor=1.01))
    # The page caches its model: load the strict one now, and drop it after this test.
    import streamlit as st

    st.cache_resource.clear()
    request.addfinalizer(st.cache_resource.clear)
    _upload(app, [("scan.jpg", data)])
    assert not app.exception
    assert _metric(app, "Predicted class") == CLASS_LABELS[NEGATIVE_CLASS]
    assert any(f"Review advised: {WEAK_NEGATIVE_FLAG}" in w.value for w in app.warning)
    assert WEAK_NEGATIVE_FLAG in app.dataframe[0].value["Flags / message"][0]
    row = next(csv.DictReader(io.StringIO(results_csv([("scan.jpg", analyse_scan(model, data))]).decode())))
    assert row["label"] == NEGATIVE_CLASS and WEAK_NEGATIVE_FLAG in row["flags"]
    assert WEAK_NEGATIVE in row["flag_kinds"].split()


# ---------------------------------------------------------------------- sequence
def _sequence_selector(at: AppTest, data: bytes):
    key = f"sequence_{app_review.digest_of(data)[:16]}"
    found = [s for s in at.selectbox if s.key == key]
    return found[0] if found else None


def test_a_png_gets_its_sequence_column_and_a_selector(app, model):
    data = _png_bytes()
    _upload(app, [("slice.png", data)])
    assert not app.exception
    expected = model.predict(read_scan(data))
    [row] = app.dataframe[0].value.to_dict("records")
    if model.recogniser is None or not expected.sequence.known:
        assert row["Sequence"] == "unknown"
    else:  # read from the image, with the recogniser's confidence
        assert row["Sequence"] == f"{expected.sequence.name} (from the image, {100 * expected.sequence.confidence:.0f} %)"
    selector = _sequence_selector(app, data)
    assert selector is not None and selector.value == AS_READ
    assert selector.options == [f"As read: {row['Sequence']}"] + [app_review.SEQUENCE_LABELS[q] for q in USER_SEQUENCES]
    assert "T1 with contrast" in selector.options and "T1-weighted (contrast unknown)" in selector.options
    if model.rules.coverage is not None:  # what the model learned, worded from the table
        assert app_review.coverage_text(model.rules.coverage) in _texts(app)


def test_a_dicom_whose_tags_name_the_sequence_gets_no_selector(app, model):
    data = _dicom_bytes(description="t2_tse_tra")
    _upload(app, [("t2.dcm", data)])
    assert not app.exception
    [row] = app.dataframe[0].value.to_dict("records")
    assert row["Sequence"] == "T2 (DICOM tags)"
    assert _sequence_selector(app, data) is None
    assert "**Sequence:** T2 (DICOM tags)" in _texts(app)
    expected = model.predict(read_scan(data))
    assert expected.sequence.source == "tags"
    if _metric(app, "Predicted class") is not None:  # the tags' sequence reaches the review flags
        assert _review_flags(app) == [f"Review advised: {flag_text(flag)}." for flag in expected.flags]


def test_choosing_the_sequence_analyses_the_scan_again(app, model, downloads, monkeypatch):
    calls: list[tuple] = []
    original = core.model.Classifier.predict_batch

    def counting(self, images, batch_size=32, sequences=None):
        calls.append(tuple(q.source if q is not None else None for q in sequences or ()))
        return original(self, images, batch_size, sequences)

    monkeypatch.setattr(core.model.Classifier, "predict_batch", counting)
    data = _png_bytes()
    image = read_scan(data)
    _upload(app, [("slice.png", data)])
    as_read = original(model, [image])[0]
    assert _csv_rows(downloads)[0]["sequence_source"] == as_read.sequence.source

    _sequence_selector(app, data).set_value("FLAIR").run()
    assert not app.exception
    expected = original(model, [image], sequences=[user_sequence("FLAIR")])[0]
    [row] = _csv_rows(downloads)
    assert (row["sequence"], row["sequence_source"]) == ("FLAIR", "user")
    # The CSV withholds the label of a scan not recognised as a brain MRI (core.results).
    assert row["label"] == (expected.label if expected.is_brain_mri else "")
    assert row["flag_kinds"] == " ".join(expected.flag_kinds)
    assert app.dataframe[0].value["Sequence"][0] == "FLAIR (your choice)"
    if expected.is_brain_mri:
        assert _metric(app, "Predicted class") == CLASS_LABELS[expected.label]
        assert _review_flags(app) == [f"Review advised: {flag_text(flag)}." for flag in expected.flags]
        # the heatmap explains the answer given under the chosen sequence
        explain = app.selectbox(key=f"explain_{app_review.digest_of(data)}_FLAIR")
        assert explain.value == expected.label
    assert calls.count(("user",)) == 1

    # reruns, and coming back to a sequence already chosen, reuse the analysis
    app.slider(key="brightness").set_value(1.2).run()
    _sequence_selector(app, data).set_value("T2").run()
    _sequence_selector(app, data).set_value("FLAIR").run()
    assert not app.exception and calls.count(("user",)) == 2

    # "As read" restores the automatic analysis
    _sequence_selector(app, data).set_value(AS_READ).run()
    [row] = _csv_rows(downloads)
    assert (row["sequence"], row["sequence_source"]) == (as_read.sequence.name, as_read.sequence.source)
    assert row["flag_kinds"] == " ".join(as_read.flag_kinds)
    assert app.dataframe[0].value["Sequence"][0] == sequence_text(as_read.sequence)


def test_a_sequence_the_model_barely_learned_is_a_review_state_on_the_page_and_in_the_csv(app, model, downloads):
    data = _png_bytes()
    image = read_scan(data)
    expected = model.predict_batch([image], sequences=[user_sequence("T2")])[0]
    coverage = model.rules.coverage
    if coverage is None or not expected.is_brain_mri or coverage.flag(expected.label, "T2") is None:
        pytest.skip("this model's class x sequence table does not flag its answer on T2")
    assert SEQUENCE_NOT_LEARNED in expected.flag_kinds
    _upload(app, [("slice.png", data)])
    _sequence_selector(app, data).set_value("T2").run()
    assert not app.exception
    assert any(SEQUENCE_NOT_LEARNED_FLAG in w for w in _review_flags(app))
    assert _review_flags(app) == [f"Review advised: {flag_text(flag)}." for flag in expected.flags]
    assert SEQUENCE_NOT_LEARNED_FLAG in app.dataframe[0].value["Flags / message"][0]
    [row] = _csv_rows(downloads)
    assert SEQUENCE_NOT_LEARNED in row["flag_kinds"].split()
    assert SEQUENCE_NOT_LEARNED_FLAG in row["flags"]


def test_the_choice_is_kept_while_another_scan_is_reviewed(app, model):
    first, second = _png_bytes(5), _png_bytes(6)
    _upload(app, [("a.png", first), ("b.png", second)])
    _sequence_selector(app, first).set_value("T1C").run()
    app.selectbox(key="review_index").set_value(1).run()
    assert not app.exception and _sequence_selector(app, first) is None
    assert list(app.dataframe[0].value["Sequence"])[0] == "T1C (your choice)"
    app.selectbox(key="review_index").set_value(0).run()
    assert not app.exception and _sequence_selector(app, first).value == "T1C"


def test_sequence_wording():
    assert sequence_text(SequenceInfo("T1C", "tags")) == "T1C (DICOM tags)"
    assert sequence_text(SequenceInfo("T2", "image", confidence=0.912)) == "T2 (from the image, 91 %)"
    assert sequence_text(user_sequence("flair")) == "FLAIR (your choice)"
    assert sequence_text(SequenceInfo("T2", "name")) == "T2 (file name)"
    assert sequence_text(SequenceInfo()) == sequence_text(None) == "unknown"
    assert (sequence_text(user_sequence("T1C"), read=SequenceInfo("T1w", "image", confidence=0.7))
            == "T1C (your choice; read as T1w, from the image, 70 %)")
    assert sequence_text(user_sequence("T2"), read=SequenceInfo()) == "T2 (your choice; read as unknown)"
    assert app_review.correctable(SequenceInfo("T2", "image", confidence=0.9))
    assert app_review.correctable(SequenceInfo()) and app_review.correctable(user_sequence("T2"))
    assert not app_review.correctable(SequenceInfo("T2", "tags"))
    assert set(app_review.SEQUENCE_LABELS) == set(USER_SEQUENCES)
    assert app_review.sequence_options() == [AS_READ, *USER_SEQUENCES]


def test_coverage_is_worded_from_the_table():
    from core.rules import SequenceCoverage

    assert app_review.coverage_text(None) is None
    counts = {"glioma": {"T1": 5, "T2": 5}, "meningioma": {"T1C": 9, "T2": 0}, "notumor": {"T1": 3, "FLAIR": 3},
              "pituitary": {"T1C": 4}}
    text = app_review.coverage_text(SequenceCoverage(counts, 0.1))
    assert "gliomas from T1 and T2" in text
    assert "meningiomas and pituitary tumours from contrast T1 only" in text
    assert "scans without a tumour from T1 and FLAIR" in text
