"""Scan review: upload scans or whole series, see the model's answer and its Grad-CAM heatmap,
review a batch.

The page only reads widgets, calls ``app`` helpers (``app.review`` for single scans,
``app.series_view`` for series) and draws. Uploads stay in memory.
"""

from __future__ import annotations

import logging
from functools import partial
from pathlib import Path

import streamlit as st

from app.artifacts import ArtifactError, external_rows, read_artifact
from app.figures import probability_figure, series_figure
from app.frame import ensure_frame
from app.overlay import adjust_display, colorize_heatmap, overlay_heatmap, to_png_bytes
from app.report import series_report_pdf
from app.review import (
    AS_READ,
    ScanAnalysis,
    analyse_scan,
    correctable,
    coverage_text,
    items_under_sequences,
    results_csv,
    sequence_option_text,
    sequence_options,
    sequence_text,
    summary_rows,
    warm_up,
)
from app.series_view import (
    UPLOAD_TYPES,
    SeriesAnalysis,
    SeriesInput,
    SeriesRead,
    analyse_series,
    answer_text,
    is_series_file,
    key_slice_text,
    reads_under_sequences,
    release_freed_memory,
    series_inputs,
    series_results_csv,
    series_rows,
    slice_state,
    upload_info,
)
from core import CLASS_LABELS, CLASS_NAMES, flag_text, load_model
from core.constants import EXTERNAL_NAME, MAX_UPLOAD_BYTES, SERIES_PLANES, assets_dir, default_weights
from core.model import Classifier
from core.results import series_flag_text
from core.rules import SequenceCoverage
from core.sequence import SequenceInfo

logger = logging.getLogger(__name__)

ANALYSES_KEY = "scan_analyses"  # digest -> ScanAnalysis, kept across reruns
SEEN_KEY = "seen_digests"  # the uploads of the previous run, to bring new ones under review
REVIEW_KEY = "review_index"
TABLE_KEY = "summary_table"
FILES_KEY = "upload_files"  # an upload's file_id -> (sha256, holds a NIfTI volume), so reruns hash nothing
SERIES_READS_KEY = "series_reads"  # a read's key -> SeriesRead, kept across reruns
SERIES_INDEX_KEY = "series_index"
SERIES_TABLE_KEY = "series_table"
PLANE_KEY = "series_plane"
CHOICES_KEY = "sequence_choices"  # a scan's digest or a series' key -> the sequence the user chose
CORRECTED_KEY = "corrected_scans"  # (digest, sequence) -> ScanAnalysis under the user's sequence
CORRECTED_SERIES_KEY = "corrected_series"  # (series key, sequence) -> SeriesAnalysis under it

HEATMAP_NOTE = (
    "**Reading the heatmap.** Bright areas are the parts of the image that drove the answer "
    "for the class chosen above; dark areas had little influence. It is not a tumour outline "
    "or a measurement. If it lights up nothing abnormal (the skull, the background, an "
    "image border or a text label), distrust the answer."
)


#: CPU threads per request. One: the other core stays free for other sessions (and, on the
#: 2-core development machine, for the browser): measured about 0.1 s faster from upload to
#: rendered result than two threads in the real-browser test.
APP_THREADS = 1


@st.cache_resource(show_spinner="Loading the model…")
def _model(weights: str) -> Classifier:
    """The classifier, loaded once per process and shared by all sessions (it is thread-safe)."""
    model = load_model(weights, threads=APP_THREADS)
    warm_up(model)
    return model


# ---------------------------------------------------------------------- widgets
def _upload_ui() -> list:
    return st.file_uploader(
        "Drop scans or whole series here",
        type=list(UPLOAD_TYPES),
        accept_multiple_files=True,
        key="uploads",
        help="Single slices: JPEG, PNG, BMP, TIFF, WebP or a DICOM file. Whole series: all the DICOM files of "
        "the series at once (they are grouped into series by their series UID), a zip of them, or a NIfTI "
        f"volume (.nii, .nii.gz). Up to {MAX_UPLOAD_BYTES // 2**20} MB each. Files are kept in memory for "
        "this session only and never stored.",
    ) or []


