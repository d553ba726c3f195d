"""The model card: required sections, metrics the Hub can render (one result per split), no placeholders, and
what --push_to_hub uploads (model, processor, card, report files and pictures; private when asked)."""

import json
from concurrent.futures import Future
from fnmatch import fnmatch
from pathlib import Path
from types import SimpleNamespace

import pytest
import transformers.trainer
import yaml
from conftest import finetune, recipe_args
from model_card_pattern import MODEL_CARD_PATTERN
from test_modeling import save_checkpoint

import hf_resnet.trainer
from hf_resnet.configs import FinetuneTrainingArguments
from hf_resnet.reports.model_card import (
    CardInfo,
    SplitResult,
    base_model_license,
    dataset_title,
    render_model_card,
    write_model_card,
)

VALIDATION = {"accuracy": 0.9215, "top5_accuracy": 0.99, "f1_macro": 0.92, "precision_macro": 0.93,
              "recall_macro": 0.91, "loss": 0.3, "samples": 153}
TEST = {"accuracy": 0.9012, "f1_macro": 0.9, "samples": 150}


def per_class(labels):
    return [{"class": c, "precision": 0.9, "recall": 0.8 + i / 100, "f1": 0.85 + i / 1000, "support": 10,
             "predicted": 10} for i, c in enumerate(labels)]


def split(name, metrics, labels):
    return SplitResult(split=name, metrics=metrics, per_class=per_class(labels),
                       most_confused=[{"true": labels[0], "predicted": labels[1], "count": 3, "share_of_true": 0.3}],
                       figures={"confusion_matrix_normalized": f"report/{name}/confusion_matrix_normalized.png"},
                       files={"eval_report": f"report/{name}/eval_report.json"})


def card_info(labels=("ants", "bees"), **overrides):
    labels = list(labels)
    values = dict(
        base_model="microsoft/resnet-50", dataset_name="hymenoptera", dataset_id=None, labels=labels, tuning="full",
        train_examples=244, parameters=23_512_130, crop_size=224,
        hyperparameters={"head_learning_rate": 0.01, "random_resized_crop_scale": [0.08, 1.0]},
        results={"validation": split("validation", VALIDATION, labels), "test": split("test", TEST, labels)},
    )
    values.update(overrides)
    return CardInfo(**values)


def card_text(info=None, state=None, **args):
    training_args = FinetuneTrainingArguments(output_dir="unused", **{"learning_rate": 0.001, **args})
    return str(render_model_card(info or card_info(), training_args, "resnet-50-ants", "me/resnet-50-ants", state))


def metadata(text):
    return yaml.safe_load(text.split("---")[1])


def test_card_has_required_sections_and_one_result_per_split():
    text = card_text()
    match = MODEL_CARD_PATTERN.match(text)
    assert match, text
    assert metadata(text)["base_model"] == "microsoft/resnet-50"
    assert match["repo"] == "me/resnet-50-ants"
    assert float(match["accuracy"]) == float(match["table_accuracy"]) == 0.9215
    assert match["learning_rate"] == "0.001"
    assert match["head_learning_rate"] == "0.01"
    assert "| random_resized_crop_scale | [0.08, 1] |" in text
    assert "23,512,130 parameters" in text and "central 224x224 crop" in text
    results = metadata(text)["model-index"][0]["results"]
    assert [r["dataset"]["split"] for r in results] == ["validation", "test"]
    by_name = {m["name"]: m for m in results[0]["metrics"]}
    assert set(by_name) == {"Top-1 accuracy", "Top-5 accuracy", "Macro F1", "Macro precision", "Macro recall"}
    assert by_name["Top-5 accuracy"]["type"] == "top_5_accuracy" != by_name["Top-1 accuracy"]["type"]
    assert {m["name"]: m["value"] for m in results[1]["metrics"]} == {"Top-1 accuracy": 0.9012, "Macro F1": 0.9}
    assert "### Test split" in text and "used neither for training nor for choosing a checkpoint" in text


def test_card_without_base_model_says_so():
    text = card_text(card_info(base_model=None))
    assert "trained from a random initialisation" in text and "base_model" not in metadata(text)


def test_dataset_without_a_hub_id_gets_a_readable_name_and_no_hub_link():
    name = dataset_title("bundled:digits", "")
    text = card_text(card_info(dataset_name=name, dataset_id="bundled:digits"))
    dataset = metadata(text)["model-index"][0]["results"][0]["dataset"]
    assert dataset == {"name": "scikit-learn digits (bundled:digits)", "type": "imagefolder", "split": "validation"}
    assert "datasets" not in metadata(text)
    assert dataset_title(None, "/data/hymenoptera/train") == "hymenoptera"

    text = card_text(card_info(dataset_name="ILSVRC/imagenet-1k", dataset_id="ILSVRC/imagenet-1k"))
    assert metadata(text)["datasets"] == ["ILSVRC/imagenet-1k"]
    assert metadata(text)["model-index"][0]["results"][0]["dataset"]["type"] == "ILSVRC/imagenet-1k"


