"""Whole series on the scan review page, driven through Streamlit's AppTest with generated DICOM
series and NIfTI volumes (tests/series_factory.py).

Runs against a fixture model always, and against the shipped model when assets/ holds one. The
download buttons build their files when clicked; the ``downloads`` fixture records what each
button was given, so the tests read the very bytes a click would fetch.
"""

from __future__ import annotations

import csv
import io
import json
import random

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

import core.model
from app import series_view
from app.review import AS_READ
from app.series_view import answer_text, review_text, sequence_text
from core import CLASS_LABELS, read_series
from core.results import SERIES_CSV_COLUMNS
from core.sequence import user_sequence
from series_factory import nifti_bytes, phantom, series_bytes, zip_bytes
# the page's fixtures (the fixture model, then the shipped one), upload and download helpers
from test_app_scan_review import (  # noqa: F401
    _texts as texts, _upload as upload, app, assets, downloads, fetched, fixture_assets, model,
)

N_SLICES = 12


def series_files(slices: int = N_SLICES, shuffle: bool = True, **kwargs) -> list[tuple[str, bytes]]:
    """A generated axial MR series as uploads, in shuffled order (the reader must sort them)."""
    files = [(f"IM{k:04d}.dcm", data) for k, data in enumerate(series_bytes(phantom(slices, 96, 96), **kwargs))]
    if shuffle:
        random.Random(3).shuffle(files)
    return files


def slice_slider(at: AppTest):
    [slider] = [s for s in at.slider if s.key.startswith("slice_")]
    return slider


def chart_traces(at: AppTest) -> list[str]:
    charts = [c for c in at.get("plotly_chart") if "Class probabilities along the slices" in c.proto.spec]
    assert len(charts) == 1
    return [trace.get("name") for trace in json.loads(charts[0].proto.spec)["data"]]


def expected_prediction(model, files, plane="axial"):
    [series] = read_series(files, plane)
    return model.predict_series(series)


# ---------------------------------------------------------------------- page
def test_uploader_takes_series_files(app):
    allowed = {t.lstrip(".") for t in app.file_uploader(key="uploads").allowed_type}
    assert {"dcm", "zip", "nii", "nii.gz", "jpg", "png"} <= allowed


def test_a_dicom_series_gets_its_row_chart_slider_thumbnails_and_downloads(app, model, downloads):
    files = series_files()
    upload(app, files)
    assert not app.exception
    assert app.get("progress"), "a progress bar is shown while the series is read and scored"
    assert "could not be read" not in texts(app) and "Traceback" not in texts(app)
    expected = expected_prediction(model, files)

    # one row for the series: name, slices, plane, sequence and its source, answer, review state
    [row] = app.dataframe[0].value.to_dict("records")
    assert row["Series"] == "Series 7: t1_mprage_tra_Gd" and row["Slices"] == N_SLICES
    assert row["Plane"] == "axial" and row["Sequence"] == "T1C (DICOM tags)"
    assert not any(s.key.startswith("series_sequence_") for s in app.selectbox), "the tags gave the sequence"
    assert row["Answer"] == answer_text(expected) and row["Review"] == review_text(expected)
    assert row["Assessed"] == expected.assessed
    assert app.header[0].value == "Series: Series 7: t1_mprage_tra_Gd"
    assert [m.value for m in app.metric if m.label == "Series answer"] == [CLASS_LABELS[expected.label]]

    # the chart of each class along the slices, the key and not-assessed slices marked
    traces = chart_traces(app)
    assert set(CLASS_LABELS.values()) <= set(traces)
    assert ("Key slice" in traces) == bool(expected.key_slices)
    assert ("Not assessed" in traces) == (expected.assessed < N_SLICES)

    # the slider starts on the first key slice; a thumbnail and a button per key slice
    slider = slice_slider(app)
    assert (slider.min, slider.max) == (1, N_SLICES)
    first = expected.key_slices[0].index + 1 if expected.key_slices else (N_SLICES + 1) // 2
    assert slider.value == first
    thumbnails = [c for image in app.get("image") for c in image.captions if c.startswith("Slice ") and ":" in c]
    assert len(thumbnails) == len(expected.key_slices)
    jumps = [b for b in app.button if b.key.startswith("jump_")]
    assert len(jumps) == len(expected.key_slices)
    captions = [c for image in app.get("image") for c in image.captions]
    assert f"Slice {first} of {N_SLICES}" in " ".join(captions)

    # downloads: the CSV (a row for the series, one per slice) and the one-page PDF
    assert {b.label for b in app.download_button} == {"Download series results (CSV)", "Download series report (PDF)"}
    rows = list(csv.DictReader(io.StringIO(fetched(downloads, "download_series_csv").decode("utf-8"))))
    assert list(rows[0]) == list(SERIES_CSV_COLUMNS)
    assert [r["row"] for r in rows] == ["series"] + ["slice"] * N_SLICES
    assert rows[0]["label"] == expected.label and int(rows[0]["n_slices"]) == N_SLICES
    assert [int(r["slice"]) for r in rows[1:]] == list(range(N_SLICES))
    assert [r["label"] or None for r in rows[1:]] == [s.label if s.is_brain_mri else None for s in expected.slices]
    assert all(r["source"] == "DICOM upload" for r in rows)
    pdf = fetched(downloads, "download_series_pdf")
    assert pdf.startswith(b"%PDF") and b"/Count 1" in pdf  # one page
    assert not app.exception


