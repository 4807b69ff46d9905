"""Scans from other sources: the external evaluation, extra training sources split by patient,
the external set kept out of training, the shortcut audit, the gate's two thresholds and the
pointing game."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from core.constants import CLASS_NAMES, external_dir
from core.ood import FeatureGate
from train.data import Sample, check_not_external, find_extra_samples, patient_split
from train.external import build_report, evaluate_external, find_external, sequence_of, summarise


def _scan(seed: int, size: int = 96, bright_centre: bool = False) -> Image.Image:
    """A grey head-like disc with some texture (a synthetic scan)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    r = np.sqrt((yy - size / 2) ** 2 + (xx - size / 2) ** 2) / (size / 2.4)
    grey = np.where(r < 1, 90 + 40 * r, 0) + rng.normal(0, 8, (size, size))
    if bright_centre:
        grey = np.where(r < 0.4, 230, grey)
    return Image.fromarray(np.clip(grey, 0, 255).astype(np.uint8), mode="L")


# ---------------------------------------------------------------------- external evaluation
@pytest.fixture(scope="module")
def external_folder(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("external")
    layout = {
        ("hospital_a", "glioma"): ["a_T1_1.jpg", "a_T2_2.jpg", "a_T2_3.png"],
        ("hospital_a", "other"): ["schwannoma_T1C_1.jpg", "schwannoma_T2_2.jpg"],
        ("hospital_b", "notumor"): ["b_1.jpg", "b_2.jpg"],
    }
    seed = 0
    for (source, label), names in layout.items():
        folder = root / source / label
        folder.mkdir(parents=True)
        for name in names:
            seed += 1
            _scan(seed).save(folder / name)
    (root / "hospital_b" / "notumor" / "notes.txt").write_text("not a scan")
    return root


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



def test_leak_free_mask_matches_the_audit_names_inside_the_kaggle_folder(tmp_path):
    from train.evaluate import leak_free_mask

    root = tmp_path / "kaggle"
    paths = [root / "Testing" / "glioma" / "a.jpg", root / "Testing" / "glioma" / "b.jpg",
             root / "Training" / "glioma" / "a.jpg", tmp_path / "elsewhere" / "Testing" / "glioma" / "a.jpg"]
    names = {"Testing/glioma/a.jpg", "Training/glioma/a.jpg"}
    assert leak_free_mask(paths, root, names).tolist() == [True, False, True, False]
    assert leak_free_mask(paths, root, None).tolist() == [False] * 4

def test_cli_evaluates_an_external_folder(external_folder, tiny_weights, tmp_path, capsys):
    from train.evaluate import get_args_parser, main

    out = tmp_path / "external.json"
    main(get_args_parser().parse_args(["--external", str(external_folder), "--weights", str(tiny_weights),
                                       "--data-dir", str(tmp_path / "none"), "--output", str(out)]))
    stored = json.loads(out.read_text())
    assert stored["n_images"] == 7 and "hospital_a" in stored["sources"]
    assert "reference" not in stored  # no Testing folder given


# ---------------------------------------------------------------------- extra sources
@pytest.fixture
def extra_source(tmp_path) -> Path:
    root = tmp_path / "lgg"
    (root / "glioma").mkdir(parents=True)
    (root / "notumor-slices").mkdir()
    rows, free = [], []
    for patient in range(10):
        for slice_ in range(3):
            for sequence in ("flair", "t1pre"):
                name = f"P{patient}_{slice_}_{sequence}.jpg"
                _scan(patient * 10 + slice_).save(root / "glioma" / name)
                rows.append((f"glioma/{name}", f"P{patient}", sequence))
                _scan(500 + patient).save(root / "notumor-slices" / name)
                free.append((f"notumor-slices/{name}", f"P{patient}", sequence))
    for file, data in (("manifest.csv", rows), ("notumor-slices.csv", free)):
        with (root / file).open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["path", "patient", "sequence"])
            writer.writerows(data)
    return root


def test_extra_source_classes_come_from_folders(extra_source):
    samples = find_extra_samples(extra_source)
    assert len(samples) == 120
    labels = {s.path.parent.name: s.class_name for s in samples}
    assert labels == {"glioma": "glioma", "notumor-slices": "notumor"}
    assert {s.source for s in samples} == {"lgg"} and {s.sequence for s in samples} == {"flair", "t1pre"}


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_patient_split_keeps_every_patient_on_one_side(extra_source, seed):
    train, val = patient_split(find_extra_samples(extra_source), 0.2, seed)
    assert train and val
    assert not {s.patient for s in train} & {s.patient for s in val}
    assert len(train) + len(val) == 120


