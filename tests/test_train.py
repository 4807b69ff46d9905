"""The training pipeline: the recipe's defaults, data discovery, splits, transforms, the
schedule, a smoke run, resume, evaluation CLI."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from core import CLASS_NAMES, load_model
from core.constants import LEGACY_CLASS_FOLDERS
from core.weights import sha256_file
from train import metrics
from train.config import TrainConfig
from train.data import class_counts, find_samples, split_dirs, stratified_split
from train.pretrained import load_imagenet_weights
from train.train import get_args_parser, main

ROOT = Path(__file__).resolve().parent.parent
PER_CLASS = 6
#: The recipe's keys of a model card's training.config.
RECIPE_KEYS = (
    "arch", "epochs", "freeze_epochs", "freeze_stages", "image_size", "batch_size", "lr", "weight_decay",
    "label_smoothing", "augment", "synth_t2", "crop_head", "split", "val_fraction", "seed",
)


def _config(*argv: str, **fields) -> TrainConfig:
    """The command line ``argv``, then ``fields`` that have no option."""
    return TrainConfig.from_namespace(get_args_parser().parse_args(list(argv))).replace(**fields)


# ---------------------------------------------------------------------- the recipe's defaults
def test_defaults_reproduce_the_shipped_recipe():
    """python -m train with no recipe option trains what assets/ ships."""
    shipped = json.loads((ROOT / "assets" / "model_card.json").read_text())["training"]["config"]
    defaults = TrainConfig().to_dict()
    assert {k: defaults[k] for k in RECIPE_KEYS} == {k: shipped[k] for k in RECIPE_KEYS}
    assert TrainConfig().tta
    assert _config() == TrainConfig()  # the parser's defaults are the dataclass's


def test_help_lists_at_most_twenty_options(capsys):
    parser = get_args_parser()
    options = [a for a in parser._actions if a.option_strings and a.dest != "help"]
    assert len(options) <= 20, [a.option_strings for a in options]
    with pytest.raises(SystemExit):
        parser.parse_args(["--help"])
    text = capsys.readouterr().out
    assert "--no-crop-head" in text and "assets/audit.json" in text


def test_head_crop_is_on_unless_turned_off():
    assert _config().crop_head and not _config("--no-crop-head").crop_head


def test_cards_with_options_of_older_runs_still_load():
    """A card's training.config may hold options no longer in TrainConfig (the shipped one
    does): they are ignored, and the recipe's values come back."""
    card = json.loads((ROOT / "assets" / "model_card.json").read_text())["training"]["config"]
    older = {**card, "mixup": 0.2, "paste_lesion": 0.1, "split_seed": 3}
    config = TrainConfig.from_dict(older)
    assert {k: config.to_dict()[k] for k in RECIPE_KEYS} == {k: card[k] for k in RECIPE_KEYS}
    assert TrainConfig.from_dict(config.to_dict()) == config


@pytest.mark.parametrize(
    ("fields", "message"),
    [({"synth_t2": 1.5}, "synth-t2"), ({"freeze_epochs": 10}, "freeze_epochs"), ({"lr": 0.0}, "lr"),
     ({"split": "random"}, "random"), ({"freeze_stages": -1}, "freeze-stages")],
)
def test_bad_values_are_named(fields, message):
    with pytest.raises(SystemExit, match=message):
        TrainConfig(**fields).check()


@pytest.fixture(scope="module")
def mini_dataset(data_root, tmp_path_factory) -> Path:
    """A Kaggle-layout copy of a few real scans per class, Training with the *legacy* names."""
    root = tmp_path_factory.mktemp("mini")
    legacy = {v: k for k, v in LEGACY_CLASS_FOLDERS.items()}
    for split, rename in (("Training", True), ("Testing", False)):
        for name in CLASS_NAMES:
            target = root / split / (legacy[name] if rename else name)
            target.mkdir(parents=True)
            for path in sorted((data_root / split / name).glob("*.jpg"))[:PER_CLASS]:
                shutil.copy(path, target / path.name)
    return root


def test_find_samples_current_and_legacy_names(mini_dataset):
    train_dir, test_dir = split_dirs(mini_dataset)
    assert class_counts(find_samples(train_dir)) == {name: PER_CLASS for name in CLASS_NAMES}
    assert class_counts(find_samples(test_dir)) == {name: PER_CLASS for name in CLASS_NAMES}


