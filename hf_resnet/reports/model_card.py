"""The model card: `CardInfo` (what the run knows that the Trainer does not) rendered through the template
(`model_card.md` at the top of the repo, shipped as `hf_resnet/templates/`) into `output_dir/README.md` with
`huggingface_hub.ModelCard`; its `model-index` metadata (one entry per evaluated split) makes the Hub show the
metrics.

A new card field is one field on `CardInfo`, the line of the run that fills it, and its place in the template.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from huggingface_hub import EvalResult, ModelCard, ModelCardData

from ..constants import value_of
from ..hub import is_hub_id, is_offline

logger = logging.getLogger(__name__)

TEMPLATE = Path(__file__).parents[1] / "templates" / "model_card.md"
# TrainingArguments fields that shape a run, in the card's order (num_train_epochs / max_steps: whichever rules).
HYPERPARAMETERS = (
    "learning_rate", "per_device_train_batch_size", "gradient_accumulation_steps", "num_train_epochs", "max_steps",
    "lr_scheduler_type", "warmup_steps", "weight_decay", "optim", "label_smoothing_factor", "max_grad_norm", "seed",
    "bf16", "fp16",
)
# metric key (without the eval_/test_ prefix) -> (model-index metric type, display name)
CARD_METRICS = {
    "accuracy": ("accuracy", "Top-1 accuracy"),
    "top5_accuracy": ("top_5_accuracy", "Top-5 accuracy"),
    "f1_macro": ("f1", "Macro F1"),
    "precision_macro": ("precision", "Macro precision"),
    "recall_macro": ("recall", "Macro recall"),
    "ece": ("expected_calibration_error", "Expected calibration error (15 bins)"),
    "tta_accuracy": ("accuracy_tta", "Top-1 accuracy with test-time augmentation"),
}
SPLIT_TITLES = {"validation": "Validation split", "test": "Test split"}
PER_CLASS_ROWS = 20  # up to this many classes the card lists them all; beyond, the lowest-F1 half of it


def dataset_title(dataset_name: str | None, source: str) -> str:
    """A name a reader recognises: the Hub id; the bundled digits by what they are; a folder by its dataset's
    name (`data/hymenoptera/train` -> hymenoptera), not by `train`."""
    if dataset_name == "bundled:digits":
        return "scikit-learn digits (bundled:digits)"
    if dataset_name:
        return dataset_name if is_hub_id(dataset_name) else Path(dataset_name).name
    folder = Path(source)
    split_names = {"train", "training", "validation", "valid", "val", "test"}
    return folder.parent.name if folder.name.lower() in split_names and folder.parent.name else folder.name


def _versions() -> dict[str, str]:
    out = {}
    for name in ("hf-resnet", "transformers", "torch", "datasets", "accelerate"):
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return out


def format_value(value) -> str:
    """3.0 -> "3", 0.003 -> "0.003", 1e-05 -> "1e-05", enums by value: one spelling whatever the recipe wrote."""
    value = value_of(value)
    if isinstance(value, bool) or value is None:
        return str(value).lower()
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() else f"{value:.6g}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(format_value(v) for v in value) + "]"
    return str(value)


def base_model_license(name: str | None, revision: str = "main", token: str | None = None,
                       cache_dir: str | None = None) -> str | None:
    """The license in the base model's card: a local folder's README.md, the card in the Hub cache, or else the
    Hub's answer (None offline, or when the Hub does not answer within 5 s)."""
    if not name:
        return None
    try:
        if os.path.isdir(name):
            card = Path(name) / "README.md"
            return ModelCard.load(card).data.license if card.is_file() else None
        if not is_hub_id(name):
            return None
        from huggingface_hub import HfApi, try_to_load_from_cache

        cached = try_to_load_from_cache(name, "README.md", cache_dir=cache_dir, revision=revision)
        if isinstance(cached, str):
            return ModelCard.load(cached).data.license
        if is_offline():
            return None
        info = HfApi().model_info(name, revision=revision, token=token, timeout=5)
        card_data = info.card_data
        license = getattr(card_data, "license", None) if card_data is not None else None
        return license or next((t.split(":", 1)[1] for t in info.tags or [] if t.startswith("license:")), None)
    except Exception as err:  # the card is optional: a missing license must not stop a run
        logger.info("Could not read %s's license (%s); the card names none unless `license` is set.", name,
                    type(err).__name__)
        return None


