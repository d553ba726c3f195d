"""Several processes: each training example once per epoch, and a record that shows it.

`ProcessBatchSampler` splits one epoch's order (the same on every process: a permutation seeded by the seed and
the epoch, or the balanced sampler's draw) into optimizer steps of `batch_size x processes` examples and gives each
process its slice. accelerate's own split (`BatchSamplerShard`, `even_batches`) fills the last step with copies of
the epoch's first examples, which then train twice: 24 of 72 images with 4 processes of 8. Here the last step's
rest is shared evenly instead (shares differ by one at most); a process left with fewer than 2 examples gets copies
marked as padding (`padding_index`), read with label -100, so they never enter the loss and never count.

`ExampleLog` (`log_example_ids: true`) writes, per process, one JSON line per batch trained on or evaluated:
`{"split", "step", "ids"}` and the `epoch` (training) or the `evaluation`'s number, in
`output_dir/example_ids/rank-<N>.jsonl`. Ids are dataset indices for
map-style data and a hash of each image's path and bytes for a streamed train split; padding is -1.
"""

from __future__ import annotations

import functools
import json
import logging
from contextlib import contextmanager
from pathlib import Path

import torch
from transformers import TrainerCallback
from transformers.trainer_utils import seed_worker

from .preemption import keep_workers_alive

logger = logging.getLogger(__name__)

EXAMPLE_LOG_DIR = "example_ids"
MIN_PROCESS_BATCH = 2  # BatchNorm in training mode needs more than one value per channel


def end_process_group() -> None:
    """Leave the process group cleanly, once every process is here: a gloo process that exits with it open, or
    tears it down while the main one still writes its outputs, can abort at exit ("terminate called without an
    active exception", seen once under `hf-resnet sweep` with 2 processes)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


def padding_index(index: int) -> int:
    """The sampler's code for 'example `index`, as padding' (negative, so no real index collides with it)."""
    return -1 - int(index)


class ProcessBatchSampler:
    """This process's batches of one epoch; the same length on every process, each example in one batch of one
    process. `batch_size` is None for accelerate: batches vary in size at the end of an epoch, as they do here."""

    batch_size = None
    drop_last = False

    def __init__(self, num_examples: int, per_process: int, num_processes: int, process_index: int, seed: int,
                 sampler=None, drop_last: bool = False):
        self.num_examples, self.per_process = num_examples, per_process
        self.num_processes, self.process_index = num_processes, process_index
        self.seed, self.sampler, self.epoch = seed, sampler, 0
        self.drop_tail = drop_last

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)
        if self.sampler is not None and hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(epoch)

    def _order(self) -> list[int]:
        if self.sampler is not None:
            return [int(i) for i in self.sampler]
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        return torch.randperm(self.num_examples, generator=generator).tolist()

    def _length(self, n: int) -> int:
        step = self.per_process * self.num_processes
        return n // step if self.drop_tail else -(-n // step)

    def __len__(self) -> int:
        return self._length(len(self.sampler) if self.sampler is not None else self.num_examples)

    def __iter__(self):
        order = self._order()
        step = self.per_process * self.num_processes
        for batch in range(self._length(len(order))):
            chunk = order[batch * step : (batch + 1) * step]
            if len(chunk) == step:
                yield chunk[self.process_index * self.per_process : (self.process_index + 1) * self.per_process]
                continue
            base, extra = divmod(len(chunk), self.num_processes)  # the last step: the rest, shared evenly
            start = self.process_index * base + min(self.process_index, extra)
            mine = chunk[start : start + base + (self.process_index < extra)]
            wanted = min(MIN_PROCESS_BATCH, self.per_process)
            pads = [padding_index(chunk[i % len(chunk)]) for i in range(max(0, wanted - len(mine)))]
            yield mine + pads


class ExampleLog(TrainerCallback):
    """Opt-in record of the example ids each process reads (see the module docstring)."""

    def __init__(self, output_dir: str, process_index: int):
        self.path = Path(output_dir) / EXAMPLE_LOG_DIR / f"rank-{process_index}.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text("")  # each run starts its own record
        self.epoch, self.evaluations = 0, 0

    def on_train_begin(self, args, state, control, **kwargs):
        self.epoch = int(state.epoch or 0) - 1  # a resumed map-style run starts in its epoch; a stream's passes count

    def on_epoch_begin(self, args, state, control, **kwargs):
        self.epoch += 1

    def start_evaluation(self) -> None:
        self.evaluations += 1

    def record(self, split: str, step: int, ids) -> None:
        ids = [] if ids is None else [int(i) for i in ids.tolist()]
        line = {"split": split, "step": step, "ids": ids}
        line.update({"epoch": self.epoch} if split == "train" else {"evaluation": self.evaluations})
        with self.path.open("a") as handle:
            handle.write(json.dumps(line) + "\n")