def test_find_samples_rejects_unknown_folder(tmp_path):
    (tmp_path / "tumours").mkdir()
    with pytest.raises(ValueError, match="'tumours'.*accepted"):
        find_samples(tmp_path)


def test_split_dirs_names_missing_folder(tmp_path):
    (tmp_path / "Training").mkdir()
    with pytest.raises(FileNotFoundError, match="Testing"):
        split_dirs(tmp_path)


def test_stratified_split_is_seeded_and_disjoint(data_root):
    samples = find_samples(data_root / "Training")
    train_a, val_a = stratified_split(samples, 0.15, seed=3)
    train_b, val_b = stratified_split(samples, 0.15, seed=3)
    assert val_a == val_b and train_a == train_b
    assert not {s.path for s in train_a} & {s.path for s in val_a}
    assert len(train_a) + len(val_a) == len(samples)
    total, val = class_counts(samples), class_counts(val_a)
    for name in CLASS_NAMES:  # class proportions kept within one image
        assert abs(val[name] - 0.15 * total[name]) <= 1.0


def test_seed_draws_the_validation_scans(mini_dataset):
    """One --seed gives one validation split; other seeds give others."""
    from train.splits import load_data

    def val_paths(seed: int) -> set[Path]:
        config = _config("--data-dir", str(mini_dataset), "--split", "stratified", "--seed", str(seed), val_fraction=0.5)
        return {s.path for s in load_data(config)[1]}

    seed0 = val_paths(0)
    assert val_paths(0) == seed0
    assert any(val_paths(seed) != seed0 for seed in (1, 2, 3))


@pytest.mark.parametrize("size", [64, 96])
@pytest.mark.parametrize("crop_head", [False, True])
def test_presets_give_normalised_tensors_of_the_input_size(size, crop_head):
    from PIL import Image

    from train.presets import ClassificationPresetEval, ClassificationPresetTrain

    grey = np.zeros((120, 100), np.uint8)
    grey[20:100, 15:85] = np.random.default_rng(0).integers(40, 220, (80, 70))
    image = Image.fromarray(grey)
    for preset in (ClassificationPresetTrain(size, crop_head=crop_head), ClassificationPresetTrain(size, strength=0.0),
                   ClassificationPresetEval(size, crop_head=crop_head)):
        out = preset(image)
        assert out.shape == (3, size, size) and out.dtype == torch.float32
        assert torch.isfinite(out).all() and -1.0 - 1e-6 <= float(out.min()) <= float(out.max()) <= 1.0 + 1e-6


def test_lr_factor_holds_the_head_phase_then_warms_up_and_decays():
    from train.engine import lr_factor

    head, full, warmup = 10, 100, 5
    factors = [lr_factor(step, head, full, warmup) for step in range(head + full + 1)]
    assert factors[:head] == [1.0] * head
    assert factors[head] == pytest.approx(0.1)
    assert factors[head + warmup] == pytest.approx(1.0)
    decay = factors[head + warmup:]
    assert all(a >= b for a, b in zip(decay, decay[1:]))
    assert factors[-1] == pytest.approx(0.01)


