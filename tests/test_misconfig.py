"""Misconfiguration stops before training with one message naming the field and the fix (issue 3's list;
unknown YAML keys, columns, batch size and unreachable Hub ids are in test_bad_input.py)."""

import functools
import json
from types import SimpleNamespace

import finetune
import numpy as np
import pytest
from conftest import make_image_folder, recipe_args
from datasets import Dataset
from transformers.trainer_utils import IntervalStrategy, SaveStrategy

from hf_resnet.checkpoints import check_labels
from hf_resnet.configs import ConfigError, DataArguments, FinetuneTrainingArguments
from hf_resnet.data import DataError, load_image_data
from hf_resnet.parser import parse_args
from hf_resnet.preflight import check_label_values, check_output_dir
from hf_resnet.trainer import NonFiniteLossError, use_steps_for_epochs


@pytest.mark.parametrize("flags, match", [({"fp16": True}, "fp16: false"), ({"bf16": True}, "bf16: false")])
def test_precision_the_machine_cannot_run(tmp_path, flags, match):
    with pytest.raises(ConfigError, match=match):
        FinetuneTrainingArguments(output_dir=str(tmp_path), **flags)


def test_unwritable_output_dir(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    with pytest.raises(ConfigError, match="`output_dir` .* is not writable"):
        check_output_dir(str(blocker / "out"))


def test_disk_without_room_for_checkpoints(tmp_path):
    with pytest.raises(ConfigError, match="GiB free under `output_dir`.*another folder"):
        check_output_dir(str(tmp_path), min_free=2**62)


def test_labels_out_of_range_for_the_model():
    dataset = Dataset.from_dict({"label": np.array([0, 1, 7])})
    with pytest.raises(DataError, match=r"outside 0\.\.2 .*max 7"):
        check_label_values(dataset, "label", 3, "train")
    check_label_values(Dataset.from_dict({"label": [0, 2, -1]}), "label", 3, "test")  # -1: unlabeled, fine


def test_gated_or_unreachable_dataset_names_token_and_login():
    with pytest.raises(DataError, match="token.*hf auth login"):
        load_image_data(DataArguments(dataset_name="ILSVRC/imagenet-1k"))


def test_resuming_a_checkpoint_trained_on_other_classes(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"id2label": {"0": "cat", "1": "dog"}}))
    with pytest.raises(ConfigError, match="trained on classes.*resume_from_checkpoint false"):
        check_labels(str(tmp_path), ["ant", "bee"])
    check_labels(str(tmp_path), ["cat", "dog"])


def test_unknown_size_stream_with_epoch_eval_on_several_processes():
    args = SimpleNamespace(world_size=2, eval_strategy=IntervalStrategy.EPOCH, save_strategy=SaveStrategy.STEPS)
    with pytest.raises(ConfigError, match="eval_strategy: steps"):
        use_steps_for_epochs(args, None)


@pytest.mark.slow
def test_rerunning_a_finished_run_is_refused_until_asked(tmp_path, colour_folders):
    out = tmp_path / "out"
    args = recipe_args(out, colour_folders, num_train_epochs="1", save_strategy="epoch")
    finetune.main(*parse_args(args))
    with pytest.raises(ConfigError, match="finished run.*resume_from_checkpoint false"):
        finetune.main(*parse_args(args))
    metrics = finetune.main(*parse_args(args + ["--resume_from_checkpoint", "false"]))
    assert metrics["train_loss"] > 0  # trained again from scratch, not 0 steps


@pytest.mark.slow
def test_resuming_into_a_folder_trained_on_other_classes(tmp_path, colour_folders):
    out = tmp_path / "out"
    finetune.main(*parse_args(recipe_args(out, colour_folders, num_train_epochs="1", save_strategy="epoch")))
    other = make_image_folder(tmp_path / "other", 8, seed=9, classes={"cyan": (0, 200, 200), "grey": (90, 90, 90)})
    with pytest.raises(ConfigError, match="trained on classes"):
        finetune.main(*parse_args(recipe_args(out, {"train": other, "validation": other})))


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["stop", "skip"])
def test_nonfinite_loss(tmp_path, colour_folders, mode):
    args = recipe_args(tmp_path / "out", colour_folders, optim="sgd", learning_rate="1e20", weight_decay="0",
                       num_train_epochs="1", on_nonfinite_loss=mode)
    if mode == "stop":
        with pytest.raises(NonFiniteLossError, match=r"at step \d+ .*\.png.*on_nonfinite_loss: skip"):
            finetune.main(*parse_args(args))
        return
    finetune.main(*parse_args(args))  # every exploded batch skipped: the run ends, weights stay finite
    from safetensors.torch import load_file
    weights = load_file(str(tmp_path / "out" / "model.safetensors"))
    assert all(bool(t.float().isfinite().all()) for t in weights.values())


def test_yaml_booleans_for_resume(tmp_path):
    from hf_resnet.checkpoints import resume_checkpoint

    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"train_dir: {tmp_path}\noutput_dir: {tmp_path / 'out'}\nresume_from_checkpoint: false\n")
    *_, training_args = parse_args(["--config", str(recipe)])
    assert resume_checkpoint(training_args) is None


def test_persistent_workers_would_freeze_augmentation(tmp_path):
    with pytest.raises(ConfigError, match="dataloader_persistent_workers"):
        FinetuneTrainingArguments(output_dir=str(tmp_path), dataloader_num_workers=2, dataloader_persistent_workers=True)


@pytest.mark.slow
def test_skipped_nonfinite_update_leaves_weights_and_optimizer_untouched(tmp_path, colour_folders, monkeypatch):
    """AdamW with weight decay: 3 steps whose 3rd loss is NaN end exactly where 2 clean steps end."""
    from safetensors.torch import load_file
    from transformers import ResNetForImageClassification

    common = dict(num_train_epochs="1", lr_scheduler_type="constant", weight_decay="0.1", save_strategy="no",
                  eval_strategy="no", on_nonfinite_loss="skip")
    finetune.main(*parse_args(recipe_args(tmp_path / "two", colour_folders, max_steps="2", **common)))

    forward, calls = ResNetForImageClassification.forward, []

    @functools.wraps(forward)  # the Trainer reads `labels` from the signature
    def poisoned(self, *args, **kwargs):
        out = forward(self, *args, **kwargs)
        if self.training:
            calls.append(1)
            if len(calls) == 3:
                out.loss = out.loss * float("nan")
        return out

    monkeypatch.setattr(ResNetForImageClassification, "forward", poisoned)
    finetune.main(*parse_args(recipe_args(tmp_path / "three", colour_folders, max_steps="3", **common)))
    a, b = load_file(str(tmp_path / "two" / "model.safetensors")), load_file(str(tmp_path / "three" / "model.safetensors"))
    assert [k for k in a if not torch_equal(a[k], b[k])] == []


def torch_equal(x, y) -> bool:
    import torch

    return bool(torch.equal(x, y))
