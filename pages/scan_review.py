"""Scan review: upload scans, see the model's answer and its Grad-CAM heatmap, review a batch.

The page only reads widgets, calls ``core`` and draws. Uploads stay in memory.
"""

from __future__ import annotations

import logging

import streamlit as st

from app.frame import ensure_frame
from core import CLASS_LABELS, CLASS_NAMES, flag_text, load_model
from core.constants import MAX_UPLOAD_BYTES, SUPPORTED_EXTENSIONS, default_weights
from app.figures import probability_figure
from core.model import Classifier
from app.overlay import adjust_display, colorize_heatmap, overlay_heatmap, to_png_bytes
from app.review import ScanAnalysis, analyse_scan, digest_of, results_csv, summary_rows, warm_up

logger = logging.getLogger(__name__)

ANALYSES_KEY = "scan_analyses"  # digest -> ScanAnalysis, kept across reruns
SEEN_KEY = "seen_digests"  # the uploads of the previous run, to bring new ones under review
REVIEW_KEY = "review_index"
TABLE_KEY = "summary_table"

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
        "Drop one or more scans here",
        type=[ext.lstrip(".") for ext in SUPPORTED_EXTENSIONS],
        accept_multiple_files=True,
        key="uploads",
        help=f"JPEG, PNG, BMP, TIFF, WebP or DICOM (.dcm), up to {MAX_UPLOAD_BYTES // 2**20} MB each. "
        "Files are kept in memory for this session only and never stored.",
    ) or []


def _on_table_select() -> None:
    """A row picked in the summary table becomes the scan under review."""
    rows = st.session_state[TABLE_KEY].selection.rows
    if rows:
        st.session_state[REVIEW_KEY] = rows[0]


def _analyse_ui(model: Classifier, uploads: list) -> list[tuple[str, ScanAnalysis]]:
    """Each upload's analysis, computed once per distinct file content (reruns reuse it)."""
    cache: dict[str, ScanAnalysis] = st.session_state.setdefault(ANALYSES_KEY, {})
    contents = [(upload.name, upload.getvalue()) for upload in uploads]
    digests = [digest_of(data) for _, data in contents]
    todo = {digest: data for (_, data), digest in zip(contents, digests) if digest not in cache}
    if todo:
        bar = st.progress(0.0, text=f"Analysing {len(todo)} new scan(s)…")
        for done, (digest, data) in enumerate(todo.items(), start=1):
            cache[digest] = analyse_scan(model, data)
            bar.progress(done / len(todo), text=f"Analysed {done} of {len(todo)} new scan(s)")
    for stale in set(cache) - set(digests):  # files removed from the uploader
        del cache[stale]
    seen = st.session_state.get(SEEN_KEY, [])
    new = [i for i, digest in enumerate(digests) if digest not in seen]
    if new and seen:  # files added to a batch already on screen: review the first new one
        st.session_state[REVIEW_KEY] = new[0]
    st.session_state[SEEN_KEY] = digests
    return [(name, cache[digest]) for (name, _), digest in zip(contents, digests)]


def _prepare_review(model: Classifier, items: list[tuple[str, ScanAnalysis]]) -> None:
    """Compute the heatmap of the scan about to be reviewed before anything is drawn: the browser
    then renders the page while the server is idle, instead of both sharing the CPU."""
    index = st.session_state.get(REVIEW_KEY, 0)
    if not 0 <= index < len(items):
        return
    analysis = items[index][1]
    if analysis.ok and analysis.prediction.is_brain_mri:  # type: ignore[union-attr]
        target = st.session_state.get(f"explain_{analysis.digest}", analysis.prediction.label)  # type: ignore[union-attr]
        analysis.heatmap(model, target)


def _summary_ui(items: list[tuple[str, ScanAnalysis]]) -> int:
    """The batch table and its CSV export; returns the index of the scan to review."""
    n_bad = sum(not a.ok for _, a in items)
    st.subheader(f"Batch summary · {len(items)} file(s)" + (f", {n_bad} not analysed" if n_bad else ""))
    st.dataframe(
        summary_rows(items),
        key=TABLE_KEY,
        on_select=_on_table_select,
        selection_mode="single-row",
        hide_index=True,
        width="stretch",
        column_config={
            "Confidence (%)": st.column_config.NumberColumn(format="%.1f %%"),
            "Flags / message": st.column_config.TextColumn(width="large"),
        },
    )
    st.download_button(
        "Download results (CSV)",
        data=lambda: results_csv(items),  # built only when clicked
        file_name="scan_results.csv",
        mime="text/csv",
        icon=":material/download:",
        key="download_csv",
        help="File name, predicted class, confidence, flags and class probabilities. No patient data.",
    )
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


def _viewer_ui(model: Classifier, analysis: ScanAnalysis, show_heatmap: bool) -> None:
    """Original, heatmap and overlay side by side, with display-only controls."""
    prediction = analysis.prediction
    assert analysis.image is not None and prediction is not None
    st.subheader("Viewer")
    controls = st.columns(4)
    with controls[0]:
        target = st.selectbox(
            "Explain class",
            options=list(CLASS_NAMES),
            index=CLASS_NAMES.index(prediction.label),
            format_func=lambda n: CLASS_LABELS[n] + (" (predicted)" if n == prediction.label else ""),
            key=f"explain_{analysis.digest}",
            disabled=not show_heatmap,
        )
    with controls[1]:
        opacity = st.slider("Heatmap opacity", 0.0, 1.0, 0.5, 0.05, key="opacity", disabled=not show_heatmap)
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
    if analysis.error is not None:
        st.error(f"**This file could not be analysed.** {analysis.error}", icon=":material/error:")
        return
    if analysis.display_transform:
        st.info(
            f"DICOM file: grey levels come from its {analysis.display_transform}"
            + (" (the file stores no window, so the 0.5–99.5 percentile range is shown)."
               if analysis.display_transform == "percentile stretch" else "."),
            icon=":material/tune:",
        )
    shown = _prediction_ui(analysis)
    _viewer_ui(model, analysis, show_heatmap=shown)


# ---------------------------------------------------------------------- page
def main() -> None:
    st.title("Scan review")
    st.caption(
        "Upload brain MRI slices to see which of four classes the model assigns (glioma, meningioma, "
        "pituitary tumour, no tumour) and which image regions drove its answer."
    )
    uploads = _upload_ui()
    if not uploads:
        st.info("Drag and drop one or more scans above to begin. Nothing is stored.", icon=":material/upload:")
        st.stop()
    weights = default_weights()
    try:
        model = _model(str(weights))
    except Exception as exc:  # missing or damaged weights: a message, not a traceback
        logger.error("model not loaded: %s", exc)
        st.error(f"The model could not be loaded, so scans cannot be analysed. {exc}", icon=":material/error:")
        st.stop()
    items = _analyse_ui(model, uploads)
    _prepare_review(model, items)
    index = _summary_ui(items)
    _review_ui(model, *items[index])


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
