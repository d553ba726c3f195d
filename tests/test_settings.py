"""The run's settings are decided once (`settings.resolve_settings`), logged, and not changed afterwards."""

import logging

import pytest
from conftest import recipe_args

from hf_resnet import run, settings
from hf_resnet.parser import parse_args


def snapshot(training_args) -> dict:
    return {key: repr(value) for key, value in training_args.to_dict().items()}


@pytest.mark.parametrize("streaming", ["false", "true"])
def test_training_args_are_final_from_the_settings_log_to_the_end(tmp_path, colour_folders, monkeypatch, caplog,
                                                                 streaming):
    """A streamed run is the one whose schedule is derived (max_steps, step-wise eval): those changes are made in
    `resolve_settings` and nowhere after it, through training, evaluation, reports and the card."""
    seen = {}

    def resolve_and_record(*args, **kwargs):
        result = settings.resolve_settings(*args, **kwargs)
        seen["after_resolve"] = snapshot(args[3])
        return result

    monkeypatch.setattr(run, "resolve_settings", resolve_and_record)
    arguments = parse_args(recipe_args(tmp_path / "out", colour_folders, streaming=streaming, num_train_epochs="2",
                                       eval_strategy="epoch", save_strategy="epoch", dataloader_num_workers="8"))
    training_args = arguments[3]
    with caplog.at_level(logging.INFO, logger="hf_resnet"):
        run.main(*arguments)
    assert snapshot(training_args) == seen["after_resolve"]
    logged = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Effective settings")]
    assert len(logged) == 1, logged  # once
    assert f"{training_args.dataloader_num_workers} DataLoader worker(s)" in logged[0]
    assert "dataloader_num_workers 8 ->" in logged[0]  # capped at this machine's cores, and said so
    if streaming == "true":  # 72 training images, batches of 8: 9 steps an epoch
        assert training_args.max_steps == 18
        assert "max_steps 18" in logged[0] and "eval_strategy steps, every 9" in logged[0]


def test_cross_field_checks_fail_at_parse_time_before_anything_loads(tmp_path, colour_folders):
    from hf_resnet.errors import ConfigError

    with pytest.raises(ConfigError, match="lr_scheduler_type"):
        parse_args(recipe_args(tmp_path / "out", colour_folders, lr_milestones="1", lr_scheduler_type="linear"))