def _file_info(uploads: list) -> list[tuple[str, bool]]:
    """Each upload's sha256 and whether it holds a NIfTI volume, computed once per uploaded file."""
    known: dict[str, tuple[str, bool]] = st.session_state.setdefault(FILES_KEY, {})
    infos = []
    for upload in uploads:
        file_id = getattr(upload, "file_id", None) or f"{upload.name}:{upload.size}"
        if file_id not in known:
            with upload.getbuffer() as view:  # hashed in place, not copied
                known[file_id] = upload_info(upload.name, view)
        infos.append(known[file_id])
    ids = {getattr(u, "file_id", None) or f"{u.name}:{u.size}" for u in uploads}
    for stale in set(known) - ids:
        del known[stale]
    return infos


def _plane_ui(show: bool) -> str:
    """The cut of near-isotropic NIfTI volumes (offered when one is uploaded; axial by default)."""
    if PLANE_KEY not in st.session_state:
        st.session_state[PLANE_KEY] = SERIES_PLANES[0]
    if show:
        st.radio(
            "Cut NIfTI volumes in the",
            options=list(SERIES_PLANES),
            format_func=lambda plane: f"{plane} plane",
            horizontal=True,
            key=PLANE_KEY,
            help="Applies to volumes whose voxels are about as thick as they are wide (near-isotropic); other "
            "volumes are cut across their thickest voxels, and DICOM series are shown as acquired.",
        )
    return st.session_state[PLANE_KEY]


def _pick_row(table_key: str, index_key: str) -> None:
    """A row picked in a results table becomes the scan (or series) under review."""
    rows = st.session_state[table_key].selection.rows
    if rows:
        st.session_state[index_key] = rows[0]


def _results_ui(rows: list[dict], table_key: str, index_key: str, wide: str, csv: dict) -> None:
    """A results table whose picked row comes under review (``index_key``), and its CSV
    download (``csv``: the button's label, data, file_name, key and help)."""
    st.dataframe(
        rows,
        key=table_key,
        on_select=partial(_pick_row, table_key, index_key),
        selection_mode="single-row",
        hide_index=True,
        width="stretch",
        column_config={
            "Confidence (%)": st.column_config.NumberColumn(format="%.1f %%"),
            "Sequence": st.column_config.TextColumn(width="medium"),
            wide: st.column_config.TextColumn(width="large"),
        },
    )
    st.download_button(**csv, mime="text/csv", icon=":material/download:")


def _choices() -> dict[str, str]:
    """The sequences the user chose, by scan digest or series key (kept while the widgets come and go)."""
    return st.session_state.setdefault(CHOICES_KEY, {})


def _remember_choice(owner: str, widget_key: str) -> None:
    choice = st.session_state[widget_key]
    if choice == AS_READ:
        _choices().pop(owner, None)
    else:
        _choices()[owner] = choice


def _forget_choices(owners: set[str]) -> None:
    """Drop the choices made for scans and series no longer uploaded."""
    for stale in set(_choices()) - owners:
        del _choices()[stale]


def _explain_key(base: str, owner: str) -> str:
    """The explained-class selector's key: one per sequence chosen, so that it starts on the
    answer given under that sequence."""
    choice = _choices().get(owner)
    return base if choice is None else f"{base}_{choice}"


def _sequence_ui(owner: str, widget_key: str, as_read: SequenceInfo, coverage: SequenceCoverage | None) -> None:
    """The sequence and where it came from; where the DICOM tags did not give it, a selector to
    correct it (the answer is then computed again under the user's choice)."""
    if not correctable(as_read):
        st.markdown(f"**Sequence:** {sequence_text(as_read)}")
        return
    if widget_key not in st.session_state:  # the choice made when this scan was last shown
        st.session_state[widget_key] = _choices().get(owner, AS_READ)
    left, right = st.columns([1, 2], vertical_alignment="center")
    with left:
        st.selectbox(
            "Sequence",
            options=sequence_options(),
            format_func=partial(sequence_option_text, as_read=as_read),
            key=widget_key,
            on_change=_remember_choice,
            args=(owner, widget_key),
            help="No DICOM tag named the sequence. If you know it, choose it: the answer and its review "
            "flags are computed again for that sequence.",
        )
    with right:
        text = coverage_text(coverage)
        if as_read.name == "unknown" and _choices().get(owner) is None:
            text = "The sequence could not be read. " + (text or "")
        if text:
            st.caption(text)


