"""Kill a training run with SIGKILL, rerun the same command: it resumes by itself and ends where an
uninterrupted run ends, weight for weight (CPU, fixed seed, map-style data).

Each run writes its output to a log file, never to a pipe nobody reads (a full pipe would block the run before
it reaches the checkpoint the test waits for), and every wait has a deadline.
"""

import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest
import torch
from conftest import REPO, recipe_args
from safetensors.torch import load_file

DEADLINE_S = 300


def command(out, folders, workers, streaming="false"):
    args = recipe_args(out, folders, num_train_epochs="3", save_strategy="steps", save_steps="4", streaming=streaming,
                       save_total_limit="2", dataloader_num_workers=str(workers), logging_steps="1")
    return [sys.executable, "-m", "hf_resnet.cli", "train", *args]


def start(cmd, log):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with open(log, "a") as handle:  # the child keeps its own copy of the descriptor; its own process group
        return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=handle, stderr=subprocess.STDOUT,
                                start_new_session=True)


def finish(cmd, log) -> str:
    """Run to the end; the log's text (asserting exit 0)."""
    proc = start(cmd, log)
    code = proc.wait(timeout=DEADLINE_S)
    text = log.read_text()
    assert code == 0, text[-3000:]
    return text


def kill_when(proc, marker) -> None:
    """SIGKILL the run as soon as `marker` exists (a checkpoint fully written)."""
    deadline = time.monotonic() + DEADLINE_S
    while not marker.exists():
        assert proc.poll() is None, "run ended before it could be killed"
        assert time.monotonic() < deadline, f"{marker} did not appear within {DEADLINE_S} s"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=DEADLINE_S)


@pytest.mark.slow
@pytest.mark.parametrize("workers", [0, 2])
def test_sigkill_then_rerun_matches_an_uninterrupted_run(tmp_path, colour_folders, workers):
    reference, killed, log = tmp_path / "reference", tmp_path / "killed", tmp_path / "log.txt"
    finish(command(reference, colour_folders, workers), tmp_path / "reference.txt")

    proc = start(command(killed, colour_folders, workers), log)
    kill_when(proc, killed / "checkpoint-12" / "trainer_state.json")  # mid-training, mid-epoch 2 (9 steps/epoch)
    assert not (killed / "model.safetensors").exists()  # it really was killed before the end

    output = finish(command(killed, colour_folders, workers), log)  # the same command, nothing added
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
    reference, killed, log = tmp_path / "reference", tmp_path / "killed", tmp_path / "log.txt"
    finish(command(reference, colour_folders, 0, streaming="true"), tmp_path / "reference.txt")
    proc = start(command(killed, colour_folders, 0, streaming="true"), log)
    kill_when(proc, killed / "checkpoint-12" / "trainer_state.json")
    output = finish(command(killed, colour_folders, 0, streaming="true"), log)
    assert "Resuming from" in output
    steps = [json.loads((d / "trainer_state.json").read_text())["global_step"] for d in (reference, killed)]
    assert steps == [27, 27]
    accuracy = [json.loads((d / "all_results.json").read_text())["eval_accuracy"] for d in (reference, killed)]
    assert abs(accuracy[0] - accuracy[1]) <= 0.1


@pytest.mark.slow
def test_ctrl_c_says_how_to_go_on_instead_of_a_traceback(tmp_path, colour_folders):
    """Ctrl-C in a terminal signals the whole process group: the run and its DataLoader workers."""
    out, log = tmp_path / "out", tmp_path / "log.txt"
    proc = start(command(out, colour_folders, 2), log)
    deadline = time.monotonic() + DEADLINE_S
    while not (out / "checkpoint-4" / "trainer_state.json").exists():
        assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-2000:]
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGINT)
    assert proc.wait(timeout=DEADLINE_S) == 130
    text = log.read_text()
    assert "interrupted." in text and "rerun the same command to resume from it" in text, text[-2000:]
    assert "Traceback" not in text, text[-3000:]


# Gradual unfreezing with everything that carries state across steps: the unfreeze position, per-group rates under
# layer decay and a step decay, SGD momentum buffers, the EMA, and the random draws of mixup and dropout.
STRATEGY = ["--tuning", "linear_probe", "--unfreeze_epochs", "1", "2", "--layer_decay", "0.7", "--optim", "sgd",
            "--lr_scheduler_type", "constant", "--lr_milestones", "2", "--ema_decay", "0.9", "--mixup_alpha", "0.4",
            "--head_dropout", "0.1", "--label_smoothing_factor", "0.1", "--learning_rate", "0.02"]


def strategy_command(out, folders):
    args = recipe_args(out, folders, num_train_epochs="3", save_strategy="steps", save_steps="3",
                       save_total_limit="2", dataloader_num_workers="0")
    return [sys.executable, "-m", "hf_resnet.cli", "train", *args, *STRATEGY]


def tensors_equal(a: dict, b: dict) -> list[str]:
    assert a.keys() == b.keys()
    return [name for name in a if not torch.equal(a[name], b[name])]


@pytest.mark.slow
def test_gradual_unfreezing_killed_after_the_first_unfreeze_resumes_exactly(tmp_path, colour_folders):
    """9 steps an epoch: stage 4 unfreezes at step 9, stage 3 at step 18. Killed at checkpoint 12, the rerun
    must train stage 4 at once (not re-freeze it) and end where an uninterrupted run ends."""
    reference, killed, log = tmp_path / "reference", tmp_path / "killed", tmp_path / "log.txt"
    reference_log = finish(strategy_command(reference, colour_folders), tmp_path / "reference.txt")

    proc = start(strategy_command(killed, colour_folders), log)
    kill_when(proc, killed / "checkpoint-12" / "trainer_state.json")
    assert not (killed / "model.safetensors").exists()
    output = finish(strategy_command(killed, colour_folders), log)
    resumed = int(re.search(r"Resuming from \S*checkpoint-(\d+)", output).group(1))
    assert 9 < resumed < 18, resumed  # after the first unfreeze, before the second
    assert re.search(rf"Step {resumed} \(epoch [\d.]+\): training stage4, head \(", output), output[-3000:]
    for text in (reference_log, output):  # the second unfreeze, in both runs, at the same step
        assert re.search(r"Step 18 \(epoch 2.00\): training stage3, stage4, head \(", text)

    for name in ("model.safetensors", "checkpoint-27/model.safetensors", "checkpoint-27/ema.safetensors"):
        assert tensors_equal(load_file(str(reference / name)), load_file(str(killed / name))) == [], name
    a, b = (torch.load(d / "checkpoint-27" / "optimizer.pt", weights_only=False) for d in (reference, killed))
    assert a["param_groups"] == b["param_groups"]  # names, members, rates (decayed at epoch 2), momentum
    assert {g["name"]: g["lr"] for g in a["param_groups"]}["stage3"] == pytest.approx(0.02 * 0.7**2 * 0.1)
    assert a["state"].keys() == b["state"].keys()  # the same parameters received gradients: the trainable set
    for index in a["state"]:
        assert tensors_equal(a["state"][index], b["state"][index]) == [], index  # momentum buffers
