"""Scale-out: the several-machine launch config, and each training example read once per epoch across 4 gloo
processes on the CPU (map-style and streamed), with evaluation counting each example once.

The observable is the product's own record (`log_example_ids: true`): per process, the example ids of every batch
it trained on or evaluated (`hf_resnet.training.distributed.ExampleLog`)."""

import json
import os
import subprocess
import sys
from collections import Counter, defaultdict

import pytest
from conftest import REPO, recipe_args

from hf_resnet.data.inputs import example_key
from hf_resnet.training.distributed import ProcessBatchSampler, read_example_log

PROCESSES = 4


def test_multi_node_config_is_what_accelerate_launches():
    """docs/scaling.md's rank-1 command, through accelerate's parser and checks, up to the torchrun arguments."""
    from accelerate.commands.config.config_args import load_config_from_file
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils import prepare_multi_gpu_env

    path = str(REPO / "recipes" / "accelerate" / "multi_node.yaml")
    config = load_config_from_file(path)
    assert (config.distributed_type.value, config.num_machines, config.mixed_precision) == ("MULTI_GPU", 2, "bf16")
    args = launch_command_parser().parse_args([
        "--config_file", path, "--machine_rank", "1", "--main_process_ip", "10.0.0.1", "--num_machines", "2",
        "--num_processes", "16", "recipes/finetune.py", "--config", "resnet50/imagefolder_full",
    ])
    args, _, _ = _validate_launch_command(args)
    env = prepare_multi_gpu_env(args)
    assert args.multi_gpu and env["ACCELERATE_MIXED_PRECISION"] == "bf16"
    assert (args.nproc_per_node, args.nnodes, args.node_rank) == ("8", "2", 1)  # 8 processes on each machine
    assert args.rdzv_endpoint == "10.0.0.1:29500"