def run_hyperparameters(strategy_args, training_args, extra: dict) -> dict:
    """The run's own hyperparameters for the card, beside the Trainer's: every strategy field set away from its
    default (what the strategy changed), the head's rate always (its effective value), SGD's momentum with SGD,
    then `extra` (augmentation, input size)."""
    shown = {}
    sgd = "sgd" in str(value_of(training_args.optim))
    for spec in dataclasses.fields(strategy_args):
        value = getattr(strategy_args, spec.name)
        default = spec.default if spec.default is not dataclasses.MISSING else spec.default_factory()
        if spec.name != "tuning" and (value != default or (sgd and spec.name.startswith("sgd_"))):
            shown[spec.name] = value
    if getattr(strategy_args, "head_learning_rate", None) is None:
        shown["head_learning_rate"] = f"{format_value(training_args.learning_rate)} (same as learning_rate)"
    return {**shown, **extra}


@dataclass
class SplitResult:
    """One evaluated split, as the report wrote it (`reports.evaluation.write_split_report`)."""

    split: str
    metrics: dict  # without the eval_/test_ prefix: accuracy, top5_accuracy, f1_macro, ..., samples, loss
    per_class: list[dict] = field(default_factory=list)  # class, precision, recall, f1, support, predicted
    most_confused: list[dict] = field(default_factory=list)  # true, predicted, count, share_of_true
    figures: dict[str, str] = field(default_factory=dict)  # name -> path relative to output_dir
    files: dict[str, str] = field(default_factory=dict)  # eval_report / predictions -> path relative to output_dir


@dataclass
class CardInfo:
    """What the model card says that the Trainer does not know; every field reaches the template by its name."""

    base_model: str | None
    dataset_name: str
    dataset_id: str | None
    labels: list[str]
    tuning: str
    dataset_config: str | None = None
    license: str | None = None
    license_source: str | None = None  # "microsoft/resnet-50's card", "set by `license`"
    train_examples: int | str = "unknown"
    held_out: dict[str, float] = field(default_factory=dict)  # split -> share of train it was carved from
    parameters: int | None = None
    crop_size: int | None = None
    hyperparameters: dict = field(default_factory=dict)  # the run's own (strategy, augmentation), beside the Trainer's
    results: dict[str, SplitResult] = field(default_factory=dict)  # split -> result, in evaluation order
    training_curves: str | None = None  # path relative to output_dir
    calibration: dict | None = None  # temperature scaling: temperature, ece_before, ece_after, ... (calibration.py)


def _split_metrics(result: SplitResult) -> dict[str, float]:
    return {k: float(result.metrics[k]) for k in CARD_METRICS if k in result.metrics}


def _eval_results(info: CardInfo, dataset_type: str) -> list[EvalResult]:
    return [
        EvalResult(
            task_type="image-classification", task_name="Image Classification", dataset_type=dataset_type,
            dataset_name=info.dataset_name, dataset_config=info.dataset_config if info.dataset_id else None,
            dataset_split=split, metric_type=CARD_METRICS[key][0], metric_name=CARD_METRICS[key][1],
            metric_value=round(value, 4),
        )
        for split, result in info.results.items()
        for key, value in _split_metrics(result).items()
    ]


def _epoch(value) -> str:
    return format_value(round(float(value), 2)) if value is not None else "?"