def test_a_key_slice_button_moves_the_slider_and_heatmaps_are_made_for_the_slice_shown(app, model, monkeypatch):
    explained: list[int] = []
    original = core.model.Classifier.explain

    def counting(self, image, target=None):
        explained.append(id(image))
        return original(self, image, target)

    monkeypatch.setattr(core.model.Classifier, "explain", counting)
    files = series_files()
    upload(app, files)
    analysis = next(iter(app.session_state["series_reads"].values())).series[0]
    shown = [i for i, s in enumerate(analysis.prediction.slices) if s.is_brain_mri]
    if len(shown) < 2:
        pytest.skip("this model recognises fewer than two slices of the phantom as a brain MRI")
    calls = len(explained)
    assert calls <= 1  # at most the slice shown (none when it is not a brain MRI)

    # the slider to another slice: its heatmap alone is computed, once
    target = shown[-1] if slice_slider(app).value != shown[-1] + 1 else shown[0]
    slice_slider(app).set_value(target + 1).run()
    assert not app.exception and len(explained) == calls + 1
    assert any(c == f"Slice {target + 1} of {N_SLICES} ({analysis.series.positions_mm[target]:.1f} mm)"
               for image in app.get("image") for c in image.captions)
    app.slider(key="series_opacity").set_value(0.8).run()
    assert len(explained) == calls + 1, "a rerun reuses the heatmap of the slice shown"

    # a key slice's button brings that slice under the slider
    if analysis.prediction.key_slices:
        key = analysis.prediction.key_slices[-1]
        app.button(key=f"jump_{analysis.key[:16]}_{key.index}").click().run()
        assert not app.exception and slice_slider(app).value == key.index + 1


def test_reruns_and_another_series_do_not_rescore(app, monkeypatch):
    scored: list[int] = []
    original = core.model.Classifier.predict_series

    def counting(self, series, *args, **kwargs):
        scored.append(len(series))
        return original(self, series, *args, **kwargs)

    monkeypatch.setattr(core.model.Classifier, "predict_series", counting)
    files = series_files()
    upload(app, files)
    app.slider(key="series_opacity").set_value(0.9).run()
    assert scored == [N_SLICES]
    # a NIfTI volume added: read and scored on its own; the DICOM series is not scored again
    volume = ("t2_volume.nii.gz", nifti_bytes(np.transpose(phantom(10, 64, 64), (2, 1, 0)).astype(np.int16),
                                              np.diag([1.0, 1.0, 4.0, 1.0])))
    upload(app, files + [volume])
    assert not app.exception and scored == [N_SLICES, 10]
    assert list(app.dataframe[0].value["Series"]) == ["Series 7: t1_mprage_tra_Gd", "t2_volume"]
    app.selectbox(key="series_index").set_value(1).run()
    assert not app.exception and app.header[0].value == "Series: t2_volume"
    assert scored == [N_SLICES, 10]


