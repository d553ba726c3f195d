"""Argument dataclasses reject values that cannot work, before any data or weights are touched."""

import json

import pytest
import torch

from hf_resnet.configs import DataArguments, FinetuneTrainingArguments, ModelArguments
from hf_resnet.errors import ConfigError
from hf_resnet.strategy_config import StrategyArguments


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
    from hf_resnet.settings import cap_workers

    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(cores)))
    monkeypatch.setenv("LOCAL_WORLD_SIZE", str(processes))
    args = FinetuneTrainingArguments(output_dir=str(tmp_path), dataloader_num_workers=asked)
    note = cap_workers(args)
    assert args.dataloader_num_workers == expected
    assert (note is None) == (asked == expected)
    if note:
        assert f"dataloader_num_workers {asked} -> {expected}" in note


@pytest.mark.parametrize("cores, processes, gpu, expected", [(16, 1, True, 15), (16, 2, True, 7), (2, 1, True, 1),
                                                              (1, 1, True, 1), (192, 8, True, 16), (16, 1, False, 2),
                                                              (1, 1, False, 1)])
def test_default_workers_feed_a_gpu_from_every_core_but_one(tmp_path, monkeypatch, cores, processes, gpu, expected):
    from hf_resnet.configs import default_workers

    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(cores)))
    monkeypatch.setenv("LOCAL_WORLD_SIZE", str(processes))
    assert default_workers(gpu) == expected
    unset = FinetuneTrainingArguments(output_dir=str(tmp_path)).dataloader_num_workers
    assert unset == default_workers(torch.cuda.is_available())
    assert FinetuneTrainingArguments(output_dir=str(tmp_path), dataloader_num_workers=0).dataloader_num_workers == 0


@pytest.mark.parametrize("values, match", [
    ({"tuning": "linear_probe", "frozen_stages": 2}, "already freezes the whole backbone"),
    ({"frozen_stages": 5}, "`frozen_stages` must be -1"),
    ({"unfreeze_epochs": [3, 1]}, "`unfreeze_epochs` must be positive and in order"),
    ({"frozen_batchnorm": "adapt"}, "`frozen_batchnorm` must be 'eval' or 'train'"),
    ({"param_groups": ["conv1 lr=0.1"]}, r"must read `SELECTOR: lr=0.01"),
    ({"param_groups": [{"params": "fc", "momentum": 0.5}]}, r"needs `params` .* got \['momentum'\]"),
    ({"param_groups": ["fc: lr=fast"]}, "`lr` must be a number"),
    ({"lr_milestones": [5], "lr_step_size": 2}, "`lr_milestones` or `lr_step_size`, not both"),
    ({"class_weights": ["heavy"]}, "`class_weights` must be a list of numbers"),
    ({"class_weights": ["auto"], "balanced_sampler": True}, "correct it twice"),
    ({"sgd_momentum": 0.0, "sgd_nesterov": True}, "needs `sgd_momentum` > 0"),
    ({"ema_decay": 1.5}, "`ema_decay` must be in"),
])
def test_bad_strategy_values_name_the_field_and_the_fix(values, match):
    with pytest.raises(ConfigError, match=match):
        StrategyArguments(**values)


def test_param_groups_from_yaml_and_command_line_agree():
    yaml_style = StrategyArguments(param_groups=[{"params": "conv1", "lr": 0.001}, {"params": "fc", "lr": 0.01}])
    cli_style = StrategyArguments(param_groups=["conv1: lr=0.001", "fc: lr=0.01, weight_decay=0"])
    assert yaml_style.param_groups[0] == cli_style.param_groups[0] == {"params": "conv1", "lr": 0.001,
                                                                       "weight_decay": None}
    assert cli_style.param_groups[1]["weight_decay"] == 0.0
    assert StrategyArguments(class_weights="auto").class_weights == "auto"
    assert StrategyArguments(class_weights=["1", "2.5"]).class_weights == [1.0, 2.5]


@pytest.mark.parametrize("strategy, training, match", [
    ({"lr_milestones": [5]}, {"lr_scheduler_type": "cosine"}, "set `lr_scheduler_type: constant`"),
    ({}, {"optim": "sgd", "optim_args": "momentum=0.5"}, "use `sgd_momentum`"),
    ({"sgd_nesterov": True}, {"optim": "adamw_torch"}, "applies to `optim: sgd`"),
    ({"early_stopping_patience": 2}, {}, "needs `metric_for_best_model`"),
])
def test_strategy_settings_that_contradict_the_trainers(tmp_path, strategy, training, match):
    args = FinetuneTrainingArguments(output_dir=str(tmp_path), report_to="none", **training)
    with pytest.raises(ConfigError, match=match):
        StrategyArguments(**strategy).check_with(args)


@pytest.mark.parametrize("values, match", [
    ({"auto_augment": "randaug"}, "`auto_augment` must be one of"),
    ({"random_erasing": 1.5}, "`random_erasing` must be between 0 and 1"),
    ({"rotation_degrees": 270}, "`rotation_degrees` must be 0-180"),
])
def test_bad_augmentation_values(tmp_path, values, match):
    with pytest.raises(ConfigError, match=match):
        DataArguments(train_dir=str(tmp_path), **values)


def test_gpu_batches_are_copied_without_waiting_unless_the_user_says_otherwise(tmp_path):
    """On a GPU the host-to-device copy of each pinned batch is queued (accelerate's `non_blocking`) so the CPU
    does not wait for the running step; a setting the user wrote wins; on the CPU nothing changes."""
    from hf_resnet.configs import copies_without_waiting

    assert copies_without_waiting(None) == {"non_blocking": True}
    assert copies_without_waiting({"even_batches": False}) == {"non_blocking": True, "even_batches": False}
    assert copies_without_waiting({"non_blocking": False}) == {"non_blocking": False}
    assert json.loads(copies_without_waiting('{"non_blocking": false}')) == {"non_blocking": False}
    as_typed = FinetuneTrainingArguments(output_dir=str(tmp_path),
                                         accelerator_config=copies_without_waiting('{"non_blocking": "false"}'))
    assert as_typed.accelerator_config.non_blocking is False  # the Trainer still converts "false" in a JSON string
    assert copies_without_waiting("accelerator.json") == "accelerator.json"
    queued = FinetuneTrainingArguments(output_dir=str(tmp_path), accelerator_config=copies_without_waiting(None))
    assert queued.accelerator_config.non_blocking is True  # what the Trainer hands accelerate's DataLoaderShard
    default = FinetuneTrainingArguments(output_dir=str(tmp_path)).accelerator_config.non_blocking
    assert default is torch.cuda.is_available()
