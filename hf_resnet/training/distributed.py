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

import json
from pathlib import Path

import torch
from transformers import TrainerCallback

EXAMPLE_LOG_DIR = "example_ids"
MIN_PROCESS_BATCH = 2  # BatchNorm in training mode needs more than one value per channel


def end_process_group() -> None:
    """Leave the process group cleanly (a gloo process that exits with it open can abort at exit)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
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
