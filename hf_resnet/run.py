"""The fine-tuning run, top to bottom: config -> data -> model -> strategy -> inputs -> Trainer -> train ->
evaluate (validation, test) -> reports -> card -> push.

    hf-resnet train --config smoke/digits_smoke                       # offline; a shipped recipe, by name
    accelerate launch --config_file recipes/accelerate/multi_gpu.yaml recipes/finetune.py \\
        --config resnet50/imagefolder_full --train_dir data/train --validation_dir data/val

`main(model_args, data_args, strategy_args, training_args)` is the whole run (`cli.train` parses the command
line and turns the user's errors into one line and exit code 2). Each step below is a function of its own.
"""

from __future__ import annotations

import functools
import logging
import os
import sys
from dataclasses import dataclass

import datasets
import torch
import transformers
from transformers.trainer_utils import EvalLoopOutput, set_seed

from .configs import DataArguments, FinetuneTrainingArguments, ModelArguments
from .constants import TEST_SPLIT, label_names
from .data.gpu_decode import device_decoder_for
from .data.inputs import build_split_inputs, build_tta_split, file_names
from .data.loading import ImageData, load_image_data
from .data.skips import build_report, publish, skipped_indices, start_afresh
from .data.transforms import BatchNormalizer, PreprocessConfig, at_resolution, resize_processor
from .data.tta import view_weights
from .hub import settle_offline_mode
from .inference import Classifier
from .reports.evaluation import start_report, write_split_report, write_training_curves
from .reports.model_card import CardInfo, base_model_license, dataset_title, run_hyperparameters
from .settings import check_arguments, resolve_settings
from .strategy_config import StrategyArguments
from .trainer import ImageClassificationTrainer
from .training.alignment import Alignment
from .training.calibration import Calibration, calibrate
from .training.checkpoints import fix_file_modes, is_complete, resume_checkpoint
from .training.modeling import build_model, head_alignment, label_remap, load_config, load_image_processor
from .training.preemption import Preempted
from .training.preflight import check_run
from .training.run_lock import RunLock, lock_output_dir
from .training.strategies import plan_strategy

logger = logging.getLogger("hf_resnet.run")


def _not_mtime(record: logging.LogRecord) -> bool:
    """Checkpoints that save within a second of each other are sorted by number, as wanted: no warning needed."""
    return not str(record.msg).startswith("mtime may not be reliable")


def setup_logging(training_args: FinetuneTrainingArguments) -> None:
    """Our steps at INFO on the main process; the libraries at the Trainer's log level."""
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S",
                        handlers=[logging.StreamHandler(sys.stdout)])
    logging.getLogger("hf_resnet").setLevel(logging.INFO if training_args.should_log else logging.WARNING)
    logging.getLogger("huggingface_hub").propagate = False  # it prints through its own handler: once is enough
    level = training_args.get_process_log_level()
    datasets.utils.logging.set_verbosity(level)
    transformers.utils.logging.set_verbosity(level)
    if not sys.stderr.isatty():  # a log file reads as lines: no bars for loading weights or writing shards
        transformers.utils.logging.disable_progress_bar()
        datasets.disable_progress_bars()
    logging.getLogger("transformers.trainer_utils").addFilter(_not_mtime)


def load_data(data_args: DataArguments, model_args: ModelArguments, training_args) -> ImageData:
    with_test = bool(data_args.test_dir or data_args.test_split) or training_args.do_predict
    data = load_image_data(data_args, seed=training_args.seed, token=model_args.token,
                           cache_dir=model_args.cache_dir, with_test=with_test)
    for note in data.notes:
        logger.info(note)
    return data


def resume_or_start(training_args, head_labels: list[str]) -> str | None:
    """The checkpoint a rerun continues from (the newest complete one), or None for a fresh start."""
    last_checkpoint = resume_checkpoint(training_args, head_labels)
    if last_checkpoint is not None:
        logger.info("Resuming from %s (model, optimizer, scheduler, RNG states, data position)", last_checkpoint)
    elif training_args.process_index == 0:
        start_afresh(training_args.output_dir)
    return last_checkpoint


