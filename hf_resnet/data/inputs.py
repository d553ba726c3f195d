"""Dataset examples -> model inputs, inside the DataLoader workers, where one bad file costs one example.

The image column is read undecoded (`Image(decode=False)`); `ExampleTransform` decodes it with
`images.decode_tensor`, applies the train or eval transform and maps the label onto the model's head. An image that
cannot be decoded is recorded (`skips.SkipRecorder`) and replaced by a blank input whose label is -100, which the
loss and the metrics ignore: batches keep their size, so processes stay in step and every example is counted once.

The splits built here hold uint8 images (`transforms.BatchNormalizer` normalises whole batches on the model's
device); the blank input is the normalisation's mean colour (within 0.01 of 0 once normalised).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator

import torch
from datasets import Dataset, IterableDataset
from datasets import Image as ImageFeature

from ..constants import DEFAULT_MAX_PIXELS, IGNORE_INDEX
from .gpu_decode import DeviceDecode
from .images import ImageDecodeError, decode_tensor, describe, plain_jpeg
from .skips import SkipRecorder
from .transforms import (
    TrainDraft,
    at_resolution,
    augmentation,
    build_eval_transform,
    build_train_transform,
    mean_colour,
)
from .tta import TtaTransform, view_weights

logger = logging.getLogger(__name__)

class ExampleTransform:
    """One raw example -> {"pixel_values", "labels"?, "example_ids"}; picklable so DataLoader workers can run it.

    `label_map` re-indexes dataset labels onto a pretrained head whose classes are the same names in another
    order. `label_column=None` (unlabeled test data) gives no "labels". `blank` is what an undecodable image
    becomes (default: zeros of `crop_size`, float, as a normalising transform's mean colour). With `device_decode`
    (`gpu_decode`), a plain JPEG is not decoded here: its bytes and `device_decode.plan` (the crop and flip, drawn
    under the same seed) go in the example as "jpeg" and "plan", with `blank` holding its place in the batch.
    """

    def __init__(self, transform, image_column: str, label_column: str | None, label_map: list[int] | None = None,
                 recorder: SkipRecorder | None = None, crop_size: tuple[int, int] = (224, 224),
                 max_pixels: int | None = DEFAULT_MAX_PIXELS, label_names: list[str] | None = None,
                 seed: int | None = None, blank: torch.Tensor | None = None,
                 device_decode: DeviceDecode | None = None, keyed: bool = False, reduction=None):
        self.transform = transform
        self.image_column = image_column
        self.label_column = label_column
        self.label_map = label_map
        self.recorder = recorder
        self.crop_size = tuple(crop_size)
        self.max_pixels = max_pixels
        self.label_names = label_names
        self.seed = seed  # set: augmentation randomness is a function of (seed, epoch, index) alone
        self.blank = blank if blank is not None else torch.zeros(3, *self.crop_size)
        self.device_decode = device_decode
        self.keyed = keyed  # a streamed train split: ids are `example_key`s, not positions in a process's stream
        self.reduction = reduction  # train: `transforms.TrainDraft`, large JPEGs decoded smaller
        self.epoch = 0

    def _label(self, value: int) -> int:
        return self.label_map[value] if self.label_map is not None and value >= 0 else value

    def _seeded(self, index: int | None, function, *args):
        """`function(*args)` with torch's CPU generator seeded by (seed, epoch, index) when a seed is set."""
        if self.seed is None or index is None:
            return function(*args)
        # Same crop for the same (epoch, example) whatever the worker count or a resume: the DataLoader's own draws
        # from the global RNG (worker seeds, iterator start) cannot shift it. Only the CPU generator is seeded and
        # restored (`torch.manual_seed` also seeds every accelerator: 80x slower, a tenth of the transform's time).
        generator = torch.default_generator
        state = generator.get_state()
        generator.manual_seed(hash((self.seed, self.epoch, int(index))) & 0x7FFF_FFFF_FFFF_FFFF)
        try:
            return function(*args)
        finally:
            generator.set_state(state)

    def __call__(self, example: dict, index: int | None = None) -> dict:
        value = example[self.image_column]
        label = example[self.label_column] if self.label_column is not None else None
        if self.keyed:
            index = example_key(value)
        out = {"example_ids": -1 if index is None else int(index)}
        try:
            jpeg = plain_jpeg(value, self.max_pixels) if self.device_decode is not None else None
            if jpeg is not None:  # decoded on the model's device (`gpu_decode.DeviceDecoder`)
                data, width, height = jpeg
                out.update(jpeg=data, plan=self._seeded(index, self.device_decode.plan, width, height),
                           pixel_values=self.blank.clone(), split=getattr(self.recorder, "split", None))
            else:
                image = decode_tensor(value, self.max_pixels, self.reduction)
                out["pixel_values"] = self._seeded(index, self.transform, image)
        except ImageDecodeError as err:
            if self.recorder is not None:
                name = self.label_names[label] if self.label_names and label is not None and label >= 0 else label
                self.recorder.record(index, describe(value), name, str(err))
            out["pixel_values"] = self.blank.clone()
            if label is not None:
                label = IGNORE_INDEX
        if label is not None:
            out["labels"] = self._label(label) if label != IGNORE_INDEX else IGNORE_INDEX
        return out


def example_key(value: dict) -> int:
    """A streamed image's id, from its path and bytes: the same in every epoch, process and DataLoader worker,
    whereas a position in a stream counts from 0 in each process's and worker's part of it."""
    digest = hashlib.blake2b(digest_size=8)
    digest.update((value.get("path") or "").encode())
    digest.update(value.get("bytes") or b"")
    return int.from_bytes(digest.digest(), "big") & 0x7FFF_FFFF_FFFF_FFFF


class ImageClassificationDataset(torch.utils.data.Dataset):
    """A map-style HF dataset with its images undecoded, transformed per example (batched reads via __getitems__)."""

    def __init__(self, dataset: Dataset, transform: ExampleTransform):
        self.dataset = undecoded(dataset, transform.image_column)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.dataset)

    def set_epoch(self, epoch: int) -> None:
        """Before each epoch's workers start (`callbacks.EpochCallback`: accelerate's resumed loader does not)."""
        self.transform.epoch = int(epoch)

    def __getitem__(self, index: int) -> dict:
        return self.__getitems__([index])[0]

    def __getitems__(self, indices: list[int]) -> list[dict]:
        """A negative index `-1 - i` is example i as padding (`distributed.ProcessBatchSampler`): read, but with
        label -100 and id -1, so it never enters the loss or a count."""
        real = [int(i) if i >= 0 else -1 - int(i) for i in indices]
        batch = self.dataset[real]
        out = [self.transform({k: v[j] for k, v in batch.items()}, i) for j, i in enumerate(real)]
        for example, index in zip(out, indices):
            if index < 0:
                example["example_ids"] = -1
                if "labels" in example:
                    example["labels"] = IGNORE_INDEX
        return out


