"""``python -m core FOLDER``: recursive batch inference with data-loader workers (issue 9)."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from core import CLASS_NAMES, ScanError, read_scan
from core.__main__ import cli, find_scans
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


def test_find_scans_recursive(scan_tree):
    root = scan_tree["root"]
    found = find_scans([str(root)])
    expected = sorted([*scan_tree["good"], scan_tree["bad"]], key=lambda p: p.as_posix())
    assert found == [str(p) for p in expected]
    assert not any(f.endswith("notes.txt") for f in found)
    # explicit files are kept as given, in order, whatever their extension
    assert find_scans([str(root / "b" / "notes.txt"), str(root / "a")])[0] == str(root / "b" / "notes.txt")


def test_folder_jsonl_with_workers(scan_tree, tiny_weights, tiny_model):
    """Workers read in parallel; results equal predict; the bad file is reported; exit status 1."""
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
        assert {"file", "label", "confidence", "probabilities"} <= set(record)
        expected = tiny_model.predict(read_scan(path))
        assert record["label"] == expected.label
        for name in CLASS_NAMES:
            assert record["probabilities"][name] == pytest.approx(expected.probabilities[name], abs=1e-4)


def test_csv_output_file(scan_tree, tiny_weights, tmp_path, capsys):
    out = tmp_path / "results.csv"
    status = cli([str(scan_tree["root"]), "--weights", str(tiny_weights), "--device", "cpu",
                  "--workers", "0", "--batch-size", "4", "--format", "csv", "--output", str(out), "--no-progress"])
    assert status == 1
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


def test_all_readable_exit_zero(scan_tree, tiny_weights, capsys):
    good = [str(p) for p in scan_tree["good"][:3]]
    assert cli([*good, "--weights", str(tiny_weights), "--device", "cpu", "--workers", "0", "--no-progress"]) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["file"] for r in records] == good


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


def test_empty_folder(tmp_path, capsys):
    with pytest.raises(SystemExit, match="No scans"):
        cli([str(tmp_path), "--no-progress"])
    assert "no scans" in capsys.readouterr().err