def card_info(data: ImageData, model_args, data_args, strategy_args, training_args, model, head_labels: list[str],
              pre: PreprocessConfig, results: dict, training_curves: str | None,
              calibration: Calibration | None = None) -> CardInfo:
    """The model card's record, made once, after the reports it quotes."""
    license = model_args.license
    if license is None and training_args.do_train:
        license = base_model_license(model_args.model_name_or_path, model_args.model_revision, model_args.token,
                                     model_args.cache_dir)
    augmentation = {"image_size": pre.crop_size[0], "random_resized_crop_scale": data_args.random_resized_crop_scale,
                    "horizontal_flip": data_args.horizontal_flip}
    return CardInfo(
        base_model=model_args.model_name_or_path,
        dataset_name=dataset_title(data_args.dataset_name, data.source),
        dataset_id=data_args.dataset_name,  # in the Hub metadata only when it is a Hub id
        dataset_config=data_args.dataset_config_name,
        labels=head_labels,
        tuning=strategy_args.tuning,
        license=license,
        license_source=None if license is None else "set by `license`" if model_args.license
        else f"inherited from {model_args.model_name_or_path}'s card",
        train_examples=data.sizes.get("train") or "unknown",
        held_out=data.held_out,
        parameters=model.num_parameters(),
        crop_size=pre.crop_size[0],
        hyperparameters=run_hyperparameters(strategy_args, training_args, augmentation),
        results=results,
        training_curves=training_curves,
        calibration=None if calibration is None else calibration.as_dict(),
    )


def train(trainer: ImageClassificationTrainer, last_checkpoint: str | None,
          calibrate_on=None) -> tuple[dict, Calibration | None]:
    """Train (or continue); with `temperature_scaling`, fit T on `calibrate_on` (the validation split) and fold it
    into the head; then save what `pipeline()` loads: model, config with class names, processor."""
    result = trainer.train(resume_from_checkpoint=last_checkpoint)
    stopped_at = trainer.stop_on_signal.stopped_at
    if stopped_at is not None:  # a stop signal: checkpoint-N is written; the rerun resumes from it
        trainer.accelerator.wait_for_everyone()
        checkpoint = os.path.join(trainer.args.output_dir, f"checkpoint-{stopped_at}")
        raise Preempted(trainer.stop_on_signal.received or "a stop signal on another process", stopped_at,
                        checkpoint if is_complete(checkpoint) else None, trainer.args.requeue_exit_code)
    calibration = calibrate(trainer, calibrate_on) if calibrate_on is not None else None
    trainer.save_model()
    trainer.log_metrics("train", result.metrics)
    trainer.save_metrics("train", result.metrics)
    trainer.save_state()
    return result.metrics, calibration


def evaluate(trainer: ImageClassificationTrainer, dataset, prefix: str, tta=None) -> tuple[dict, EvalLoopOutput]:
    """Score a labeled split; also returns the gathered top-5 predictions and label ids for its report. `tta`:
    (the split's views, their weights): its `<prefix>_tta_*` figures join the plain ones."""
    metrics, output = trainer.evaluate_with_predictions(dataset, metric_key_prefix=prefix)
    if not trainer.args.do_train:
        metrics.pop("epoch", None)  # nothing was trained: "epoch = 0" would only mislead
    if tta is not None and tta[0] is not None:
        metrics.update(trainer.evaluate_tta(*tta, metric_key_prefix=prefix))
    trainer.log_metrics(prefix, metrics)
    trainer.save_metrics(prefix, metrics)
    return metrics, output


def evaluate_splits(trainer: ImageClassificationTrainer, inputs: dict, data: ImageData, data_args,
                    tta: dict | None = None) -> dict:
    """Validation (with `do_eval`), then the test split when one is asked for: scored when labeled, else only
    predicted (into report/test/predictions_test.csv). `tta`: split -> (views, weights) of `tta_split`.
    Returns split -> (metrics, gathered predictions, prefix)."""
    args, outputs, tta = trainer.args, {}, tta or {}
    eval_set, test_set = inputs.get("validation"), inputs.get(TEST_SPLIT)
    if args.do_eval and eval_set is not None:
        outputs["validation"] = (*evaluate(trainer, eval_set, "eval", tta.get("validation")), "eval")
    if test_set is not None and (data_args.test_dir or data_args.test_split or args.do_predict):
        if data.test_has_labels:
            outputs[TEST_SPLIT] = (*evaluate(trainer, test_set, "test", tta.get(TEST_SPLIT)), "test")
        else:
            outputs[TEST_SPLIT] = ({}, trainer.predict(test_set, metric_key_prefix="test"), "test")
    return outputs


