"""Plotly figures for the app, built from a prediction or from the stored metrics (no recomputation)."""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any

import plotly.graph_objects as go

from core.constants import CLASS_LABELS, CLASS_NAMES
from core.model import Prediction
from core.series_rule import SeriesPrediction

__all__ = [
    "ACCENT",
    "architecture_figure",
    "MUTED",
    "calibration_figure",
    "confusion_figure",
    "curve_figure",
    "history_figure",
    "normalise_rows",
    "probability_figure",
    "series_figure",
]

logger = logging.getLogger(__name__)

ACCENT = "#1f6f8b"
MUTED = "#b8c4cc"
#: One colour per class (colour-blind safe), in the order of ``CLASS_NAMES``.
CLASS_COLOURS = {"glioma": "#0072b2", "meningioma": "#e69f00", "notumor": "#009e73", "pituitary": "#cc79a7"}
SPLIT_COLOURS = {"train": "#0072b2", "val": "#d55e00"}
_FONT = dict(family="sans-serif", size=13, color="#1c2b36")


def _layout(fig: go.Figure, height: int, **kwargs: Any) -> go.Figure:
    fig.update_layout(
        height=height,
        margin=dict(l=10, r=10, t=40, b=10),
        font=_FONT,
        plot_bgcolor="white",
        paper_bgcolor="white",
        **kwargs,
    )
    fig.update_xaxes(showgrid=True, gridcolor="#e7ecef", zeroline=False)
    fig.update_yaxes(showgrid=True, gridcolor="#e7ecef", zeroline=False)
    return fig


def _label(name: str) -> str:
    return CLASS_LABELS.get(name, name)


def probability_figure(prediction: Prediction) -> go.Figure:
    """Horizontal bars of the four class probabilities; the predicted class stands out."""
    names = list(CLASS_NAMES)[::-1]
    values = [100.0 * prediction.probabilities.get(n, 0.0) for n in names]
    fig = go.Figure(
        go.Bar(
            x=values,
            y=[_label(n) for n in names],
            orientation="h",
            marker_color=[ACCENT if n == prediction.label else MUTED for n in names],
            text=[f"{v:.1f} %" for v in values],
            textposition="outside",
            cliponaxis=False,
            hovertemplate="%{y}: %{x:.2f} %<extra></extra>",
        )
    )
    fig.update_xaxes(range=[0, 112], title_text="Probability (%)", ticksuffix="")
    return _layout(fig, 220, title_text="Class probabilities", showlegend=False)


#: Grey of the slices that did not count towards a series answer.
NOT_ASSESSED_COLOUR = "#8a98a3"
FLAG_COLOUR = "#d55e00"


def series_figure(prediction: SeriesPrediction, current: int | None = None) -> go.Figure:
    """Each class's probability along the slices of a series (x: slice number, from 1; the
    position in mm in the hover), with the key slices (stars on the answer's line), the slices
    with a review flag (crosses above the lines) and the slices that were not assessed (grey
    bands and squares below) marked; ``current``: the index of the slice shown (a dashed line)."""
    numbers = list(range(1, prediction.n_slices + 1))
    positions = list(prediction.positions_mm)
    fig = go.Figure()
    for name in CLASS_NAMES:
        fig.add_trace(
            go.Scatter(
                x=numbers,
                y=[100.0 * s.probabilities.get(name, 0.0) for s in prediction.slices],
                mode="lines+markers" if prediction.n_slices <= 60 else "lines",
                name=_label(name),
                line=dict(color=CLASS_COLOURS.get(name), width=3 if name == prediction.label else 1.5),
                marker=dict(size=4),
                customdata=positions,
                hovertemplate=f"slice %{{x}} (%{{customdata:.1f}} mm): {_label(name)} %{{y:.1f}} %<extra></extra>",
            )
        )
    keys = prediction.key_slices
    if keys:
        fig.add_trace(
            go.Scatter(
                x=[k.index + 1 for k in keys],
                y=[100.0 * prediction.slices[k.index].probabilities.get(prediction.label, 0.0) for k in keys],
                mode="markers",
                name="Key slice",
                marker=dict(symbol="star", size=14, color=CLASS_COLOURS.get(prediction.label, ACCENT),
                            line=dict(color="#1c2b36", width=1)),
                customdata=[[_label(k.label), 100.0 * k.probability] for k in keys],
                hovertemplate="key slice %{x}: %{customdata[0]}, %{customdata[1]:.1f} %<extra></extra>",
            )
        )
    flagged = [i for i, s in enumerate(prediction.slices) if s.flags]
    if flagged:
        fig.add_trace(
            go.Scatter(
                x=[i + 1 for i in flagged],
                y=[106.0] * len(flagged),
                mode="markers",
                name="Flagged slice",
                marker=dict(symbol="x", size=8, color=FLAG_COLOUR),
                customdata=[", ".join(f.kind.replace("_", " ") for f in prediction.slices[i].flags) for i in flagged],
                hovertemplate="slice %{x}: %{customdata}<extra></extra>",
            )
        )
    skipped = [i for i, counted in enumerate(prediction.assessed_mask) if not counted]
    if skipped:
        fig.add_trace(
            go.Scatter(
                x=[i + 1 for i in skipped],
                y=[-6.0] * len(skipped),
                mode="markers",
                name="Not assessed",
                marker=dict(symbol="square", size=7, color=NOT_ASSESSED_COLOUR),
                hovertemplate="slice %{x}: not assessed<extra></extra>",
            )
        )
        for start, end in _runs(skipped):
            fig.add_vrect(x0=start + 0.5, x1=end + 1.5, fillcolor=NOT_ASSESSED_COLOUR, opacity=0.12,
                          line_width=0, layer="below")
    if current is not None:
        fig.add_vline(x=current + 1, line=dict(color="#1c2b36", dash="dash", width=1))
    fig.update_xaxes(title_text="Slice number", range=[0.5, prediction.n_slices + 0.5])
    fig.update_yaxes(title_text="Probability (%)", range=[-10, 110], tickvals=[0, 25, 50, 75, 100])
    return _layout(fig, 340, title_text="Class probabilities along the slices", legend=dict(orientation="h", y=-0.25))


