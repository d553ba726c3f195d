"""The model card: `CardInfo` (what the run knows that the Trainer does not) rendered through the template
(`model_card.md` at the top of the repo, shipped as `hf_resnet/templates/`) into `output_dir/README.md` with
`huggingface_hub.ModelCard`; its `model-index` metadata makes the Hub show the metrics.

A new card field is one field on `CardInfo`, the line of the run that fills it, and its place in the template.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import os
from dataclasses import dataclass, field
from pathlib import Path

from huggingface_hub import EvalResult, ModelCard, ModelCardData

TEMPLATE = Path(__file__).parents[1] / "templates" / "model_card.md"
HYPERPARAMETERS = (
    "learning_rate", "per_device_train_batch_size", "per_device_eval_batch_size", "gradient_accumulation_steps",
    "num_train_epochs", "max_steps", "lr_scheduler_type", "warmup_steps", "weight_decay", "optim", "seed",
    "bf16", "fp16",
)
# metric key (without the eval_ prefix) -> (model-index metric type, display name)
CARD_METRICS = {
    "accuracy": ("accuracy", "Top-1 accuracy"),
    "top5_accuracy": ("accuracy", "Top-5 accuracy"),
    "f1_macro": ("f1", "Macro F1"),
    "precision_macro": ("precision", "Macro precision"),
    "recall_macro": ("recall", "Macro recall"),
}


def _is_hub_id(name: str | None) -> bool:
    """`owner/name` or a legacy bare id, not a local path and not one of our `bundled:` assets."""
    return bool(name) and ":" not in name and not os.path.exists(name) and not name.startswith((".", "/", "~"))


def _versions() -> dict[str, str]:
    out = {}
    for name in ("hf-resnet", "transformers", "torch", "datasets", "accelerate"):
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return out


@dataclass
class CardInfo:
    """What the model card says that the Trainer does not know; every field reaches the template by its name."""

    base_model: str | None
    dataset_name: str
    dataset_id: str | None
    labels: list[str]
    tuning: str
    train_examples: int | str = "unknown"
    eval_examples: int | str = "unknown"
    eval_split: str = "validation"
    eval_metrics: dict = field(default_factory=dict)


def render_model_card(info: CardInfo, training_args, model_name: str, repo_id: str) -> ModelCard:
    """Build the card; `info.eval_metrics` keys may carry the Trainer's `eval_` prefix.

    `base_model` / `dataset_id` go into the Hub metadata only when they are Hub ids: a local folder is named in
    the text, not linked.
    """
    base_model, dataset_id = info.base_model, info.dataset_id
    base_model_name = Path(base_model).name if base_model and os.path.isdir(base_model) else base_model
    base_model = base_model if _is_hub_id(base_model) else None
    dataset_id = dataset_id if _is_hub_id(dataset_id) else None
    metrics = {k.removeprefix("eval_"): float(v) for k, v in info.eval_metrics.items()}
    metrics = {k: v for k, v in metrics.items() if k in CARD_METRICS}
    eval_results = [
        EvalResult(
            task_type="image-classification", task_name="Image Classification",
            dataset_type=dataset_id or info.dataset_name, dataset_name=info.dataset_name,
            dataset_split=info.eval_split, metric_type=CARD_METRICS[k][0], metric_name=CARD_METRICS[k][1],
            metric_value=round(v, 4),
        )
        for k, v in metrics.items()
    ]
    card_data = ModelCardData(
        model_name=model_name,
        base_model=base_model,
        datasets=[dataset_id] if dataset_id else None,
        library_name="transformers",
        pipeline_tag="image-classification",
        license=None,
        tags=["image-classification", "resnet", "hf-resnet", "generated_from_trainer"],
        metrics=sorted({CARD_METRICS[k][0] for k in metrics}),
        eval_results=eval_results or None,
    )
    hyperparameters = {name: getattr(training_args, name) for name in HYPERPARAMETERS if hasattr(training_args, name)}
    hyperparameters = {k: (v.value if hasattr(v, "value") else v) for k, v in hyperparameters.items()}
    values = {
        **dataclasses.asdict(info),  # every CardInfo field, by its name
        "base_model": base_model,
        "dataset_id": dataset_id,
        "eval_metrics": {CARD_METRICS[k][1]: v for k, v in metrics.items()},
        "model_name": model_name,
        "repo_id": repo_id,
        "base_model_name": base_model_name,
        "num_labels": len(info.labels),
        "hyperparameters": hyperparameters,
        "versions": _versions(),
    }
    return ModelCard.from_template(card_data, template_path=str(TEMPLATE), **values)


def write_model_card(info: CardInfo, training_args, repo_id: str | None = None, model_name: str | None = None) -> Path:
    """Render the card into `output_dir/README.md`; returns its path."""
    output_dir = Path(training_args.output_dir)
    repo_id = repo_id or training_args.hub_model_id or output_dir.name
    card = render_model_card(info, training_args, model_name=model_name or repo_id.split("/")[-1], repo_id=repo_id)
    card.save(output_dir / "README.md")
    return output_dir / "README.md"
