"""train.external: the report on scans from other sources (SOURCE/CLASS/FILE)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from synthetic import make_external_folder
from train.external import build_report, evaluate_external, find_external, sequence_of, summarise

@pytest.fixture(scope="module")
def external_folder(tmp_path_factory) -> Path:
    return make_external_folder(tmp_path_factory.mktemp("external"))


def test_sequence_is_read_from_file_names():
    assert sequence_of("oligodendroglioma_T1C_00799ac669.jpeg") == "T1C"
    assert sequence_of("schwannoma_T2_abc.jpg") == "T2"
    assert sequence_of("TCGA_CS_4941_19960909_11_flair.jpg") == "FLAIR"
    assert sequence_of("pmram_glioma_100.jpg") is None


def test_find_external_reads_source_class_file(external_folder):
    scans = find_external(external_folder)
    assert len(scans) == 7  # the .txt is not a scan
    assert {s.source for s in scans} == {"hospital_a", "hospital_b"}
    assert {s.label for s in scans} == {"glioma", "other", "notumor"}


def test_find_external_names_a_bad_class_folder(tmp_path):
    (tmp_path / "src" / "tumour").mkdir(parents=True)
    with pytest.raises(ValueError, match="'tumour'.*accepted names"):
        find_external(tmp_path)


def test_external_evaluation_on_a_generated_folder(external_folder, tiny_model):
    scans = find_external(external_folder)
    report = evaluate_external(tiny_model, scans, root=external_folder, batch_size=4)
    predictions = tiny_model.predict_batch([Image.open(s.path) for s in scans])
    assert report["n_images"] == 7 and report["unreadable"] == []
    a = report["sources"]["hospital_a"]
    assert a["n_images"] == 5 and a["n_labelled"] == 3 and a["n_other"] == 2
    assert set(a["sequences"]) == {"T1", "T2", "T1C"}
    assert a["class_sequences"]["glioma/T2"]["n_images"] == 2
    # The figures agree with predict, scan by scan.
    glioma = [p for s, p in zip(scans, predictions) if s.label == "glioma"]
    assert a["classes"]["glioma"]["accuracy"] == pytest.approx(np.mean([p.label == "glioma" for p in glioma]))
    other = [p for s, p in zip(scans, predictions) if s.label == "other"]
    assert a["other_notumor_unflagged"] == pytest.approx(np.mean([p.label == "notumor" and not p.flags for p in other]))
    b = report["sources"]["hospital_b"]
    assert b["rejected"] == pytest.approx(np.mean([not p.is_brain_mri for s, p in zip(scans, predictions) if s.source == "hospital_b"]))
    json.dumps(report)  # stored as JSON


def test_summarise_counts_flags_and_unflagged_accuracy():
    def rec(label, predicted, flagged=False, rejected=False, outside=False):
        return {"source": "s", "label": label, "sequence": None, "predicted": predicted,
                "rejected": rejected, "outside_training": outside, "flagged": flagged or rejected or outside}

    records = [rec("glioma", "glioma"), rec("glioma", "notumor", flagged=True), rec("glioma", "notumor"),
               rec("glioma", "glioma", rejected=True), rec("other", "notumor"), rec("other", "notumor", outside=True)]
    out = summarise(records)
    assert out["accuracy"] == pytest.approx(2 / 4)
    assert out["unflagged_accuracy"] == pytest.approx(1 / 2)  # two glioma scans without a flag, one right
    assert out["rejected"] == pytest.approx(1 / 6) and out["outside_training"] == pytest.approx(1 / 6)
    assert out["other_notumor_unflagged"] == pytest.approx(1 / 2)
    assert out["predicted"] == {"notumor": 4, "glioma": 2}


def test_build_report_keeps_the_leak_free_subset(tmp_path):
    paths = [tmp_path / f"{i}.jpg" for i in range(4)]
    reference = [{"source": "testing", "label": "glioma", "sequence": None, "predicted": p, "rejected": False,
                  "outside_training": False, "flagged": False, "path": path}
                 for path, p in zip(paths, ["glioma", "glioma", "notumor", "notumor"])]
    report = build_report([], reference, leak_free=paths[2:])
    assert report["reference"]["testing"]["accuracy"] == pytest.approx(0.5)
    assert report["reference"]["testing_leak_free"]["accuracy"] == pytest.approx(0.0)

