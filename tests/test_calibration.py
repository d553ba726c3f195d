"""Calibration, test-time augmentation and top losses: ECE against a direct computation; temperature scaling on an
over-confident model (lower ECE, same top-1, pipeline() scores = softmax(logits / T)); TTA figures reported beside
the plain ones; five_crop's corners; top_losses.csv sorted with the real files."""

import copy
import csv
import json
import math

import numpy as np
import pytest
import torch
from conftest import COLOURS, finetune, make_image, recipe_args
from PIL import Image
from transformers import EvalPrediction, pipeline

from hf_resnet import cli
from hf_resnet.configs import FinetuneTrainingArguments
from hf_resnet.data.transforms import PreprocessConfig, at_resolution, build_eval_transform
from hf_resnet.data.tta import TtaTransform, combine_views
from hf_resnet.inference import Classifier
from hf_resnet.trainer import ImageClassificationTrainer
from hf_resnet.training.calibration import calibrate
from hf_resnet.training.metrics import ComputeMetrics, reduce_logits


def direct_ece(confidence, correct, bins=15):
    total = 0.0
    for m in range(bins):
        lower, upper = m / bins, (m + 1) / bins
        inside = (confidence > lower) & (confidence <= upper) if m else (confidence <= upper)
        if inside.any():
            total += inside.mean() * abs(correct[inside].mean() - confidence[inside].mean())
    return total


def test_ece_equals_a_direct_numpy_computation_on_the_same_predictions():
    rng = np.random.default_rng(0)
    logits = rng.normal(scale=3.0, size=(400, 7)).astype(np.float32)
    labels = rng.integers(0, 7, size=400)
    labels[:5] = -100  # unreadable images: not scored
    ids, probs, truth = reduce_logits(torch.from_numpy(logits), torch.from_numpy(labels))
    got = ComputeMetrics(7)(EvalPrediction(predictions=(ids.numpy(), probs.numpy(), truth.numpy()), label_ids=labels))
    softmax = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    scored = labels != -100
    confidence = probs.numpy()[scored, 0].astype(np.float64)  # the same predictions' top-1 probability
    assert np.allclose(confidence, softmax.max(axis=1)[scored], atol=1e-6)
    correct = (softmax.argmax(axis=1) == labels)[scored]
    assert got["ece"] == pytest.approx(direct_ece(confidence, correct), abs=1e-12)
    assert np.allclose(truth.numpy()[scored], softmax[scored, labels[scored]], atol=1e-6)
    assert np.isnan(truth.numpy()[:5]).all()


@pytest.fixture(scope="module")
def run(tmp_path_factory, colour_folders):
    """One tiny run with `tta: flip`, then `hf-resnet evaluate --tta flip` of its model."""
    out = tmp_path_factory.mktemp("tta-run")
    metrics = finetune(recipe_args(out, colour_folders, tta="flip", horizontal_flip="0.0", num_train_epochs="2"))
    return out, metrics


def test_tta_flip_gives_its_own_figures_beside_the_plain_ones(run, colour_folders, tmp_path, monkeypatch):
    out, metrics = run
    assert metrics["eval_tta_loss"] != pytest.approx(metrics["eval_loss"], rel=1e-6)
    assert {"eval_tta_accuracy", "eval_tta_ece", "eval_accuracy", "eval_ece"} <= set(metrics)
    saved = json.loads((out / "eval_results.json").read_text())
    assert saved["eval_tta_accuracy"] == metrics["eval_tta_accuracy"]
    report = json.loads((out / "report" / "validation" / "eval_report.json").read_text())
    assert report["metrics"]["eval_tta_loss"] == metrics["eval_tta_loss"]
    card = (out / "README.md").read_text()
    assert "Top-1 accuracy with test-time augmentation" in card and "Expected calibration error" in card
    assert (out / "report" / "validation" / "reliability_diagram.png").stat().st_size > 10_000
    monkeypatch.chdir(tmp_path)  # evaluate: the same figures, from the command line
    code = cli.main(["evaluate", str(out), "--validation_dir", str(colour_folders["validation"]), "--tta", "flip",
                     "--dataloader_num_workers", "0", "--report_to", "none"])
    assert code == 0
    evaluated = json.loads((tmp_path / f"eval-{out.name}" / "eval_results.json").read_text())
    assert evaluated["eval_tta_loss"] == pytest.approx(metrics["eval_tta_loss"], rel=1e-4)
    assert evaluated["eval_loss"] == pytest.approx(metrics["eval_loss"], rel=1e-4)


def test_top_losses_are_sorted_by_loss_with_the_real_files(run):
    out, metrics = run
    rows = list(csv.DictReader(open(out / "report" / "validation" / "top_losses.csv")))
    assert len(rows) == metrics["eval_samples"] == 24  # fewer than 100 images: all of them
    losses = [float(r["loss"]) for r in rows]
    assert losses == sorted(losses, reverse=True)
    for row in rows:
        assert (out / row["file"]).is_file() or __import__("pathlib").Path(row["file"]).is_file()
        assert float(row["loss"]) == pytest.approx(max(0.0, -math.log(float(row["true_probability"]))), abs=1e-4)
        assert row["true_label"] in row["file"]  # the colour folders name each file after its class
    assert (out / "report" / "validation" / "top_losses.png").is_file()


