"""A scheduler's SIGTERM (or SIGUSR1) mid-training: the run finishes its step, saves it as a complete checkpoint,
says so and exits 143; the same command then resumes and ends weight for weight where an uninterrupted run ends.

Runs are subprocesses with their output in log files (as in test_resume.py); every wait has a deadline.
"""

import os
import re
import signal
import subprocess
import sys
import time

import pytest
from conftest import REPO, recipe_args
from safetensors.torch import load_file
from test_resume import DEADLINE_S, finish, start, tensors_equal

from hf_resnet.errors import ConfigError
from hf_resnet.training.preemption import parse_stop_signals

STEPS = 36  # 4 epochs of 9 steps; save_strategy "no": any checkpoint is the one the signal asked for
STOPPED = re.compile(r"(SIG\w+|a stop signal on another process): training stopped after optimizer step (\d+); "
                     r"(\S+) is complete\. Rerun the same command to resume from it\.")


def train_command(out, folders, **overrides):
    return [sys.executable, "-m", "hf_resnet.cli", "train", *recipe_args(out, folders, **overrides)]


def wait_for_steps(proc, log, steps: int) -> None:
    """Until the run has logged `steps` training losses (logging_steps 1)."""
    deadline = time.monotonic() + DEADLINE_S
    while log.read_text().count("'loss'") < steps:
        assert proc.poll() is None, log.read_text()[-3000:]
        assert time.monotonic() < deadline, f"{steps} steps not reached in {DEADLINE_S} s"
        time.sleep(0.05)


def test_stop_signals_are_checked_when_parsed():
    assert parse_stop_signals("SIGTERM, usr1") == [signal.SIGTERM, signal.SIGUSR1]
    assert parse_stop_signals("none") == []
    with pytest.raises(ConfigError, match="'SIGTREM' is not a signal"):
        parse_stop_signals("SIGTREM")
    with pytest.raises(ConfigError, match="cannot take SIGKILL"):
        parse_stop_signals("SIGKILL")


@pytest.mark.slow
def test_sigterm_saves_the_step_in_flight_and_the_rerun_ends_where_an_uninterrupted_run_ends(tmp_path, colour_folders):
    """SIGTERM to the whole process group, as SLURM sends it: the run and its DataLoader workers."""
    reference, stopped, log = tmp_path / "reference", tmp_path / "stopped", tmp_path / "log.txt"
    options = dict(dataloader_num_workers="2")
    finish(train_command(reference, colour_folders, **options), tmp_path / "reference.txt")

    proc = start(train_command(stopped, colour_folders, **options), log)
    wait_for_steps(proc, log, 12)  # in epoch 2
    os.killpg(proc.pid, signal.SIGTERM)
    os.killpg(proc.pid, signal.SIGTERM)  # a second notice during the save changes nothing
    assert proc.wait(timeout=DEADLINE_S) == 143
    text = log.read_text()
    found = STOPPED.search(text)
    assert found, text[-3000:]
    step = int(found.group(2))
    assert 12 <= step < STEPS and found.group(3) == str(stopped / f"checkpoint-{step}")
    assert "Traceback" not in text and not (stopped / "model.safetensors").exists()

    output = finish(train_command(stopped, colour_folders, **options), log)  # the same command
    assert f"Resuming from {stopped / f'checkpoint-{step}'}" in output
    a, b = load_file(str(reference / "model.safetensors")), load_file(str(stopped / "model.safetensors"))
    assert tensors_equal(a, b) == []


@pytest.mark.slow
def test_sigusr1_under_two_processes_stops_both_after_the_same_step(tmp_path, colour_folders):
    """One process is told (the main one, as a scheduler signalling the job's first task): both stop after the
    same step, with one checkpoint, and the rerun under two processes ends where an uninterrupted one ends."""
    def command(out):
        return [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
                str(REPO / "recipes" / "accelerate" / "cpu_2proc.yaml"), str(REPO / "recipes" / "finetune.py"),
                *recipe_args(out, colour_folders, requeue_exit_code="0")]

    reference, stopped, log = tmp_path / "reference", tmp_path / "stopped", tmp_path / "log.txt"
    finish(command(reference), tmp_path / "reference.txt")
    proc = start(command(stopped), log)
    wait_for_steps(proc, log, 6)  # 5 steps an epoch under two processes
    rank0 = next(int(pid) for pid in _children(proc.pid) if b"\0RANK=0\0" in b"\0" + _environ(pid))
    os.kill(rank0, signal.SIGUSR1)
    assert proc.wait(timeout=DEADLINE_S) == 0  # requeue_exit_code 0
    text = log.read_text()
    said = STOPPED.findall(text)  # each process says where it stopped: the same step, the same checkpoint
    assert sorted(who for who, _, _ in said) == ["SIGUSR1", "a stop signal on another process"], text[-3000:]
    assert len({(step, where) for _, step, where in said}) == 1
    finish(command(stopped), log)
    a, b = load_file(str(reference / "model.safetensors")), load_file(str(stopped / "model.safetensors"))
    assert tensors_equal(a, b) == []


def _children(pid: int) -> list[str]:
    """Every descendant of `pid`, oldest first (the launcher's workers are its children)."""
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True).stdout.split()
    return [p for child in out for p in (child, *_children(int(child)))]


def _environ(pid) -> bytes:
    try:
        with open(f"/proc/{pid}/environ", "rb") as handle:
            return handle.read()
    except OSError:
        return b""
