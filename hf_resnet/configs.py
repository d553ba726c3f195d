"""Argument dataclasses: what to train on (data) and the Trainer's own arguments; what to load (the model) is in
`model_config.py` (re-exported here) and how to fine-tune (the strategy) in `strategy_config.py`.

Every field carries help text; the YAML recipes (`hf_resnet/recipes/`) set them, command-line flags override them
(see `parser.py`). Cross-field checks live in `__post_init__` so a bad recipe fails before any data or weights are
touched.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

import torch
from transformers import TrainingArguments

from .bundled import check_bundled
from .constants import BUNDLED_PREFIX, DEFAULT_MAX_PIXELS, ONE_CYCLE
from .errors import ConfigError
from .model_config import ModelArguments  # noqa: F401 (re-exported: `configs` holds all three)
from .training.preemption import parse_stop_signals

AUTO_AUGMENTS = ("none", "randaugment", "trivialaugment", "autoaugment")


@dataclass
class DataArguments:
    """Parameters that control what data is read and how it is split and preprocessed."""

    dataset_name: str | None = field(
        default=None,
        metadata={
            "help": "Hub dataset id (e.g. ILSVRC/imagenet-1k) or `bundled:digits` (scikit-learn's digits, "
            "rendered as an image folder on first use). Leave unset to use `train_dir`/`validation_dir`."
        },
    )
    dataset_config_name: str | None = field(default=None, metadata={"help": "Configuration of the Hub dataset."})
    train_dir: str | None = field(
        default=None, metadata={"help": "Image folder (one sub-folder per class) to train on."}
    )
    validation_dir: str | None = field(default=None, metadata={"help": "Image folder to evaluate on."})
    test_dir: str | None = field(
        default=None,
        metadata={
            "help": "Image folder to predict (flat, unlabeled: writes report/test/predictions_test.csv) or score "
            "(one sub-folder per class) at the end. A Hub dataset's test split is used only with `do_predict`."
        },
    )
    image_column_name: str | None = field(
        default=None, metadata={"help": "Column holding the images; auto-detected from `image`/`img` when unset."}
    )
    label_column_name: str | None = field(
        default=None,
        metadata={"help": "Column holding the ClassLabel; auto-detected from `label`/`labels` when unset."},
    )
    streaming: bool = field(
        default=False, metadata={"help": "Stream the dataset (IterableDataset) instead of downloading/preparing it."}
    )
    shuffle_buffer_size: int = field(
        default=10_000, metadata={"help": "Examples held in the shuffle buffer when streaming (images, not batches)."}
    )
    train_val_split: float = field(
        default=0.15,
        metadata={
            "help": "Share of train split off (stratified, seeded) as validation when there is no validation split."
        },
    )
    test_split: float | None = field(
        default=None,
        metadata={
            "help": "Share of train held out (stratified, seeded) as a scored test split; with train_val_split "
            "0.1, 0.1 gives 80/10/10."
        },
    )
    max_train_samples: int | None = field(default=None, metadata={"help": "Keep only this many training examples."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Keep only this many evaluation examples."})
    max_predict_samples: int | None = field(default=None, metadata={"help": "Keep only this many test examples."})
    max_skipped_share: float = field(
        default=0.02,
        metadata={
            "help": "Stop when more than this share of a split's images cannot be decoded (they are skipped and "
            "listed)."
        },
    )
    max_image_pixels: int = field(
        default=DEFAULT_MAX_PIXELS,
        metadata={"help": "Skip images with more pixels than this (Pillow's decompression-bomb limit by default)."},
    )
    image_size: int | None = field(
        default=None,
        metadata={"help": "Train and evaluate at this crop size instead of the processor's (e.g. 160 or 288); the "
                          "saved processor says so, so pipeline() uses it too. The resize before the crop keeps "
                          "`crop_pct`."},
    )
    crop_pct: float | None = field(
        default=None, metadata={"help": "With `image_size`: the crop's share of the resized image (ResNet-50: 0.875)."}
    )
    random_resized_crop_scale: list[float] = field(
        default_factory=lambda: [0.08, 1.0],
        metadata={"help": "Area range of RandomResizedCrop in training (torchvision's default is 0.08-1.0)."},
    )
    horizontal_flip: float = field(
        default=0.5, metadata={"help": "Probability of a horizontal flip in training (0 for digits and text)."}
    )
    auto_augment: str = field(
        default="none",
        metadata={"help": "Learned or random augmentation policy after crop and flip: `randaugment` (2 ops), "
                          "`trivialaugment` (TrivialAugmentWide), `autoaugment` (ImageNet policy) or `none`."},
    )
    rand_augment_magnitude: int = field(
        default=9, metadata={"help": "RandAugment's magnitude, 0-30 (torchvision's and timm's default: 9)."}
    )
    color_jitter: float = field(
        default=0.0,
        metadata={"help": "Random brightness, contrast and saturation change of up to this share (timm uses 0.4)."},
    )
    rotation_degrees: float = field(
        default=0.0, metadata={"help": "Random rotation of up to this many degrees either way, in training."}
    )
    translate: float = field(
        default=0.0, metadata={"help": "Random shift of up to this share of the width and height, in training."}
    )
    random_erasing: float = field(
        default=0.0,
        metadata={"help": "Probability of erasing a random rectangle of the normalised image (timm uses 0.25)."},
    )
    eval_image_size: int | None = field(
        default=None, metadata={"help": "Evaluate at this input size instead of the processor's crop (e.g. 288)."})
    eval_crop_pct: float | None = field(
        default=None, metadata={"help": "Eval crop / resized short side (1.0: no margin); default: the processor's."})
    gpu_decode: bool = field(
        default=False,
        metadata={"help": "Decode JPEGs on the GPU in batches (nvJPEG) and resize, crop, flip and normalise there; "
                          "the DataLoader workers only read the files. For when the CPU cannot keep up with the GPU. "
                          "Other files (PNG, CMYK...) are decoded by the workers. Supports crop and flip only."},
    )

    def _check_sizes(self) -> None:
        """`image_size`/`crop_pct` (training and the saved processor) and `eval_image_size`/`eval_crop_pct`."""
        if self.image_size is not None and not 8 <= self.image_size <= 2048 or self.crop_pct is not None and not \
                0 < self.crop_pct <= 1:
            raise ConfigError(f"`image_size` must be 8-2048 pixels and `crop_pct` in (0, 1]; got {self.image_size}, "
                              f"{self.crop_pct}.")
        if (self.eval_image_size is not None and self.eval_image_size < 1) or not 0 < (self.eval_crop_pct or 1) <= 1:
            raise ConfigError("`eval_image_size` must be a positive size and `eval_crop_pct` in (0, 1].")

    def __post_init__(self):
        check_bundled(self.dataset_name, "dataset", "dataset_name")
        hub = self.dataset_name is not None and not self.dataset_name.startswith(BUNDLED_PREFIX)
        if (hub or self.dataset_name == "bundled:digits") and (self.train_dir or self.validation_dir):
            raise ConfigError(
                f"`dataset_name` ({self.dataset_name}) and `train_dir`/`validation_dir` both name the data; keep one "
                "(`test_dir` may be added to either)."
            )
        if self.dataset_name is None and self.train_dir is None and self.validation_dir is None:
            raise ConfigError(
                "No data: set `dataset_name` (a Hub id or `bundled:digits`) or `train_dir`/`validation_dir` (image "
                "folders)."
            )
        if not 0.0 < self.train_val_split < 1.0:
            raise ConfigError(f"`train_val_split` must be between 0 and 1, got {self.train_val_split}.")
        if self.test_split is not None:
            if not 0.0 < self.test_split < 1.0 or self.test_split + self.train_val_split >= 1.0:
                raise ConfigError(
                    f"`test_split` must be between 0 and 1 and leave room for training beside `train_val_split` "
                    f"({self.train_val_split}), got {self.test_split}; e.g. 0.1 and 0.1 for 80/10/10."
                )
            if self.test_dir:
                raise ConfigError("`test_split` and `test_dir` both name the test split; keep one.")
        self._check_sizes()
        scale = self.random_resized_crop_scale
        if len(scale) != 2 or not 0 < scale[0] <= scale[1] <= 1:
            raise ConfigError(f"`random_resized_crop_scale` must be [min, max] with 0 < min <= max <= 1, got {scale}.")
        for name in ("horizontal_flip", "random_erasing", "color_jitter", "translate"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"`{name}` must be between 0 and 1, got {getattr(self, name)}.")
        if self.auto_augment not in AUTO_AUGMENTS:
            raise ConfigError(f"`auto_augment` must be one of {', '.join(AUTO_AUGMENTS)}, got {self.auto_augment!r}.")
        if not 0 <= self.rand_augment_magnitude <= 30:
            raise ConfigError(f"`rand_augment_magnitude` must be 0-30, got {self.rand_augment_magnitude}.")
        if not 0.0 <= self.rotation_degrees <= 180.0:
            raise ConfigError(f"`rotation_degrees` must be 0-180, got {self.rotation_degrees}.")
        if self.gpu_decode:
            on_cpu = [name for name in ("color_jitter", "rotation_degrees", "translate", "random_erasing")
                      if getattr(self, name)] + (["auto_augment"] if self.auto_augment != "none" else [])
            if on_cpu:
                raise ConfigError(
                    f"`gpu_decode: true` does the random crop and flip on the GPU, but not {', '.join(on_cpu)}; set "
                    f"{' and '.join(f'`{name}`' for name in on_cpu)} to 0 / none, or `gpu_decode: false`."
                )
            from .data.images import JPEG_DECODER

            if self.eval_image_size or self.eval_crop_pct:
                raise ConfigError("`eval_image_size` / `eval_crop_pct` resize on the CPU; set `gpu_decode: false`.")
            if JPEG_DECODER == "pillow":
                chosen = os.environ.get("HF_RESNET_JPEG_DECODER")
                raise ConfigError(
                    (f"`gpu_decode: true` needs a batch JPEG decoder, and HF_RESNET_JPEG_DECODER={chosen} asks for "
                     "Pillow: unset it, or " if chosen else "`gpu_decode: true` needs a batch JPEG decoder with "
                     "nvJPEG, and none loads here: `pip install torchcodec` (or a torchvision that still has "
                     "`torchvision.io.decode_jpeg`), or ") + "`gpu_decode: false`."
                )


def available_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def cores_per_process() -> int:
    """This process's share of the CPU cores it may use, among the processes `accelerate launch` started here."""
    return max(1, available_cores() // int(os.environ.get("LOCAL_WORLD_SIZE", "1")))


MAX_DEFAULT_WORKERS = 16  # each worker restarts every epoch and evaluation, with its own memory


def default_workers(gpu: bool) -> int:
    """With a GPU, every core of this process's share but one (the main process's), up to 16: a GPU trains
    ResNet-50 faster than a dozen cores decode photos. On a CPU the model's arithmetic needs the cores: 2."""
    if gpu:
        return max(1, min(MAX_DEFAULT_WORKERS, cores_per_process() - 1))
    return min(2, cores_per_process())


def copies_without_waiting(accelerator_config):
    """`accelerator_config` with `non_blocking: true` unless it says otherwise: each batch's host-to-GPU copy (from
    pinned memory) is queued behind the running step instead of the CPU waiting for that step to finish, so the
    CPU prepares the next step meanwhile. A JSON file's path is left as the user wrote it."""
    if accelerator_config is None:
        return {"non_blocking": True}
    if isinstance(accelerator_config, str) and accelerator_config.lstrip().startswith("{"):
        # still a JSON string, so the Trainer converts its string values ("false") as it would have
        return json.dumps({"non_blocking": True, **json.loads(accelerator_config)})
    if isinstance(accelerator_config, dict):
        return {"non_blocking": True, **accelerator_config}
    return accelerator_config


@dataclass
class FinetuneTrainingArguments(TrainingArguments):
    """`TrainingArguments` with defaults that suit image classification (every Trainer field is still accepted)."""

    remove_unused_columns: bool = field(
        default=False, metadata={"help": "Kept False: the transforms need the image column the model does not take."}
    )
    eval_strategy: str = field(default="epoch", metadata={"help": "When to evaluate: `no`, `steps` or `epoch`."})
    save_strategy: str = field(
        default="epoch", metadata={"help": "When to checkpoint: `no`, `steps`, `epoch` or `best`."}
    )
    logging_strategy: str = field(default="steps", metadata={"help": "When to log: `no`, `steps` or `epoch`."})
    logging_steps: float = field(default=10, metadata={"help": "Log every this many optimizer steps."})
    save_total_limit: int | None = field(default=2, metadata={"help": "Keep at most this many checkpoints."})
    dataloader_num_workers: int | None = field(
        default=None,
        metadata={"help": "DataLoader worker processes; image decoding and transforms run in them. Default: with a "
                          "GPU, this process's share of the CPU cores but one, up to 16 (the GPU waits on them); on "
                          "a CPU, 2 (the model's own arithmetic needs the cores)."},
    )
    dataloader_pin_memory: bool = field(
        default_factory=torch.cuda.is_available, metadata={"help": "Pin host memory for faster GPU copies (GPU only)."}
    )
    ddp_find_unused_parameters: bool | None = field(
        default=False, metadata={"help": "Every trainable ResNet weight is used each step, so DDP need not search."}
    )
    on_nonfinite_loss: str = field(
        default="stop",
        metadata={"help": "A NaN/inf training loss: `stop` the run (naming the step and images) or `skip` the batch."},
    )
    restore_callback_states_from_checkpoint: bool = field(
        default=True,
        metadata={"help": "A resumed run restores its callbacks' state too (early stopping's patience count)."},
    )
    log_example_ids: bool = field(
        default=False,
        metadata={"help": "Write the example ids of every batch each process trains on or evaluates to "
                          "output_dir/example_ids/rank-<N>.jsonl, to check that each example is read once per epoch."},
    )
    stop_signals: str = field(
        default="SIGTERM,SIGUSR1",
        metadata={"help": "Signals (a scheduler's preemption notice) on which training finishes its step, saves a "
                          "complete checkpoint and exits to be resumed; `none` to leave them to their defaults."},
    )
    requeue_exit_code: int = field(
        default=143, metadata={"help": "Exit code after such a stop (143 = 128 + SIGTERM; 0 for schedulers that "
                                       "requeue only jobs that succeeded)."},
    )
    lr_scheduler_type: str = field(default="linear", metadata={"help": "transformers' schedules (linear, cosine, "
                                   "constant, ...) or `one_cycle` (torch's OneCycleLR: the one_cycle_* fields)."})
    do_train: bool = field(default=True, metadata={"help": "Fine-tune on the train split."})
    do_eval: bool = field(default=True, metadata={"help": "Evaluate on the validation split."})

    def __getstate__(self):
        """Pickled (training_args.bin, in output_dir and every checkpoint) without any token: the push and the
        run use the one in memory."""
        return {key: None if key.endswith("_token") else value for key, value in self.__dict__.items()}

    def __post_init__(self):
        # `accelerate launch --multi_gpu --num_processes N` on a machine without GPUs starts N gloo processes, but
        # the Trainer only treats them as one job (DDP, data split per process) when told it runs on the CPU.
        if not self.use_cpu and int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.cuda.is_available():
            self.use_cpu = True
        self._check_precision()
        if self.dataloader_num_workers is None:
            self.dataloader_num_workers = default_workers(torch.cuda.is_available() and not self.use_cpu)
        if self.dataloader_persistent_workers and self.dataloader_num_workers > 0:
            raise ConfigError(
                "`dataloader_persistent_workers: true` would keep each worker's first-epoch augmentation seed; "
                "leave it false (workers restart each epoch)."
            )
        parse_stop_signals(self.stop_signals)  # a misspelt signal fails now, not at the first preemption
        if self.on_nonfinite_loss not in ("stop", "skip"):
            raise ConfigError(f"`on_nonfinite_loss` must be 'stop' or 'skip', got {self.on_nonfinite_loss!r}.")
        if self.dataloader_pin_memory and torch.cuda.is_available() and not self.use_cpu:
            self.accelerator_config = copies_without_waiting(self.accelerator_config)
        one_cycle = self.lr_scheduler_type == ONE_CYCLE  # ours: transformers' check below sees `constant`
        self.lr_scheduler_type = "constant" if one_cycle else self.lr_scheduler_type
        super().__post_init__()
        self.lr_scheduler_type = ONE_CYCLE if one_cycle else self.lr_scheduler_type

    def _check_precision(self) -> None:
        """fp16/bf16 that this machine cannot run: one message with the fix, not the Trainer's traceback."""
        gpu = torch.cuda.is_available()
        if self.fp16 and (self.use_cpu or not gpu):
            raise ConfigError("`fp16: true` needs a CUDA GPU and none is in use here; set `fp16: false` "
                              "(on a CPU with bf16 support, `bf16: true` with `use_cpu: true` also works).")
        if self.bf16 and gpu and not self.use_cpu and not torch.cuda.is_bf16_supported():
            raise ConfigError("`bf16: true` but this GPU has no bf16 (it needs Ampere or newer); use `fp16: true`.")
        if self.bf16 and not gpu and not self.use_cpu:
            raise ConfigError("`bf16: true` but there is no GPU; set `bf16: false`, or `use_cpu: true` to run bf16 "
                              "autocast on the CPU (fast only on CPUs with AMX/AVX512-BF16).")
