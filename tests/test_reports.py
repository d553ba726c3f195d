"""The evaluation report: files that agree with the metrics, pictures that open, Grad-CAM on the right stage,
and memory that does not grow with examples x classes."""

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import finetune, make_image_folder, recipe_args
from model_card_pattern import MODEL_CARD_PATTERN
from PIL import Image
from torchvision.transforms import InterpolationMode
from transformers import ResNetConfig, ResNetForImageClassification, pipeline

from hf_resnet.data.transforms import PreprocessConfig
from hf_resnet.inference import Classifier
from hf_resnet.reports.evaluation import write_split_report
from hf_resnet.reports.gradcam import grad_cam

SPLIT_FILES = ("eval_report.json", "confusion_matrix.csv", "confusion_matrix.png", "confusion_matrix_normalized.png",
               "predictions_grid.png", "gradcam.png")


def tiny_resnet(num_labels: int) -> ResNetForImageClassification:
    torch.manual_seed(0)
    config = ResNetConfig(embedding_size=8, hidden_sizes=[8, 16, 16, 16], depths=[1, 1, 1, 1], layer_type="basic",
                          num_labels=num_labels, id2label={i: f"class {i}" for i in range(num_labels)})
    return ResNetForImageClassification(config).eval()


def read_csv(path):
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def assert_picture(path, max_side=3000, max_bytes=1_500_000):
    with Image.open(path) as image:
        image.verify()  # a complete, valid PNG
    with Image.open(path) as image:
        assert image.format == "PNG" and 200 <= min(image.size) and max(image.size) <= max_side, (path, image.size)
    assert path.stat().st_size <= max_bytes, path


# Confusion lists ---------------------------------------------------------------------------------------------------


def test_most_confused_pairs_and_the_classes_a_picture_shows():
    from hf_resnet.reports.confusion import classes_to_show, most_confused

    counts = np.diag(np.full(40, 50))
    counts[3, 7], counts[7, 3], counts[12, 39], counts[20, 5] = 9, 4, 9, 1
    labels = [f"c{i}" for i in range(40)]
    pairs = most_confused(counts, labels, limit=3)
    assert [(p["true"], p["predicted"], p["count"]) for p in pairs] == [("c3", "c7", 9), ("c12", "c39", 9),
                                                                       ("c7", "c3", 4)]
    assert pairs[0]["share_of_true"] == pytest.approx(9 / 59)
    shown = classes_to_show(counts, limit=6)
    assert shown == [3, 5, 7, 12, 20, 39]  # the confused classes, in class order
    assert classes_to_show(counts[:6, :6], limit=30) == list(range(6))  # few classes: all of them
    assert most_confused(np.diag([5, 5]), ["a", "b"]) == []


# Grad-CAM ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("side, stage, index", [(32, "stage2 (4x4)", 2), (224, "stage4 (7x7)", 4)])
def test_gradcam_takes_the_last_stage_with_room_and_matches_its_definition(side, stage, index):
    model = tiny_resnet(5)
    pixels = torch.randn(3, 3, side, side)
    classes = torch.tensor([0, 3, 4])
    cam = grad_cam(model, pixels, classes)
    assert cam.stage == stage
    assert cam.maps.shape == (3, side, side)
    assert cam.maps.min() >= 0 and cam.maps.amax(dim=(1, 2)).allclose(torch.ones(3))
    # the definition, through another route: the stage's output from hidden_states, its gradient by autograd
    out = model(pixel_values=pixels, output_hidden_states=True)
    activation = out.hidden_states[index]
    (gradient,) = torch.autograd.grad(out.logits.gather(1, classes[:, None]).sum(), activation)
    expected = torch.relu((gradient.mean(dim=(2, 3), keepdim=True) * activation).sum(1, keepdim=True))
    expected = torch.nn.functional.interpolate(expected, size=(side, side), mode="bilinear")[:, 0]
    expected = expected / expected.amax(dim=(1, 2), keepdim=True)
    assert torch.allclose(cam.maps, expected.detach(), atol=1e-5)