def _analyse_ui(
    model: Classifier, uploads: list, digests: list[str], extra: list[tuple[str, ScanAnalysis]] = ()
) -> list[tuple[str, ScanAnalysis]]:
    """Each upload's analysis, computed once per distinct file content (reruns reuse it), then
    ``extra``: the series of one slice, analysed with their read."""
    cache: dict[str, ScanAnalysis] = st.session_state.setdefault(ANALYSES_KEY, {})
    todo = {digest: upload for upload, digest in zip(uploads, digests) if digest not in cache}
    if todo:
        bar = st.progress(0.0, text=f"Analysing {len(todo)} new scan(s)…")
        for done, (digest, upload) in enumerate(todo.items(), start=1):
            cache[digest] = analyse_scan(model, upload.getvalue())
            bar.progress(done / len(todo), text=f"Analysed {done} of {len(todo)} new scan(s)")
    for stale in set(cache) - set(digests):  # files removed from the uploader
        del cache[stale]
    contents = [(upload.name, cache[digest]) for upload, digest in zip(uploads, digests)] + list(extra)
    digests = [analysis.digest for _, analysis in contents]
    seen = st.session_state.get(SEEN_KEY, [])
    new = [i for i, digest in enumerate(digests) if digest not in seen]
    if new and seen:  # files added to a batch already on screen: review the first new one
        st.session_state[REVIEW_KEY] = new[0]
    st.session_state[SEEN_KEY] = digests
    return contents


def _prepare_review(model: Classifier, items: list[tuple[str, ScanAnalysis]]) -> None:
    """Compute the heatmap of the scan about to be reviewed before anything is drawn: the browser
    then renders the page while the server is idle, instead of both sharing the CPU."""
    index = st.session_state.get(REVIEW_KEY, 0)
    if not 0 <= index < len(items):
        return
    analysis = items[index][1]
    if analysis.ok and analysis.prediction.is_brain_mri:  # type: ignore[union-attr]
        key = _explain_key(f"explain_{analysis.digest}", analysis.digest)
        target = st.session_state.get(key, analysis.prediction.label)  # type: ignore[union-attr]
        analysis.heatmap(model, target)


def _summary_ui(items: list[tuple[str, ScanAnalysis]]) -> int:
    """The batch table and its CSV export; returns the index of the scan to review."""
    n_bad = sum(not a.ok for _, a in items)
    st.subheader(f"Batch summary · {len(items)} file(s)" + (f", {n_bad} not analysed" if n_bad else ""))
    _results_ui(summary_rows(items), TABLE_KEY, REVIEW_KEY, "Flags / message", dict(
        label="Download results (CSV)",
        data=lambda: results_csv(items),  # built only when clicked
        file_name="scan_results.csv",
        key="download_csv",
        help="File name, predicted class, confidence, flags and class probabilities. No patient data.",
    ))
    if REVIEW_KEY in st.session_state and st.session_state[REVIEW_KEY] >= len(items):
        st.session_state[REVIEW_KEY] = 0
    return st.selectbox(
        "Scan under review (or pick a row in the table)",
        options=list(range(len(items))),
        format_func=lambda i: f"{i + 1}. {items[i][0]} — {summary_rows([items[i]])[0]['Predicted class']}",
        key=REVIEW_KEY,
    )


