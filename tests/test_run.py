"""End to end: recipes/finetune.py on image folders made by the tests, in process, offline."""

import csv
import json
from pathlib import Path

import pytest
from conftest import finetune, recipe_args
from transformers import pipeline


def run_recipe(tmp_path, folders, **overrides):
    out = tmp_path / "out"
    metrics = finetune(recipe_args(out, folders, **overrides))
    return out, metrics


def read_csv(path):
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def train_losses(out):
    history = json.loads((out / "trainer_state.json").read_text())["log_history"]
    return [h["loss"] for h in history if "loss" in h]


def pipeline_accuracy(out, folder):
    classifier = pipeline("image-classification", model=str(out), device="cpu")
    files = sorted(folder.rglob("*.png"))
    predictions = classifier([str(f) for f in files], top_k=1)
    hits = [p[0]["label"] == f.parent.name for p, f in zip(predictions, files)]
    return sum(hits) / len(hits), len(files)


@pytest.mark.slow
def test_recipe_trains_saves_and_serves_through_pipeline(tmp_path, colour_folders):
    out, metrics = run_recipe(tmp_path, colour_folders, test_dir=colour_folders["test"])

    losses = train_losses(out)
    assert sum(losses[-4:]) / 4 < 0.7 * sum(losses[:4]) / 4, losses  # loss falls
    results = json.loads((out / "all_results.json").read_text())
    for key in ("eval_accuracy", "eval_top5_accuracy", "eval_precision_macro", "eval_recall_macro", "eval_f1_macro"):
        if key == "eval_top5_accuracy":
            assert key not in results  # 3 classes: top-5 would be meaningless
        else:
            assert 0.0 <= results[key] <= 1.0
    assert results["eval_accuracy"] >= 0.8
    assert results["eval_samples"] == 24

    config = json.loads((out / "config.json").read_text())
    assert sorted(config["id2label"].values()) == ["blue", "green", "red"]
    assert (out / "model.safetensors").is_file() and (out / "preprocessor_config.json").is_file()
    assert "pipeline(" in (out / "README.md").read_text()

    accuracy, count = pipeline_accuracy(out, colour_folders["validation"])
    assert count == 24
    assert accuracy == pytest.approx(results["eval_accuracy"], abs=1e-9)

    # the flat, unlabeled test folder is predicted, not scored
    assert not any(k.startswith("test_accuracy") for k in results)
    rows = read_csv(out / "report" / "test" / "predictions_test.csv")
    assert len(rows) == 6
    assert sorted(Path(r["file"]).name for r in rows) == sorted(p.name for p in colour_folders["test"].iterdir())
    assert all(r["true_label"] == "" and r["predicted_label"] in {"red", "green", "blue"} for r in rows)
    assert not (out / "report" / "test" / "eval_report.json").exists()  # nothing to score


@pytest.mark.slow
def test_recipe_streaming(tmp_path, colour_folders):
    out, metrics = run_recipe(tmp_path, colour_folders, streaming="true", shuffle_buffer_size="100")
    state = json.loads((out / "trainer_state.json").read_text())
    # 72 images / batch 8 = 9 steps per epoch, 4 epochs: max_steps derived from the folder's size
    assert state["global_step"] == 36
    losses = train_losses(out)
    assert sum(losses[-4:]) / 4 < 0.7 * sum(losses[:4]) / 4, losses
    results = json.loads((out / "all_results.json").read_text())
    assert results["eval_samples"] == 24
    accuracy, _ = pipeline_accuracy(out, colour_folders["validation"])
    assert accuracy == pytest.approx(results["eval_accuracy"], abs=1e-9)
    # a streamed split's report: every image once, identified by its position (a stream carries no file names)
    rows = read_csv(out / "report" / "validation" / "predictions_validation.csv")
    assert len(rows) == 24 and all(r["file"] == "" for r in rows)
    assert sum(r["true_label"] == r["predicted_label"] for r in rows) / 24 == pytest.approx(accuracy)
    report = json.loads((out / "report" / "validation" / "eval_report.json").read_text())
    assert report["scored"] == 24 and report["rows_identified_by"].startswith("position")
    assert (out / "report" / "validation" / "predictions_grid.png").is_file()
    assert (out / "report" / "validation" / "gradcam.png").is_file()


