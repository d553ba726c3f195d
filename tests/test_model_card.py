"""The model card: required sections, metrics the Hub can render, and what --push_to_hub would upload."""

import json
from concurrent.futures import Future

import pytest
import transformers.trainer
import yaml
from conftest import finetune, recipe_args
from model_card_pattern import MODEL_CARD_PATTERN
from test_modeling import save_checkpoint

from hf_resnet.configs import FinetuneTrainingArguments
from hf_resnet.reports.model_card import CardInfo, render_model_card


def card_text(**overrides):
    values = dict(
        base_model="microsoft/resnet-50", dataset_name="hymenoptera", dataset_id=None, labels=["ants", "bees"],
        eval_metrics={"eval_accuracy": 0.9215, "eval_f1_macro": 0.92, "eval_loss": 0.3, "eval_samples": 153},
        eval_split="validation", eval_examples=153, train_examples=244, tuning="full",
    )
    values.update(overrides)
    training_args = FinetuneTrainingArguments(output_dir="unused", learning_rate=0.001)
    return str(render_model_card(CardInfo(**values), training_args, "resnet-50-ants", "me/resnet-50-ants"))


def test_card_has_required_sections_and_metrics():
    text = card_text()
    match = MODEL_CARD_PATTERN.match(text)
    assert match, text
    metadata = yaml.safe_load(text.split("---")[1])
    assert metadata["base_model"] == "microsoft/resnet-50"
    assert match["repo"] == "me/resnet-50-ants"
    assert float(match["accuracy"]) == float(match["table_accuracy"]) == 0.9215
    assert match["learning_rate"] == "0.001"
    metadata = yaml.safe_load(text.split("---")[1])
    metrics = metadata["model-index"][0]["results"][0]["metrics"]
    assert {m["name"] for m in metrics} == {"Top-1 accuracy", "Macro F1"}  # loss and counts are not metrics


def test_card_without_base_model_says_so():
    text = card_text(base_model=None)
    assert "trained from a random initialisation" in text and "base_model" not in text.split("---")[1]


@pytest.mark.slow
def test_push_to_hub_uploads_model_processor_metrics_and_card(tmp_path, colour_folders, monkeypatch):
    uploads = []

    class FakeHub:
        def create_repo(self, repo_id, **kwargs):
            return type("RepoUrl", (), {"repo_id": f"me/{repo_id.split('/')[-1]}"})()

        def upload_folder(self, repo_id, folder_path, ignore_patterns=(), run_as_future=False, **kwargs):
            from fnmatch import fnmatch
            from pathlib import Path

            root = Path(folder_path)
            files = sorted(
                str(p.relative_to(root)) for p in root.rglob("*")
                if p.is_file()
                and not any(fnmatch(part, pat) for part in p.relative_to(root).parts for pat in ignore_patterns)
            )
            card = root / "README.md"  # checkpoint pushes during training come before the card exists
            uploads.append({"repo_id": repo_id, "files": files, "card": card.read_text() if card.is_file() else None})
            if run_as_future:  # the Trainer's checkpoint pushes run in the background
                future = Future()
                future.set_result(None)
                return future

    monkeypatch.setattr(transformers.trainer, "hf_api", lambda: FakeHub())
    ckpt = save_checkpoint(tmp_path / "ckpt", ["a", "b"])
    out = tmp_path / "colours-model"
    finetune(recipe_args(out, colour_folders, model_name_or_path=str(ckpt), config_name=None,
                                          push_to_hub="true", hub_model_id="me/colours-model", num_train_epochs="1",
                                          save_strategy="epoch"))
    final = uploads[-1]
    assert final["repo_id"] == "me/colours-model"
    for name in ("config.json", "model.safetensors", "preprocessor_config.json", "all_results.json", "README.md"):
        assert name in final["files"], final["files"]
    assert not any(f.startswith("checkpoint-") for f in final["files"])
    match = MODEL_CARD_PATTERN.match(final["card"])
    assert match, final["card"]
    results = json.loads((out / "all_results.json").read_text())
    assert float(match["accuracy"]) == round(results["eval_accuracy"], 4)
    metadata = yaml.safe_load(final["card"].split("---")[1])
    assert "base_model" not in metadata and "datasets" not in metadata  # local paths are not Hub ids
    assert "ckpt (a local checkpoint) fine-tuned" in final["card"]