def tta_splits(data: ImageData, pre: PreprocessConfig, data_args, strategy_args, alignment, seed: int) -> dict:
    """With `tta` set: the validation and labeled test splits as views, with their weights."""
    if strategy_args.tta == "none":
        return {}
    weights = view_weights(strategy_args.tta, strategy_args.tta_passes)
    label_map = label_remap(alignment, len(data.labels))
    return {split: (build_tta_split(data, split, pre, data_args, label_map, strategy_args.tta,
                                    strategy_args.tta_passes, seed=seed), weights)
            for split in ("validation", TEST_SPLIT) if split == "validation" or data.test_has_labels}


def write_reports(trainer: ImageClassificationTrainer, head_labels: list[str], outputs: dict, inputs: dict,
                  skip_report: dict, pre: PreprocessConfig,
                  calibration: Calibration | None = None) -> tuple[dict, str | None]:
    """Main process: `report/<split>/` for each split evaluated or predicted, `report/training_curves.png`.
    Returns what the card quotes: split -> result, and the curves' path. `pre`: the eval preprocessing."""
    results = {}
    output_dir = trainer.args.output_dir
    start_report(output_dir)
    with trainer.evaluated_weights():  # the pictures show the model that was scored (the EMA, when there is one)
        classifier = Classifier(trainer.model, pre)
        for split, (metrics, output, prefix) in outputs.items():
            result = write_split_report(output_dir, split, output.predictions, output.label_ids, metrics, prefix,
                                        head_labels, inputs[split], classifier, skipped_indices(skip_report, split),
                                        seed=trainer.args.seed,
                                        calibration=None if calibration is None else calibration.as_dict())
            if result is not None:
                results[split] = result
    return results, write_training_curves(output_dir, trainer.state, trainer.args.load_best_model_at_end)


@dataclass
class BuiltRun:
    """What `build_trainer` made: the Trainer and what the steps after it need."""

    trainer: ImageClassificationTrainer
    data: ImageData
    inputs: dict
    pre: PreprocessConfig
    head_labels: list[str]
    last_checkpoint: str | None
    alignment: Alignment | None  # the head's row per dataset class (None: a new head)
    lock: RunLock | None  # output_dir's run lock, released when the run ends


def build_trainer(model_args: ModelArguments, data_args: DataArguments, strategy_args: StrategyArguments,
                  training_args: FinetuneTrainingArguments, callbacks: list | None = None,
                  resume: bool = True) -> BuiltRun:
    """The run up to its Trainer, as `hf-resnet train` builds it (`hf-resnet lr-find` builds the same, with
    `resume=False`: it neither resumes nor touches a previous run's files). Kept whole: the first steps of the
    run's spine, read top to bottom as the module docstring lists them, each a named function."""
    # Logging, seed, the checks across fields, and whether the Hub answers -----------------------------------------
    setup_logging(training_args)
    set_seed(training_args.seed)
    check_arguments(model_args, data_args, strategy_args, training_args)  # before any data or weights load
    lock = lock_output_dir(training_args)  # one run per output_dir: a second one stops here, naming this one
    settle_offline_mode([model_args.model_name_or_path, model_args.config_name, model_args.image_processor_name,
                         data_args.dataset_name])

    # Config and processor first: an unreachable Hub fails here, before any data is read ---------------------------
    config = load_config(model_args)
    processor = resize_processor(load_image_processor(model_args), data_args.image_size, data_args.crop_pct)

    # Data, opened (a stream reads no image yet), then the run's settings, final from here on -----------------------
    data = load_data(data_args, model_args, training_args)
    settings = resolve_settings(model_args, data_args, strategy_args, training_args, data)
    alignment = head_alignment(model_args, config, data.labels)  # the head's row per class; None: a new head
    check_run(data, training_args, model_args, config, alignment)

    # Model, and the checkpoint a killed run resumes from ---------------------------------------------------------
    model = build_model(model_args, data.labels, config, alignment, evaluate_only=not training_args.do_train)
    if settings.channels_last:
        model.to(memory_format=torch.channels_last)
    head_labels = label_names(model.config)
    last_checkpoint = resume_or_start(training_args, head_labels) if resume else None

    # Strategy: what trains when, each part's rate, the loss's class weights (logged) ------------------------------
    strategy = plan_strategy(model, strategy_args, training_args, data, settings.steps_per_epoch)

    # Inputs: decoded and transformed per example in the DataLoader workers ------------------------------------------
    pre = PreprocessConfig.from_processor(processor)
    inputs = build_split_inputs(data, pre, data_args, label_remap(alignment, len(data.labels)),
                                training_args.output_dir, seed=training_args.seed, world_size=training_args.world_size)
    train_set, eval_set = inputs.get("train"), inputs.get("validation")

    # Trainer: batches normalised (or JPEGs decoded, with gpu_decode) on the model's device ---------------------------
    normalizer = BatchNormalizer(pre, settings.channels_last)
    device_decoder = device_decoder_for(pre, normalizer, training_args.device, training_args.output_dir) \
        if data_args.gpu_decode else None
    trainer = ImageClassificationTrainer(
        model=model, args=training_args, train_dataset=train_set if training_args.do_train else None,
        eval_dataset=eval_set if training_args.do_eval else None, processing_class=processor,
        strategy=strategy, normalizer=normalizer, device_decoder=device_decoder,
        describe_examples=functools.partial(file_names, train_set),
        split_sizes=data.sizes, max_skipped_share=data_args.max_skipped_share, callbacks=callbacks,
    )
    return BuiltRun(trainer, data, inputs, pre, head_labels, last_checkpoint, alignment, lock)