@pytest.mark.slow
def test_evaluate_only_keeps_the_pretrained_head_and_maps_labels_by_name(tmp_path, colour_folders):
    import torch
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    trained, trained_metrics = run_recipe(tmp_path / "trained", colour_folders)
    assert trained_metrics["eval_accuracy"] >= 0.8
    # the same model, its head rows and class names in another order (as a Hub checkpoint might list them)
    model = AutoModelForImageClassification.from_pretrained(trained)
    names = [model.config.id2label[i] for i in range(3)]  # sorted: blue, green, red
    order = [2, 0, 1]
    with torch.no_grad():
        model.classifier[1].weight.copy_(model.classifier[1].weight[order].clone())
        model.classifier[1].bias.copy_(model.classifier[1].bias[order].clone())
    model.config.id2label = {i: names[j] for i, j in enumerate(order)}
    model.config.label2id = {name: i for i, name in model.config.id2label.items()}
    ckpt = tmp_path / "ckpt"
    model.save_pretrained(ckpt)
    AutoImageProcessor.from_pretrained(trained).save_pretrained(ckpt)

    out, metrics = run_recipe(tmp_path / "eval", colour_folders, model_name_or_path=str(ckpt), config_name=None,
                              do_train="false")
    assert metrics["eval_samples"] == 24
    assert metrics["eval_accuracy"] == pytest.approx(trained_metrics["eval_accuracy"], abs=1e-9)  # labels mapped
    accuracy, _ = pipeline_accuracy(ckpt, colour_folders["validation"])
    assert metrics["eval_accuracy"] == pytest.approx(accuracy, abs=1e-9)
    assert not (out / "README.md").exists()  # no model was made: no card
    assert not (out / "report" / "training_curves.png").exists()  # nor any training: the report, without curves
    assert len(read_csv(out / "report" / "validation" / "predictions_validation.csv")) == 24


@pytest.mark.slow
def test_labeled_test_folder_with_some_classes_is_scored_by_name(tmp_path, colour_folders):
    import shutil

    test = tmp_path / "test"
    for name in ("red", "blue"):  # its own class list is [blue, red]; the model's is [blue, green, red]
        shutil.copytree(colour_folders["validation"] / name, test / name)
    out, metrics = run_recipe(tmp_path, colour_folders, test_dir=test)
    assert metrics["test_samples"] == 16
    assert metrics["test_accuracy"] >= 0.8  # red scored as red, not as green
    rows = read_csv(out / "report" / "test" / "predictions_test.csv")
    assert [r["true_label"] for r in rows] == ["blue"] * 8 + ["red"] * 8  # the head's names, not the folder's ids
    report = json.loads((out / "report" / "test" / "eval_report.json").read_text())
    assert {c["class"]: c["support"] for c in report["per_class"]} == {"blue": 8, "green": 0, "red": 8}


def test_test_folder_with_unknown_classes_is_refused(tmp_path, colour_folders):
    from conftest import make_image_folder

    from hf_resnet.errors import DataError

    test = make_image_folder(tmp_path / "test", 2, seed=5, classes={"cyan": (0, 200, 200), "grey": (90, 90, 90)})
    with pytest.raises(DataError, match="not training classes: \\['cyan', 'grey'\\]"):
        run_recipe(tmp_path, colour_folders, test_dir=test)


