"""Checks that need data and config together stop the run before any weights are built or trained."""

import numpy as np
import pytest
from conftest import finetune, recipe_args
from datasets import Dataset

from hf_resnet.errors import ConfigError, DataError
from hf_resnet.training.preflight import check_label_values, check_output_dir


def test_recipe_batch_larger_than_train_set_stops_before_training(tmp_path, colour_folders):
    out = tmp_path / "out"
    argv = recipe_args(out, colour_folders, per_device_train_batch_size="1000")
    with pytest.raises(DataError, match=r"72 images, fewer than one batch \(1000.*lower `per_device_train_batch"):
        finetune(argv)
    assert not list(out.rglob("model.safetensors")) and not list(out.glob("checkpoint-*"))


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