def _prediction_ui(analysis: ScanAnalysis) -> bool:
    """The answer in words, its confidence and the probability chart; returns whether it is shown."""
    prediction = analysis.prediction
    assert prediction is not None
    shown = prediction.is_brain_mri
    if not prediction.is_brain_mri:
        st.warning(
            "**This image was not recognised as a brain MRI slice**, so no tumour prediction is "
            "given. Check that you uploaded an axial, coronal or sagittal brain MRI.",
            icon=":material/block:",
        )
        shown = st.toggle(
            "Show the model's output anyway (unreliable: the input is outside what it was trained on)",
            key=f"reveal_{analysis.digest}",
        )
        if not shown:
            return False
        st.error("Unreliable output for an image that does not look like a brain MRI.", icon=":material/warning:")
    elif prediction.outside_training:
        st.error(
            "**Outside the training data: the prediction is unreliable.** This looks like a brain MRI, "
            "but unlike the scans the model learned from (another sequence, preparation or orientation). "
            "On such scans the model is often wrong with high confidence.",
            icon=":material/report:",
        )
    left, right = st.columns([1, 2], vertical_alignment="center")
    with left:
        st.metric("Predicted class", CLASS_LABELS[prediction.label])
        st.metric("Confidence", f"{100 * prediction.confidence:.1f} %")
    with right:
        st.plotly_chart(probability_figure(prediction), width="stretch", key=f"probs_{analysis.digest}",
                        config={"displayModeBar": False})
    for flag in prediction.flags:
        st.warning(f"Review advised: {flag_text(flag)}.", icon=":material/flag:")
    return True


def _explain_ui(columns: list, answer: str, marked: str, class_key: str, opacity_key: str,
                disabled: bool) -> tuple[str, float]:
    """The class to explain (``answer`` first, marked as ``marked``) and the heatmap's opacity, in
    the first two of ``columns``."""
    with columns[0]:
        target = st.selectbox(
            "Explain class",
            options=list(CLASS_NAMES),
            index=CLASS_NAMES.index(answer),
            format_func=lambda n: CLASS_LABELS[n] + (f" ({marked})" if n == answer else ""),
            key=class_key,
            disabled=disabled,
        )
    with columns[1]:
        opacity = st.slider("Heatmap opacity", 0.0, 1.0, 0.5, 0.05, key=opacity_key, disabled=disabled)
    return target, opacity


def _viewer_ui(model: Classifier, analysis: ScanAnalysis, show_heatmap: bool) -> None:
    """Original, heatmap and overlay side by side, with display-only controls."""
    prediction = analysis.prediction
    assert analysis.image is not None and prediction is not None
    st.subheader("Viewer")
    controls = st.columns(4)
    target, opacity = _explain_ui(controls[:2], prediction.label, "predicted",
                                  _explain_key(f"explain_{analysis.digest}", analysis.digest), "opacity",
                                  disabled=not show_heatmap)
    with controls[2]:
        brightness = st.slider("Brightness", 0.5, 2.0, 1.0, 0.05, key="brightness",
                               help="Changes the display only; the model always sees the original scan.")
    with controls[3]:
        contrast = st.slider("Contrast", 0.5, 2.5, 1.0, 0.05, key="contrast",
                             help="Changes the display only; the model always sees the original scan.")
    shown = adjust_display(analysis.image, brightness, contrast)
    if not show_heatmap:
        st.image(shown, caption="Original (display adjusted)" if (brightness, contrast) != (1.0, 1.0) else "Original",
                 width=360)
        return
    heatmap = analysis.heatmap(model, target)
    overlay = overlay_heatmap(shown, heatmap, opacity)
    columns = st.columns(3)
    columns[0].image(shown, caption="Original", width="stretch")
    columns[1].image(colorize_heatmap(heatmap), caption=f"Grad-CAM for {CLASS_LABELS[target]} (dark: little influence, yellow: most)",
                     width="stretch")
    columns[2].image(overlay, caption=f"Overlay at {opacity:.0%} opacity", width="stretch")
    st.download_button(
        "Download overlay (PNG)",
        data=lambda: to_png_bytes(overlay),  # encoded only when clicked
        file_name=f"overlay_{target}_{analysis.digest[:8]}.png",
        mime="image/png",
        icon=":material/download:",
        key="download_overlay",
    )
    st.info(HEATMAP_NOTE, icon=":material/info:")


def _review_ui(model: Classifier, name: str, analysis: ScanAnalysis) -> None:
    st.header(f"Review: {name}", divider="gray")
    corrected = analysis.read_sequence is not None
    if analysis.error is not None and not corrected:
        st.error(f"**This file could not be analysed.** {analysis.error}", icon=":material/error:")
        return
    if analysis.display_transform:
        st.info(
            f"DICOM file: grey levels come from its {analysis.display_transform}"
            + (" (the file stores no window, so the 0.5–99.5 percentile range is shown)."
               if analysis.display_transform == "percentile stretch" else "."),
            icon=":material/tune:",
        )
    _sequence_ui(analysis.digest, f"sequence_{analysis.digest[:16]}", analysis.sequence_as_read, model.rules.coverage)
    if analysis.error is not None:  # the analysis under the chosen sequence failed
        st.error(f"**This scan could not be analysed for that sequence.** {analysis.error}", icon=":material/error:")
        return
    shown = _prediction_ui(analysis)
    _viewer_ui(model, analysis, show_heatmap=shown)


