"""Nothing leaked, nothing lost, nothing silently wrong: tokens never reach a file, one run per output_dir, a full
disk keeps the last checkpoint, and the mistakes that used to train a wrong model without a word stop the run."""

import errno
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import zipfile

import pytest
import torch
import transformers
from conftest import REPO, finetune, recipe_args
from test_model_card import FakeHub

import hf_resnet.trainer
from hf_resnet.errors import ConfigError, DataError, DiskFullError
from hf_resnet.parser import parse_args
from hf_resnet.training.checkpoints import is_complete
from hf_resnet.training.run_lock import LOCK_NAME, RunLock

HUB_TOKEN, TOKEN, ENV_TOKEN = "hf_PlantedHubToken123456", "hf_PlantedModelToken65432", "hf_PlantedEnvToken777888"


def every_byte(folder):
    """(path, bytes) of every file under `folder`, and of every member of the zip files among them (torch.save)."""
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        data = path.read_bytes()
        yield str(path), data
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                for name in archive.namelist():
                    yield f"{path}:{name}", archive.read(name)


def test_no_token_is_written_or_uploaded(tmp_path, colour_folders, monkeypatch, capfd):
    hub = FakeHub()
    monkeypatch.setattr(transformers.trainer, "hf_api", lambda: hub)
    monkeypatch.setattr(hf_resnet.trainer, "hf_api", lambda: hub)
    monkeypatch.setenv("HF_TOKEN", ENV_TOKEN)
    out = tmp_path / "out"
    finetune(recipe_args(out, colour_folders, num_train_epochs="1", save_strategy="epoch", push_to_hub="true",
                         hub_model_id="me/secret-model", hub_token=HUB_TOKEN, token=TOKEN))
    assert hub.uploads and (out / "training_args.bin").is_file() and any(out.glob("checkpoint-*/training_args.bin"))
    found = [name for name, data in every_byte(out) for token in (HUB_TOKEN, TOKEN, ENV_TOKEN)
             if token.encode() in data]
    assert found == []
    logs = capfd.readouterr()
    assert not any(token in logs.out + logs.err for token in (HUB_TOKEN, TOKEN, ENV_TOKEN))
    assert torch.load(out / "training_args.bin", weights_only=False).hub_token is None


def test_a_second_run_into_a_busy_folder_stops_naming_the_first(tmp_path):
    sleeper = subprocess.Popen(["sleep", "60"])  # a live process of this host holds the folder
    try:
        (tmp_path / LOCK_NAME).write_text(json.dumps({"host": socket.gethostname(), "pid": sleeper.pid,
                                                      "started": "2026-12-04 10:00:00", "command": "hf-resnet x"}))
        with pytest.raises(ConfigError, match=f"in use by another run \\(pid {sleeper.pid} on .*hf-resnet x"):
            RunLock(tmp_path).acquire()
    finally:
        sleeper.kill()
        sleeper.wait()
    lock = RunLock(tmp_path).acquire()  # its process is gone: taken over
    assert json.loads((tmp_path / LOCK_NAME).read_text())["pid"] == os.getpid()
    lock.release()
    assert not (tmp_path / LOCK_NAME).exists()
    RunLock(tmp_path / "new").acquire().release()  # a run that failed at once leaves no empty folder behind
    assert not (tmp_path / "new").exists()
    (tmp_path / LOCK_NAME).write_text(json.dumps({"host": "another-host", "pid": 1}))
    with pytest.raises(ConfigError, match="on another-host"):  # whether it lives cannot be known here
        RunLock(tmp_path).acquire()


