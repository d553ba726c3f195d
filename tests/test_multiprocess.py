"""The recipe under 2 processes on the CPU (gloo DDP), launched exactly as a user would with accelerate."""

import json
import os
import shutil
import socket
import subprocess
import sys

import pytest
import torch
from conftest import REPO, recipe_args, save_checkpoint
from safetensors.torch import load_file


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
    # the report, written once by the main process, has every image once too
    lines = (out / "report" / "validation" / "predictions_validation.csv").read_text().strip().splitlines()
    assert len(lines) == 1 + 24
    if streaming == "false":
        assert len({line.split(",")[1] for line in lines[1:]}) == 24  # 24 distinct files, in dataset order
    assert json.loads((out / "report" / "validation" / "eval_report.json").read_text())["scored"] == 24


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


def _ddp_worker(rank: int, world: int, port: int, out: str) -> None:
    """Train a tiny ResNet under gloo DDP as the trainer does with gradual unfreezing: every parameter that will
    train is registered when DDP wraps the model, stage 4 is frozen for 2 steps and then unfrozen; each process
    sees different data."""
    import torch.distributed as dist
    import torch.nn.functional as F
    from transformers import ResNetConfig, ResNetForImageClassification

    from hf_resnet.strategy_config import StrategyArguments
    from hf_resnet.training.strategies import param_groups, plan_freezing

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.manual_seed(0)
    model = ResNetForImageClassification(ResNetConfig(embedding_size=8, hidden_sizes=[8, 8, 8, 8], depths=[1] * 4,
                                                      layer_type="basic", num_labels=3))
    plan = plan_freezing(model, StrategyArguments(tuning="linear_probe", unfreeze_epochs=[1]))
    plan.start(model)
    ddp = torch.nn.parallel.DistributedDataParallel(model, find_unused_parameters=True)
    optimizer = torch.optim.SGD(param_groups(model, 0.1, 1e-4), lr=0.1, momentum=0.9)
    torch.manual_seed(100 + rank)
    no_grad_while_frozen = True
    for step in range(4):
        plan.apply(model, plan.due(step, steps_per_epoch=2))
        pixels, labels = torch.randn(4, 3, 16, 16), torch.randint(0, 3, (4,))
        optimizer.zero_grad()
        F.cross_entropy(ddp(pixel_values=pixels).logits, labels).backward()
        if step < 2:
            no_grad_while_frozen &= all(p.grad is None for n, p in model.named_parameters() if ".stages.3." in n)
        optimizer.step()
    torch.save({"weights": model.state_dict(), "no_grad_while_frozen": no_grad_while_frozen}, f"{out}/rank{rank}.pt")
    dist.destroy_process_group()