def _runs(indices: Sequence[int]) -> list[tuple[int, int]]:
    """Consecutive runs of sorted ``indices`` as (first, last)."""
    runs: list[tuple[int, int]] = []
    for i in indices:
        if runs and i == runs[-1][1] + 1:
            runs[-1] = (runs[-1][0], i)
        else:
            runs.append((i, i))
    return runs


def history_figure(epochs: Sequence[Mapping[str, Any]], metric: str, title: str) -> go.Figure:
    """One metric per epoch, training and validation lines."""
    fig = go.Figure()
    for split, name in (("train", "Training"), ("val", "Validation")):
        xs, ys = [], []
        for i, record in enumerate(epochs):
            value = record.get(split, {}).get(metric)
            if isinstance(value, (int, float)):
                xs.append(record.get("epoch", i + 1))
                ys.append(value)
        fig.add_trace(
            go.Scatter(x=xs, y=ys, mode="lines+markers", name=name, line=dict(color=SPLIT_COLOURS[split], width=2))
        )
    fig.update_xaxes(title_text="Epoch", dtick=1 if len(epochs) <= 20 else None)
    fig.update_yaxes(title_text=title)
    return _layout(fig, 300, title_text=title, legend=dict(orientation="h", y=-0.25))


def normalise_rows(matrix: Sequence[Sequence[float]]) -> list[list[float]]:
    """Each row divided by its sum (the rate of each prediction per true class); empty rows stay 0."""
    out = []
    for row in matrix:
        total = float(sum(row))
        out.append([float(v) / total if total else 0.0 for v in row])
    return out


def confusion_figure(
    matrix: Sequence[Sequence[float]], class_names: Sequence[str], normalised: bool
) -> go.Figure:
    """The confusion matrix as a heatmap (rows: true class, columns: predicted class)."""
    labels = [_label(n) for n in class_names]
    values = normalise_rows(matrix) if normalised else [[float(v) for v in row] for row in matrix]
    text = [[f"{v:.1%}" if normalised else f"{int(v)}" for v in row] for row in values]
    fig = go.Figure(
        go.Heatmap(
            z=values,
            x=labels,
            y=labels,
            text=text,
            texttemplate="%{text}",
            colorscale="Blues",
            zmin=0,
            zmax=1 if normalised else None,
            hovertemplate="True %{y}, predicted %{x}: %{text}<extra></extra>",
            showscale=False,
        )
    )
    fig.update_yaxes(autorange="reversed", title_text="True class", showgrid=False)
    fig.update_xaxes(title_text="Predicted class", side="bottom", showgrid=False)
    title = "Confusion matrix (row-normalised)" if normalised else "Confusion matrix (counts)"
    return _layout(fig, 400, title_text=title)


def curve_figure(curves: Mapping[str, Mapping[str, Any]], kind: str) -> go.Figure:
    """Per-class ROC (``kind="roc"``) or precision-recall (``kind="pr"``) curves with their areas."""
    if kind not in ("roc", "pr"):
        raise ValueError(f"kind must be 'roc' or 'pr', got {kind!r}.")
    fig = go.Figure()
    for name, curve in curves.items():
        if kind == "roc":
            xs, ys, area = curve.get("fpr", []), curve.get("tpr", []), curve.get("auc")
            legend = f"{_label(name)} (AUC {area:.3f})" if isinstance(area, (int, float)) else _label(name)
        else:
            xs, ys, area = curve.get("recall", []), curve.get("precision", []), curve.get("average_precision")
            legend = f"{_label(name)} (AP {area:.3f})" if isinstance(area, (int, float)) else _label(name)
        fig.add_trace(
            go.Scatter(x=xs, y=ys, mode="lines", name=legend, line=dict(color=CLASS_COLOURS.get(name), width=2))
        )
    if kind == "roc":
        fig.add_trace(
            go.Scatter(x=[0, 1], y=[0, 1], mode="lines", name="Chance", line=dict(color=MUTED, dash="dash"))
        )
        fig.update_xaxes(title_text="False-positive rate", range=[-0.01, 1.01])
        fig.update_yaxes(title_text="True-positive rate", range=[-0.01, 1.01])
        title = "ROC curves (one class vs the rest)"
    else:
        fig.update_xaxes(title_text="Recall", range=[-0.01, 1.01])
        fig.update_yaxes(title_text="Precision", range=[-0.01, 1.01])
        title = "Precision-recall curves"
    return _layout(fig, 380, title_text=title, legend=dict(orientation="h", y=-0.2))