def test_gradcam_works_on_a_frozen_backbone_and_leaves_the_model_as_it_was():
    model = tiny_resnet(3)
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    model.train()
    cam = grad_cam(model, torch.randn(2, 3, 64, 64), torch.tensor([1, 2]))
    assert cam.maps.amax() > 0
    assert model.training and all(not s._forward_hooks for s in model.resnet.encoder.stages)
    assert all(p.grad is None for p in model.parameters())


# Memory --------------------------------------------------------------------------------------------------------


def test_a_report_of_50000_images_and_1000_classes_holds_no_examples_by_classes_array(tmp_path):
    """What the report adds to the gathered top-5 (ImageNet validation's shape): the 1000 x 1000 counts, rows
    written as they go, a few images. 50,000 x 1,000 float32 logits alone would be 200 MB."""
    import tracemalloc

    rng = np.random.default_rng(0)
    n, classes = 50_000, 1000
    labels = rng.integers(0, classes, size=n)
    ids = rng.integers(0, classes, size=(n, 5))
    ids[: n // 2, 0] = labels[: n // 2]  # half right
    probs = np.sort(rng.random((n, 5)), axis=1)[:, ::-1].astype(np.float32)
    model = tiny_resnet(classes)
    pre = PreprocessConfig((32, 32), 36, None, True, InterpolationMode.BICUBIC, (0.5,) * 3, (0.25,) * 3)
    classifier = Classifier(model, pre, "cpu")
    stream = [{"pixel_values": torch.randn(3, 32, 32), "labels": i % classes} for i in range(40)]
    metrics = {"eval_accuracy": float((ids[:, 0] == labels).mean()), "eval_samples": n}
    tracemalloc.start()
    result = write_split_report(tmp_path, "validation", (ids, probs), labels, metrics, "eval",
                                [f"class {i}" for i in range(classes)], stream, classifier)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    print(f"report peak (tracemalloc): {peak / 2**20:.1f} MB")
    assert peak < 40 * 2**20, f"{peak / 2**20:.0f} MB"
    folder = tmp_path / "report" / "validation"
    assert len(read_csv(folder / "predictions_validation.csv")) == n
    counts = np.loadtxt(folder / "confusion_matrix.csv", delimiter=",", skiprows=1, usecols=range(1, classes + 1))
    assert counts.shape == (classes, classes) and counts.sum() == n  # the CSV is always complete
    assert np.trace(counts) / n == pytest.approx(metrics["eval_accuracy"])
    assert len(result.per_class) == classes and len(result.most_confused) == 20
    for name in SPLIT_FILES[2:]:
        assert_picture(folder / name)
    report = json.loads((folder / "eval_report.json").read_text())
    assert report["rows_identified_by"].startswith("position")  # a stream carries no file names


# End to end: a run's report agrees with its metrics -----------------------------------------------------------


@pytest.fixture(scope="module")
def run_with_test_split(tmp_path_factory):
    """One folder, cut 60/20/20 by the run (train_val_split and test_split); 3 epochs on the colour images."""
    root = tmp_path_factory.mktemp("reports")
    folder = make_image_folder(root / "all", 20, seed=3)
    out = root / "out"
    metrics = finetune(recipe_args(out, {"train": folder, "validation": None}, validation_dir=None, test_split="0.2",
                                   train_val_split="0.2", num_train_epochs="3", eval_strategy="epoch"))
    return out, metrics


@pytest.mark.slow
@pytest.mark.parametrize("split, prefix", [("validation", "eval"), ("test", "test")])
def test_each_split_report_agrees_with_the_metrics(run_with_test_split, split, prefix):
    out, metrics = run_with_test_split
    results = json.loads((out / "all_results.json").read_text())
    folder = out / "report" / split
    for name in (*SPLIT_FILES, f"predictions_{split}.csv"):
        assert (folder / name).is_file(), name
    report = json.loads((folder / "eval_report.json").read_text())
    assert report["metrics"][f"{prefix}_accuracy"] == results[f"{prefix}_accuracy"] == metrics[f"{prefix}_accuracy"]
    with open(folder / "confusion_matrix.csv", newline="") as handle:
        rows = list(csv.reader(handle))
    names = rows[0][1:]
    counts = np.array([[int(v) for v in row[1:]] for row in rows[1:]])
    assert names == ["blue", "green", "red"] and [row[0] for row in rows[1:]] == names
    assert counts.sum() == results[f"{prefix}_samples"] == 12  # 20% of 60 images, stratified
    assert counts.sum(axis=1).tolist() == [c["support"] for c in report["per_class"]] == [4, 4, 4]
    assert np.trace(counts) / counts.sum() == pytest.approx(results[f"{prefix}_accuracy"])
    f1 = [c["f1"] for c in report["per_class"] if c["support"] or c["predicted"]]
    assert np.mean(f1) == pytest.approx(results[f"{prefix}_f1_macro"])

    predictions = read_csv(folder / f"predictions_{split}.csv")
    assert len(predictions) == 12 and len({p["file"] for p in predictions}) == 12
    assert all(p["true_label"] == Path(p["file"]).parent.name for p in predictions)  # the truth, by folder
    hits = sum(p["true_label"] == p["predicted_label"] for p in predictions)
    assert hits / 12 == pytest.approx(results[f"{prefix}_accuracy"])
    served = pipeline("image-classification", model=str(out), device="cpu")([p["file"] for p in predictions], top_k=1)
    assert [s[0]["label"] for s in served] == [p["predicted_label"] for p in predictions]  # what pipeline() says
    for name in SPLIT_FILES[2:]:
        assert_picture(folder / name)


@pytest.mark.slow
def test_the_split_files_are_disjoint_and_the_card_carries_every_split(run_with_test_split):
    out, _ = run_with_test_split
    files = {split: {p["file"] for p in read_csv(out / "report" / split / f"predictions_{split}.csv")}
             for split in ("validation", "test")}
    assert not files["validation"] & files["test"]
    assert_picture(out / "report" / "training_curves.png")

    card = (out / "README.md").read_text()
    assert MODEL_CARD_PATTERN.match(card), card
    results = json.loads((out / "all_results.json").read_text())
    index = yaml.safe_load(card.split("---")[1])["model-index"][0]["results"]
    assert [r["dataset"]["split"] for r in index] == ["validation", "test"]
    keys = {"Top-1 accuracy": "accuracy", "Macro F1": "f1_macro", "Macro precision": "precision_macro",
            "Macro recall": "recall_macro", "Expected calibration error (15 bins)": "ece"}
    for entry, prefix in zip(index, ("eval", "test")):
        assert {m["name"]: m["value"] for m in entry["metrics"]} == {
            name: round(results[f"{prefix}_{key}"], 4) for name, key in keys.items()}
    for link in ("report/validation/confusion_matrix_normalized.png", "report/test/confusion_matrix_normalized.png",
                 "report/training_curves.png"):
        assert f"]({link})" in card and (out / link).is_file()
    assert "20% of train, held out stratified by class" in card


@pytest.mark.slow
def test_the_pictures_are_drawn_with_the_weights_that_were_scored_and_saved(tmp_path, colour_folders, monkeypatch):
    """With `ema_decay`, evaluation scores (and save_model writes) the average of the weights, not the last
    ones: the report's grid and Grad-CAM must use that average too."""
    from safetensors.torch import load_file

    import hf_resnet.run

    drawn = []

    class Recording(Classifier):
        def __init__(self, model, *args, **kwargs):
            drawn.append({k: v.detach().clone() for k, v in model.state_dict().items()})
            super().__init__(model, *args, **kwargs)

    monkeypatch.setattr(hf_resnet.run, "Classifier", Recording)
    out = tmp_path / "out"
    finetune(recipe_args(out, colour_folders, num_train_epochs="2", ema_decay="0.5", ema_warmup="false"))
    saved = load_file(str(out / "model.safetensors"))
    assert len(drawn) == 1
    assert all(torch.equal(drawn[0][name], saved[name]) for name in saved), "pictures drawn with other weights"