def undecoded(dataset, image_column: str):
    """The same dataset with its image column left as {"bytes", "path"}: decoding is ours to guard."""
    return dataset.cast_column(image_column, ImageFeature(decode=False))


def attach(dataset, transform: ExampleTransform):
    """Map-style -> ImageClassificationDataset; streamed -> a lazy `map` that runs while iterating (in workers)."""
    if isinstance(dataset, IterableDataset):
        stream = undecoded(dataset, transform.image_column)
        return stream.map(transform, with_indices=not transform.keyed, remove_columns=list(stream.features))
    return ImageClassificationDataset(dataset, transform)


def collate(examples: list[dict]) -> dict:
    batch = {
        "pixel_values": torch.stack([e["pixel_values"] for e in examples]),
        "example_ids": torch.tensor([e["example_ids"] for e in examples], dtype=torch.long),
    }
    if "labels" in examples[0]:
        batch["labels"] = torch.tensor([e["labels"] for e in examples], dtype=torch.long)
    undecoded = [i for i, e in enumerate(examples) if "jpeg" in e]
    if undecoded:  # gpu_decode: plain bytes and lists, which accelerate leaves on the host (reading device
        # tensors back would wait for the GPU's previous step)
        batch["jpeg_bytes"] = [examples[i]["jpeg"] for i in undecoded]
        batch["jpeg_positions"] = undecoded
        batch["jpeg_plans"] = [examples[i]["plan"].tolist() for i in undecoded]
        batch["jpeg_split"] = examples[undecoded[0]]["split"]
    return batch


def file_names(dataset, ids: list[int]) -> list[str]:
    """Example ids -> file names (map-style data); streamed data only knows its ids."""
    if isinstance(dataset, ImageClassificationDataset):
        column = dataset.transform.image_column
        return [describe(dataset.dataset[int(i)][column]) if 0 <= i < len(dataset) else f"index {i}" for i in ids]
    return [f"index {i}" for i in ids]


def iter_file_names(dataset, chunk: int = 4096) -> Iterator[str] | None:
    """Every example's file path in dataset order (map-style), read from the path column alone: no image bytes
    are loaded, so 50,000 names cost a few MB. None for streamed data, whose rows only know their position."""
    if not isinstance(dataset, ImageClassificationDataset):
        return None
    column = f"{dataset.transform.image_column}.path"
    paths = dataset.dataset.select_columns([dataset.transform.image_column]).flatten().select_columns([column])

    def names() -> Iterator[str]:
        for start in range(0, len(paths), chunk):
            yield from (name or "" for name in paths[start : start + chunk][column])

    return names()


def dispatched(split: str, raw, world_size: int) -> bool:
    """Whether the Trainer reads this split in the main process and sends each process its slice of every batch
    (`trainer._get_dataloader`): a streamed eval split, or a streamed train split of fewer shards than processes."""
    if world_size <= 1 or not isinstance(raw, IterableDataset):
        return False
    return split != "train" or getattr(raw, "n_shards", world_size) < world_size