def test_one_epoch_trains_and_a_checkpoint_restores_it(tmp_path):
    """train_one_epoch steps the optimizer and scheduler; save_checkpoint/load_checkpoint give
    back the weights, the best weights, the optimizer's moments and the schedule."""
    from train.engine import load_checkpoint, lr_factor, save_checkpoint, train_one_epoch

    def parts():
        torch.manual_seed(0)
        net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(4, 4))
        optimizer = torch.optim.AdamW(net.parameters(), lr=1e-2)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, 1, 3, 1))
        return net, optimizer, scheduler

    net, optimizer, scheduler = parts()
    batches = [(torch.randn(4, 3, 16, 16), torch.tensor([0, 1, 2, 3])) for _ in range(2)]
    loss, probs, targets = train_one_epoch(net, torch.nn.CrossEntropyLoss(), optimizer, scheduler, batches, torch.device("cpu"), progress=False)
    assert np.isfinite(loss) and probs.shape == (8, 4) and np.allclose(probs.sum(1), 1.0, atol=1e-5)
    assert targets.tolist() == [0, 1, 2, 3] * 2 and scheduler.last_epoch == 2
    best = {k: v.clone() + 1 for k, v in net.state_dict().items()}
    save_checkpoint(tmp_path / "c.safetensors", net, optimizer, scheduler, best, {"epoch": 0, "history": []})

    again, optimizer2, scheduler2 = parts()
    restored_best, state = load_checkpoint(tmp_path / "c.safetensors", again, optimizer2, scheduler2)
    assert state == {"epoch": 0, "history": []} and scheduler2.last_epoch == 2
    assert all(torch.equal(a, b) for a, b in zip(net.state_dict().values(), again.state_dict().values()))
    assert all(torch.equal(best[k], restored_best[k]) for k in best)
    moments = lambda opt: [s["exp_avg"] for s in opt.state_dict()["state"].values()]  # noqa: E731
    assert all(torch.equal(a, b) for a, b in zip(moments(optimizer), moments(optimizer2)))
    with pytest.raises(FileNotFoundError, match="nothing to resume"):
        load_checkpoint(tmp_path / "missing.safetensors", again, optimizer2, scheduler2)


def test_imagenet_weights_map_by_order_and_check_shapes():
    import timm

    net = timm.create_model("efficientnet_lite0", num_classes=4)
    before = net.conv_stem.weight.clone()
    copied = load_imagenet_weights(net, "efficientnet_lite0")
    assert copied == len(net.state_dict()) - 2  # all but the 4-class head
    assert not torch.equal(before, net.conv_stem.weight)
    wrong = timm.create_model("efficientnet_b0", num_classes=4)
    with pytest.raises((RuntimeError, ValueError)):
        load_imagenet_weights(wrong, "efficientnet_lite0")
    with pytest.raises(ValueError, match="efficientnet_b0"):
        load_imagenet_weights(wrong, "efficientnet_b0")


def test_metrics_report_is_consistent():
    rng = np.random.default_rng(0)
    targets = np.repeat(np.arange(4), 25)
    logits = rng.normal(size=(100, 4)) + 3 * np.eye(4)[targets]
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    report = metrics.report(probs, targets)
    cm = np.array(report["confusion_matrix"])
    assert cm.sum() == 100 and report["n_images"] == 100
    assert report["accuracy"] == pytest.approx(np.trace(cm) / 100)
    for i, name in enumerate(CLASS_NAMES):
        assert report["per_class"][name]["recall"] == pytest.approx(cm[i, i] / cm[i].sum())
        assert 0.5 < report["roc"][name]["auc"] <= 1.0
    bins = report["calibration"]["bins"]
    assert sum(b["count"] for b in bins) == 100
    assert 0.0 <= report["calibration"]["ece"] <= 1.0


@pytest.mark.slow
def test_training_smoke_and_resume(mini_dataset, tmp_path, scan_paths):
    out = tmp_path / "run"
    base = [
        "--data-dir", str(mini_dataset), "--output", str(out), "--image-size", "64",
        "--batch-size", "8", "--workers", "0", "--no-progress", "--split", "stratified",
    ]
    result = main(_config(*base, "--epochs", "2", val_fraction=0.25))
    for name in ("model.safetensors", "model_card.json", "history.json", "evaluation.json", "checkpoint.safetensors"):
        assert (out / name).is_file(), name
    card = json.loads((out / "model_card.json").read_text())
    assert card["weights_sha256"] == sha256_file(out / "model.safetensors")
    assert card["image_size"] == 64 and card["class_names"] == list(CLASS_NAMES)
    # The recipe's whole run is stored next to the training loop's time: the loop, then the
    # calibration, gate, Testing evaluation and export.
    timing = card["training"]
    assert 0 < timing["wall_time_s"] < timing["total_wall_time_s"]
    assert timing["total_wall_time_s"] == pytest.approx(timing["wall_time_s"] + timing["post_training_s"], abs=0.11)
    history = json.loads((out / "history.json").read_text())["epochs"]
    assert [h["phase"] for h in history] == ["head", "full"]
    for record in history:
        for split in ("train", "val"):
            assert set(record[split]) >= {"loss", "accuracy", "macro_precision", "macro_recall", "macro_f1"}
    evaluation = json.loads((out / "evaluation.json").read_text())
    assert evaluation["evaluations"]["testing"]["n_images"] == 4 * PER_CLASS
    assert "clean" in evaluation["testing_perturbed"]
    assert result["card"]["data"]["test_counts"] == {name: PER_CLASS for name in CLASS_NAMES}

    model = load_model(out / "model.safetensors", device="cpu")
    assert model.image_size == 64
    assert model.predict(model_image(scan_paths)).label in CLASS_NAMES

    # --resume continues the interrupted run from its checkpoint to the new total of epochs
    resumed = main(_config(*base, "--epochs", "3", "--resume", val_fraction=0.25))
    assert [h["epoch"] for h in resumed["history"]] == [1, 2, 3]
    assert resumed["history"][:2] == history


