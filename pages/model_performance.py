"""Model performance: the shipped model's stored metrics, training curves and model card.

Reads only the stored artifacts (model_card.json, history.json, evaluation.json, audit.json);
nothing is trained, evaluated or recomputed here.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable, Mapping
from typing import Any

import plotly.graph_objects as go
import streamlit as st

from app.artifacts import (
    Artifacts,
    architecture_points,
    architecture_rows,
    artifact_stamp,
    calibration_views,
    comparison_rows,
    evaluation_title,
    external_rows,
    series_rows,
    load_artifacts,
    per_class_rows,
    percent_cells,
    perturbed_rows,
    review_rules,
    recogniser_text,
    sequence_rows,
    training_sequence_rows,
    shipped_reason,
)
from app.frame import ensure_frame
from core.constants import CLASS_LABELS, assets_dir
from app.figures import architecture_figure, calibration_figure, confusion_figure, curve_figure, history_figure

logger = logging.getLogger(__name__)

_CHART_CONFIG = {"displaylogo": False}

TAB_KEY = "performance_tab"
TABS = (
    "Training curves", "Confusion matrix", "ROC and PR curves", "Calibration", "Robustness and audit",
    "Other sources and shortcut", "Architectures", "Model card",
)
EVALUATION_TABS = TABS[1:4]  # drawn from the chosen evaluation report

LIMITATIONS = """
- **Single 2D slices.** The model sees one slice at a time, without the rest of the volume,
  other sequences, prior studies or the clinical history.
- **Four classes only:** glioma, meningioma, pituitary tumour and no tumour.
- **"No tumour" means none of the three trained tumour types.** Metastases, lymphoma,
  haemorrhages (bleeds), infarcts, abscesses and other lesions were never shown to the model
  and may be called "no tumour" or given a wrong tumour class.
- **Not clinically validated.** Trained and tested on a public research dataset assembled from
  several sources; its Testing split contains near-duplicates of training scans, so the
  official accuracy is optimistic (see the leak-free figures where stored).
- **Scans from other hospitals and sequences are much harder** (see "Scans from other sources"
  above): the Kaggle tumour scans are mostly contrast-enhanced T1, so the model partly learned
  sequence appearance. Scans unlike its training data are marked "outside the training data";
  treat those answers as unreliable.