def test_license_is_inherited_from_a_local_base_models_card_and_can_be_set(tmp_path):
    base = save_checkpoint(tmp_path / "base", ["ants", "bees"])
    (base / "README.md").write_text("---\nlicense: mit\n---\n# base\n")
    assert base_model_license(str(base)) == "mit"
    assert base_model_license(str(tmp_path / "elsewhere")) is None
    assert base_model_license("microsoft/resnet-50") is None  # offline (the tests set HF_HUB_OFFLINE=1): no answer
    text = card_text(card_info(license="mit", license_source="inherited from base's card"))
    assert metadata(text)["license"] == "mit" and "mit (inherited from base's card)" in text
    assert "license" not in metadata(card_text()) and "## License" not in card_text()  # unknown: no placeholder


@pytest.mark.parametrize("epochs, shown", [(3.0, "3"), (12, "12"), (2.5, "2.5")])
def test_num_train_epochs_has_one_spelling(epochs, shown):
    assert f"| num_train_epochs | {shown} |" in card_text(num_train_epochs=epochs)


def test_max_steps_replaces_epochs_and_no_value_is_left_unset():
    text = card_text(max_steps=100)
    assert "| max_steps | 100 |" in text and "num_train_epochs" not in text
    assert "| max_steps |" not in card_text()  # -1 (unset) is not shown
    assert "None" not in card_text() and "none" not in card_text().split("## Hyperparameters")[-1]


def test_best_checkpoint_is_named_with_the_split_that_chose_it():
    log = []
    for epoch, (loss, eval_loss, accuracy) in enumerate([(1.0, 0.5, 0.8), (0.6, 0.4, 0.9), (0.5, 0.45, 0.85)], 1):
        log += [{"loss": loss, "step": 6 * epoch, "epoch": float(epoch)},
                {"eval_loss": eval_loss, "eval_accuracy": accuracy, "step": 6 * epoch, "epoch": float(epoch)}]
    log += [{"train_runtime": 75.0, "step": 18, "epoch": 3.0},
            {"eval_loss": 0.4, "eval_accuracy": 0.9, "step": 18, "epoch": 3.0}]  # the final evaluation
    state = SimpleNamespace(log_history=log, best_model_checkpoint="out/checkpoint-12", global_step=18, epoch=3.0)
    text = card_text(state=state, load_best_model_at_end=True, eval_strategy="epoch", save_strategy="epoch",
                     metric_for_best_model="accuracy")
    assert "best checkpoint (epoch 2, step 12), chosen by `eval_accuracy` on this same split" in text
    assert "the test split below played no part in the choice" in text
    assert "at the end of training" not in text.split("### Test split")[0]
    training_log = text.split("## Training log")[1].split("##")[0]
    assert training_log.count("\n| ") == 1 + 3  # header + one row per evaluation during training, not the final
    assert "| 2 | 12 | 0.6000 | 0.4000 | 0.9000 |" in training_log
    assert "Training time: 75 s for 18 optimizer steps" in text

    plain = card_text(state=SimpleNamespace(log_history=log, best_model_checkpoint=None, global_step=18, epoch=3.0))
    assert "at the end of training (epoch 3, step 18)" in plain and "best checkpoint" not in plain


def test_many_classes_trim_the_per_class_table():
    labels = [f"kind{i:02d}" for i in range(50)]
    text = card_text(card_info(labels=labels))
    table = text.split("### Validation split")[1].split("### Test split")[0]
    rows = [line for line in table.splitlines() if line.startswith("| kind")]
    assert len(rows) == 10 and rows[0].startswith("| kind00 |")  # the lowest F1 first
    assert "The 10 classes with the lowest F1 of 50; every class is in [eval_report.json]" in table
    few = card_text().split("### Test split")[0].splitlines()
    assert [line.split(" |")[0] for line in few if line.startswith(("| ants", "| bees"))] == ["| ants", "| bees"]


def test_quick_start_loads_the_hub_id_when_pushing_and_the_local_folder_otherwise(tmp_path):
    args = FinetuneTrainingArguments(output_dir=str(tmp_path / "model"))
    (tmp_path / "model").mkdir()
    local = write_model_card(card_info(), args).read_text()
    assert MODEL_CARD_PATTERN.match(local)["repo"] == str((tmp_path / "model").resolve())
    pushed = write_model_card(card_info(), args, repo_id="me/model").read_text()
    assert MODEL_CARD_PATTERN.match(pushed)["repo"] == "me/model"