def model_image(scan_paths):
    from core import read_scan

    return read_scan(scan_paths["glioma"])


def test_bad_options_are_named(mini_dataset, tmp_path):
    args = get_args_parser().parse_args(["--data-dir", str(mini_dataset), "--split", "random", "--output", str(tmp_path)])
    with pytest.raises(SystemExit, match="random"):
        main(args)


def test_freeze_stages_keeps_the_stem_and_first_stages(mini_dataset, tmp_path):
    """--freeze-stages N: a real training step leaves the stem and the first N stages as they
    were and updates the rest; a count the network lacks is refused by name."""
    import timm

    from train.train import set_backbone_trainable

    torch.manual_seed(0)
    net = timm.create_model("efficientnet_lite0", pretrained=False, num_classes=len(CLASS_NAMES)).train()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    set_backbone_trainable(net, trainable=True, frozen_stages=2)
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-2)
    loss = torch.nn.functional.cross_entropy(net(torch.randn(4, 3, 64, 64)), torch.tensor([0, 1, 2, 3]))
    loss.backward()
    optimizer.step()
    after = net.state_dict()
    frozen = ("conv_stem.", "blocks.0.", "blocks.1.")
    weights = [k for k in after if k.endswith(".weight")]
    assert all(torch.equal(after[k], before[k]) for k in weights if k.startswith(frozen))
    assert all(not torch.equal(after[k], before[k]) for k in weights if k.startswith(("blocks.2.", "blocks.6.", "conv_head.", "classifier.")))
    assert all(not p.requires_grad for name, p in net.named_parameters() if name.startswith(frozen + ("bn1.",)))
    # the head-only phase still trains the head alone
    set_backbone_trainable(net, trainable=False, frozen_stages=2)
    assert {n for n, p in net.named_parameters() if p.requires_grad} == {"classifier.weight", "classifier.bias"}

    config = _config(
        "--data-dir", str(mini_dataset), "--output", str(tmp_path), "--freeze-stages", "9", "--arch", "efficientnet_lite0",
        "--workers", "0", "--split", "stratified", val_fraction=0.25,
    )
    with pytest.raises(SystemExit, match=r"--freeze-stages must be in \[0, 7\].*9"):
        main(config)