# ---------------------------------------------------------------------- series
SERIES_HEATMAP_NOTE = (
    "**Reading the heatmap.** Bright areas are the parts of this slice that drove its answer for the "
    "class chosen; dark areas had little influence. Grad-CAM is a sanity check, not a tumour outline "
    "or a measurement: if it lights up the skull, the background or a frame marker, distrust the answer."
)


@st.cache_data(show_spinner=False)
def _external_figures(folder: str) -> list[dict]:
    """The model's stored figures on scans from other sources (``external.json``), as table rows."""
    try:
        return external_rows(read_artifact(Path(folder) / EXTERNAL_NAME))
    except ArtifactError:
        return []


def _series_analyse_ui(model: Classifier, uploads: list, digests: list[str], inputs: list[SeriesInput],
                       plane: str) -> tuple[list[SeriesRead], bool]:
    """Each series input read and scored once (reruns and other reads reuse it), with a progress
    bar; also whether any was read in this run."""
    cache: dict[str, SeriesRead] = st.session_state.setdefault(SERIES_READS_KEY, {})
    keys = [item.key(digests, plane) for item in inputs]
    todo = [(item, key) for item, key in zip(inputs, keys) if key not in cache]
    if todo:
        bar = st.progress(0.0, text="Reading the series…")
        for number, (item, key) in enumerate(todo):
            def progress(fraction: float, text: str, number: int = number) -> None:
                bar.progress(min(1.0, (number + fraction) / len(todo)), text=f"Series input {number + 1} of {len(todo)}: {text}")

            files = [(uploads[i].name, uploads[i].getvalue()) for i in item.indices]
            cache[key] = analyse_series(model, files, plane if item.takes_plane else SERIES_PLANES[0], progress,
                                        key=key, label=item.label, source=item.source)
    for stale in set(cache) - set(keys):  # uploads removed, or another plane chosen
        del cache[stale]
    return [cache[key] for key in keys], bool(todo)


def _read_errors_ui(reads: list[SeriesRead]) -> None:
    for read in reads:
        if read.error is not None:
            st.error(f"**{read.label} could not be read.** {read.error}", icon=":material/error:")


def _read_problems_ui(reads: list[SeriesRead]) -> None:
    """The files that could not be used: the upload, the file (inside a zip: its path) and why."""
    problems = [(read.label, name, reason) for read in reads for name, reason in read.problems]
    if problems:
        with st.expander(f"{len(problems)} file(s) could not be used", icon=":material/warning:",
                         expanded=not any(read.series for read in reads)):
            st.dataframe([{"Upload": label, "File": name, "Reason": reason} for label, name, reason in problems],
                         hide_index=True, width="stretch", key="series_problems")


def _series_summary_ui(reads: list[SeriesRead]) -> SeriesAnalysis | None:
    """The series table and the CSV download; returns the series under review (None: no series)."""
    analyses = [analysis for read in reads for analysis in read.series]
    _read_errors_ui(reads)
    if not analyses:
        _read_problems_ui(reads)
        return None
    st.subheader(f"Series · {len(analyses)}")
    _results_ui(series_rows(analyses), SERIES_TABLE_KEY, SERIES_INDEX_KEY, "Review", dict(
        label="Download series results (CSV)",
        data=lambda: series_results_csv(reads),  # built only when clicked
        file_name="series_results.csv",
        key="download_series_csv",
        help="One row per series (answer, review flags, key slices) and one per slice (class probabilities). "
        "No patient data and no file names.",
    ))
    _read_problems_ui(reads)
    if st.session_state.get(SERIES_INDEX_KEY, 0) >= len(analyses):
        st.session_state[SERIES_INDEX_KEY] = 0
    if len(analyses) == 1:
        return analyses[0]
    index = st.selectbox(
        "Series under review (or pick a row in the table)",
        options=list(range(len(analyses))),
        format_func=lambda i: f"{i + 1}. {analyses[i].name} — {answer_text(analyses[i].prediction)}",
        key=SERIES_INDEX_KEY,
    )
    return analyses[index]