def test_extra_source_without_manifest_is_refused(tmp_path):
    (tmp_path / "glioma").mkdir()
    with pytest.raises(FileNotFoundError, match="CSV manifests"):
        find_extra_samples(tmp_path)


def test_external_scans_are_refused_as_training_data(tmp_path):
    inside = Sample(tmp_path / "external" / "src" / "glioma" / "a.jpg", 0)
    check_not_external([Sample(tmp_path / "train" / "a.jpg", 0)], tmp_path / "external")
    with pytest.raises(ValueError, match="must never be trained on"):
        check_not_external([inside], tmp_path / "external")


@pytest.mark.slow
def test_no_external_dev_file_among_the_training_inputs(data_root):
    """The default recipe's inputs, extra source included, hold no file of the external set,
    by path or by content."""
    import hashlib

    from core.constants import extra_dir
    from train.config import TrainConfig
    from train.splits import load_data
    from train.train import get_args_parser

    extra = extra_dir()
    argv = ["--data-dir", str(data_root), "--max-per-class", "40"] + (["--extra-data", str(extra)] if extra.is_dir() else [])
    train, val, _ = load_data(TrainConfig.from_namespace(get_args_parser().parse_args(argv)))
    external = external_dir()
    if not external.is_dir():
        pytest.skip(f"external set not found at {external}")
    base = external.resolve()
    assert not [s for s in train + val if s.path.resolve().is_relative_to(base)]
    external_hashes = {hashlib.sha256(p.read_bytes()).hexdigest() for p in base.rglob("*") if p.is_file() and p.suffix != ".csv"}
    assert not [s for s in train + val if hashlib.sha256(s.path.read_bytes()).hexdigest() in external_hashes]


