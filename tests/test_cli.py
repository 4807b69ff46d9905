"""core.__main__ (``python -m core``): files and folders searched recursively, read by
data-loader workers, one record per scan in the result schema (core.results); with ``--series``,
one record per series of each path, and its slices' records with ``--slices``."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from core import CLASS_NAMES, ScanError, SeriesError, read_scan, read_series
from core.__main__ import cli, find_scans, get_args_parser
from core.model import Classifier
from core.results import SERIES_CSV_COLUMNS, result_record, series_record, slice_records
from series_factory import SECRETS, nifti_bytes, phantom, series_bytes

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture()
def scan_tree(tmp_path, data_root) -> dict[str, object]:
    """A folder tree of real scans (nested, one upper-case extension), a bad scan and a non-scan."""
    root = tmp_path / "scans"
    (root / "a" / "deeper").mkdir(parents=True)
    (root / "b").mkdir()
    good = []
    for i, name in enumerate(CLASS_NAMES):
        for j, source in enumerate(sorted((data_root / "Testing" / name).glob("*.jpg"))[:2]):
            folder = root / ("a" if i % 2 else "a/deeper") if j == 0 else root / "b"
            target = folder / (f"{name}_{j}.JPG" if (i, j) == (0, 1) else f"{name}_{j}.jpg")
            shutil.copyfile(source, target)
            good.append(target)
    bad = root / "b" / "broken.png"
    bad.write_bytes(b"this is not an image, only text that pretends to be one\n")
    (root / "b" / "notes.txt").write_text("not a scan")
    return {"root": root, "good": good, "bad": bad}


@pytest.fixture()
def loaded(monkeypatch, tiny_model) -> list[dict]:
    """``load_model`` replaced by one that records what main asks for and gives the tiny model
    (a Classifier with tta when asked): main runs in this process without loading weights again.
    The test in a process of its own loads them for real."""
    calls: list[dict] = []

    def load_model(weights=None, device=None, tta=False, threads=None):
        calls.append({"weights": weights, "device": device, "tta": tta})
        return Classifier(tiny_model.network, tiny_model.card, tta=True) if tta else tiny_model

    monkeypatch.setattr("core.model.load_model", load_model)
    return calls


def test_find_scans_recursive(scan_tree):
    root = scan_tree["root"]
    found = find_scans([str(root)])
    expected = sorted([*scan_tree["good"], scan_tree["bad"]], key=lambda p: p.as_posix())
    assert found == [str(p) for p in expected]
    assert not any(f.endswith("notes.txt") for f in found)
    # explicit files are kept as given, in order, whatever their extension
    assert find_scans([str(root / "b" / "notes.txt"), str(root / "a")])[0] == str(root / "b" / "notes.txt")


@pytest.mark.slow
def test_folder_jsonl_with_workers(scan_tree, tiny_weights, tiny_model):
    """``python -m core`` in its own process: workers read in parallel; results equal predict;
    the bad file is reported; exit status 1."""
    root = scan_tree["root"]
    cmd = [sys.executable, "-m", "core", str(root), "--weights", str(tiny_weights), "--device", "cpu",
           "--workers", "2", "--batch-size", "3"]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert done.returncode == 1, done.stderr
    records = [json.loads(line) for line in done.stdout.splitlines()]
    assert [r["file"] for r in records] == find_scans([str(root)])
    assert "scan" in done.stderr  # the progress bar
    by_file = {r["file"]: r for r in records}
    bad = by_file[str(scan_tree["bad"])]
    with pytest.raises(ScanError) as info:
        read_scan(scan_tree["bad"])
    assert bad == result_record(str(scan_tree["bad"]), error=str(info.value))
    for path in scan_tree["good"]:
        record = by_file[str(path)]
        assert set(record) == set(bad)  # the one result schema
        expected = tiny_model.predict(read_scan(path))
        assert record["label"] == expected.label and record["flag_kinds"] == list(expected.flag_kinds)
        for name in CLASS_NAMES:
            assert record["probabilities"][name] == pytest.approx(expected.probabilities[name], abs=1e-4)


def test_csv_output_file(scan_tree, tiny_weights, loaded, tmp_path, capsys):
    out = tmp_path / "results.csv"
    status = cli([str(scan_tree["root"]), "--weights", str(tiny_weights), "--device", "cpu",
                  "--workers", "0", "--batch-size", "4", "--format", "csv", "--output", str(out), "--no-progress"])
    assert status == 1 and loaded == [{"weights": str(tiny_weights), "device": "cpu", "tta": False}]
    assert capsys.readouterr().out == ""  # everything went to the file
    with out.open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(scan_tree["good"]) + 1
    assert {"file", "label", "confidence", "error", *(f"p_{n}" for n in CLASS_NAMES)} <= set(rows[0])
    errors = [r for r in rows if r["error"]]
    assert [r["file"] for r in errors] == [str(scan_tree["bad"])] and errors[0]["label"] == ""
    for row in rows:
        if not row["error"]:
            assert row["label"] in CLASS_NAMES
            assert sum(float(row[f"p_{n}"]) for n in CLASS_NAMES) == pytest.approx(1.0, abs=1e-5)


def test_all_readable_exit_zero(scan_tree, tiny_weights, tiny_model, loaded, capsys):
    good = [str(p) for p in scan_tree["good"][:3]]
    assert cli([*good, "--weights", str(tiny_weights), "--device", "cpu", "--workers", "0", "--no-progress"]) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["file"] for r in records] == good
    for path, record in zip(good, records):
        expected = result_record(path, tiny_model.predict(read_scan(path)))
        assert set(record) == set(expected) and record["status"] in ("ok", "outside_training")
        assert record["label"] == expected["label"] and record["flags"] == expected["flags"]


def test_tta_option(scan_tree, tiny_weights, tiny_model, loaded, capsys):
    """--tta: each scan averaged with its mirror image, as load_model(tta=True) predicts."""
    good = [str(p) for p in scan_tree["good"][:2]]
    assert cli([*good, "--weights", str(tiny_weights), "--device", "cpu", "--workers", "0", "--no-progress", "--tta"]) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [call["tta"] for call in loaded] == [True]
    with_tta = Classifier(tiny_model.network, tiny_model.card, tta=True)
    for path, record in zip(good, records):
        expected = with_tta.predict(read_scan(path))
        assert record["flag_kinds"] == list(expected.flag_kinds)
        for name in CLASS_NAMES:
            assert record["probabilities"][name] == pytest.approx(expected.probabilities[name], abs=1e-4)


@pytest.mark.parametrize(
    "argv, words",
    [
        (["--format", "xml"], "'xml'"),
        (["--batch-size", "0"], "--batch-size"),
        (["--workers", "-1"], "--workers"),
    ],
)
def test_bad_options(argv, words, scan_tree):
    with pytest.raises(SystemExit, match=words):
        cli([str(scan_tree["root"]), *argv])


@pytest.mark.parametrize("option", ["--precision", "--mirror-check"])
def test_options_of_removed_serving_paths_are_refused(option, capsys):
    """Predictions are served in float32 only, and the mirror image is run with --tta only."""
    assert option not in get_args_parser().format_help()
    with pytest.raises(SystemExit):
        get_args_parser().parse_args(["scan.jpg", option])
    assert f"unrecognized arguments: {option}" in capsys.readouterr().err


def test_empty_folder(tmp_path, capsys):
    with pytest.raises(SystemExit, match="No scans"):
        cli([str(tmp_path), "--no-progress"])
    assert "no scans" in capsys.readouterr().err


# ---------------------------------------------------------------------- --series
TIANTAN = ROOT.parent / "shared" / "datasets" / "external-dev-series" / "tiantan" / "pituitary" / "tiantan_1.nii.gz"
SERIES_KEYS = set(series_record(None, "x", error="e"))


@pytest.fixture()
def series_inputs(tmp_path) -> dict[str, Path]:
    """A DICOM folder holding two generated series (with patient tags), a NIfTI volume, a
    damaged NIfTI file and a path that does not exist."""
    study = tmp_path / "study"
    study.mkdir()
    flair = series_bytes(phantom(8), uid="1.2.3.1", number=4, description="AX FLAIR")
    t2 = series_bytes(phantom(6, seed=1), uid="1.2.3.2", number=2, description="t2_tse_tra")
    for index, blob in enumerate(flair + t2):
        (study / f"IM{index:04d}.dcm").write_bytes(blob)
    volume = tmp_path / "sub-01_t1.nii.gz"
    volume.write_bytes(nifti_bytes(phantom(5, seed=2).transpose(2, 1, 0).copy(), np.diag([0.9, 0.9, 3.0, 1.0])))
    bad = tmp_path / "bad.nii.gz"
    bad.write_bytes(b"garbage" * 20)
    return {"study": study, "volume": volume, "bad": bad, "missing": tmp_path / "nowhere"}


def _series_cli(*argv: str, weights: Path) -> int:
    return cli(["--series", *argv, "--weights", str(weights), "--device", "cpu", "--no-progress"])


def _lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines()]


def test_series_jsonl_one_record_per_series(series_inputs, tiny_weights, tiny_model, loaded, capsys):
    """Each path read on its own: the folder's two series both name the folder as their source;
    the records equal series_record of predict_series on read_series's series; no patient tag."""
    study, volume = str(series_inputs["study"]), str(series_inputs["volume"])
    assert _series_cli(study, volume, weights=tiny_weights) == 0
    out = capsys.readouterr().out
    records = _lines(out)
    assert [r["series"] for r in records] == ["Series 2: t2_tse_tra", "Series 4: AX FLAIR", "sub-01_t1"]
    assert [r["source"] for r in records] == [study, study, volume]
    assert all(set(r) == SERIES_KEYS and r["error"] is None for r in records)
    expected = [series_record(tiny_model.predict_series(s), path) for path in (study, volume) for s in read_series([path])]
    assert records == expected
    assert [(r["n_slices"], r["sequence"]) for r in records] == [(6, "T2"), (8, "FLAIR"), (5, "T1")]
    assert not any(secret in out for secret in SECRETS)
    assert loaded == [{"weights": str(tiny_weights), "device": "cpu", "tta": False}]