def _training_log(log_history: list[dict]) -> list[dict]:
    """One row per evaluation during training (the final evaluations after it are the results tables)."""
    rows, train_loss = [], None
    for entry in log_history:
        if "train_runtime" in entry:
            break
        if "loss" in entry:
            train_loss = entry["loss"]
        if "eval_loss" in entry:
            rows.append({
                "epoch": _epoch(entry.get("epoch")), "step": entry.get("step"),
                "train_loss": "-" if train_loss is None else f"{train_loss:.4f}",
                "eval_loss": f"{entry['eval_loss']:.4f}",
                "accuracy": f"{entry['eval_accuracy']:.4f}" if "eval_accuracy" in entry else "-",
                "f1": f"{entry['eval_f1_macro']:.4f}" if "eval_f1_macro" in entry else "-",
            })
    return rows


def _best(state, training_args) -> dict | None:
    """The checkpoint `load_best_model_at_end` restored: its step, epoch and the metric that chose it."""
    checkpoint = getattr(state, "best_model_checkpoint", None) if state is not None else None
    if not (training_args.load_best_model_at_end and checkpoint):
        return None
    step = int(str(checkpoint).rstrip("/").rsplit("-", 1)[-1])
    epoch = next((e.get("epoch") for e in state.log_history if e.get("step") == step and "eval_loss" in e), None)
    metric = training_args.metric_for_best_model or "loss"
    return {"step": step, "epoch": _epoch(epoch), "metric": metric if metric.startswith("eval_") else f"eval_{metric}"}


def _train_summary(state) -> dict:
    return next((e for e in reversed(state.log_history) if "train_runtime" in e), {}) if state is not None else {}


def _hardware(training_args) -> str:
    device = training_args.device
    processes = training_args.world_size
    if device.type == "cuda":
        return f"{processes} x {torch.cuda.get_device_name(device)}"
    what = f"{device.type.upper()} ({os.cpu_count()} cores)" if device.type == "cpu" else device.type
    return what + (f", {processes} processes" if processes > 1 else "")