@pytest.mark.slow
def test_two_runs_into_one_folder_then_kill_9_and_the_rerun_takes_the_lock(tmp_path, colour_folders):
    out, log = tmp_path / "out", tmp_path / "first.txt"
    command = [sys.executable, "-m", "hf_resnet.cli", "train",
               *recipe_args(out, colour_folders, num_train_epochs="1000", save_strategy="epoch")]
    with open(log, "w") as handle:
        first = subprocess.Popen(command, cwd=REPO, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 120
    while not (out / "checkpoint-9").is_dir():  # the first run is training
        assert first.poll() is None and time.monotonic() < deadline, log.read_text()[-2000:]
        time.sleep(0.1)
    second = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert second.returncode == 2 and len(second.stderr.strip().splitlines()) == 1, second.stderr[-2000:]
    assert f"in use by another run (pid {first.pid}" in second.stderr
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    rerun = subprocess.run([*command, "--num_train_epochs", "1", "--resume_from_checkpoint", "false"], cwd=REPO,
                           capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stdout[-2000:] + rerun.stderr[-2000:]
    assert "Taking over" in rerun.stdout + rerun.stderr and not (out / LOCK_NAME).exists()


def test_a_full_disk_keeps_the_last_checkpoint_and_the_rerun_resumes(tmp_path, colour_folders, monkeypatch):
    out = tmp_path / "out"
    args = recipe_args(out, colour_folders, num_train_epochs="2", save_strategy="epoch")
    real_save = torch.save

    def full_at_the_second_checkpoint(obj, target, *a, **k):
        if str(target).endswith(os.path.join("checkpoint-18", "optimizer.pt")):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, target, *a, **k)

    monkeypatch.setattr(torch, "save", full_at_the_second_checkpoint)
    with pytest.raises(DiskFullError, match=r"checkpoint-18 .*needs about [\d,]+ MB .*checkpoint-9 is complete"):
        finetune(args)
    assert is_complete(out / "checkpoint-9")
    monkeypatch.setattr(torch, "save", real_save)
    metrics = finetune(args)  # the same run: resumes from checkpoint-9, sets the partial one aside
    assert metrics["epoch"] == 2 and (out / "incomplete-checkpoint-18").is_dir()


def test_validation_classes_that_train_lacks_stop_the_run(tmp_path, colour_folders):
    validation = tmp_path / "validation"
    shutil.copytree(colour_folders["validation"], validation)
    shutil.copytree(validation / "red", validation / "purple")
    with pytest.raises(DataError, match=r"`validation_dir` has class folder\(s\) that `train_dir` does not: "
                                        r"\['purple'\]"):
        finetune(recipe_args(tmp_path / "out", {**colour_folders, "validation": validation}))


def test_a_train_dir_of_split_folders_names_the_right_flags(tmp_path, colour_folders):
    root = tmp_path / "data"
    shutil.copytree(colour_folders["train"], root / "train")
    shutil.copytree(colour_folders["validation"], root / "val")
    with pytest.raises(DataError, match=f"Pass --train_dir {root}/train --validation_dir {root}/val"):
        finetune(recipe_args(tmp_path / "out", {"train": root, "validation": None}))


def test_zero_epochs_and_a_missing_tracker_stop_before_anything_loads(tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match="would take no step"):
        parse_args(["--config", "smoke/digits_smoke", "--num_train_epochs", "0", "--output_dir", str(tmp_path)])
    monkeypatch.setattr("transformers.integrations.integration_utils.get_available_reporting_integrations",
                        lambda: [])
    with pytest.raises(ConfigError, match=r'tensorboard: not installed here.*pip install "hf-resnet\[track\]"'):
        parse_args(["--config", "smoke/digits_smoke", "--report_to", "tensorboard", "--output_dir", str(tmp_path)])


def test_image_size_builds_the_processor_pipeline_then_uses(tmp_path):
    from PIL import Image
    from transformers import pipeline

    from hf_resnet.data.transforms import PreprocessConfig

    out = tmp_path / "out"
    finetune(["--config", "smoke/digits_smoke", "--output_dir", str(out), "--image_size", "48", "--max_steps", "2",
              "--max_eval_samples", "16", "--eval_strategy", "no", "--report_to", "none"])
    saved = json.loads((out / "preprocessor_config.json").read_text())
    assert saved["size"] == {"shortest_edge": 48} and saved["crop_pct"] == 0.875
    processor = transformers.AutoImageProcessor.from_pretrained(out)
    assert PreprocessConfig.from_processor(processor).crop_size == (48, 48)
    Image.new("RGB", (64, 40), (200, 30, 30)).save(tmp_path / "red.png")
    served = pipeline("image-classification", model=str(out))
    assert served.image_processor.crop_pct == 0.875 and served(str(tmp_path / "red.png"))