def read_example_log(output_dir: str) -> list[dict]:
    """Every process's lines, each with its `rank` added."""
    rows = []
    for path in sorted((Path(output_dir) / EXAMPLE_LOG_DIR).glob("rank-*.jsonl")):
        rank = int(path.stem.split("-")[1])
        rows += [{**json.loads(line), "rank": rank} for line in path.read_text().splitlines() if line]
    return rows


class ProcessDataMixin:
    """The trainer's data loaders under several processes (trainer.py's docstring, items 2, 4 and 12).

    A streamed train split of at least as many shards as processes is split by shard, so its batches are not
    dispatched (one of fewer shards is: read once, by the main process); a streamed eval split is read by the main
    process and dispatched, so every example is scored exactly once; a map-style train split is read through
    `ProcessBatchSampler` (every example once per epoch). Every loader's workers ignore the stop signals
    (`preemption.keep_workers_alive`). Needs the Trainer's `accelerator`, `args`, `strategy`, `epoch_callback`,
    `stop_on_signal` and `data_collator`.
    """

    @contextmanager
    def _dispatch(self, value: bool):
        config = self.accelerator.dataloader_config
        previous = config.dispatch_batches
        config.dispatch_batches = value
        try:
            yield
        finally:
            config.dispatch_batches = previous

    def _get_dataloader(self, dataset, description, batch_size, sampler_fn=None, is_training=False,
                        dataloader_key=None):
        args = (dataset, description, batch_size, sampler_fn, is_training, dataloader_key)
        world = self.args.world_size
        if isinstance(dataset, torch.utils.data.IterableDataset) and world > 1:
            # A training stream of fewer shards than processes would be read whole by every process, its last
            # batch filled with copies of the first (accelerate's `IterableDatasetShard`): dispatch it instead.
            few_shards = is_training and getattr(dataset, "n_shards", world) < world
            if few_shards:
                logger.info("The training stream has %d shard(s) for %d processes: the main process reads it and "
                            "sends each process its part of every batch", dataset.n_shards, world)
            with self._dispatch(not is_training or few_shards):
                return keep_workers_alive(super()._get_dataloader(*args), self.stop_on_signal.signals)
        if is_training and self.args.world_size > 1:
            return self._process_train_dataloader(dataset, batch_size)
        return keep_workers_alive(super()._get_dataloader(*args), self.stop_on_signal.signals)

    def _process_train_dataloader(self, dataset, batch_size: int):
        """Map-style training under several processes: each process reads its own batches of the epoch's order
        (`distributed.ProcessBatchSampler`: every example once, no copies trained twice). accelerate's wrapper
        (`BatchSamplerShard`) is made a pass-through, as the Trainer does for its own rank-aware sampler (12)."""
        args = self.args
        sampler = ProcessBatchSampler(len(dataset), batch_size, args.world_size, args.process_index,
                                      args.data_seed if args.data_seed is not None else args.seed,
                                      sampler=self.strategy.sampler, drop_last=args.dataloader_drop_last)
        self.epoch_callback.targets.append(sampler)
        workers = args.dataloader_num_workers
        in_workers = dict(prefetch_factor=args.dataloader_prefetch_factor, in_order=args.dataloader_in_order,
                          persistent_workers=args.dataloader_persistent_workers,
                          multiprocessing_context=args.dataloader_multiprocessing_context) if workers > 0 else {}
        loader = keep_workers_alive(torch.utils.data.DataLoader(
            dataset, batch_sampler=sampler, collate_fn=self.data_collator, num_workers=workers,
            pin_memory=args.dataloader_pin_memory, **in_workers,
            worker_init_fn=functools.partial(seed_worker, num_workers=workers, rank=args.process_index),
        ), self.stop_on_signal.signals)
        prepared = self.accelerator.prepare(loader)
        shard = getattr(prepared, "batch_sampler", None)
        if shard is None or getattr(shard, "batch_sampler", None) is not sampler:
            raise RuntimeError("accelerate did not wrap the process batch sampler as expected (trainer docstring, 12)")
        shard.num_processes, shard.process_index = 1, 0
        return prepared