@pytest.mark.slow
def test_ddp_syncs_the_gradients_of_a_stage_unfrozen_mid_training(tmp_path):
    """(trainer docstring, 9): if DDP did not all-reduce the gradients of parameters frozen when their first
    steps ran, the two processes would drift apart after the unfreeze; their weights must stay identical."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    torch.multiprocessing.spawn(_ddp_worker, args=(2, port, str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in (0, 1)]
    assert all(r["no_grad_while_frozen"] for r in ranks)  # frozen: no gradient, so no step, momentum or decay
    a, b = ranks[0]["weights"], ranks[1]["weights"]
    assert [name for name in a if not torch.equal(a[name], b[name])] == []
    torch.manual_seed(0)
    from transformers import ResNetConfig, ResNetForImageClassification
    start = ResNetForImageClassification(ResNetConfig(embedding_size=8, hidden_sizes=[8, 8, 8, 8], depths=[1] * 4,
                                                      layer_type="basic", num_labels=3)).state_dict()
    moved = {name.split(".")[3] if ".stages." in name else name.split(".")[0] for name in a
             if not torch.equal(start[name], a[name])}
    assert moved == {"classifier", "3"}  # the head and stage 4 trained; stages 1-3 and the stem did not


@pytest.mark.slow
def test_gradual_unfreezing_under_two_processes(tmp_path, colour_folders):
    ckpt = save_checkpoint(tmp_path / "ckpt", ["cat", "blue", "green", "red"])
    out = tmp_path / "out"
    result = launch([*recipe_args(out, colour_folders, model_name_or_path=str(ckpt), config_name=None,
                                  num_train_epochs="2", tuning="linear_probe", learning_rate="0.01"),
                     "--unfreeze_epochs", "1"])
    assert "ddp_find_unused_parameters true: gradual unfreezing" in result.stdout + result.stderr
    assert json.loads((out / "trainer_state.json").read_text())["global_step"] == 10
    before, after = load_file(str(ckpt / "model.safetensors")), load_file(str(out / "model.safetensors"))
    moved = {n for n in before if not n.startswith("classifier") and not torch.equal(before[n], after[n])}
    assert moved and all(name.startswith("resnet.encoder.stages.3.") for name in moved)
    assert {name.rsplit(".", 1)[-1] for name in moved} >= {"weight", "running_mean"}


@pytest.mark.slow
def test_gpu_decode_with_a_stream_under_two_processes_scores_every_image_once(tmp_path):
    """A streamed validation split is dispatched from the main process, and accelerate can only cut tensors: its
    workers decode it (not the device), so the run ends with every image scored once instead of a TypeError."""
    from conftest import make_image_folder

    folders = {split: make_image_folder(tmp_path / split, count, seed=seed, fmt="jpeg")
               for split, count, seed in (("train", 8, 0), ("validation", 8, 1))}
    out = tmp_path / "out"
    launch(recipe_args(out, folders, gpu_decode="true", streaming="true", num_train_epochs="1"))
    assert json.loads((out / "report" / "validation" / "eval_report.json").read_text())["scored"] == 24


def trained(out, since: int = 0) -> dict[tuple[int, int], list[int]]:
    """(rank, global step before the batch) -> the example ids that process trained on (padding left out)."""
    from hf_resnet.training.distributed import read_example_log

    return {(row["rank"], row["step"]): [i for i in row["ids"] if i >= 0]
            for row in read_example_log(out) if row["split"] == "train" and row["step"] >= since}


@pytest.mark.slow
def test_balanced_sampler_and_a_mid_epoch_resume_under_two_processes(tmp_path, colour_folders):
    """The balanced draw depends only on (seed, epoch): two processes together train, each epoch, the very
    examples one process trains, each as often as drawn (with replacement), none twice by the split. And a run
    resumed under two processes from a mid-epoch checkpoint trains the same batches on the same processes after
    it, and ends weight for weight where the uninterrupted run ends."""
    from collections import Counter

    from conftest import finetune

    args = dict(num_train_epochs="2", balanced_sampler="true", log_example_ids="true", save_strategy="steps",
                save_steps="3", save_total_limit="5", eval_strategy="no")
    one, two, resumed = tmp_path / "one", tmp_path / "two", tmp_path / "resumed"
    finetune(recipe_args(one, colour_folders, **args))  # 9 steps per epoch
    launch(recipe_args(two, colour_folders, **args))  # 5 steps per epoch; checkpoints at 3 (mid-epoch), 6, 9

    def per_epoch(out, steps_per_epoch):
        epochs = [Counter() for _ in range(2)]
        for (_, step), ids in trained(out).items():
            epochs[step // steps_per_epoch].update(ids)
        return epochs

    alone, together = per_epoch(one, 9), per_epoch(two, 5)
    assert alone == together and all(sum(c.values()) == 72 for c in alone)
    assert any(count > 1 for count in alone[0].values())  # a draw with replacement: the test can tell copies apart

    shutil.copytree(two / "checkpoint-3", resumed / "checkpoint-3")
    launch(recipe_args(resumed, colour_folders, **args, resume_from_checkpoint=str(resumed / "checkpoint-3")))
    assert trained(resumed) == trained(two, since=3) != {}
    a, b = load_file(str(two / "model.safetensors")), load_file(str(resumed / "model.safetensors"))
    assert [name for name in a if not torch.equal(a[name], b[name])] == []


def test_only_dispatched_streams_are_kept_from_the_device():
    from datasets import Dataset, IterableDataset

    from hf_resnet.data.inputs import dispatched

    table = Dataset.from_dict({"x": list(range(8))})
    stream = IterableDataset.from_generator(lambda: iter({"x": i} for i in range(8)))  # one shard
    assert not dispatched("validation", stream, 1)  # one process: nothing is dispatched
    assert not dispatched("validation", table, 2)  # map-style: each process reads its own
    assert dispatched("validation", stream, 2)  # a streamed eval split: read by the main process
    assert dispatched("train", stream, 2)  # a one-shard training stream too
    assert not dispatched("train", table.to_iterable_dataset(num_shards=4), 2)  # enough shards: split by shard