@pytest.mark.slow
def test_evaluate_cli(mini_dataset, tiny_weights):
    cmd = [
        sys.executable, "-m", "train.evaluate", "--data-dir", str(mini_dataset / "Testing"),
        "--weights", str(tiny_weights), "--workers", "0", "--device", "cpu",
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    testing = result["evaluations"]["testing"]
    assert testing["n_images"] == 4 * PER_CLASS
    assert np.array(testing["confusion_matrix"]).sum() == 4 * PER_CLASS
    assert set(testing["per_class"]) == set(CLASS_NAMES)


def test_evaluation_scores_the_served_probabilities(mini_dataset, tiny_weights):
    """Every report scores what core serves: the card's temperature applied, TTA averaging the
    scan's and its mirror image's calibrated probabilities; the reliability before scaling is kept."""
    from train.engine import predict_logits, served_probs
    from train.evaluate import _loader, evaluate_samples
    from train.presets import ClassificationPresetEval

    samples = find_samples(mini_dataset / "Testing")
    model = load_model(tiny_weights, device="cpu")
    temperature = 0.25
    result = evaluate_samples(
        model.runtime, samples, model.image_size, batch_size=8, workers=0, tta=True,
        perturb=False, temperature=temperature,
    )
    testing, tta = result["evaluations"]["testing"], result["evaluations"]["testing_tta"]
    logits, mirrored, targets = predict_logits(
        model.runtime, _loader(samples, ClassificationPresetEval(model.image_size), 8, 0),
        progress=False, mirror=True,
    )
    assert testing["temperature"] == temperature
    assert testing["calibration"] == testing["calibration_after"] == metrics.calibration(served_probs(logits, temperature=temperature), targets)
    assert testing["calibration_before"] == metrics.calibration(served_probs(logits), targets)
    assert testing["calibration_before"]["ece"] != testing["calibration"]["ece"]
    assert tta["calibration"] == metrics.calibration(served_probs(logits, mirrored, temperature), targets)
    # the probabilities scored are the app's own (core.Classifier at the same temperature)
    from core import read_scan

    model.temperature, model.tta = temperature, True
    try:
        predictions = model.predict_batch([read_scan(s.path) for s in samples[:6]])
        served = np.array([[p.probabilities[c] for c in CLASS_NAMES] for p in predictions])
    finally:
        model.temperature, model.tta = float(model.card.get("temperature", 1.0)), False
    np.testing.assert_allclose(served, served_probs(logits[:6], mirrored[:6], temperature), atol=1e-4)


@pytest.mark.slow
def test_training_with_an_extra_source_records_it_in_the_card(mini_dataset, tmp_path):
    """--extra-data: the source is split by patient, trained on, and described in the model card."""
    import csv

    from PIL import Image

    extra = tmp_path / "lgg"
    rows = []
    for folder, label in (("glioma", "glioma"), ("notumor-slices", "notumor")):
        (extra / folder).mkdir(parents=True)
        for patient in range(6):
            path = extra / folder / f"P{patient}_{label}_flair.png"
            grey = np.random.default_rng(patient).integers(0, 255, (64, 64), dtype=np.uint8)
            Image.fromarray(grey).save(path)
            rows.append((f"{folder}/{path.name}", f"P{patient}", "flair"))
    with (extra / "manifest.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "patient", "sequence"])
        writer.writerows(rows)
    out = tmp_path / "run"
    config = _config(
        "--data-dir", str(mini_dataset), "--extra-data", str(extra), "--output", str(out), "--image-size", "64",
        "--batch-size", "8", "--workers", "0", "--no-progress", "--split", "stratified", "--epochs", "1",
        val_fraction=0.34, freeze_epochs=0,
    )
    result = main(config)
    card = result["card"]
    assert np.isfinite(result["history"][0]["train"]["loss"])
    sources = {s["name"]: s for s in card["data"]["sources"]}
    assert set(sources) == {"kaggle", "lgg"}
    lgg = sources["lgg"]
    assert lgg["train_patients"] + lgg["val_patients"] == 6 and lgg["val_patients"] >= 1
    assert lgg["train_images"] + lgg["val_images"] == 12 and lgg["sequences"] == {"flair": 12}
    assert card["data"]["train_images"] == sum(s["train_images"] for s in sources.values())
    assert card["training"]["config"]["extra_data"] == [str(extra)]


def _epoch_orders(loader, epochs: int) -> list[list[int]]:
    return [[int(i) for batch in loader for i in batch] for _ in range(epochs)]


def test_resumed_run_draws_fresh_shuffles():
    """A run resumed at epoch 3 does not replay epoch 1's order (the loader's generator is
    seeded once per run); its orders are its own and reproducible."""
    from train.train import _loader, _resume_shuffle

    def loader():
        return _loader(list(range(40)), batch_size=8, workers=0, shuffle=True, seed=0)

    uninterrupted = _epoch_orders(loader(), 4)
    assert len({tuple(order) for order in uninterrupted}) == 4
    resumed, again = loader(), loader()
    _resume_shuffle(resumed, seed=0, start_epoch=2)
    _resume_shuffle(again, seed=0, start_epoch=2)
    orders = _epoch_orders(resumed, 2)
    assert orders == _epoch_orders(again, 2)
    assert not {tuple(order) for order in orders} & {tuple(order) for order in uninterrupted}
    assert all(sorted(order) == list(range(40)) for order in orders)
    untouched = loader()
    _resume_shuffle(untouched, seed=0, start_epoch=0)
    assert _epoch_orders(untouched, 1) == uninterrupted[:1]
