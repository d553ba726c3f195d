"""hf-resnet: fine-tune microsoft/resnet-50 (or any Hugging Face ResNet) on any image dataset, and ship a model
that `pipeline("image-classification")` serves.

    from hf_resnet import main, parse_args
    main(*parse_args(["--config", "smoke/digits_smoke"]))

The public names below are imported on first use, so `import hf_resnet` (and `hf-resnet --help`) stays fast.
"""

from __future__ import annotations

import importlib

__version__ = "0.2.0"

_PUBLIC = {
    "ModelArguments": "configs",
    "DataArguments": "configs",
    "StrategyArguments": "strategy_config",
    "FinetuneTrainingArguments": "configs",
    "parse_args": "parser",
    "main": "run",
    "load_image_data": "data.loading",
    "build_model": "training.modeling",
    "ImageClassificationTrainer": "trainer",
    "Classifier": "inference",
    "audit_folder": "data.audit",
    "HfResnetError": "errors",
    "ConfigError": "errors",
    "DataError": "errors",
}
__all__ = ["__version__", *_PUBLIC]


def __getattr__(name: str):
    if name in _PUBLIC:
        value = getattr(importlib.import_module(f".{_PUBLIC[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'hf_resnet' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
