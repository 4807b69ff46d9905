"""core.__main__ (``python -m core``): files and folders searched recursively, read by
data-loader workers, one record per scan in the result schema (core.results)."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from core import CLASS_NAMES, ScanError, read_scan
from core.__main__ import cli, find_scans, get_args_parser
from core.model import Classifier
from core.results import result_record

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