def main(model_args: ModelArguments, data_args: DataArguments, strategy_args: StrategyArguments,
         training_args: FinetuneTrainingArguments, callbacks: list | None = None) -> dict:
    """The whole run; returns its metrics. `callbacks`: the caller's own `TrainerCallback`s (`hf-resnet sweep`
    reports each evaluation to its trial with one). It reads top to bottom as the steps of the module docstring,
    each a named function (as alignment-handbook's and trl's scripts read); `build_trainer` is the first ones."""
    run = build_trainer(model_args, data_args, strategy_args, training_args, callbacks)
    trainer, data, inputs, pre, head_labels = run.trainer, run.data, run.inputs, run.pre, run.head_labels

    # Train, evaluate, test ----------------------------------------------------------------------------------------
    calibrate_on = inputs.get("validation") if strategy_args.temperature_scaling else None
    metrics, calibration = train(trainer, run.last_checkpoint, calibrate_on) if training_args.do_train else ({}, None)
    tta = tta_splits(data, pre, data_args, strategy_args, run.alignment, training_args.seed)
    outputs = evaluate_splits(trainer, inputs, data, data_args, tta)
    if calibration is not None and "validation" in outputs:
        calibration.ece_after = outputs["validation"][0].get("eval_ece")  # the folded model's
    for split_metrics, _, _ in outputs.values():
        metrics.update(split_metrics)

    # Reports: skipped images (once), then one report per split and the training curves (main process) -----------
    main_process = trainer.is_world_process_zero()
    report = build_report(training_args.output_dir, data.sizes)
    card = None
    if main_process:
        eval_pre = at_resolution(pre, data_args.eval_image_size, data_args.eval_crop_pct)
        results, curves = write_reports(trainer, head_labels, outputs, inputs, report, eval_pre, calibration)
        card = card_info(data, model_args, data_args, strategy_args, training_args, trainer.model, head_labels, pre,
                         results, curves, calibration)
    publish(report, training_args.output_dir, data_args.max_skipped_share, main_process)

    # Card and push (an evaluation-only run made no model: it pushes its report) ------------------------------------
    if main_process and training_args.do_train:
        trainer.create_model_card(card=card)
    if main_process:
        fix_file_modes(training_args.output_dir)
    if training_args.push_to_hub and training_args.do_train:
        trainer.push_to_hub(commit_message="hf-resnet: fine-tuned model, processor, metrics, report and card",
                            card=card)
    elif training_args.push_to_hub:
        trainer.push_report()
    trainer.accelerator.wait_for_everyone()  # no process leaves while the main one still writes (gloo aborts)
    if run.lock is not None:
        run.lock.release()
    return metrics