def build_split_inputs(data, pre, data_args, label_map: list[int] | None, output_dir: str | None,
                       seed: int | None = None, world_size: int = 1) -> dict:
    """ImageData's raw splits -> datasets of uint8 model inputs: train augmentation for train, the processor's eval
    preprocessing for validation and test; each split records its own undecodable images. With `gpu_decode`, a
    split whose batches are dispatched (`dispatched`) is still decoded by the workers: accelerate can only cut
    batches of same-shaped tensors, not lists of JPEG bytes."""
    train_tf = build_train_transform(pre, **augmentation(data_args), normalize=False)
    eval_pre = at_resolution(pre, data_args.eval_image_size, data_args.eval_crop_pct)
    eval_tf = build_eval_transform(eval_pre, normalize=False)
    common = dict(image_column=data.image_column, max_pixels=data_args.max_image_pixels, label_names=data.labels)
    if data_args.gpu_decode:
        decode_on_device = {"train": DeviceDecode(True, tuple(data_args.random_resized_crop_scale),
                                                  flip=data_args.horizontal_flip),
                            "validation": DeviceDecode(False), "test": DeviceDecode(False)}
        for split in [name for name in decode_on_device if dispatched(name, getattr(data, name, None), world_size)]:
            logger.info("gpu_decode: the %s split is dispatched from the main process: its workers decode it", split)
            del decode_on_device[split]
    else:
        decode_on_device = {}
    draft = TrainDraft(max(pre.crop_size), float(data_args.random_resized_crop_scale[0]))
    plan = _split_plan(data, train_tf, eval_tf, label_map, seed)
    return {
        split: attach(raw, ExampleTransform(tf, label_column=labels, label_map=split_map, seed=split_seed,
                                            recorder=SkipRecorder(output_dir, split),
                                            device_decode=decode_on_device.get(split), **common,
                                            crop_size=(eval_pre if split != "train" else pre).crop_size,
                                            blank=_blank(eval_pre if split != "train" else pre),
                                            keyed=split == "train" and isinstance(raw, IterableDataset),
                                            reduction=draft if split == "train" else None))
        for split, (raw, tf, labels, split_map, split_seed) in plan.items()
        if raw is not None
    }


def _blank(pre, views: int | None = None) -> torch.Tensor:
    """An unreadable image's stand-in: the normalisation's mean colour at the crop size (per view, for TTA)."""
    blank = torch.tensor(mean_colour(pre), dtype=torch.uint8).view(3, 1, 1).expand(3, *pre.crop_size)
    return (blank if views is None else blank.expand(views, *blank.shape)).contiguous()


def _split_plan(data, train_tf, eval_tf, label_map: list[int] | None, seed: int | None) -> dict:
    """split -> (raw split, transform, label column, label map, seed)."""
    test_map = label_map
    if data.test_label_map is not None:  # a test folder's own class order, then the head's
        test_map = [label_map[i] if label_map else i for i in data.test_label_map]
    return {
        "train": (data.train, train_tf, data.label_column, label_map, seed),  # a stream's ids: example_key
        "validation": (data.validation, eval_tf, data.label_column, label_map, None),
        "test": (data.test, eval_tf, data.label_column if data.test_has_labels else None, test_map, None),
    }


def build_tta_split(data, split: str, pre, data_args, label_map: list[int] | None, mode: str, passes: int,
                    seed: int | None = None):
    """`split` with each example as its (K, 3, H, W) TTA views (`tta.TtaTransform`, at the eval resolution; the
    augmented views seeded per example), for the trainer's TTA pass; None when the split is absent. Its unreadable
    images were recorded by the plain pass already: none are recorded twice."""
    eval_pre = at_resolution(pre, data_args.eval_image_size, data_args.eval_crop_pct)
    train_tf = build_train_transform(eval_pre, **augmentation(data_args), normalize=False) if mode == "augment" \
        else None
    raw, _, labels, split_map, _ = _split_plan(data, None, None, label_map, seed)[split]
    if raw is None:
        return None
    transform = ExampleTransform(TtaTransform(eval_pre, mode, passes, train_tf), image_column=data.image_column,
                                 label_column=labels, label_map=split_map, seed=seed, crop_size=eval_pre.crop_size,
                                 max_pixels=data_args.max_image_pixels, label_names=data.labels,
                                 blank=_blank(eval_pre, len(view_weights(mode, passes))))
    return attach(raw, transform)


def pad_lone_example(inputs: dict) -> dict:
    """A training batch of one image (an epoch's last, when the split's size is one over a multiple of the batch)
    gets a copy labelled -100 beside it: BatchNorm in training mode needs two values per channel, which a small
    model's 1x1 last stage would not have (a crash), and the ignored copy adds nothing to the loss. Several
    processes pad in `distributed.ProcessBatchSampler` instead."""
    pixels = inputs.get("pixel_values")
    if not isinstance(pixels, torch.Tensor) or pixels.shape[0] != 1:
        return inputs
    inputs["pixel_values"] = torch.cat([pixels, pixels])
    if isinstance(inputs.get("labels"), torch.Tensor):
        inputs["labels"] = torch.cat([inputs["labels"], torch.full_like(inputs["labels"], IGNORE_INDEX)])
    if isinstance(inputs.get("example_ids"), torch.Tensor):
        inputs["example_ids"] = torch.cat([inputs["example_ids"], torch.full_like(inputs["example_ids"], -1)])
    return inputs