def test_series_slices_follow_their_series(series_inputs, tiny_weights, tiny_model, loaded, capsys):
    study = str(series_inputs["study"])
    assert _series_cli(study, "--slices", weights=tiny_weights) == 0
    records = _lines(capsys.readouterr().out)
    heads = [i for i, r in enumerate(records) if "slice" not in r]
    assert heads == [0, 7] and len(records) == 2 + 6 + 8
    for head, series in zip(heads, read_series([study])):
        rows = records[head + 1 : head + 1 + records[head]["n_slices"]]
        assert [r["slice"] for r in rows] == list(range(len(series)))
        assert rows == slice_records(tiny_model.predict_series(series), study)
        assert [r["position_mm"] for r in rows] == pytest.approx(series.positions_mm)
        for row in rows:
            assert {"series", "source", "slice", "position_mm", "assessed", "status", "label", "confidence", "flags",
                    "flag_kinds", "outside_training", "ood_score", "probabilities"} <= set(row)
            assert row["series"] == series.name and row["source"] == study


def test_series_csv_with_an_unreadable_input(series_inputs, tiny_weights, loaded, tmp_path, capsys):
    out = tmp_path / "series.csv"
    inputs = [str(series_inputs[k]) for k in ("bad", "study", "missing", "volume")]
    status = _series_cli(*inputs, "--slices", "--format", "csv", "--output", str(out), weights=tiny_weights)
    assert status == 1 and capsys.readouterr().out == ""  # the run went on, and everything went to the file
    with out.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
    assert tuple(reader.fieldnames) == SERIES_CSV_COLUMNS
    series_rows = [r for r in rows if r["row"] == "series"]
    assert [r["source"] for r in series_rows] == [inputs[0], inputs[1], inputs[1], inputs[2], inputs[3]]
    assert [r["row"] for r in rows] == ["series", "series", *["slice"] * 6, "series", *["slice"] * 8, "series",
                                         "series", *["slice"] * 5]
    bad, missing = series_rows[0], series_rows[3]
    assert "NIfTI file is damaged" in bad["error"] and "No file or folder found" in missing["error"]
    assert bad["series"] == bad["label"] == bad["n_slices"] == ""
    for row in rows:
        if row["row"] == "slice":
            assert row["label"] == "" or row["label"] in CLASS_NAMES
            assert sum(float(row[f"p_{n}"]) for n in CLASS_NAMES) == pytest.approx(1.0, abs=1e-5)
        elif not row["error"]:
            assert row["label"] in CLASS_NAMES and row["key_slices"] and not row["p_glioma"]


