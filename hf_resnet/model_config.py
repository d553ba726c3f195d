"""The model arguments: which checkpoint (or config) is fine-tuned, its processor, and how its head is set up
(kept, cut to the data's classes, or replaced; `class_map`). `configs.py` re-exports `ModelArguments`."""

from __future__ import annotations

from dataclasses import dataclass, field

from .bundled import bundled_names, check_bundled
from .constants import is_null
from .errors import ConfigError
from .training.alignment import read_class_map


@dataclass
class ModelArguments:
    """Parameters that control which model is fine-tuned and how its head is set up."""

    model_name_or_path: str | None = field(
        default="microsoft/resnet-50",
        metadata={
            "help": "Hub id or local folder of the checkpoint to fine-tune. Set to null to build from `config_name`."
        },
    )
    config_name: str | None = field(
        default=None,
        metadata={
            "help": "Config (hub id, folder, or `bundled:<name>`) to build a randomly initialised model from, "
            "used when `model_name_or_path` is null (as run_clm.py does)."
        },
    )
    image_processor_name: str | None = field(
        default=None,
        metadata={
            "help": "Image processor (hub id, folder or `bundled:<name>`); defaults to the model's or config's own."
        },
    )
    model_revision: str = field(default="main", metadata={"help": "Branch, tag or commit of the checkpoint."})
    license: str | None = field(
        default=None,
        metadata={
            "help": "Model card license, e.g. mit (default: the base model's)."
        },
    )
    cache_dir: str | None = field(default=None, metadata={"help": "Where Hub downloads are cached."})
    token: str | None = field(
        default=None,
        metadata={
            "help": "Hub token for gated models and datasets (ILSVRC/imagenet-1k); defaults to the logged-in one."
        },
    )

    head_from_checkpoint_rows: bool = field(
        default=True,
        metadata={"help": "When the data's classes are some of the checkpoint's (e.g. 10 ImageNet classes), start "
                          "the new head from those rows of the pretrained classifier instead of random weights."},
    )

    class_map: str | None = field(
        default=None,
        metadata={"help": "Each dataset class's class of the checkpoint, by row index, synset id or name: a YAML "
                          "mapping in the recipe ({cat: 281, dog: Chihuahua}), inline YAML/JSON on the command line, "
                          "or a .yaml/.json file. Starts the new head from those rows, or evaluates the pretrained "
                          "head on them (`do_train: false`). Classes left out are matched by synset id or name."},
    )

    channels_last: bool | None = field(
        default=None,
        metadata={
            "help": "Lay the weights and each batch out channels-last (NHWC), which GPU convolutions run fastest in "
            "(ResNet-50 bf16 on an H200: 4,714 against 2,449 images/s). Default: on with a GPU, off on a CPU."
        },
    )

    cudnn_benchmark: bool | None = field(
        default=None,
        metadata={
            "help": "Let cuDNN time its algorithms for each convolution on the first batch of a shape and keep the "
            "fastest (torch.backends.cudnn.benchmark). Default: on with a GPU, unless `full_determinism`."
        },
    )

    allow_pickle_weights: bool = field(
        default=False,
        metadata={
            "help": "Also load checkpoints whose weights are only in pickle format (pytorch_model.bin). Pickle can "
            "run code when loaded: only for checkpoints you trust. By default only safetensors are loaded."
        },
    )

    def __post_init__(self):
        if is_null(self.model_name_or_path):
            self.model_name_or_path = None  # `--model_name_or_path null` on the command line, as in YAML
        if self.model_name_or_path in bundled_names("config"):  # a shipped config has no weights: build from it
            self.model_name_or_path, self.config_name = None, self.config_name or self.model_name_or_path
        if self.model_name_or_path is None and self.config_name is None:
            raise ConfigError("Set `model_name_or_path` (a checkpoint) or `config_name` (a config to build from).")
        check_bundled(self.model_name_or_path, "config", "model_name_or_path")
        check_bundled(self.config_name, "config", "config_name")
        check_bundled(self.image_processor_name, "processor", "image_processor_name")
        self.class_map = read_class_map(self.class_map)  # a mapping, or a ConfigError now
