"""Argument dataclasses reject values that cannot work, before any data or weights are touched."""

import pytest

from hf_resnet.configs import DataArguments, FinetuneTrainingArguments, ModelArguments, StrategyArguments
from hf_resnet.errors import ConfigError


def test_bogus_tuning():
    with pytest.raises(ConfigError, match=r"`tuning` must be one of 'full', 'linear_probe', got 'bogus'"):
        StrategyArguments(tuning="bogus")


def test_no_data_source():
    with pytest.raises(ValueError, match=r"No data: set `dataset_name`.*`train_dir`/`validation_dir`"):
        DataArguments()


def test_no_model_and_no_config():
    with pytest.raises(ValueError, match=r"Set `model_name_or_path`.*`config_name`"):
        ModelArguments(model_name_or_path="null")


@pytest.mark.parametrize("flags, match", [({"fp16": True}, "fp16: false"), ({"bf16": True}, "bf16: false")])
def test_precision_the_machine_cannot_run(tmp_path, flags, match):
    with pytest.raises(ConfigError, match=match):
        FinetuneTrainingArguments(output_dir=str(tmp_path), **flags)


def test_persistent_workers_would_freeze_augmentation(tmp_path):
    with pytest.raises(ConfigError, match="dataloader_persistent_workers"):
        FinetuneTrainingArguments(output_dir=str(tmp_path), dataloader_num_workers=2,
                                  dataloader_persistent_workers=True)



@pytest.mark.parametrize("cores, processes, asked, expected", [(2, 1, 4, 2), (2, 1, 2, 2), (16, 2, 15, 8),
                                                               (2, 2, 2, 1), (1, 1, 0, 0)])
def test_dataloader_workers_are_capped_at_the_cores(tmp_path, monkeypatch, cores, processes, asked, expected):
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(cores)))
    monkeypatch.setenv("LOCAL_WORLD_SIZE", str(processes))
    args = FinetuneTrainingArguments(output_dir=str(tmp_path), dataloader_num_workers=asked)
    note = args.cap_dataloader_workers()
    assert args.dataloader_num_workers == expected
    assert (note is None) == (asked == expected)
    if note:
        assert f"dataloader_num_workers {asked} -> {expected}" in note