def test_evaluate_only_refuses_a_replaced_head(tmp_path, colour_folders):
    from test_modeling import save_checkpoint

    from hf_resnet.errors import DataError

    ckpt = save_checkpoint(tmp_path / "ckpt", ["cat", "dog", "bird"])
    names_the_classes = r"3 of the data.s 3 classes match no single class .*\(.blue., .green., .red.\).*class_map"
    with pytest.raises(DataError, match=names_the_classes):
        run_recipe(tmp_path, colour_folders, model_name_or_path=str(ckpt), config_name=None, do_train="false")


@pytest.mark.slow
def test_labeled_test_folder_with_one_class_is_scored(tmp_path, colour_folders):
    import shutil

    test = tmp_path / "test"
    shutil.copytree(colour_folders["validation"] / "green", test / "green")
    out, metrics = run_recipe(tmp_path, colour_folders, test_dir=test, num_train_epochs="1")
    assert metrics["test_samples"] == 8


@pytest.mark.slow
def test_compiled_channels_last_run_saves_a_plain_model_that_pipeline_serves(tmp_path, colour_folders):
    """`torch_compile` and `channels_last` are speed options only: the same Trainer subclass runs under them, the
    saved weights carry no compile wrapper names, and pipeline() reproduces the evaluation."""
    out, metrics = run_recipe(tmp_path, colour_folders, torch_compile="true", channels_last="true",
                              num_train_epochs="1")
    from safetensors import safe_open

    with safe_open(str(out / "model.safetensors"), "pt") as weights:
        names = list(weights.keys())
    assert names and not any("_orig_mod" in name for name in names)
    results = json.loads((out / "all_results.json").read_text())
    accuracy, count = pipeline_accuracy(out, colour_folders["validation"])
    assert count == 24 and accuracy == pytest.approx(results["eval_accuracy"], abs=1e-9)


@pytest.mark.slow
def test_a_last_batch_of_one_image_trains_instead_of_crashing_in_batchnorm(tmp_path, colour_folders):
    """25 images at batch 8 leave one image for each epoch's last step; the small model's last stage is 1x1, where
    BatchNorm in training mode cannot normalise a single value per channel. It gets an ignored copy instead."""
    from conftest import make_image_folder

    train = make_image_folder(tmp_path / "train", 8, seed=3)  # 24 images
    make_image_folder(tmp_path / "extra", 1, seed=4)
    (tmp_path / "extra" / "red" / "red_000.png").rename(train / "red" / "lone.png")  # 25
    out, metrics = run_recipe(tmp_path, {"train": train, "validation": colour_folders["validation"]},
                              num_train_epochs="2")
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["global_step"] == 8  # 4 steps per epoch, the last of one image
    assert all(h["loss"] == h["loss"] for h in state["log_history"] if "loss" in h)  # finite


@pytest.mark.parametrize("device, asked, full_determinism, expected", [
    ("cuda", None, False, (True, True)), ("cuda", None, True, (True, False)), ("cuda", False, False, (True, False)),
    ("cpu", False, False, (False, None)),  # on a CPU the flag is left as it was, even when asked off
])
def test_gpu_defaults_channels_last_and_cudnn_benchmark_unless_determinism(device, asked, full_determinism,
                                                                             expected):
    """With a GPU: channels-last and cuDNN's timed algorithms (timm's default too); `full_determinism` keeps the
    same algorithms every run; on a CPU neither is touched."""
    from types import SimpleNamespace

    import torch

    from hf_resnet.configs import ModelArguments
    from hf_resnet.settings import gpu_choices

    args = SimpleNamespace(device=torch.device(device), full_determinism=full_determinism)
    assert gpu_choices(ModelArguments(config_name="bundled:resnet-smoke", cudnn_benchmark=asked), args) == expected


def test_cudnn_benchmark_and_full_determinism_together_are_refused_at_parse_time():
    from hf_resnet.errors import ConfigError
    from hf_resnet.parser import parse_args

    with pytest.raises(ConfigError, match="full_determinism.*keep one"):
        parse_args(["--config", "smoke/digits_smoke", "--cudnn_benchmark", "true", "--full_determinism", "true"])