def _slice_key(analysis: SeriesAnalysis) -> str:
    return f"slice_{analysis.key[:16]}"


def _jump_to(slider_key: str, number: int) -> None:
    """A key slice's button: the slider shows that slice (set before the slider is drawn)."""
    st.session_state[slider_key] = number


def _series_answer_ui(analysis: SeriesAnalysis) -> None:
    prediction = analysis.prediction
    columns = st.columns(4)
    columns[0].metric("Series answer", CLASS_LABELS[prediction.label])
    columns[1].metric("Confidence", f"{100 * prediction.confidence:.1f} %" if prediction.assessed else "—")
    columns[2].metric("Slices assessed", f"{prediction.assessed} of {prediction.n_slices}")
    columns[3].metric("Plane · sequence", f"{analysis.series.plane} · {prediction.sequence.name}")
    if prediction.outside_training:
        st.error(
            "**Outside the training data: the answer is unreliable.** Most assessed slices are unlike the scans "
            "the model learned from (another sequence, preparation or orientation).",
            icon=":material/report:",
        )
    for flag in prediction.flags:
        st.warning(f"Review advised: {series_flag_text(flag)}.", icon=":material/flag:")
    if not prediction.flags:
        st.success("No review flag for this series.", icon=":material/check_circle:")
    if analysis.series.notes:
        st.caption("Reading notes: " + " ".join(analysis.series.notes))


def _key_slices_ui(analysis: SeriesAnalysis, slider_key: str) -> None:
    """The key slices as thumbnails, each with a button that shows it below."""
    keys = analysis.prediction.key_slices
    if not keys:
        st.caption("No slice was assessed, so there is no key slice.")
        return
    st.markdown("**Key slices** (the slices that drove the answer)")
    columns = st.columns(max(len(keys), 5))
    for column, key in zip(columns, keys):
        thumbnail = analysis.series.slices[key.index].copy()
        thumbnail.thumbnail((192, 192))
        column.image(thumbnail, caption=f"Slice {key.index + 1}: {key_slice_text(analysis.prediction, key)}",
                     width="stretch")
        column.button("Show", key=f"jump_{analysis.key[:16]}_{key.index}", on_click=_jump_to,
                      args=(slider_key, key.index + 1), width="stretch", icon=":material/visibility:")


def _slice_ui(model: Classifier, analysis: SeriesAnalysis, number: int) -> None:
    """Slice ``number`` (from 1): the scan, its Grad-CAM overlay (computed for this slice only)
    and its own answer."""
    index = number - 1
    prediction = analysis.prediction
    own = prediction.slices[index]
    position = prediction.positions_mm[index]
    target, opacity = _explain_ui(st.columns(2), prediction.label, "series answer",
                                  _explain_key(f"series_explain_{analysis.key[:16]}", analysis.key), "series_opacity",
                                  disabled=not own.is_brain_mri)
    image = analysis.series.slices[index]
    left, middle, right = st.columns([2, 2, 1.4])
    left.image(image, caption=f"Slice {number} of {analysis.n_slices} ({position:.1f} mm)", width="stretch")
    if own.is_brain_mri:
        overlay = overlay_heatmap(image, analysis.heatmap(model, index, target), opacity)
        middle.image(overlay, caption=f"Grad-CAM for {CLASS_LABELS[target]} at {opacity:.0%} opacity", width="stretch")
    else:
        middle.warning("This slice was not recognised as a brain MRI: no heatmap.", icon=":material/block:")
    with right:
        if own.is_brain_mri:
            st.metric("Slice answer", CLASS_LABELS[own.label])
            st.metric("Slice confidence", f"{100 * own.confidence:.1f} %")
        st.caption(f"This slice: {slice_state(prediction, index)}.")
        for flag in own.flags:
            st.warning(flag_text(flag), icon=":material/flag:")
    st.info(SERIES_HEATMAP_NOTE, icon=":material/info:")


