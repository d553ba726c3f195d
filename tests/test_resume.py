"""Kill a training run with SIGKILL, rerun the same command: it resumes by itself and ends where an
uninterrupted run ends, weight for weight (CPU, fixed seed, map-style data)."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from conftest import REPO, recipe_args
from safetensors.torch import load_file

from hf_resnet.checkpoints import last_complete_checkpoint


def command(out, folders, workers, streaming="false"):
    args = recipe_args(out, folders, num_train_epochs="3", save_strategy="steps", save_steps="4", streaming=streaming,
                       save_total_limit="2", dataloader_num_workers=str(workers), logging_steps="1")
    return [sys.executable, str(REPO / "recipes" / "finetune.py"), *args]


def run(cmd, **kwargs):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kwargs)


@pytest.mark.slow
@pytest.mark.parametrize("workers", [0, 2])
def test_sigkill_then_rerun_matches_an_uninterrupted_run(tmp_path, colour_folders, workers):
    reference, killed = tmp_path / "reference", tmp_path / "killed"
    proc = run(command(reference, colour_folders, workers))
    output, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, output[-3000:]

    proc = run(command(killed, colour_folders, workers))
    deadline = time.time() + 300
    while not (killed / "checkpoint-12" / "trainer_state.json").exists():  # mid-training, mid-epoch 2 (9 steps/epoch)
        assert proc.poll() is None and time.time() < deadline, "run ended before it could be killed"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed / "model.safetensors").exists()  # it really was killed before the end

    proc = run(command(killed, colour_folders, workers))  # the same command, nothing added
    output, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, output[-3000:]
    assert f"Resuming from {killed / 'checkpoint-12'}" in output, output[-2000:]

    a, b = load_file(str(reference / "model.safetensors")), load_file(str(killed / "model.safetensors"))
    assert a.keys() == b.keys()
    different = [name for name in a if not torch.equal(a[name], b[name])]
    assert different == [], different[:5]
    results_a = json.loads((reference / "all_results.json").read_text())
    results_b = json.loads((killed / "all_results.json").read_text())
    assert results_a["eval_accuracy"] == results_b["eval_accuracy"]
    assert results_a["eval_loss"] == pytest.approx(results_b["eval_loss"], abs=0)


@pytest.mark.slow
def test_streamed_run_resumes_after_sigkill(tmp_path, colour_folders):
    """Streamed data resumes at the same step of the same (seeded) stream; augmentation draws may differ, so
    weights are close, not equal (measured: both runs reach eval_accuracy 1.0)."""
    reference, killed = tmp_path / "reference", tmp_path / "killed"
    proc = run(command(reference, colour_folders, 0, streaming="true"))
    assert proc.wait(timeout=600) == 0
    proc = run(command(killed, colour_folders, 0, streaming="true"))
    while not (killed / "checkpoint-12" / "trainer_state.json").exists():
        assert proc.poll() is None, "run ended before it could be killed"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    proc = run(command(killed, colour_folders, 0, streaming="true"))
    output, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, output[-3000:]
    assert "Resuming from" in output
    steps = [json.loads((d / "trainer_state.json").read_text())["global_step"] for d in (reference, killed)]
    assert steps == [27, 27]
    accuracy = [json.loads((d / "all_results.json").read_text())["eval_accuracy"] for d in (reference, killed)]
    assert abs(accuracy[0] - accuracy[1]) <= 0.1


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