def _volume() -> tuple[str, bytes]:
    """A NIfTI volume whose name says no sequence: it comes from the image, or is unknown."""
    return "volume.nii.gz", nifti_bytes(np.transpose(phantom(10, 64, 64), (2, 1, 0)).astype(np.int16),
                                        np.diag([1.0, 1.0, 4.0, 1.0]))


def test_the_series_sequence_can_be_corrected(app, model, downloads, monkeypatch):
    scored: list = []
    original = core.model.Classifier.predict_series

    def counting(self, series, *args, **kwargs):
        scored.append(kwargs.get("sequence"))
        return original(self, series, *args, **kwargs)

    monkeypatch.setattr(core.model.Classifier, "predict_series", counting)
    volume = _volume()
    upload(app, [volume])
    assert not app.exception
    [series] = read_series([volume])
    as_read = original(model, series)
    [row] = app.dataframe[0].value.to_dict("records")
    assert row["Sequence"] == sequence_text(as_read.sequence)
    assert as_read.sequence.source != "tags"
    analysis = next(iter(app.session_state["series_reads"].values())).series[0]
    selector = app.selectbox(key=f"series_sequence_{analysis.key[:16]}")
    assert selector.value == AS_READ and selector.options[0] == f"As read: {row['Sequence']}"

    selector.set_value("T2").run()
    assert not app.exception
    expected = original(model, series, sequence=user_sequence("T2"))
    [row] = app.dataframe[0].value.to_dict("records")
    assert row["Sequence"] == "T2 (your choice)"
    assert row["Answer"] == answer_text(expected) and row["Review"] == review_text(expected)
    assert [m.value for m in app.metric if m.label == "Plane · sequence"] == ["axial · T2"]
    rows = list(csv.DictReader(io.StringIO(fetched(downloads, "download_series_csv").decode("utf-8"))))
    assert (rows[0]["sequence"], rows[0]["sequence_source"]) == ("T2", "user")
    assert rows[0]["flag_kinds"] == " ".join(expected.flag_kinds)
    assert [r["label"] or None for r in rows[1:]] == [s.label if s.is_brain_mri else None for s in expected.slices]
    assert fetched(downloads, "download_series_pdf").startswith(b"%PDF")
    assert [q.name if q is not None else None for q in scored] == [None, "T2"]

    app.slider(key="series_opacity").set_value(0.7).run()  # a rerun scores nothing again
    app.selectbox(key=f"series_sequence_{analysis.key[:16]}").set_value(AS_READ).run()
    assert not app.exception and len(scored) == 2
    assert app.dataframe[0].value.to_dict("records")[0]["Sequence"] == sequence_text(as_read.sequence)


def test_a_near_isotropic_volume_is_cut_in_the_chosen_plane(app):
    volume = np.zeros((40, 48, 36), dtype=np.int16)
    x, y, z = np.indices(volume.shape)
    volume[((x - 20) / 16) ** 2 + ((y - 24) / 19) ** 2 + ((z - 18) / 15) ** 2 < 1] = 300
    upload(app, [("iso_t1.nii.gz", nifti_bytes(volume, np.eye(4)))])
    assert not app.exception
    plane = app.radio(key="series_plane")
    assert plane.value == "axial"
    assert app.dataframe[0].value.to_dict("records")[0]["Slices"] == 36
    plane.set_value("coronal").run()
    assert not app.exception
    [row] = app.dataframe[0].value.to_dict("records")
    assert (row["Plane"], row["Slices"]) == ("coronal", 48)


def test_a_dicom_series_has_no_plane_choice(app):
    upload(app, series_files(4))
    assert not app.exception and not app.radio


def test_a_bad_zip_gives_a_message_not_a_traceback(app):
    upload(app, [("series.zip", b"PK\x03\x04 this is not really a zip archive")])
    assert not app.exception
    assert any("series.zip could not be read" in e.value and "zip archive is damaged" in e.value for e in app.error)
    assert "Traceback" not in texts(app) and not app.get("plotly_chart")


