"""The model performance page and the artifact reader, from fixture metrics and the shipped ones."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from app_assets import make_assets
from app.artifacts import (
    EMPTY_CELL,
    ArtifactError,
    calibration_views,
    comparison_rows,
    evaluation_title,
    load_artifacts,
    read_artifact,
    review_rules,
)
from core.constants import ASSETS_DIR, AUDIT_NAME, EVALUATION_NAME, HISTORY_NAME, MODEL_CARD_NAME

APP = str(Path(__file__).resolve().parent.parent / "streamlit_app.py")
PAGE = "pages/model_performance.py"
TIMEOUT = 60

#: The page on the shipped metrics runs in the whole suite; the fast lane draws the fixture's.
ASSET_KINDS = ["fixture"] + ([pytest.param("shipped", marks=pytest.mark.slow)] if (ASSETS_DIR / EVALUATION_NAME).is_file() else [])


@pytest.fixture(scope="module")
def fixture_assets(tmp_path_factory) -> Path:
    return make_assets(tmp_path_factory.mktemp("perf_assets"))


@pytest.fixture(params=ASSET_KINDS)
def assets(request, fixture_assets) -> Path:
    return fixture_assets if request.param == "fixture" else ASSETS_DIR


def _page(folder: Path, monkeypatch) -> AppTest:
    monkeypatch.setenv("BTMRI_ASSETS", str(folder))
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    at.run()
    at.switch_page(PAGE)
    at.run()
    return at


TAB_KEY = "performance_tab"


def _open_tab(at: AppTest, label: str) -> AppTest:
    """Open a tab of the page (only the open tab's content is computed and drawn)."""
    assert label in [t.label for t in at.tabs], label
    at.session_state[TAB_KEY] = label
    at.run()
    assert not at.exception
    return at


@dataclass
class _Visit:
    """What the page showed across all its tabs, each opened in turn."""

    metric: list = field(default_factory=list)
    dataframe: list = field(default_factory=list)
    markdown: list = field(default_factory=list)
    info: list = field(default_factory=list)
    error: list = field(default_factory=list)
    titles: list = field(default_factory=list)


def _visit_all_tabs(at: AppTest) -> _Visit:
    visit = _Visit()
    labels = [t.label for t in at.tabs]
    assert labels, "the page has tabs"
    for label in labels:
        _open_tab(at, label)
        visit.metric += list(at.metric)
        visit.dataframe += list(at.dataframe)
        visit.markdown += list(at.markdown)
        visit.info += list(at.info)
        visit.error += list(at.error)
        visit.titles += _chart_titles(at)
    _open_tab(at, labels[0])
    return visit


def _metric(at: AppTest | _Visit, label: str) -> str:
    return next(m.value for m in at.metric if m.label == label)


def _table(at: AppTest | _Visit, column: str):
    """The first table on the page with ``column`` (read-only tables carry no key in AppTest)."""
    for frame in at.dataframe:
        value = frame.value
        if column in value.columns:
            return value
    raise AssertionError(f"no table with a {column!r} column")


def _chart_titles(at: AppTest) -> list[str]:
    titles = []
    for chart in at.get("plotly_chart"):
        spec = json.loads(chart.proto.spec)
        titles.append(spec.get("layout", {}).get("title", {}).get("text", ""))
    return titles


def _copy(src: Path, dst: Path) -> Path:
    dst.mkdir(parents=True, exist_ok=True)
    for name in (MODEL_CARD_NAME, HISTORY_NAME, EVALUATION_NAME, AUDIT_NAME):
        if (src / name).is_file():
            (dst / name).write_bytes((src / name).read_bytes())
    return dst


# ---------------------------------------------------------------------- page
def test_page_renders_stored_metrics(assets, monkeypatch):
    at = _page(assets, monkeypatch)
    assert not at.exception and not at.error
    assert at.title[0].value == "Model performance"
    evaluation = json.loads((assets / EVALUATION_NAME).read_text())
    card = json.loads((assets / MODEL_CARD_NAME).read_text())
    testing = evaluation["evaluations"]["testing"]

    assert _metric(at, "Accuracy (Testing)") == f"{100 * testing['accuracy']:.2f} %"
    assert _metric(at, "Macro F1 (Testing)") == f"{100 * testing['macro_f1']:.2f} %"
    assert _metric(at, "Test scans") == f"{testing['n_images']:,}"
    trained = [c.value for c in at.caption if c.value.startswith("Trained on ")]
    assert len(trained) == 1 and ("trained_at" not in card or trained[0] != "Trained on —.")

    assert set(_chart_titles(at)) == {"Loss", "Accuracy", "Macro F1", "Macro precision", "Macro recall"}  # the first tab only
    visit = _visit_all_tabs(at)
    for expected in ("Loss", "Accuracy", "Macro F1", "Confusion matrix (counts)", "ROC curves (one class vs the rest)",
                     "Precision-recall curves", "Reliability diagram"):
        assert expected in visit.titles

    comparison = _table(at, "Evaluation")
    assert list(comparison["Scans"]) == [r["n_images"] for r in evaluation["evaluations"].values()]
    per_class = _table(visit, "Support")
    assert list(per_class["Support"]) == [testing["per_class"][n]["support"] for n in testing["per_class"]]
    assert per_class["Recall (%)"].tolist() == pytest.approx(
        [100 * testing["per_class"][n]["recall"] for n in testing["per_class"]]
    )
    text = "\n".join(m.value for m in visit.markdown)
    assert "Single 2D slices" in text and "Not clinically validated" in text
    for rule in review_rules(card):  # the review flags' rules, as the card records them
        assert rule in text
    assert "metastases" in text.lower() or "Metastases" in text


def test_fixture_headline_values(fixture_assets, monkeypatch):
    at = _page(fixture_assets, monkeypatch)
    assert "Trained on 02 Jan 2025." in [c.value for c in at.caption]
    assert _metric(at, "Training wall time") == "1 h 12 min"  # 4321 s
    visit = _visit_all_tabs(at)
    assert "Expected calibration error" in [m.label for m in visit.metric]
    perturbed = _table(visit, "Condition")
    stored = json.loads((fixture_assets / EVALUATION_NAME).read_text())["testing_perturbed"]
    assert perturbed["Accuracy (%)"].tolist() == pytest.approx([100 * v for v in stored.values()])
    assert not _table(visit, "Finding").empty


def test_confusion_switch_and_evaluation_choice(fixture_assets, monkeypatch):
    at = _open_tab(_page(fixture_assets, monkeypatch), "Confusion matrix")
    assert "Confusion matrix (counts)" in _chart_titles(at)
    at.radio(key="cm_mode").set_value("Row-normalised").run()
    assert not at.exception
    assert "Confusion matrix (row-normalised)" in _chart_titles(at)

    evaluation = json.loads((fixture_assets / EVALUATION_NAME).read_text())
    leak_free = evaluation["evaluations"]["testing_leak_free"]
    chooser = at.selectbox(key="evaluation_choice")
    assert chooser.options[1].startswith(evaluation_title("testing_leak_free"))
    chooser.set_value("testing_leak_free").run()
    assert not at.exception
    per_class = _table(at, "Support")
    assert list(per_class["Support"]) == [leak_free["per_class"][n]["support"] for n in leak_free["per_class"]]
    # the headline stays the official Testing figure
    testing = evaluation["evaluations"]["testing"]
    assert _metric(at, "Accuracy (Testing)") == f"{100 * testing['accuracy']:.2f} %"


def test_single_evaluation_has_no_chooser(tmp_path, fixture_assets, monkeypatch):
    folder = _copy(fixture_assets, tmp_path / "one")
    evaluation = json.loads((folder / EVALUATION_NAME).read_text())
    evaluation["evaluations"] = {"testing": evaluation["evaluations"]["testing"]}
    del evaluation["testing_perturbed"]
    (folder / EVALUATION_NAME).write_text(json.dumps(evaluation))
    (folder / AUDIT_NAME).unlink()
    at = _page(folder, monkeypatch)
    assert not at.exception and not at.error
    assert not [s for s in at.selectbox if s.key == "evaluation_choice"]
    assert any("No robustness or audit results" in i.value for i in _visit_all_tabs(at).info)


@pytest.mark.parametrize(
    "name, content, message",
    [
        (EVALUATION_NAME, None, "evaluation.json was not found"),
        (EVALUATION_NAME, "{not json", "evaluation.json is not valid JSON"),
        (EVALUATION_NAME, "[1, 2]", "must hold a JSON object"),
        (EVALUATION_NAME, '{"evaluations": {}}', "'testing' report"),
        (EVALUATION_NAME, '{"evaluations": {"testing": {"n_images": 3}}}', "lacks 'accuracy'"),
        (HISTORY_NAME, None, "history.json was not found"),
        (HISTORY_NAME, '{"epochs": [{"train": 1}]}', "epoch entry 0"),
        (MODEL_CARD_NAME, "", "model_card.json is not valid JSON"),
    ],
)
def test_missing_or_malformed_file_gives_a_clear_message(tmp_path, fixture_assets, monkeypatch, name, content, message):
    folder = _copy(fixture_assets, tmp_path / "assets")
    if content is None:
        (folder / name).unlink()
    else:
        (folder / name).write_text(content)
    at = _page(folder, monkeypatch)
    assert not at.exception
    errors = [e.value for e in at.error]
    assert any(message in e and name in e for e in errors), errors
    if name != HISTORY_NAME:  # the other files still draw what they can
        assert "Loss" in _chart_titles(at)


def test_non_numeric_metric_gives_a_message(tmp_path, fixture_assets, monkeypatch):
    folder = _copy(fixture_assets, tmp_path / "assets")
    evaluation = json.loads((folder / EVALUATION_NAME).read_text())
    evaluation["evaluations"]["testing"]["accuracy"] = "high"
    (folder / EVALUATION_NAME).write_text(json.dumps(evaluation))
    at = _page(folder, monkeypatch)
    assert not at.exception
    assert any("non-numeric 'accuracy'" in e.value for e in at.error)


def test_no_artifacts_at_all(tmp_path, monkeypatch):
    at = _page(tmp_path, monkeypatch)
    assert not at.exception
    assert len(at.error) == 3
    assert any("python -m train" in i.value for i in at.info)


def test_unexpected_layout_deep_inside_never_shows_a_traceback(tmp_path, fixture_assets, monkeypatch):
    folder = _copy(fixture_assets, tmp_path / "assets")
    evaluation = json.loads((folder / EVALUATION_NAME).read_text())
    evaluation["evaluations"]["testing"]["roc"] = {"glioma": {"fpr": "x", "tpr": None, "auc": "?"}}
    evaluation["evaluations"]["testing"]["calibration"] = {"bins": [{"count": 3}]}
    evaluation["evaluations"]["testing"]["per_class"] = {"glioma": 5}
    (folder / EVALUATION_NAME).write_text(json.dumps(evaluation))
    at = _page(folder, monkeypatch)
    assert not at.exception
    _visit_all_tabs(at)  # every tab opens without an exception


def test_page_opened_without_the_main_script_keeps_the_banner(fixture_assets, monkeypatch):
    """Streamlit's legacy pages/ mode can run a page alone; the banner must still be there."""
    monkeypatch.setenv("BTMRI_ASSETS", str(fixture_assets))
    at = AppTest.from_file(str(Path(APP).parent / PAGE), default_timeout=TIMEOUT)
    at.run()
    assert not at.exception
    assert any("Research demonstration — not for diagnostic use" in w.value for w in at.warning)
    assert _metric(at, "Test scans") == "120"


def test_banner_is_drawn_once_per_page(fixture_assets, monkeypatch):
    at = _page(fixture_assets, monkeypatch)
    assert sum("Research demonstration" in w.value for w in at.warning) == 1


# ---------------------------------------------------------------------- reader
def test_load_artifacts_without_audit_is_fine(tmp_path, fixture_assets):
    folder = _copy(fixture_assets, tmp_path / "assets")
    (folder / AUDIT_NAME).unlink()
    artifacts = load_artifacts(folder)
    assert artifacts.problems == {} and artifacts.audit is None
    assert artifacts.testing["n_images"] == 120
    assert list(artifacts.evaluations) == ["testing", "testing_leak_free"]


def test_read_artifact_names_the_file(tmp_path):
    path = tmp_path / EVALUATION_NAME
    with pytest.raises(ArtifactError, match="evaluation.json was not found"):
        read_artifact(path)
    path.write_text('{"evaluations": {"testing": []}}')
    with pytest.raises(ArtifactError, match="'testing' must be an object"):
        read_artifact(path)


def test_calibration_views_before_and_after(fixture_assets):
    report = load_artifacts(fixture_assets).testing
    assert [label for label, _ in calibration_views(report)] == ["Calibration"]
    after = dict(report["calibration"], ece=0.01)
    labels = [label for label, _ in calibration_views({**report, "calibration_after": after})]
    assert labels == ["Before temperature scaling", "After temperature scaling"]
    labels = [label for label, _ in calibration_views({**report, "calibration_before": after})]
    assert labels == ["Before temperature scaling", "After temperature scaling"]
    assert calibration_views({}) == []


def test_comparison_rows_are_percentages(fixture_assets):
    evaluations = load_artifacts(fixture_assets).evaluations
    rows = comparison_rows(evaluations)
    assert [r["Scans"] for r in rows] == [e["n_images"] for e in evaluations.values()]
    assert rows[0]["Accuracy (%)"] == pytest.approx(100 * evaluations["testing"]["accuracy"])


# ---------------------------------------------------------------------- scans from other sources
def test_scans_from_other_sources_are_shown_beside_testing(fixture_assets, monkeypatch):
    from core.constants import EXTERNAL_NAME

    at = _page(fixture_assets, monkeypatch)
    assert not at.exception
    assert "Scans from other sources" in [h.value for h in at.subheader]
    table = _table(at, "Accuracy without flag (%)")
    stored = json.loads((fixture_assets / EXTERNAL_NAME).read_text())
    assert list(table["Scans"][:2]) == ["Official Testing split (Kaggle)", "Leak-free Testing subset (Kaggle)"]
    assert table["Accuracy (%)"][0] == f"{100 * stored['reference']['testing']['accuracy']:.1f} %"
    hospital = stored["sources"]["hospital"]["classes"]
    other = table[(table["Scans"] == "hospital") & (table["Classes"] == "other lesion types")]
    assert other["'No tumour', no flag (%)"].tolist() == [f"{100 * hospital['other']['other_notumor_unflagged']:.1f} %"]
    # A figure that does not apply is a dash, not "None": lesions of no class have no accuracy.
    assert other["Accuracy (%)"].tolist() == [EMPTY_CELL]
    assert "None" not in table.astype(str).to_numpy().ravel().tolist()
    glioma = table[(table["Scans"] == "hospital") & (table["Classes"] == "Glioma")]
    assert glioma["Accuracy without flag (%)"].tolist() == [f"{100 * hospital['glioma']['unflagged_accuracy']:.1f} %"]

    visit = _open_tab(at, "Other sources and shortcut")
    sequences = next(f.value for f in visit.dataframe if {"Sequence", "Scans"} <= set(f.value.columns))
    assert set(sequences["Sequence"]) == {"T1", "T2"}


def test_the_training_class_by_sequence_table_names_the_cells_the_rule_flags(fixture_assets, monkeypatch):
    """Every training scan counted once, and "barely covered" exactly where the rule says so."""
    from app.artifacts import SEQUENCE_TITLES
    from core.constants import CLASS_LABELS, MODEL_CARD_NAME
    from core.rules import SequenceCoverage

    at = _page(fixture_assets, monkeypatch)
    assert not at.exception
    assert "Where the model has never looked" in [h.value for h in at.subheader]
    card = json.loads((fixture_assets / MODEL_CARD_NAME).read_text())
    counts = card["sequence_table"]["counts"]
    table = _table(at, "Training scans")
    assert table["Training scans"].sum() == sum(sum(row.values()) for row in counts.values())
    coverage = SequenceCoverage.from_card(card)
    expected = {(CLASS_LABELS[c], SEQUENCE_TITLES[q]) for c in counts for q in counts[c] if c in coverage.uncovered(q)}
    barely = table[table["Barely covered"] != ""]
    assert set(zip(barely["Class"], barely["Sequence"])) == expected and expected


def test_page_says_when_no_external_evaluation_is_stored(tmp_path, fixture_assets, monkeypatch):
    folder = _copy(fixture_assets, tmp_path / "assets")
    (folder / "model.safetensors").write_bytes((fixture_assets / "model.safetensors").read_bytes())
    at = _page(folder, monkeypatch)
    assert not at.exception
    assert any("--external" in i.value for i in at.info)


def test_shortcut_audit_and_pointing_game_are_shown(tmp_path, fixture_assets, monkeypatch):
    from core.constants import EXTERNAL_NAME

    folder = _copy(fixture_assets, tmp_path / "assets")
    (folder / EXTERNAL_NAME).write_bytes((fixture_assets / EXTERNAL_NAME).read_bytes())
    audit = json.loads((folder / AUDIT_NAME).read_text())
    audit["shortcut"] = {
        "method": "test", "appearance_only": {"accuracy": 0.6, "chance": 0.3, "auc_no_tumour_vs_tumour": 0.9},
        "extra_source": {"name": "lgg", "auc_no_tumour_vs_tumour": 0.7},
        "clusters": {"k": 2, "one_class_share": 0.8, "one_class_fraction": 0.25,
                     "rows": [{"cluster": 0, "n_images": 10, "counts": {"glioma": 0, "meningioma": 0, "notumor": 10, "pituitary": 0},
                               "majority": "notumor", "majority_share": 1.0}]},
    }
    (folder / AUDIT_NAME).write_text(json.dumps(audit))
    evaluation = json.loads((folder / EVALUATION_NAME).read_text())
    evaluation["pointing_game"] = {"method": "pointing game", "patients": 3, "source": "lgg",
                                   "overall": {"n_images": 9, "hit_rate": 2 / 3, "random_hit_rate": 0.1},
                                   "sequences": {"flair": {"n_images": 9, "hit_rate": 2 / 3, "random_hit_rate": 0.1}}}
    (folder / EVALUATION_NAME).write_text(json.dumps(evaluation))
    at = _open_tab(_page(folder, monkeypatch), "Other sources and shortcut")
    assert _metric(at, "Class from appearance alone") == "60.0 %"
    assert _metric(at, "AUC, no tumour vs tumour") == "0.900"
    pointing = _table(at, "Hit rate (%)")
    assert pointing["Hit rate (%)"].tolist() == pytest.approx([100 * 2 / 3] * 2)
    assert _table(at, "Largest class (%)")["Scans"].tolist() == [10]


# ---------------------------------------------------------------------- architectures
def test_architecture_comparison_tab(fixture_assets, monkeypatch):
    from app.artifacts import architecture_points, architecture_rows, external_mean, shipped_reason
    from core.constants import COMPARISON_NAME

    stored = json.loads((fixture_assets / COMPARISON_NAME).read_text())
    shipped = json.loads((fixture_assets / "model_card.json").read_text())["arch"]
    at = _open_tab(_page(fixture_assets, monkeypatch), "Architectures")
    assert not at.exception
    table = _table(at, "predict p50 (ms)")
    assert len(table) == len(stored["architectures"])
    assert list(table["Architecture"]) == [r["Architecture"] for r in architecture_rows(stored, shipped)]
    assert [a for a in table["Architecture"] if a.endswith("(shipped)")] == ["EfficientNet-Lite0 (shipped)"]
    vgg = stored["architectures"][2]
    assert "reduced: " + vgg["schedule"]["reduced"] in table["Training"][2]  # any reduction is stated
    assert table["Testing (%)"][1] == pytest.approx(100 * stored["architectures"][1]["testing"]["accuracy"])
    assert table["Other sources, mean (%)"][0] == pytest.approx(100 * external_mean(stored["architectures"][0]))
    assert any(t.startswith("Accuracy against latency") for t in _chart_titles(at))
    chart = next(c for c in at.get("plotly_chart") if "Accuracy against latency" in c.proto.spec)
    traces = json.loads(chart.proto.spec)["data"]
    assert sum(len(trace["x"]) for trace in traces) == len(architecture_points(stored)) == 3 * len(stored["architectures"])
    # the log latency axis is labelled in 1-1.5-2-3-5-7 steps over every point, not at powers of ten only
    ticks = json.loads(chart.proto.spec)["layout"]["xaxis"]["tickvals"]
    latencies = [x for trace in traces for x in trace["x"]]
    assert ticks[0] <= min(latencies) and ticks[-1] >= max(latencies)
    assert all(round(t / 10 ** math.floor(math.log10(t)), 6) in (1, 1.5, 2, 3, 5, 7) for t in ticks)
    assert any(shipped_reason(stored, shipped) in m.value for m in at.markdown)


def test_shipped_reason_names_the_best_of_each_kind():
    from app.artifacts import shipped_reason
    from tests.app_assets import synthetic_comparison

    comparison = synthetic_comparison(seed=3)
    entries = comparison["architectures"]
    for entry, accuracy in zip(entries, (0.9, 0.8, 0.7)):
        entry["testing"]["accuracy"] = accuracy
    text = shipped_reason(comparison, "efficientnet_lite0")
    assert text.startswith("EfficientNet-Lite0 is shipped.")
    assert "official Testing split: Small CNN (90.0 %)" in text
    assert shipped_reason(comparison, "resnet50") is None


def test_page_says_when_no_comparison_is_stored(tmp_path, fixture_assets, monkeypatch):
    from core.constants import COMPARISON_NAME

    folder = _copy(fixture_assets, tmp_path / "assets")
    assert not (folder / COMPARISON_NAME).exists()
    at = _open_tab(_page(folder, monkeypatch), "Architectures")
    assert not at.exception
    assert any("python -m train.compare" in i.value for i in at.info)


def test_review_rules_read_the_card():
    fit = {"precision_above_floor": 0.988}
    cosine = review_rules({"uncertainty": {"low_confidence_below": 0.65, "notumor_cosine_below": 0.993, "notumor_fit": fit}})
    assert len(cosine) == 2 and "under 65 %" in cosine[0]
    assert "answer cosine is under 0.993" in cosine[1] and "98.8 % of the unflagged ones right" in cosine[1]
    no_floor = review_rules({"uncertainty": {"low_confidence_below": 0.7}})
    assert len(no_floor) == 1 and "under 70 %" in no_floor[0]
    assert review_rules({}) == [] and review_rules({"uncertainty": "garbled"}) == []


def test_series_rows_give_one_row_per_source_and_class():
    from app.artifacts import series_rows

    report = {"classes": {"tiantan/pituitary": {"series": 12, "accuracy": 0.5, "flagged": 0.25, "unflagged_accuracy": 0.6,
                                                "seconds_per_series": 0.24},
                          "vsseg/other": {"series": 1, "flagged": 1.0, "other_notumor_unflagged": 0.0}}}
    rows = series_rows(report)
    assert [r["Class"] for r in rows] == ["Pituitary tumour", "other lesion types"]
    assert rows[0]["N"] == 12 and rows[0]["Accuracy (%)"] == pytest.approx(50.0) and rows[0]["Seconds per series"] == 0.24
    assert rows[1]["Accuracy (%)"] is None and rows[1]["'No tumour', no flag (%)"] == 0.0


def test_recogniser_text_states_its_figures_from_the_card_and_the_external_report():
    from app.artifacts import recogniser_text

    card = {"sequence": {"validation": {"accuracy": 0.9123}}}
    external = {"sources": {"radiopaedia": {"recogniser": {"t2_vs_t1_weighted": 0.7, "n_t2_vs_t1_weighted": 40}},
                            "oasis": {"recogniser": None}}}
    text = recogniser_text(card, external)
    assert "91.2 % right on its validation scans" in text
    assert "70.0 % of 40 Radiopaedia slices" in text and "oasis" not in text.lower()
    assert recogniser_text({}, external) is None