def test_series_error_records_exit_one(series_inputs, tiny_weights, loaded, capsys):
    bad, missing = str(series_inputs["bad"]), str(series_inputs["missing"])
    assert _series_cli(bad, missing, str(series_inputs["volume"]), weights=tiny_weights) == 1
    first, second, third = _lines(capsys.readouterr().out)
    with pytest.raises(SeriesError) as info:
        read_series([bad])
    assert first == series_record(None, bad, error=str(info.value))
    assert second["source"] == missing and second["error"] == f"No file or folder found at {missing!r}."
    assert third["series"] == "sub-01_t1" and third["error"] is None


def test_series_plane_cuts_an_isotropic_volume(tmp_path, tiny_weights, loaded, capsys):
    path = tmp_path / "iso.nii.gz"
    path.write_bytes(nifti_bytes(phantom(40, 34, 36).transpose(2, 1, 0).copy(), np.eye(4)))
    assert _series_cli(str(path), "--plane", "coronal", weights=tiny_weights) == 0
    [record] = _lines(capsys.readouterr().out)
    assert (record["plane"], record["n_slices"]) == ("coronal", 34)


@pytest.mark.parametrize(
    "argv, words",
    [
        (["--series", "--plane", "oblique"], r"--plane 'oblique' is not one of \('axial', 'coronal', 'sagittal'\)"),
        (["--slices"], "--slices applies to whole series only: add --series"),
        (["--plane", "axial"], "--plane applies to whole series only"),
        (["--series", "--format", "xls"], "--format 'xls' is not one of"),
    ],
)
def test_bad_series_options(argv, words, tmp_path):
    with pytest.raises(SystemExit, match=words):
        cli([str(tmp_path), *argv])