class FakeHub:
    """Records what the Trainer (and `push_report`) would create and upload."""

    def __init__(self):
        self.repos, self.uploads = [], []

    def create_repo(self, repo_id, private=None, **kwargs):
        self.repos.append({"repo_id": repo_id, "private": private})
        return SimpleNamespace(repo_id=f"me/{repo_id.split('/')[-1]}")

    def upload_folder(self, repo_id, folder_path, ignore_patterns=(), allow_patterns=None, run_as_future=False,
                      **kwargs):
        root = Path(folder_path)
        files = sorted(
            p.relative_to(root).as_posix() for p in root.rglob("*")
            if p.is_file()
            and not any(fnmatch(part, pat) for part in p.relative_to(root).parts for pat in ignore_patterns or ())
            and (allow_patterns is None or any(fnmatch(p.relative_to(root).as_posix(), pat) for pat in allow_patterns))
        )
        card = root / "README.md"  # checkpoint pushes during training come before the card exists
        self.uploads.append({"repo_id": repo_id, "files": files, "card": card.read_text() if card.is_file() else None})
        if run_as_future:  # the Trainer's checkpoint pushes run in the background
            future = Future()
            future.set_result(None)
            return future


@pytest.mark.slow
def test_push_uploads_model_card_report_and_pictures_privately_and_evaluation_pushes_its_report(
        tmp_path, colour_folders, monkeypatch):
    hub = FakeHub()
    monkeypatch.setattr(transformers.trainer, "hf_api", lambda: hub)
    monkeypatch.setattr(hf_resnet.trainer, "hf_api", lambda: hub)
    ckpt = save_checkpoint(tmp_path / "ckpt", ["a", "b"])
    out = tmp_path / "colours-model"
    finetune(recipe_args(out, colour_folders, model_name_or_path=str(ckpt), config_name=None, push_to_hub="true",
                         hub_model_id="me/colours-model", hub_private_repo="true", num_train_epochs="1",
                         save_strategy="epoch"))
    assert hub.repos == [{"repo_id": "me/colours-model", "private": True}]
    final = hub.uploads[-1]
    assert final["repo_id"] == "me/colours-model"
    for name in ("config.json", "model.safetensors", "preprocessor_config.json", "all_results.json", "README.md",
                 "report/training_curves.png", "report/validation/eval_report.json",
                 "report/validation/confusion_matrix.png", "report/validation/confusion_matrix_normalized.png",
                 "report/validation/predictions_grid.png", "report/validation/gradcam.png",
                 "report/validation/predictions_validation.csv", "report/validation/confusion_matrix.csv"):
        assert name in final["files"], final["files"]
    assert not any(f.startswith("checkpoint-") for f in final["files"])
    match = MODEL_CARD_PATTERN.match(final["card"])
    assert match, final["card"]
    assert match["repo"] == "me/colours-model"  # the quick start loads what was pushed
    for link in ("report/validation/confusion_matrix_normalized.png", "report/training_curves.png"):
        assert f"]({link})" in final["card"] and link in final["files"]  # every picture the card shows is uploaded
    results = json.loads((out / "all_results.json").read_text())
    assert float(match["accuracy"]) == round(results["eval_accuracy"], 4)
    meta = metadata(final["card"])
    assert "base_model" not in meta and "datasets" not in meta  # local paths are not Hub ids
    assert "ckpt (a local checkpoint) fine-tuned" in final["card"]

    # an evaluation-only run of the pushed model uploads its report, not a model
    evaluation = tmp_path / "evaluation"
    finetune(recipe_args(evaluation, colour_folders, model_name_or_path=str(out), config_name=None, do_train="false",
                         push_to_hub="true", hub_model_id="me/colours-eval", hub_private_repo="true"))
    assert hub.repos[-1] == {"repo_id": "me/colours-eval", "private": True}
    pushed = hub.uploads[-1]
    assert pushed["repo_id"] == "me/colours-eval" and pushed["card"] is None
    assert "report/validation/eval_report.json" in pushed["files"] and "eval_results.json" in pushed["files"]
    assert not any(f.endswith((".safetensors", "config.json")) for f in pushed["files"])


def test_the_card_lists_what_the_strategy_changed_and_the_heads_rate():
    from hf_resnet.reports.model_card import run_hyperparameters
    from hf_resnet.strategy_config import StrategyArguments

    sgd = FinetuneTrainingArguments(output_dir="unused", optim="sgd", learning_rate=0.01)
    shown = run_hyperparameters(StrategyArguments(head_learning_rate=0.1, mixup_alpha=0.2), sgd, {"image_size": 224})
    assert shown == {"head_learning_rate": 0.1, "sgd_momentum": 0.9, "sgd_nesterov": False, "mixup_alpha": 0.2,
                     "image_size": 224}
    adamw = FinetuneTrainingArguments(output_dir="unused", learning_rate=0.003)
    plain = run_hyperparameters(StrategyArguments(), adamw, {})
    assert plain == {"head_learning_rate": "0.003 (same as learning_rate)"}  # nothing else changed
