"""Which checkpoint a rerun resumes from, and the runs it refuses to resume or repeat silently."""

import json

import pytest
from conftest import finetune, make_image_folder, recipe_args

from hf_resnet.errors import ConfigError
from hf_resnet.parser import parse_args
from hf_resnet.training.checkpoints import check_labels, last_complete_checkpoint, resume_checkpoint


def test_resuming_a_checkpoint_trained_on_other_classes(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"id2label": {"0": "cat", "1": "dog"}}))
    with pytest.raises(ConfigError, match="trained on classes.*resume_from_checkpoint false"):
        check_labels(str(tmp_path), ["ant", "bee"])
    check_labels(str(tmp_path), ["cat", "dog"])


@pytest.mark.slow
def test_rerunning_a_finished_run_is_refused_until_asked(tmp_path, colour_folders):
    out = tmp_path / "out"
    args = recipe_args(out, colour_folders, num_train_epochs="1", save_strategy="epoch")
    finetune(args)
    with pytest.raises(ConfigError, match="finished run.*resume_from_checkpoint false"):
        finetune(args)
    metrics = finetune(args + ["--resume_from_checkpoint", "false"])
    assert metrics["train_loss"] > 0  # trained again from scratch, not 0 steps


@pytest.mark.slow
def test_resuming_into_a_folder_trained_on_other_classes(tmp_path, colour_folders):
    out = tmp_path / "out"
    finetune(recipe_args(out, colour_folders, num_train_epochs="1", save_strategy="epoch"))
    other = make_image_folder(tmp_path / "other", 8, seed=9, classes={"cyan": (0, 200, 200), "grey": (90, 90, 90)})
    with pytest.raises(ConfigError, match="trained on classes"):
        finetune(recipe_args(out, {"train": other, "validation": other}))


def test_yaml_booleans_for_resume(tmp_path):

    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"train_dir: {tmp_path}\noutput_dir: {tmp_path / 'out'}\nresume_from_checkpoint: false\n")
    *_, training_args = parse_args(["--config", str(recipe)])
    assert resume_checkpoint(training_args) is None


def test_partial_checkpoint_is_set_aside(tmp_path):
    good, partial = tmp_path / "checkpoint-4", tmp_path / "checkpoint-8"
    good.mkdir()
    for name in ("model.safetensors", "optimizer.pt", "scheduler.pt"):
        (good / name).write_bytes(b"x")
    (good / "trainer_state.json").write_text("{}")
    partial.mkdir()
    (partial / "model.safetensors").write_bytes(b"x")  # the crash came before the optimizer and state were written
    assert last_complete_checkpoint(tmp_path) == str(good)
    assert not partial.exists() and (tmp_path / "incomplete-checkpoint-8" / "model.safetensors").exists()
    (good / "trainer_state.json").write_text('{"global_st')  # cut short
    assert last_complete_checkpoint(tmp_path) is None



@pytest.mark.slow
def test_every_file_a_run_writes_is_readable_as_the_umask_says(tmp_path, colour_folders):
    """safetensors writes weights 0600; the run leaves them, and every checkpoint file, at the usual mode."""
    import os

    out = tmp_path / "out"
    previous = os.umask(0o022)  # the usual umask, whatever this shell has
    try:
        finetune(recipe_args(out, colour_folders, num_train_epochs="1", save_strategy="epoch"))
    finally:
        os.umask(previous)
    files = [p for p in out.rglob("*") if p.is_file()]
    assert out / "model.safetensors" in files and any(p.parent.name.startswith("checkpoint-") for p in files)
    modes = {str(p.relative_to(out)): oct(p.stat().st_mode & 0o777) for p in files}
    assert set(modes.values()) == {"0o644"}, modes