def test_help_lists_the_series_options():
    text = get_args_parser().format_help()
    assert "whole series" in text and all(option in text for option in ("--series", "--slices", "--plane"))
    assert "axial" in text and "coronal" in text and "sagittal" in text


@pytest.mark.slow
@pytest.mark.skipif(not TIANTAN.is_file(), reason=f"{TIANTAN} not found")
def test_series_in_its_own_process_with_the_shipped_model():
    """``python -m core --series`` as a user runs it: the shipped model, the progress bar."""
    cmd = [sys.executable, "-m", "core", "--series", str(TIANTAN), "--slices", "--device", "cpu"]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert done.returncode == 0, done.stderr
    head, *rows = _lines(done.stdout)
    assert set(head) == SERIES_KEYS and head["series"] == "tiantan_1" and head["source"] == str(TIANTAN)
    assert head["label"] in CLASS_NAMES and len(rows) == head["n_slices"] > 0
    assert "slice" in done.stderr  # the progress bar


# ---------------------------------------------------------------------- --sequence
@pytest.fixture()
def with_table(monkeypatch, tiny_model):
    """``load_model`` giving the tiny model with a class x sequence table where only gliomas were
    learned on T2 (so any answer on T2 but glioma is flagged sequence_not_learned)."""
    import copy
    import dataclasses

    from core.rules import SequenceCoverage

    table = {"glioma": {"T1C": 10, "T2": 10}, "meningioma": {"T1C": 10}, "notumor": {"T1C": 10}, "pituitary": {"T1C": 10}}
    model = copy.copy(tiny_model)
    model.rules = dataclasses.replace(tiny_model.rules, coverage=SequenceCoverage(table, 0.05))
    monkeypatch.setattr("core.model.load_model", lambda *a, **k: model)
    return model


def test_sequence_option_sets_every_scan_and_raises_the_review_state(scan_tree, tiny_weights, with_table, capsys):
    from core.sequence import user_sequence

    good = [str(p) for p in scan_tree["good"][:3]]
    assert cli([*good, "--sequence", "t2", "--workers", "0", "--no-progress", "--format", "csv"]) == 0
    rows = list(csv.DictReader(capsys.readouterr().out.splitlines()))
    for path, row in zip(good, rows):
        expected = with_table.predict_batch([read_scan(path)], sequences=[user_sequence("T2")])[0]
        assert (row["sequence"], row["sequence_source"]) == ("T2", "user")
        assert row["flag_kinds"].split() == list(expected.flag_kinds)
        assert ("sequence_not_learned" in row["flag_kinds"]) == (expected.label != "glioma")
    assert any("sequence_not_learned" in row["flag_kinds"] for row in rows)


def test_sequence_option_applies_to_a_whole_series(series_inputs, tiny_weights, with_table, capsys):
    from core.sequence import user_sequence

    volume = str(series_inputs["volume"])
    assert _series_cli(volume, "--sequence", "FLAIR", weights=tiny_weights) == 0
    record = _lines(capsys.readouterr().out)[0]
    expected = series_record(with_table.predict_series(read_series([volume])[0], sequence=user_sequence("FLAIR")), volume)
    assert (record["sequence"], record["sequence_source"]) == ("FLAIR", "user") and record == expected


def test_an_unknown_sequence_is_refused_with_the_choices(scan_tree):
    with pytest.raises(SystemExit, match=r"--sequence: Unknown sequence 'T5'; choose one of \['T1', 'T1C', 'T1w', 'T2'"):
        cli([str(scan_tree["root"]), "--sequence", "T5"])