@pytest.mark.parametrize("n, per_process", [(72, 8), (65, 8), (66, 8), (5, 8), (3, 8), (64, 8), (10, 1)])
def test_process_batches_hold_each_example_once(n, per_process):
    """Every process gets as many batches; together they hold each index once; only a process left with fewer
    than 2 examples of the last step gets padding (negative codes)."""
    samplers = [ProcessBatchSampler(n, per_process, PROCESSES, rank, seed=3) for rank in range(PROCESSES)]
    for sampler in samplers:
        sampler.set_epoch(1)
    batches = [list(s) for s in samplers]
    assert {len(b) for b in batches} == {len(samplers[0])} == {-(-n // (per_process * PROCESSES))}
    real = [i for b in batches for batch in b for i in batch if i >= 0]
    assert sorted(real) == list(range(n))
    assert all(0 < len(batch) <= per_process for b in batches for batch in b)
    padded = [i for b in batches for i in b[-1] if i < 0]
    assert len(padded) == sum(max(0, min(2, per_process) - len([i for i in b[-1] if i >= 0])) for b in batches)


def test_accelerate_alone_would_train_copies():
    """Why the sampler exists: accelerate's even batches fill the last step with the epoch's first examples."""
    from accelerate.data_loader import BatchSamplerShard
    from torch.utils.data import BatchSampler, SequentialSampler

    inner = BatchSampler(SequentialSampler(range(72)), batch_size=8, drop_last=False)
    seen = Counter(i for rank in range(PROCESSES) for b in BatchSamplerShard(inner, PROCESSES, rank) for i in b)
    assert sum(seen.values()) == 96 and sum(1 for c in seen.values() if c == 2) == 24


def launch_4(args: list[str], timeout: int = 300) -> None:
    command = [sys.executable, "-m", "accelerate.commands.launch",
               "--config_file", str(REPO / "recipes" / "accelerate" / "cpu_2proc.yaml"),
               "--num_processes", str(PROCESSES), str(REPO / "recipes" / "finetune.py"), *args]
    result = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"},
                            timeout=timeout, cwd=REPO)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


def read_per_epoch(out) -> tuple[dict, dict]:
    """-> (epoch -> ids trained on, over all processes), (evaluation -> ids evaluated, over all processes)."""
    rows = read_example_log(out)
    assert {row["rank"] for row in rows} == set(range(PROCESSES))
    train, evaluated = defaultdict(list), defaultdict(list)
    for row in rows:
        target = train[row["epoch"]] if row["split"] == "train" else evaluated[(row["split"], row["evaluation"])]
        target += [i for i in row["ids"] if i != -1]  # -1: padding, label -100, in no loss and no count
    return train, evaluated


def assert_once_per_epoch(train: dict, expected: set, epochs: int) -> None:
    assert sorted(train) == list(range(epochs))
    for epoch, ids in train.items():
        repeated = {i: c for i, c in Counter(ids).items() if c > 1}
        assert repeated == {} and set(ids) == expected, f"epoch {epoch}: {len(repeated)} repeated"


@pytest.mark.slow
@pytest.mark.parametrize("streaming", ["false", "true"])
def test_four_processes_read_each_example_once_per_epoch(tmp_path, colour_folders, streaming):
    out = tmp_path / "out"
    launch_4(recipe_args(out, colour_folders, num_train_epochs="2", streaming=streaming, log_example_ids="true"))

    train, evaluated = read_per_epoch(out)
    files = sorted(str(f) for f in colour_folders["train"].rglob("*.png"))
    expected = set(range(72)) if streaming == "false" else {example_key({"path": f, "bytes": None}) for f in files}
    assert_once_per_epoch(train, expected, epochs=2)
    # 72 images, 8 per process per step, 4 processes: 3 steps per epoch (the last one 2 images per process)
    assert json.loads((out / "trainer_state.json").read_text())["global_step"] == 6
    # evaluation: every validation image read in each of the 3 evaluations (2 epochs, then the final one), and
    # scored once: batches padded to keep processes in step are dropped before the metrics
    assert len(evaluated) == 3 and all(set(ids) == set(range(24)) for ids in evaluated.values())
    assert json.loads((out / "all_results.json").read_text())["eval_samples"] == 24
    assert json.loads((out / "report" / "validation" / "eval_report.json").read_text())["scored"] == 24
    rows = (out / "report" / "validation" / "predictions_validation.csv").read_text().strip().splitlines()[1:]
    assert len(rows) == 24


@pytest.mark.slow
def test_four_processes_on_a_one_shard_stream(tmp_path, colour_folders):
    """A stream of fewer shards than processes (a Hub dataset in one parquet file): accelerate would have every
    process read all of it and fill the last step with copies (24 of 72 trained twice per epoch); it is read once
    by the main process and dispatched instead."""
    from datasets import Image, load_dataset

    train = load_dataset("imagefolder", data_files={"train": str(colour_folders["train"] / "**")})["train"]
    validation = load_dataset("imagefolder", data_files={"validation": str(colour_folders["validation"] / "**")})
    (tmp_path / "pq" / "data").mkdir(parents=True)
    train.to_parquet(str(tmp_path / "pq" / "data" / "train-00000-of-00001.parquet"))
    validation["validation"].to_parquet(str(tmp_path / "pq" / "data" / "validation-00000-of-00001.parquet"))
    out = tmp_path / "out"
    args = recipe_args(out, {"train": None, "validation": None}, streaming="true", max_steps="6",  # 2 passes, 3 steps
                       log_example_ids="true", eval_strategy="no")
    args = [a for a in args if a not in ("--train_dir", "--validation_dir", "None")]
    launch_4([*args, "--dataset_name", str(tmp_path / "pq")])

    train_ids, _ = read_per_epoch(out)
    raw = train.cast_column("image", Image(decode=False))
    assert_once_per_epoch(train_ids, {example_key(row["image"]) for row in raw}, epochs=2)
