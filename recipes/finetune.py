"""Fine-tune a ResNet (microsoft/resnet-50 by default) on any image dataset, then save, card and push it.

    python recipes/finetune.py --config recipes/smoke/digits_smoke.yaml            # offline, ~2 min on 2 CPU cores
    python recipes/finetune.py --config recipes/resnet50/digits_full.yaml          # microsoft/resnet-50 on digits
    accelerate launch --config_file recipes/accelerate/multi_gpu.yaml recipes/finetune.py \
        --config recipes/resnet50/imagefolder_full.yaml --train_dir data/train --validation_dir data/val

YAML sets the defaults, `--field value` overrides them; every `TrainingArguments` field is accepted.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import datasets
import transformers
from datasets import IterableDataset
from transformers.trainer_utils import set_seed

from hf_resnet.checkpoints import resume_checkpoint
from hf_resnet.configs import DataArguments, FinetuneTrainingArguments, ModelArguments
from hf_resnet.data import DataError, load_image_data
from hf_resnet.modeling import ModelLoadError, apply_tuning, build_model, load_config, load_image_processor
from hf_resnet.preflight import check_run
from hf_resnet.parser import ConfigError, make_parser, parse_args  # noqa: F401  (make_parser: the parser factory)
from hf_resnet.trainer import (
    CardInfo, ImageClassificationTrainer, NonFiniteLossError, streaming_steps_per_epoch, use_steps_for_epochs,
)
from hf_resnet.examples import build_split_inputs, file_names
from hf_resnet.predictions import write_predictions
from hf_resnet.skips import (
    SkippedImagesCallback, TooManySkippedImages, build_report, check_share, start_afresh, write_report,
)
from hf_resnet.transforms import PreprocessConfig

logger = logging.getLogger("hf_resnet.finetune")


def _setup_logging(training_args: FinetuneTrainingArguments) -> None:
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S", handlers=[logging.StreamHandler(sys.stdout)])
    level = training_args.get_process_log_level()
    for lib_logger in (logger, logging.getLogger("hf_resnet")):  # our own steps: INFO on the main process
        lib_logger.setLevel(logging.INFO if training_args.should_log else logging.WARNING)
    datasets.utils.logging.set_verbosity(level)
    transformers.utils.logging.set_verbosity(level)


def main(model_args: ModelArguments, data_args: DataArguments, training_args: FinetuneTrainingArguments) -> dict:
    _setup_logging(training_args)
    set_seed(training_args.seed)

    # Model first (config + processor only): an unreachable Hub fails here, before any data is read.
    checkpoint_config = load_config(model_args)
    processor = load_image_processor(model_args)

    data = load_image_data(data_args, seed=training_args.seed, token=model_args.token, cache_dir=model_args.cache_dir,
                           with_test=bool(data_args.test_dir) or training_args.do_predict)
    for note in data.notes:
        logger.info(note)
    check_run(data, training_args, model_args, checkpoint_config)
    if training_args.do_train and isinstance(data.train, IterableDataset):
        steps_per_epoch = streaming_steps_per_epoch(data.sizes.get("train"), training_args)
        use_steps_for_epochs(training_args, steps_per_epoch)
        logger.info("Streaming: training for %d optimizer steps", training_args.max_steps)

    model, label_map = build_model(model_args, data.labels)
    head_labels = [model.config.id2label[i] for i in range(model.config.num_labels)]
    last_checkpoint = resume_checkpoint(training_args, head_labels)
    if last_checkpoint is not None:
        logger.info("Resuming from %s (model, optimizer, scheduler, RNG states, data position)", last_checkpoint)
    elif training_args.process_index == 0:
        start_afresh(training_args.output_dir)
    logger.info("Parameters: %s", apply_tuning(model, model_args.tuning))

    pre = PreprocessConfig.from_processor(processor)
    inputs = build_split_inputs(data, pre, data_args, label_map, training_args.output_dir, seed=training_args.seed)
    train_set, eval_set = inputs.get("train"), inputs.get("validation")
    split_sizes = data.sizes

    card = CardInfo(
        base_model=model_args.model_name_or_path,
        dataset_name=data_args.dataset_name or Path(data.source).parent.name or data.source,
        dataset_id=data_args.dataset_name,
        labels=head_labels,
        tuning=model_args.tuning,
        train_examples=data.sizes.get("train") or "unknown",
        eval_examples=data.sizes.get("validation") or "unknown",
    )
    trainer = ImageClassificationTrainer(
        model=model, args=training_args, train_dataset=train_set if training_args.do_train else None,
        eval_dataset=eval_set if training_args.do_eval else None, processing_class=processor,
        card_info=card, head_learning_rate=model_args.head_learning_rate,
        describe_examples=lambda ids: file_names(train_set, ids),
        callbacks=[SkippedImagesCallback(training_args.output_dir, split_sizes, data_args.max_skipped_share)],
    )

    metrics: dict = {}
    if training_args.do_train:
        result = trainer.train(resume_from_checkpoint=last_checkpoint)
        trainer.save_model()  # model + processor: what pipeline() loads
        trainer.log_metrics("train", result.metrics)
        trainer.save_metrics("train", result.metrics)
        trainer.save_state()
        metrics.update(result.metrics)

    if training_args.do_eval and eval_set is not None:
        eval_metrics = trainer.evaluate()
        trainer.log_metrics("eval", eval_metrics)
        trainer.save_metrics("eval", eval_metrics)
        card.eval_metrics = eval_metrics
        metrics.update(eval_metrics)

    if "test" in inputs and (data_args.test_dir or training_args.do_predict):
        if data.test_has_labels:
            test_metrics = trainer.evaluate(inputs["test"], metric_key_prefix="test")
            trainer.log_metrics("test", test_metrics)
            trainer.save_metrics("test", test_metrics)
            metrics.update(test_metrics)
        else:  # unlabeled: predict, write a file, score nothing
            output = trainer.predict(inputs["test"], metric_key_prefix="test")
            if trainer.is_world_process_zero():
                skipped = {f["index"]: f["reason"] for f in build_report(training_args.output_dir, split_sizes).get("test", {}).get("files", [])}
                path = Path(training_args.output_dir) / "predictions.csv"
                rows = write_predictions(path, output, inputs["test"], card.labels, skipped)
                logger.info("Wrote %d predictions to %s", rows, path)

    report = build_report(training_args.output_dir, split_sizes)
    if trainer.is_world_process_zero():
        write_report(training_args.output_dir, report)
    check_share({k: v for k, v in report.items() if k != "test"}, data_args.max_skipped_share)  # test: in predictions

    if trainer.is_world_process_zero() and training_args.do_train:  # an evaluation-only run made no model
        trainer.create_model_card()
    if training_args.push_to_hub and training_args.do_train:
        trainer.push_to_hub(commit_message="hf-resnet: fine-tuned model, processor, metrics and card")
    return metrics


def cli() -> None:
    """Run from the command line: misconfiguration ends with its message (exit 2), not a traceback."""
    try:
        main(*parse_args())
    except (ConfigError, DataError, ModelLoadError, TooManySkippedImages, NonFiniteLossError) as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    cli()