# ---------------------------------------------------------------------- shortcut audit
def test_appearance_numbers_are_finite_and_scale_free():
    from train.shortcut import FEATURE_NAMES, appearance

    image = _scan(3)
    values = appearance(image)
    assert values.shape == (len(FEATURE_NAMES),) and np.isfinite(values).all()
    darker = Image.eval(image, lambda v: v // 2)
    np.testing.assert_allclose(appearance(darker)[:8], values[:8], atol=0.05)  # profile after scaling


def test_shortcut_audit_finds_appearance_that_predicts_the_class(tmp_path):
    from train.shortcut import shortcut_audit

    paths, labels = [], []
    for i in range(80):
        label = 2 if i % 2 else 0  # "no tumour" scans look different (bright centre)
        path = tmp_path / f"{i}.png"
        _scan(i, bright_centre=label == 2).save(path)
        paths.append(path)
        labels.append(label)
    report = shortcut_audit(paths, labels, list(range(80)), clusters=2)
    assert report["appearance_only"]["accuracy"] > 0.9
    assert report["appearance_only"]["auc_no_tumour_vs_tumour"] > 0.9
    assert report["clusters"]["one_class_fraction"] > 0.9
    assert sum(r["n_images"] for r in report["clusters"]["rows"]) == 80


def test_shortcut_audit_is_near_chance_when_appearance_carries_no_label(tmp_path):
    from train.shortcut import shortcut_audit

    paths = []
    for i in range(80):
        path = tmp_path / f"{i}.png"
        _scan(i).save(path)
        paths.append(path)
    labels = [i % 2 * 2 for i in range(80)]
    report = shortcut_audit(paths, labels, list(range(80)), clusters=2)
    assert report["appearance_only"]["accuracy"] < 0.75


# ---------------------------------------------------------------------- gate thresholds
def _gate(reject: float | None) -> FeatureGate:
    means = torch.zeros(len(CLASS_NAMES), 2, dtype=torch.float64)
    return FeatureGate(means, torch.eye(2, dtype=torch.float64), threshold=1.0, stages=(2, 4), reject_threshold=reject)


def test_gate_tells_outside_training_from_not_mri():
    gate = _gate(3.0)
    scores = gate.score(torch.tensor([[0.5, 0.0], [2.0, 0.0], [4.0, 0.0]], dtype=torch.float64))
    assert scores.tolist() == pytest.approx([0.5, 2.0, 4.0])
    assert gate.reject_score == pytest.approx(3.0)
    assert _gate(None).reject_score == pytest.approx(1.0)  # older gates: one threshold for both
    with pytest.raises(ValueError, match="reject_threshold"):
        _gate(0.5)


def test_gate_round_trips_its_reject_threshold(tmp_path):
    from core.ood import OOD_NAME, load_gate, save_gate

    sha = save_gate(_gate(2.5), tmp_path / OOD_NAME)
    loaded = load_gate(tmp_path, {"ood": {"file": OOD_NAME, "sha256": sha}})
    assert loaded.reject_threshold == pytest.approx(2.5) and loaded.reject_score == pytest.approx(2.5)


def test_fit_reject_threshold_is_a_quantile_of_the_non_mri_distances():
    from train.ood import fit_reject_threshold

    non_mri = np.stack([np.linspace(2.0, 11.0, 100), np.zeros(100)], axis=1)
    gate = fit_reject_threshold(_gate(None), non_mri, rate=0.95)
    assert (gate.distance(torch.as_tensor(non_mri)).numpy() > gate.reject_threshold).mean() == pytest.approx(0.95, abs=0.011)
    close = fit_reject_threshold(_gate(None), np.zeros((10, 2)), rate=0.95)
    assert close.reject_threshold == pytest.approx(1.0)  # never below the in-distribution threshold


def test_predictions_between_the_thresholds_are_outside_the_training_data(tiny_model):
    from core.ood import OUTSIDE_TRAINING_FLAG, forward_with_taps

    image = _scan(1)
    with torch.inference_mode():
        features = forward_with_taps(tiny_model.network, tiny_model.preprocess([image]), (2, 4))[1].double().numpy()
    from core.model import Classifier

    assert tiny_model.gate is None
    base = tiny_model.predict(image)
    assert not base.outside_training and base.is_brain_mri
    dim = features.shape[1]
    means = torch.zeros(len(CLASS_NAMES), dim, dtype=torch.float64)
    distance = float(np.sqrt((features[0] ** 2).sum()))
    for threshold, reject, outside, mri in ((distance * 2, None, False, True), (distance / 2, distance * 2, True, True),
                                            (distance / 4, distance / 2, False, False)):
        gate = FeatureGate(means, torch.eye(dim, dtype=torch.float64), threshold, (2, 4), reject)
        # the gate is part of the model: its back-end taps the gate's blocks
        prediction = Classifier(tiny_model.network, tiny_model.card, gate=gate).predict(image)
        assert (prediction.outside_training, prediction.is_brain_mri) == (outside, mri)
        assert any(f.startswith(OUTSIDE_TRAINING_FLAG) for f in prediction.flags) == outside
        assert prediction.probabilities == pytest.approx(base.probabilities)


# ---------------------------------------------------------------------- pointing game
def test_pointing_game_hits_a_mask_around_the_heatmap_maximum(tmp_path, tiny_model, monkeypatch):
    from train.pointing import mask_path, pointing_game

    (tmp_path / "glioma").mkdir()
    (tmp_path / "masks").mkdir()
    image = _scan(0, size=64)
    samples = []
    heat = np.zeros((64, 64), dtype=np.float32)
    heat[10, 50] = 1.0
    monkeypatch.setattr(tiny_model, "explain", lambda image, target=None: heat)
    for i, (box, sequence) in enumerate((((45, 5, 55, 15), "flair"), ((5, 40, 20, 60), "flair"), ((45, 5, 55, 15), "t1pre"))):
        path = tmp_path / "glioma" / f"P0_{i}_{sequence}.jpg"
        image.save(path)
        sample = Sample(path, 0, "lgg", "P0", sequence)
        mask = Image.new("L", (64, 64))
        ImageDraw.Draw(mask).rectangle(box, fill=255)
        mask.save(mask_path(sample))
        samples.append(sample)
    result = pointing_game(tiny_model, samples, tolerance=0)
    assert result["overall"]["n_images"] == 3
    assert result["overall"]["hit_rate"] == pytest.approx(2 / 3)
    assert result["sequences"]["flair"]["hit_rate"] == pytest.approx(0.5)
    assert result["sequences"]["t1pre"]["hit_rate"] == pytest.approx(1.0)
    assert 0 < result["overall"]["random_hit_rate"] < 0.2


def test_pointing_game_scores_the_patients_the_run_held_out(extra_source):
    """The held-out patients are rebuilt with the run's seed and validation share."""
    from train.pointing import held_out_gliomas, mask_path

    samples = find_extra_samples(extra_source)
    (extra_source / "masks").mkdir()
    for sample in samples:
        if sample.class_name == "glioma":
            Image.new("L", (8, 8)).save(mask_path(sample))

    def held_out(**config) -> set[str]:
        card = {"training": {"config": {"val_fraction": 0.2, **config}}}
        return {s.patient for s in held_out_gliomas(extra_source, card)[0]}

    expected = {s.patient for s in patient_split(samples, 0.2, 0)[1]}
    assert held_out(seed=0) == expected


# ---------------------------------------------------------------------- augmentation
def _slice_pair(folder: Path, name: str) -> tuple[Path, Path, np.ndarray, np.ndarray]:
    """A generated FLAIR and T1 image of one slice: a head with dark fluid (ventricle) on both,
    a bright lesion on FLAIR only and bright scalp on T1."""
    yy, xx = np.mgrid[:96, :96]
    head = (yy - 48) ** 2 + (xx - 48) ** 2 < 40**2
    scalp = head & ((yy - 48) ** 2 + (xx - 48) ** 2 > 36**2)
    fluid = (abs(yy - 48) < 6) & (abs(xx - 40) < 4)
    lesion = (yy - 35) ** 2 + (xx - 62) ** 2 < 7**2
    flair = np.where(head, 110, 0) + np.where(lesion, 120, 0) - np.where(fluid, 95, 0)
    t1 = np.where(head, 150, 0) + np.where(scalp, 100, 0) - np.where(fluid, 130, 0) - np.where(lesion, 40, 0)
    flair_path, t1_path = folder / f"{name}_flair.png", folder / f"{name}_t1pre.png"
    Image.fromarray(flair.astype(np.uint8)).save(flair_path)
    Image.fromarray(t1.astype(np.uint8)).save(t1_path)
    return flair_path, t1_path, fluid, lesion


def test_synthetic_t2_makes_fluid_and_lesion_bright_and_keeps_the_label(tmp_path):
    from train.data import ScanFolder
    from train.presets import SyntheticT2

    flair_path, t1_path, fluid, lesion = _slice_pair(tmp_path, "P1_07")
    flair = Image.open(flair_path).convert("L")
    synth = SyntheticT2(p=1.0)
    assert synth.partner_of(flair_path) == t1_path and synth.partner_of(t1_path) is None
    sample = Sample(flair_path, CLASS_NAMES.index("glioma"), "src", "P1", "flair")
    out = np.asarray(synth(sample, flair))
    assert out.dtype == np.uint8 and out.shape == (96, 96)
    tissue = np.asarray(flair) == 110
    # Fluid: dark on FLAIR, bright on the T2-like image; the lesion stays bright; tissue below both.
    assert np.asarray(flair)[fluid].mean() < np.asarray(flair)[tissue].mean() < out[fluid].mean()
    assert out[lesion].mean() > out[tissue].mean() and out[fluid].mean() > out[tissue].mean()
    assert out[0, 0] == 0  # the background stays dark
    # Other sequences, scans without a partner and p = 0 pass unchanged; the label is kept.
    t1_sample = Sample(t1_path, sample.label, "src", "P1", "t1pre")
    t1 = Image.open(t1_path).convert("L")
    assert synth(t1_sample, t1) is t1
    (tmp_path / "alone").mkdir()
    alone = tmp_path / "alone" / "P2_01_flair.png"
    flair.save(alone)
    assert synth(Sample(alone, sample.label, "src", "P2", "flair"), flair) is flair
    assert SyntheticT2(p=0.0)(sample, flair) is flair
    dataset = ScanFolder([sample, t1_sample], transform=None, synthesise=synth)
    image, label = dataset[0]
    assert label == sample.label and np.array_equal(np.asarray(image), out)
    assert np.array_equal(np.asarray(dataset[1][0]), np.asarray(t1))
    with pytest.raises(ValueError, match="p must be"):
        SyntheticT2(p=1.5)
    with pytest.raises(ValueError, match="one shape"):
        SyntheticT2.synthesise(np.zeros((4, 4)), np.zeros((5, 5)))