def test_a_zipped_series_with_other_files_lists_the_problems(app):
    members = {f"study/IM{k:04d}.dcm": data for k, (_, data) in enumerate(series_files(6, shuffle=False))}
    members["study/readme.txt"] = b"not a scan"
    upload(app, [("study.zip", zip_bytes(members))])
    assert not app.exception
    assert list(app.dataframe[0].value["Series"]) == ["Series 7: t1_mprage_tra_Gd"]
    problems = [d.value for d in app.dataframe if "Reason" in d.value.columns]
    assert app.expander[0].label == "1 file(s) could not be used"
    assert len(problems) == 1
    assert problems[0].to_dict("records") == [
        {"Upload": "study.zip", "File": "study/readme.txt", "Reason": "Not a DICOM or NIfTI file."}
    ]


def test_a_single_dicom_slice_is_reviewed_as_a_scan(app):
    [(_, data)] = series_files(1)
    upload(app, [("one_slice.dcm", data)])
    assert not app.exception
    assert app.header[0].value == "Review: one_slice.dcm"
    assert list(app.dataframe[0].value["File"]) == ["one_slice.dcm"]
    assert not app.slider or not any(s.key.startswith("slice_") for s in app.slider)


def test_series_and_scans_together(app):
    [(_, single)] = series_files(1, uid="1.2.826.0.1.3680043.8.498.77", number=9)
    upload(app, series_files(5) + [("lone.dcm", single)])
    assert not app.exception
    headers = [h.value for h in app.header]
    assert headers == ["Series: Series 7: t1_mprage_tra_Gd", "Review: lone.dcm"]
    assert len(app.dataframe) == 2


def test_unexpected_reader_error_is_a_message(app, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("internal detail")

    monkeypatch.setattr(series_view, "read_series", broken)
    upload(app, series_files(3))
    assert not app.exception
    assert any(series_view.UNEXPECTED_ERROR_TEXT in e.value for e in app.error)
    assert "internal detail" not in texts(app)


# ---------------------------------------------------------------------- helpers
def test_heatmaps_are_kept_for_the_latest_slices_only(model, monkeypatch):
    [series] = read_series(series_files(6))
    analysis = series_view.SeriesAnalysis("k", series, model.predict_series(series))
    calls: list[int] = []
    original = model.explain

    def counting(image, target=None):
        calls.append(series.slices.index(image))
        return original(image, target)

    monkeypatch.setattr(model, "explain", counting)
    monkeypatch.setattr(series_view, "HEATMAPS_PER_SERIES", 3)
    first = analysis.heatmap(model, 0, "glioma")
    assert first.shape == (96, 96) and first.dtype == np.float32 and 0.0 <= first.min() <= first.max() <= 1.0
    assert np.allclose(first, original(series.slices[0], "glioma"), atol=1 / 255)  # kept at 8 bits
    for index in (1, 2, 0, 3):  # slice 0 used again: slice 1 is the oldest when slice 3 comes
        analysis.heatmap(model, index, "glioma")
    assert calls == [0, 1, 2, 3]
    analysis.heatmap(model, 1, "glioma")
    assert calls == [0, 1, 2, 3, 1]
    with pytest.raises(ValueError, match="outside this series of 6 slices"):
        analysis.heatmap(model, 6, "glioma")


def test_the_report_of_a_series_with_no_key_slice_and_no_figures(model):
    from app.report import series_report_pdf

    [series] = read_series(series_files(4))
    prediction = model.predict_series(series)
    pdf = series_report_pdf(prediction, {}, {"weights_sha256": "ab" * 32}, [])
    assert pdf.startswith(b"%PDF") and b"/Count 1" in pdf


def test_the_pdf_library_keeps_no_frames_of_the_code_that_imported_it():
    """fpdf2 keeps its optional import's error; its traceback would keep the first session that
    imported the report alive for the life of the server (with the whole session state)."""
    import fpdf.encryption

    import app.report  # noqa: F401

    error = fpdf.encryption.import_error
    assert error is None or (error.__traceback__ is None and error.__context__ is None)


def test_memory_is_handed_back_without_error():
    series_view.release_freed_memory()