def calibration_figure(views: Sequence[tuple[str, Mapping[str, Any]]]) -> go.Figure:
    """Reliability diagram: accuracy against confidence per bin, for each stored calibration."""
    fig = go.Figure()
    fig.add_trace(
        go.Scatter(x=[0, 1], y=[0, 1], mode="lines", name="Perfect calibration", line=dict(color=MUTED, dash="dash"))
    )
    colours = [ACCENT, "#d55e00", "#009e73"]
    for i, (label, cal) in enumerate(views):
        bins = [b for b in cal.get("bins", []) if b.get("count") and b.get("confidence") is not None]
        ece = cal.get("ece")
        name = f"{label} (ECE {ece:.2%})" if isinstance(ece, (int, float)) else label
        fig.add_trace(
            go.Scatter(
                x=[b["confidence"] for b in bins],
                y=[b["accuracy"] for b in bins],
                mode="lines+markers",
                name=name,
                marker=dict(size=[6 + min(14, b["count"] ** 0.5) for b in bins], color=colours[i % len(colours)]),
                line=dict(color=colours[i % len(colours)], width=2),
                customdata=[b["count"] for b in bins],
                hovertemplate="confidence %{x:.3f}, accuracy %{y:.3f}, %{customdata} scans<extra></extra>",
            )
        )
    fig.update_xaxes(title_text="Mean confidence in bin", range=[0, 1.02])
    fig.update_yaxes(title_text="Accuracy in bin", range=[0, 1.02])
    return _layout(fig, 380, title_text="Reliability diagram", legend=dict(orientation="h", y=-0.2))


#: Tick values per decade of a log axis.
_LOG_STEPS = (1, 1.5, 2, 3, 5, 7)


def _log_ticks(low: float, high: float) -> list[float]:
    """The 1-1.5-2-3-5-7 values from just under ``low`` to just over ``high`` (ticks for a log axis)."""
    exponent = math.floor(math.log10(low))
    ticks: list[float] = []
    while True:
        for step in _LOG_STEPS:
            value = step * 10.0**exponent
            if value * 1.5 < low:
                continue
            ticks.append(value)
            if value >= high:
                return ticks
        exponent += 1


#: Marker symbols of the evaluation sets in :func:`architecture_figure`.
_SET_SYMBOLS = {"Official Testing": "circle", "Leak-free Testing": "square", "Other sources (mean)": "diamond"}


def architecture_figure(points: Sequence[Mapping[str, Any]]) -> go.Figure:
    """Accuracy against ``predict`` latency: one point per architecture per evaluation set
    (``app.artifacts.architecture_points``), one colour per architecture."""
    palette = ["#0072b2", "#d55e00", "#009e73", "#cc79a7", "#e69f00", "#56b4e9"]
    archs = list(dict.fromkeys(p["arch"] for p in points))
    slowest = max((p["latency_ms"] for p in points), default=None)
    fig = go.Figure()
    for i, arch in enumerate(archs):
        mine = [p for p in points if p["arch"] == arch]
        fig.add_trace(
            go.Scatter(
                x=[p["latency_ms"] for p in mine],
                y=[p["accuracy"] for p in mine],
                mode="markers+text",
                name=arch,
                text=[arch if p["set"] == "Official Testing" else "" for p in mine],
                # the slowest architecture's name goes left of its point, inside the plot
                textposition=["top left" if p["latency_ms"] == slowest else "top center" for p in mine],
                customdata=[p["set"] for p in mine],
                marker=dict(size=12, color=palette[i % len(palette)], symbol=[_SET_SYMBOLS.get(p["set"], "circle") for p in mine]),
                hovertemplate="%{fullData.name}<br>%{customdata}: %{y:.1f} %<br>predict %{x:.1f} ms<extra></extra>",
            )
        )
    # Plotly labels a log axis at powers of ten only, often one or two ticks over this range:
    # label the 1-1.5-2-3-5-7 steps that the points span.
    latencies = [p["latency_ms"] for p in points if p.get("latency_ms")]
    ticks = _log_ticks(min(latencies), max(latencies)) if latencies else None
    fig.update_xaxes(title_text="predict p50 on this CPU (ms, log scale)", type="log", tickvals=ticks)
    fig.update_yaxes(title_text="Accuracy (%)")
    return _layout(
        fig, 420, title_text="Accuracy against latency (circle: official Testing, square: leak-free, diamond: other sources)",
        legend=dict(orientation="h", y=-0.2),
    )
