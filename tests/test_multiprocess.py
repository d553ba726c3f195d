"""The recipe under 2 processes on the CPU (gloo DDP), launched exactly as a user would with accelerate."""

import json
import os
import subprocess
import sys

import pytest
from conftest import REPO, recipe_args


def launch(args: list[str], timeout: int = 600) -> subprocess.CompletedProcess:
    """`accelerate launch --config_file recipes/accelerate/cpu_2proc.yaml recipes/finetune.py ARGS`, as a user
    runs it; asserts exit 0."""
    command = [
        sys.executable, "-m", "accelerate.commands.launch",
        "--config_file", str(REPO / "recipes" / "accelerate" / "cpu_2proc.yaml"),
        str(REPO / "recipes" / "finetune.py"), *args,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=timeout, cwd=REPO)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result

@pytest.mark.slow
@pytest.mark.parametrize("streaming", ["false", "true"])
def test_two_processes_share_the_work_and_score_each_example_once(tmp_path, colour_folders, streaming):
    out = tmp_path / "out"
    launch(recipe_args(out, colour_folders, num_train_epochs="2", streaming=streaming))

    state = json.loads((out / "trainer_state.json").read_text())
    # 72 images, 8 per process per step: 2 processes -> 5 steps per epoch (one process alone would need 9)
    assert state["global_step"] == 10
    results = json.loads((out / "all_results.json").read_text())
    assert results["eval_samples"] == 24  # every validation image once: no padding duplicates from the 2nd process
    assert (out / "model.safetensors").is_file()


@pytest.mark.slow
def test_a_batch_of_only_broken_images_on_one_process_does_not_hang(tmp_path, colour_folders):
    from conftest import make_image_folder

    train = make_image_folder(tmp_path / "train", 4, seed=8)  # 12 images, 8 of them empty files
    for image in sorted(train.rglob("*.png"))[:8]:
        image.write_bytes(b"")
    out = tmp_path / "out"
    launch(recipe_args(out, {"train": train, "validation": colour_folders["validation"]}, num_train_epochs="1",
                       per_device_train_batch_size="2", max_skipped_share="1"), timeout=300)
    assert json.loads((out / "skipped_images.json").read_text())["train"]["skipped"] == 8


@pytest.mark.slow
def test_two_processes_on_a_multi_shard_stream_of_unknown_size(tmp_path, colour_folders):
    """accelerate gives each process whole shards here (4 shards, 2 processes); steps come from max_steps and
    evaluation every few steps, so no process waits at an 'epoch end' the other has not reached."""
    from datasets import load_dataset

    train = load_dataset("imagefolder", data_files={"train": str(colour_folders["train"] / "**")})["train"]
    validation = load_dataset("imagefolder", data_files={"validation": str(colour_folders["validation"] / "**")})
    (tmp_path / "pq" / "data").mkdir(parents=True)
    for shard in range(4):
        train.shard(4, shard).to_parquet(str(tmp_path / "pq" / "data" / f"train-{shard:05d}-of-00004.parquet"))
    validation["validation"].to_parquet(str(tmp_path / "pq" / "data" / "validation-00000-of-00001.parquet"))
    out = tmp_path / "out"
    args = recipe_args(out, {"train": None, "validation": None}, streaming="true", max_steps="6",
                       eval_strategy="steps", eval_steps="3", save_strategy="steps", save_steps="3")
    args = [a for a in args if a not in ("--train_dir", "--validation_dir", "None")]
    launch([*args, "--dataset_name", str(tmp_path / "pq")], timeout=300)
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["global_step"] == 6
    assert json.loads((out / "all_results.json").read_text())["eval_samples"] == 24