def over_confident(model_dir, validation):
    """The trained model with its head x5, and the validation images with every third label wrong: accuracy about
    2/3 at a confidence of about 1."""
    classifier = Classifier.load(str(model_dir), device="cpu")
    model = classifier.model
    with torch.no_grad():
        model.classifier[-1].weight.mul_(5.0)
        model.classifier[-1].bias.mul_(5.0)
    transform = build_eval_transform(classifier.preprocess, normalize=True)
    files = sorted(validation.rglob("*.png"))
    names = classifier.labels
    examples = []
    for i, file in enumerate(files):
        label = names.index(file.parent.name)
        label = (label + 1) % len(names) if i % 3 == 0 else label
        examples.append({"pixel_values": transform(Image.open(file)), "labels": label, "example_ids": i})
    return classifier, examples, files


def test_temperature_scaling_lowers_the_ece_of_an_over_confident_model(run, colour_folders, tmp_path):
    out, _ = run
    classifier, examples, files = over_confident(out, colour_folders["validation"])
    model = classifier.model
    before_model = copy.deepcopy(model)
    args = FinetuneTrainingArguments(output_dir=str(tmp_path / "calibrated"), per_device_eval_batch_size=16,
                                     report_to="none", use_cpu=True, dataloader_num_workers=0, eval_strategy="no")
    trainer = ImageClassificationTrainer(model=model, args=args, processing_class=None)
    before = trainer.evaluate(examples)
    calibration = calibrate(trainer, examples)
    after = trainer.evaluate(examples)
    assert calibration.temperature > 1.5  # over-confident: the logits are softened
    assert after["eval_ece"] < before["eval_ece"] - 0.05
    assert calibration.ece_before == pytest.approx(before["eval_ece"], abs=1e-6)
    assert after["eval_loss"] < before["eval_loss"]
    pixels = torch.stack([e["pixel_values"] for e in examples])
    with torch.no_grad():
        raw = before_model(pixel_values=pixels).logits
        folded = model(pixel_values=pixels).logits
    assert torch.equal(raw.argmax(dim=1), folded.argmax(dim=1))  # top-1 unchanged
    assert torch.allclose(folded, raw / calibration.temperature, atol=1e-4)
    # pipeline() of the saved model: softmax(logits / T)
    trainer.save_model()
    for name in ("preprocessor_config.json",):
        (tmp_path / "calibrated" / name).write_bytes((out / name).read_bytes())
    scores = pipeline("image-classification", model=str(tmp_path / "calibrated"), device="cpu")(
        [str(f) for f in files[:4]], top_k=len(classifier.labels))
    for file, result in zip(files[:4], scores):
        x = build_eval_transform(classifier.preprocess, normalize=True)(Image.open(file))[None]
        with torch.no_grad():
            expected = torch.softmax(before_model(pixel_values=x).logits[0] / calibration.temperature, dim=0)
        got = {r["label"]: r["score"] for r in result}
        assert [got[name] for name in classifier.labels] == pytest.approx(expected.tolist(), abs=1e-5)


def test_five_crop_of_an_image_twice_as_wide_as_tall_covers_both_halves():
    cfg = PreprocessConfig.from_processor(type("P", (), {"size": {"shortest_edge": 32}, "crop_pct": 0.875,
                                                        "resample": 2, "image_mean": [0.5] * 3,
                                                        "image_std": [0.5] * 3})())
    image = torch.zeros(3, 40, 80, dtype=torch.uint8)
    image[0, :, :40] = 255  # left half red
    image[2, :, 40:] = 255  # right half blue
    views = TtaTransform(cfg, "five_crop")(image)
    assert views.shape == (5, 3, 32, 32)
    red, blue = views[:, 0].float().mean(dim=(1, 2)), views[:, 2].float().mean(dim=(1, 2))
    assert (red[[0, 2]] > 250).all() and (blue[[0, 2]] < 5).all()  # top-left, bottom-left: the left half
    assert (blue[[1, 3]] > 250).all() and (red[[1, 3]] < 5).all()  # top-right, bottom-right: the right half
    assert 50 < red[4] < 200 and 50 < blue[4] < 200  # the centre straddles both


def test_flip_views_average_the_mirror_image_and_eval_resolution_sets_the_input(run, colour_folders):
    out, _ = run
    plain = Classifier.load(str(out), device="cpu")
    flipped = Classifier.load(str(out), device="cpu", tta="flip")
    image = make_image(COLOURS["red"], np.random.default_rng(5))
    x = plain.transform(image)[None]
    views = flipped.transform(image)[None]
    assert views.shape == (1, 2, *x.shape[1:]) and torch.equal(views[0, 0], x[0])
    assert torch.equal(views[0, 1], x[0].flip(-1))
    expected = combine_views(torch.stack([plain.logits(x), plain.logits(x.flip(-1))], dim=1), [0.5, 0.5])
    assert torch.allclose(flipped.logits(views), expected, atol=1e-6)
    bigger = at_resolution(plain.preprocess, 48, 1.0)
    assert build_eval_transform(bigger, normalize=False)(image).shape == (3, 48, 48)
    assert Classifier.load(str(out), device="cpu", image_size=48).transform(image).shape == (3, 48, 48)