"""

INTENDED_USE = (
    "Research and teaching: a demonstration of a brain-MRI tumour classifier and of how to "
    "inspect its answers. Not a medical device; not for diagnosis, triage or treatment decisions."
)


@st.cache_resource(show_spinner=False, max_entries=64)
def _cached_figure(name: str, folder: str, stamp: tuple, _build: Callable[[], go.Figure]) -> go.Figure:
    """The figure ``name`` of the artifacts in ``folder`` as they are now (``stamp``), built once per
    process: building and validating plotly figures is most of this page's server time, and
    ``st.plotly_chart`` copies a figure before drawing it, so one object serves every session."""
    return _build()


def _chart(container: Any, name: str, build: Callable[[], go.Figure]) -> None:
    """Draw the figure ``name`` (also its element key) into ``container``."""
    folder = assets_dir()
    figure = _cached_figure(name, str(folder), artifact_stamp(folder), build)
    container.plotly_chart(figure, width="stretch", key=name, config=_CHART_CONFIG)


@st.cache_data(show_spinner=False)
def _artifacts(folder: str, stamp: tuple) -> Artifacts:
    """The stored metrics; the stamp (sizes and modification times) refreshes them when a file changes."""
    return load_artifacts(folder)


def _pct(value: Any, digits: int = 2) -> str:
    return f"{100.0 * value:.{digits}f} %" if isinstance(value, (int, float)) else "—"


def _date(text: Any) -> str:
    try:
        return dt.datetime.fromisoformat(str(text)).strftime("%d %b %Y")
    except ValueError:
        return "—"


def _duration(seconds: Any) -> str:
    if not isinstance(seconds, (int, float)):
        return "—"
    minutes = round(seconds / 60)
    return f"{minutes // 60} h {minutes % 60:02d} min" if minutes >= 60 else f"{max(minutes, 1)} min"


# ---------------------------------------------------------------------- sections
def _headline_ui(artifacts: Artifacts) -> None:
    testing = artifacts.testing
    card = artifacts.model_card or {}
    training = card.get("training", {}) if isinstance(card.get("training"), Mapping) else {}
    cols = st.columns(4)
    cols[0].metric("Accuracy (Testing)", _pct(testing["accuracy"]) if testing else "—")
    cols[1].metric("Macro F1 (Testing)", _pct(testing["macro_f1"]) if testing else "—")
    cols[2].metric("Test scans", f"{int(testing['n_images']):,}" if testing else "—")
    total = training.get("total_wall_time_s")
    cols[3].metric(
        "Training wall time", _duration(training.get("wall_time_s")),
        help=f"Training loop on {training.get('hardware', '—')}"
        + (f"; {_duration(total)} in all with calibration, gate, Testing evaluation and export" if total else ""),
    )
    st.caption(f"Trained on {_date(card.get('trained_at'))}.")


def _comparison_ui(artifacts: Artifacts) -> str:
    """The stored evaluations side by side; returns the key of the one to detail below."""
    evaluations = artifacts.evaluations
    if len(evaluations) > 1:
        st.subheader("Evaluations side by side")
        st.caption(
            "The official Testing split shares near-identical scans with Training; where stored, the "
            "leak-free subset (Testing scans with no near-duplicate in Training) is the honest figure. "
            "ECE: expected calibration error of the probabilities the app serves (the model's "
            "temperature applied; a model without a fitted temperature is scored as it is)."
        )
    pct = st.column_config.NumberColumn(format="%.2f %%")
    st.dataframe(
        comparison_rows(evaluations),
        hide_index=True,
        width="stretch",
        key="comparison_table",
        column_config={k: pct for k in ("Accuracy (%)", "Macro F1 (%)", "Macro precision (%)",
                                         "Macro recall (%)", "ECE (%)")},
    )
    if len(evaluations) == 1:
        return "testing"
    return st.selectbox(
        "Evaluation detailed below",
        options=list(evaluations),
        format_func=lambda k: f"{evaluation_title(k)} ({int(evaluations[k]['n_images']):,} scans)",
        key="evaluation_choice",
    )


_PCT_COLUMNS = ("Accuracy (%)", "Not a brain MRI (%)", "Outside training data (%)", "Any flag (%)",
                "Accuracy without flag (%)", "'No tumour', no flag (%)")


def _external_ui(artifacts: Artifacts) -> None:
    """The official figures next to scans from other sources: the gap, on the page."""
    st.subheader("Scans from other sources")
    if artifacts.external is None:
        st.info(
            "No evaluation on scans from other sources is stored: run `python -m train.evaluate "
            "--external DIR --output assets/external.json`. Until then, expect much lower accuracy "
            "on scans from other hospitals and sequences than on the official Testing split."
        )
        return
    st.caption(
        "The same model, served as in the app (gate, flags and all), on the Kaggle Testing split and on "
        "scans from four other sources it was never trained or tuned on. The official figure is far "
        "above what to expect on a new hospital's scans. \"Other lesion types\" have no right answer "
        "among the four classes: the dangerous outcome is \"no tumour\" with no flag."
    )
    st.dataframe(percent_cells(external_rows(artifacts.external), _PCT_COLUMNS), hide_index=True, width="stretch",
                 key="external_table", column_config={"Scans": st.column_config.TextColumn(width="medium"),
                                                      "N": st.column_config.NumberColumn(width="small")}
                 | {c: st.column_config.TextColumn(width="small", help=c) for c in _PCT_COLUMNS})


_SERIES_PCT = ("Accuracy (%)", "Any flag (%)", "Accuracy without flag (%)", "'No tumour', no flag (%)")


def _series_ui(artifacts: Artifacts) -> None:
    """Whole series from other sources: one answer per series, as the review page gives it."""
    if artifacts.series is None:
        return
    st.subheader("Whole series from other sources")
    rule = (artifacts.model_card or {}).get("series") or {}
    st.caption(
        "One answer per series, from its slices' answers: a tumour class needs at least "
        f"{rule.get('min_slices', '?')} slices at {100 * float(rule.get('min_probability', 0)):.0f} % or more behind it, "
        "else the answer is \"no tumour\" (the rule is fitted on validation series only). Few series: "
        "read each row as single cases, not as a rate."
    )
    st.dataframe(percent_cells(series_rows(artifacts.series), _SERIES_PCT), hide_index=True, width="stretch",
                 key="series_table")


_TABLE_PCT = ("Share of the class (%)", "Accuracy there (%)")


def _sequence_table_ui(artifacts: Artifacts) -> None:
    """Where the model has never looked: its training scans per class and sequence."""
    card = artifacts.model_card or {}
    rows = training_sequence_rows(card, artifacts.external)
    if not rows:
        return
    table = card["sequence_table"]
    st.subheader("Where the model has never looked")
    synthetic = table.get("synthetic") or {}
    st.caption(
        "The classifier's training scans per class and MRI sequence: by file name where the source gives it, "
        "by the sequence recogniser elsewhere. A class with less than "
        f"{100 * float(table['min_share']):.1f} % of its training scans on a sequence is barely covered there: "
        "on that sequence, answers of that class, and tumour answers while any tumour class is barely covered, "
        "are flagged “sequence not learned for this answer”."
        + (f" Not counted: the T2-like images made during training from {synthetic['T2_from_flair_slices']} "
           "tcga-lgg FLAIR slices." if synthetic.get("T2_from_flair_slices") else "")
        + " Accuracy on scans from other sources is by the sequence the model gave them."
    )
    st.dataframe(percent_cells(rows, _TABLE_PCT), hide_index=True, width="stretch", key="training_sequence_table",
                 column_config={"Sequence": st.column_config.TextColumn(width="medium")})
    text = recogniser_text(card, artifacts.external)
    if text:
        st.caption(text + " Where it cannot read the sequence, no such flag is raised: set it on the review page.")


def _shortcut_ui(audit: Mapping[str, Any] | None) -> None:
    shortcut = (audit or {}).get("shortcut")
    if not isinstance(shortcut, Mapping):
        st.info("No shortcut audit is stored: run `python -m train.audit --data-dir DIR --shortcut-only`.")
        return
    st.subheader("The sequence shortcut in Training")
    alone = shortcut.get("appearance_only", {})
    cols = st.columns(3)
    cols[0].metric("Class from appearance alone", _pct(alone.get("accuracy"), 1),
                   help=f"Chance (largest class): {_pct(alone.get('chance'), 1)}")
    cols[1].metric("AUC, no tumour vs tumour", f"{alone.get('auc_no_tumour_vs_tumour', float('nan')):.3f}")
    extra = shortcut.get("extra_source")
    if isinstance(extra, Mapping):
        cols[2].metric(f"Same test on {extra.get('name', 'the extra source')}",
                       f"{extra.get('auc_no_tumour_vs_tumour', float('nan')):.3f} AUC",
                       help="Tumour against tumour-free slices of the same patients, in the same sequences.")
    st.caption(
        "A logistic regression that sees only grey-level appearance (histogram inside the head, radial "
        "brightness profile; no lesion shape) tells \"no tumour\" from the tumour classes this well: the "
        "Kaggle classes differ in sequence, not only in anatomy. Method: " + str(shortcut.get("method", "")) + "."
    )
    clusters = shortcut.get("clusters", {})
    rows = [
        {"Cluster": r["cluster"], "Scans": r["n_images"], **{CLASS_LABELS.get(k, k): v for k, v in r["counts"].items()},
         "Largest class (%)": 100.0 * r["majority_share"]}
        for r in clusters.get("rows", []) if isinstance(r, Mapping)
    ]
    if rows:
        st.markdown(
            f"**Appearance clusters** (k-means, k = {clusters.get('k')}): "
            f"{_pct(clusters.get('one_class_fraction'), 1)} of Training lies in clusters where one class holds "
            f"at least {_pct(clusters.get('one_class_share'), 0)} of the scans. Checked by eye on ten scans per "
            "cluster: those one-class clusters are mostly axial T2 and FLAIR slices, all \"no tumour\"."
        )
        st.dataframe(rows, hide_index=True, key="shortcut_clusters",
                     column_config={"Largest class (%)": st.column_config.NumberColumn(format="%.1f %%")})


def _pointing_ui(evaluation: Mapping[str, Any] | None) -> None:
    game = (evaluation or {}).get("pointing_game")
    if not isinstance(game, Mapping):
        return
    st.subheader("Does the heatmap fall on the tumour?")
    overall = game.get("overall", {})
    rows = [{"Sequence": "all", **_pointing_row(overall)}] + [
        {"Sequence": k, **_pointing_row(v)} for k, v in (game.get("sequences") or {}).items()
    ]
    st.dataframe(rows, hide_index=True, key="pointing_table",
                 column_config={k: st.column_config.NumberColumn(format="%.1f %%") for k in ("Hit rate (%)", "Random point (%)")})
    st.caption(
        f"{game.get('method', '')}: {overall.get('n_images', 0)} slices of {game.get('patients', '—')} "
        f"{game.get('source', '')} patients. \"Random point\" is the hit rate of a point drawn anywhere in the image."
    )


def _pointing_row(report: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "Slices": report.get("n_images"),
        "Hit rate (%)": None if report.get("hit_rate") is None else 100.0 * report["hit_rate"],
        "Random point (%)": None if report.get("random_hit_rate") is None else 100.0 * report["random_hit_rate"],
    }


def _other_sources_ui(artifacts: Artifacts) -> None:
    if artifacts.external is not None:
        rows = sequence_rows(artifacts.external)
        if rows:
            st.subheader("By sequence")
            st.dataframe(percent_cells(rows, _PCT_COLUMNS), hide_index=True, width="stretch", key="sequence_table")
    _shortcut_ui(artifacts.audit)
    _pointing_ui(artifacts.evaluation)


def _architectures_ui(artifacts: Artifacts) -> None:
    comparison = artifacts.comparison
    if comparison is None:
        st.info("No architecture comparison is stored: run `python -m train.compare` and copy its "
                "`comparison.json` to the assets folder.")
        return
    shipped = (artifacts.model_card or {}).get("arch")
    st.markdown(
        "The study this project began from compared a CNN trained from scratch with transfer learning "
        "from EfficientNet and VGG16. `python -m train.compare` reruns that comparison: every architecture "
        "is trained with the project's recipe (same data, split, augmentation and selection on validation) "
        "and scored the same way."
    )
    common = comparison.get("common") or {}
    machine = comparison.get("machine") or {}
    st.caption(
        f"Common schedule: {common.get('epochs')} epochs at {common.get('image_size')} px, batch "
        f"{common.get('batch_size')}, seed {common.get('seed')}"
        + (f", training data Kaggle + {', '.join(common['extra_data'])}" if common.get("extra_data") else "")
        + f". Measured on {machine.get('gpu') or machine.get('cpu', '?')} ({machine.get('threads', '?')} threads), "
        f"{_date(comparison.get('created'))}. Scores are those of each network alone (no calibration, gate or "
        "flags), so they differ from the shipped model's served figures above; reductions of a schedule "
        "on this machine are stated in the Training column."
    )
    columns = {k: st.column_config.NumberColumn(format="%.1f %%") for k in architecture_rows(comparison)[0] if k.endswith("(%)")}
    st.dataframe(architecture_rows(comparison, shipped), hide_index=True, width="stretch",
                 key="architecture_table", column_config=columns)
    points = architecture_points(comparison)
    if points:
        _chart(st, "architectures", lambda: architecture_figure(points))
    reason = shipped_reason(comparison, shipped)
    if reason:
        st.markdown(
            f"**Shipped model.** {reason} The shipped architecture must also fit the app's speed budget "
            "and the one-hour CPU recipe; the shipped weights come from the full recipe (model card), "
            "not from this shorter comparison run."
        )


def _history_ui(artifacts: Artifacts) -> None:
    if artifacts.history is None:
        st.warning("No training history is stored, so the training curves cannot be shown.")
        return
    epochs = artifacts.history["epochs"]
    rows = ((("loss", "Loss"), ("accuracy", "Accuracy"), ("macro_f1", "Macro F1")),
            (("macro_precision", "Macro precision"), ("macro_recall", "Macro recall")))
    for row in rows:
        for col, (metric, title) in zip(st.columns(3), row):
            _chart(col, f"history_{metric}", lambda metric=metric, title=title: history_figure(epochs, metric, title))
    best = (artifacts.model_card or {}).get("training", {}).get("best_epoch")
    st.caption(
        "Training loss is the label-smoothed loss being optimised; validation loss is plain cross-entropy."
        + (f" The shipped weights are those of epoch {best} (best validation macro F1)." if best else "")
    )


def _confusion_ui(report: Mapping[str, Any], key: str) -> None:
    left, right = st.columns([3, 2])
    with left:
        mode = st.radio("Show", ["Counts", "Row-normalised"], horizontal=True, key="cm_mode")
        names = report.get("class_names") or list(report.get("per_class", {}))
        normalised = mode == "Row-normalised"
        _chart(st, f"confusion_{key}_{'rates' if normalised else 'counts'}",
               lambda: confusion_figure(report["confusion_matrix"], names, normalised))
    with right:
        st.markdown("**Reading the matrix**")
        st.caption(
            "Rows are the true class, columns the class the model predicted; the diagonal holds the "
            "correct answers. Row-normalised, each row shows where the scans of one true class went: "
            "its diagonal cell is that class's recall. Scans of a tumour predicted as \"no tumour\" "
            "(the No tumour column) are the most consequential errors."
        )
    st.markdown("**Per-class metrics**")
    pct = st.column_config.NumberColumn(format="%.2f %%")
    st.dataframe(
        per_class_rows(report),
        hide_index=True,
        width="stretch",
        key="per_class_table",
        column_config={"Precision (%)": pct, "Recall (%)": pct, "F1 (%)": pct,
                       "ROC AUC": st.column_config.NumberColumn(format="%.4f")},
    )


def _curves_ui(report: Mapping[str, Any], key: str) -> None:
    roc, pr = report.get("roc"), report.get("pr")
    if not roc and not pr:
        st.info("No ROC or precision-recall curves are stored for this evaluation.")
        return
    cols = st.columns(2)
    if roc:
        _chart(cols[0], f"roc_{key}", lambda: curve_figure(roc, "roc"))
    if pr:
        _chart(cols[1], f"pr_{key}", lambda: curve_figure(pr, "pr"))


def _calibration_ui(report: Mapping[str, Any], key: str, card: Mapping[str, Any]) -> None:
    views = calibration_views(report)
    if not views:
        st.info("No calibration bins are stored for this evaluation.")
        return
    left, right = st.columns([3, 2])
    _chart(left, f"calibration_{key}", lambda: calibration_figure(views))
    with right:
        for label, view in views:
            title = "Expected calibration error" + ("" if label == "Calibration" else f" — {label.lower()}")
            st.metric(title, _pct(view.get("ece")))
        temperature = card.get("temperature")
        if isinstance(temperature, (int, float)) and temperature != 1.0:
            st.caption(f"Confidences are divided by a temperature of {temperature:.3f} fitted on validation.")
        st.caption(
            "Each point is a bin of scans with similar confidence; on the diagonal, a confidence of "
            "90 % is right 90 % of the time. The error is the gap, weighted by the bin's size."
        )


def _robustness_ui(evaluation: Mapping[str, Any] | None) -> None:
    perturbed = (evaluation or {}).get("testing_perturbed")
    if not isinstance(perturbed, Mapping):
        return
    st.subheader("Accuracy under image perturbations")
    st.dataframe(
        perturbed_rows(perturbed),
        hide_index=True,
        key="perturbed_table",
        column_config={"Accuracy (%)": st.column_config.NumberColumn(format="%.2f %%"),
                       "Change (points)": st.column_config.NumberColumn(format="%+.2f")},
    )


def _audit_ui(audit: Mapping[str, Any] | None) -> None:
    if not audit:
        return
    st.subheader("Dataset audit")
    summary = audit.get("summary") if isinstance(audit.get("summary"), Mapping) else audit
    rows = [
        {"Finding": k.replace("_", " ").capitalize(), "Value": str(v)}
        for k, v in summary.items()
        if isinstance(v, (int, float, str)) and not isinstance(v, bool)
    ]
    if rows:
        st.dataframe(rows, hide_index=True, key="audit_table")
    method = audit.get("method")
    if isinstance(method, str):
        st.caption(method)


def _robustness_and_audit_ui(artifacts: Artifacts) -> None:
    _robustness_ui(artifacts.evaluation)
    _audit_ui(artifacts.audit)
    if not (artifacts.evaluation or {}).get("testing_perturbed") and not artifacts.audit:
        st.info("No robustness or audit results are stored.")


def _model_card_ui(card: Mapping[str, Any] | None, evaluation: Mapping[str, Any] | None) -> None:
    card = card or {}
    data = card.get("data", {}) if isinstance(card.get("data"), Mapping) else {}
    training = card.get("training", {}) if isinstance(card.get("training"), Mapping) else {}
    config = training.get("config", {}) if isinstance(training.get("config"), Mapping) else {}
    left, right = st.columns(2)
    with left:
        st.markdown("**Data**")
        test_images = data.get("test_images", (evaluation or {}).get("n_images"))
        lines = [
            f"- Source: {data.get('source', 'not recorded')}",
            f"- Training: {data.get('train_images', '—')} scans",
            f"- Validation: {data.get('val_images', '—')} scans ({config.get('split', 'stratified')} split "
            "held out from Training)",
            f"- Testing: {test_images if test_images is not None else '—'} scans (the dataset's Testing folder)",
        ]
        counts = data.get("test_counts") or (evaluation or {}).get("counts")
        if isinstance(counts, Mapping):
            lines.append("- Testing per class: " + ", ".join(f"{CLASS_LABELS.get(k, k)} {v}" for k, v in counts.items()))
        st.markdown("\n".join(lines))
        st.markdown("**Intended use**")
        st.markdown(INTENDED_USE)
        if rules := review_rules(card):
            st.markdown("**Review flags**")
            st.markdown("\n".join(f"- {line}" for line in rules))
    with right:
        st.markdown("**Architecture and training**")
        recipe = ", ".join(
            f"{label} {config[k]}"
            for k, label in (("epochs", "epochs"), ("freeze_epochs", "head-only epochs"), ("lr", "peak learning rate"),
                             ("batch_size", "batch size"), ("weight_decay", "weight decay"),
                             ("label_smoothing", "label smoothing"), ("augment", "augmentation strength"))
            if k in config
        )
        st.markdown(
            f"- Architecture: `{card.get('arch', '—')}`, input {card.get('image_size', '—')} × "
            f"{card.get('image_size', '—')} pixels, {len(card.get('class_names', [])) or 4} classes\n"
            f"- Recipe: ImageNet-pre-trained backbone fine-tuned with AdamW"
            + (f"; {recipe}" if recipe else "")
            + f"\n- Hardware: {training.get('hardware', '—')}; training loop {_duration(training.get('wall_time_s'))}"
            + (f", {_duration(total)} in all" if (total := training.get("total_wall_time_s")) else "")
            + f"\n- Selected on: {training.get('selected_on', 'validation macro F1')}"
            + (f" (epoch {training['best_epoch']})" if "best_epoch" in training else "")
        )
    st.markdown("**Limitations**")
    st.markdown(LIMITATIONS)


# ---------------------------------------------------------------------- page
def main() -> None:
    st.title("Model performance")
    st.caption("Figures from the shipped model's stored evaluation; nothing is recomputed on this page.")
    folder = assets_dir()
    artifacts = _artifacts(str(folder), artifact_stamp(folder))
    for name, message in artifacts.problems.items():
        st.error(f"**Stored metrics unavailable ({name}).** {message}", icon=":material/error:")
    if artifacts.evaluation is None and artifacts.history is None and artifacts.model_card is None:
        st.info("Train the model (`python -m train --output assets`) to create these files.")
        st.stop()

    _headline_ui(artifacts)
    _external_ui(artifacts)
    _sequence_table_ui(artifacts)
    _series_ui(artifacts)
    key = _comparison_ui(artifacts) if artifacts.evaluation is not None else None
    report = artifacts.evaluations.get(key) if key else None

    # Only the open tab is computed and sent (switching tabs reruns the page): the browser draws
    # three charts on arrival instead of seven.
    sections = (
        lambda: _history_ui(artifacts),
        lambda: _confusion_ui(report, key),
        lambda: _curves_ui(report, key),
        lambda: _calibration_ui(report, key, artifacts.model_card or {}),
        lambda: _robustness_and_audit_ui(artifacts),
        lambda: _other_sources_ui(artifacts),
        lambda: _architectures_ui(artifacts),
        lambda: _model_card_ui(artifacts.model_card, artifacts.evaluation),
    )
    for index, (tab, draw) in enumerate(zip(st.tabs(list(TABS), key=TAB_KEY, on_change="rerun"), sections)):
        if not tab.open:
            continue
        with tab:
            if report is None and TABS[index] in EVALUATION_TABS:
                st.warning("No evaluation is stored, so this section cannot be shown.")
            else:
                draw()


ensure_frame()
try:
    main()
except Exception:  # the page never shows a traceback
    logger.exception("model performance page failed")
    st.error(
        "The stored metrics could not be shown: a file in the assets folder has an unexpected layout. "
        "Re-run the evaluation to regenerate it.",
        icon=":material/error:",
    )