def _report_bytes(model: Classifier, analysis: SeriesAnalysis) -> bytes:
    return series_report_pdf(analysis.prediction, analysis.key_views(model), model.card,
                             _external_figures(str(assets_dir())), read_sequence=analysis.read_sequence)


def _series_view_ui(model: Classifier, analysis: SeriesAnalysis) -> None:
    st.header(f"Series: {analysis.name}", divider="gray")
    _sequence_ui(analysis.key, f"series_sequence_{analysis.key[:16]}", analysis.sequence_as_read, model.rules.coverage)
    _series_answer_ui(analysis)
    st.download_button(
        "Download series report (PDF)",
        data=lambda: _report_bytes(model, analysis),  # built only when clicked
        file_name=f"series_report_{analysis.key[:8]}.pdf",
        mime="application/pdf",
        icon=":material/picture_as_pdf:",
        key="download_series_pdf",
        help="One printable page: the answer, its review state, the key slices with their heatmaps and the "
        "model's figures on other sources. No patient data.",
    )
    slider_key = _slice_key(analysis)
    if slider_key not in st.session_state:  # start on the slice that drove the answer most
        keys = analysis.prediction.key_slices
        st.session_state[slider_key] = keys[0].index + 1 if keys else (analysis.n_slices + 1) // 2
    st.plotly_chart(series_figure(analysis.prediction, current=st.session_state[slider_key] - 1), width="stretch",
                    key=f"series_chart_{analysis.key[:16]}", config={"displayModeBar": False})
    _key_slices_ui(analysis, slider_key)
    number = st.slider("Slice", 1, analysis.n_slices, key=slider_key,
                       help="Move through the series; the heatmap is computed for the slice shown only.")
    _slice_ui(model, analysis, number)


# ---------------------------------------------------------------------- page
def main() -> None:
    st.title("Scan review")
    st.caption(
        "Upload brain MRI slices or whole series to see which of four classes the model assigns (glioma, "
        "meningioma, pituitary tumour, no tumour) and which image regions drove its answer."
    )
    uploads = _upload_ui()
    if not uploads:
        st.info("Drag and drop scans, or all the files of a series, above to begin. Nothing is stored.",
                icon=":material/upload:")
        st.stop()
    infos = _file_info(uploads)
    digests = [digest for digest, _ in infos]
    inputs = series_inputs([upload.name for upload in uploads])
    plane = _plane_ui(show=any(nifti for _, nifti in infos))
    weights = default_weights()
    try:
        model = _model(str(weights))
    except Exception as exc:  # missing or damaged weights: a message, not a traceback
        logger.error("model not loaded: %s", exc)
        st.error(f"The model could not be loaded, so scans cannot be analysed. {exc}", icon=":material/error:")
        st.stop()
    reads, read_now = _series_analyse_ui(model, uploads, digests, inputs, plane) if inputs else ([], False)
    with st.spinner("Scoring the series again for the sequence chosen…"):  # shown only while it runs
        reads = reads_under_sequences(model, reads, _choices(), st.session_state.setdefault(CORRECTED_SERIES_KEY, {}))
    scans = [i for i, upload in enumerate(uploads) if not is_series_file(upload.name)]
    single = [item for read in reads for item in read.scans]
    if reads:
        selected = _series_summary_ui(reads)
        if selected is not None:
            _series_view_ui(model, selected)
    if scans or single:
        items = _analyse_ui(model, [uploads[i] for i in scans], [digests[i] for i in scans], single)
        items = items_under_sequences(model, items, _choices(), st.session_state.setdefault(CORRECTED_KEY, {}))
        _prepare_review(model, items)
        index = _summary_ui(items)
        _review_ui(model, *items[index])
    _forget_choices({a.key for read in reads for a in read.series} | {a.digest for _, a in single}
                    | {digests[i] for i in scans})
    if read_now:  # after drawing: the page is on screen while memory is handed back
        release_freed_memory()


ensure_frame()
try:
    main()
except Exception:  # the page never shows a traceback
    logger.exception("scan review page failed")
    st.error(
        "Something went wrong while showing this page. Remove the files and try again; "
        "if it persists, report it to the maintainers.",
        icon=":material/error:",
    )
