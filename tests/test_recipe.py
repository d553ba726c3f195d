"""End to end: recipes/finetune.py on image folders made by the tests, in process, offline."""

import json

import finetune
import pytest
from conftest import recipe_args
from transformers import pipeline

from hf_resnet.parser import parse_args


def run_recipe(tmp_path, folders, **overrides):
    out = tmp_path / "out"
    metrics = finetune.main(*parse_args(recipe_args(out, folders, **overrides)))
    return out, metrics


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
    rows = (out / "predictions.csv").read_text().strip().splitlines()
    assert rows[0].startswith("index,file,label,score")
    assert len(rows) == 1 + 6
    assert all(row.split(",")[2] in {"red", "green", "blue"} for row in rows[1:])


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


@pytest.mark.slow
def test_evaluate_only_keeps_the_pretrained_head(tmp_path, colour_folders):
    from test_modeling import save_checkpoint

    ckpt = save_checkpoint(tmp_path / "ckpt", ["red", "green", "blue"])  # the dataset's classes, another order
    out, metrics = run_recipe(tmp_path, colour_folders, model_name_or_path=str(ckpt), config_name=None,
                              do_train="false")
    accuracy, count = pipeline_accuracy(ckpt, colour_folders["validation"])  # the checkpoint as it was saved
    assert metrics["eval_samples"] == count == 24
    assert metrics["eval_accuracy"] == pytest.approx(accuracy, abs=1e-9)


def test_evaluate_only_refuses_a_replaced_head(tmp_path, colour_folders):
    from test_modeling import save_checkpoint

    from hf_resnet.data import DataError

    ckpt = save_checkpoint(tmp_path / "ckpt", ["cat", "dog", "bird"])
    with pytest.raises(DataError, match="head would be replaced"):
        run_recipe(tmp_path, colour_folders, model_name_or_path=str(ckpt), config_name=None, do_train="false")