def _duration(seconds: float) -> str:
    if seconds < 10:
        return f"{seconds:.1f} s"
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def _split_view(info: CardInfo, result: SplitResult, best: dict | None, state) -> dict:
    """What the template shows for one split: its description, metrics, trimmed per-class table, pictures."""
    n = result.metrics.get("samples", "?")
    where = {"validation": "the validation split", "test": "the test split"}.get(result.split, result.split)
    if result.split in info.held_out:
        where += f" ({info.held_out[result.split]:.0%} of train, held out stratified by class)"
    if result.split == "validation" and best is not None:
        when = (f"with the best checkpoint (epoch {best['epoch']}, step {best['step']}), chosen by `{best['metric']}` "
                "on this same split, so expect a little less on new images")
        if "test" in info.results:
            when += "; the test split below played no part in the choice"
    elif state is not None and state.global_step:
        when = f"at the end of training (epoch {_epoch(state.epoch)}, step {state.global_step})"
    else:
        when = "without training"
    if result.split == "test":
        when += ", on images used neither for training nor for choosing a checkpoint"
    per_class = result.per_class
    note = ""
    if len(per_class) > PER_CLASS_ROWS:
        shown = [r for r in per_class if r["support"] > 0]
        per_class = sorted(shown, key=lambda r: (r["f1"], r["class"]))[: PER_CLASS_ROWS // 2]
        where_all = result.files.get("eval_report", "eval_report.json")
        note = (f"The {len(per_class)} classes with the lowest F1 of {len(result.per_class)}; every class is in "
                f"[{where_all.rsplit('/', 1)[-1]}]({where_all}).")
    return {
        "split": result.split, "title": SPLIT_TITLES.get(result.split, result.split.title()),
        "description": f"Measured on {where}: {n} images, {when}.",
        "metrics": {CARD_METRICS[k][1]: v for k, v in _split_metrics(result).items()},
        "per_class": per_class, "per_class_note": note, "most_confused": result.most_confused[:5],
        "figures": result.figures, "files": result.files,
    }


def render_model_card(info: CardInfo, training_args, model_name: str, repo_id: str, state=None,
                      output_dir: str | Path | None = None) -> ModelCard:
    """Build the card. `repo_id` is what the quick start loads: the Hub id when pushing, else the local folder.
    `state` (the Trainer's) gives the training log, the best checkpoint and the training time."""
    base_model, dataset_id = info.base_model, info.dataset_id
    base_model_name = Path(base_model).name if base_model and os.path.isdir(base_model) else base_model
    base_model = base_model if is_hub_id(base_model) else None
    dataset_id = dataset_id if is_hub_id(dataset_id) else None
    card_data = ModelCardData(
        model_name=model_name,
        base_model=base_model,
        datasets=[dataset_id] if dataset_id else None,
        library_name="transformers",
        pipeline_tag="image-classification",
        license=info.license,
        tags=["image-classification", "resnet", "hf-resnet", "generated_from_trainer"],
        metrics=sorted({CARD_METRICS[k][0] for r in info.results.values() for k in _split_metrics(r)}) or None,
        eval_results=_eval_results(dataclasses.replace(info, dataset_id=dataset_id), dataset_id or "imagefolder")
        or None,
    )
    hyperparameters = {name: getattr(training_args, name) for name in HYPERPARAMETERS if hasattr(training_args, name)}
    if training_args.max_steps > 0:
        hyperparameters.pop("num_train_epochs", None)  # max_steps rules
    else:
        hyperparameters.pop("max_steps", None)
    if not training_args.label_smoothing_factor:
        hyperparameters.pop("label_smoothing_factor", None)
    args = training_args
    hyperparameters["total_train_batch_size"] = (
        args.per_device_train_batch_size * args.world_size * args.gradient_accumulation_steps
    )
    hyperparameters["processes"] = training_args.world_size
    hyperparameters.update(info.hyperparameters)
    best = _best(state, training_args)
    summary = _train_summary(state)
    weights = Path(output_dir or training_args.output_dir) / "model.safetensors"
    validation = info.results.get("validation")
    values = {
        **dataclasses.asdict(info),  # every CardInfo field, by its name
        "base_model": base_model,
        "dataset_id": dataset_id,
        "model_name": model_name,
        "repo_id": repo_id,
        "base_model_name": base_model_name,
        "num_labels": len(info.labels),
        "top_k": min(len(info.labels), 5),
        "results": [_split_view(info, r, best, state) for r in info.results.values()],
        "best": best,
        "training_log": _training_log(state.log_history) if state is not None else [],
        "hyperparameters": {k: format_value(v) for k, v in hyperparameters.items()},
        "train_runtime": _duration(summary["train_runtime"]) if "train_runtime" in summary else None,
        "train_steps": state.global_step if state is not None else None,
        "hardware": _hardware(training_args),
        "weights_mb": f"{weights.stat().st_size / 2**20:.1f}" if weights.is_file() else None,
        "eval_speed": f"{validation.metrics['samples_per_second']:.0f}"
        if validation is not None and "samples_per_second" in validation.metrics else None,
        "eval_batch_size": training_args.per_device_eval_batch_size,
        "versions": _versions(),
    }
    return ModelCard.from_template(card_data, template_path=str(TEMPLATE), **values)


def write_model_card(info: CardInfo, training_args, repo_id: str | None = None, model_name: str | None = None,
                     state=None) -> Path:
    """Render the card into `output_dir/README.md`; returns its path. Without a Hub `repo_id` the quick start
    loads the local folder (its absolute path), so it works as written on this machine."""
    output_dir = Path(training_args.output_dir)
    target = repo_id or str(output_dir.resolve())
    name = model_name or (repo_id.split("/")[-1] if repo_id else output_dir.resolve().name)
    card = render_model_card(info, training_args, model_name=name, repo_id=target, state=state, output_dir=output_dir)
    card.save(output_dir / "README.md")
    return output_dir / "README.md"
