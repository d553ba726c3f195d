"""The Trainer for image classification: the strategy's groups, schedule, loss and EMA; memory-safe metrics;
streamed data; our model card.

`ImageClassificationTrainer` differs from `transformers.Trainer` in these places only:
- `create_optimizer`: every parameter in a group from `strategies.param_groups` (per-selector rates, head rate,
  layer decay, no decay on norms/biases); SGD gets `sgd_momentum` / `sgd_nesterov`; the groups are logged;
- `create_scheduler`: step / multi-step decay in epochs (`optim.step_schedule`) when the recipe sets it, or torch's
  one-cycle (`optim.one_cycle`) with `lr_scheduler_type: one_cycle`; `log` adds its momentum beside the rate;
- `set_initial_training_values`: keeps the optimizer steps per epoch, for those epochs and for gradual unfreezing
  (`callbacks.UnfreezeCallback`, which reads them when training starts);
- `compute_loss`: the training loss is `losses.TrainingLoss` when label smoothing, class weights, mixup or CutMix
  is on; a batch whose images all failed to decode adds nothing; a NaN/inf loss stops the run with the step and
  the batch's files (`on_nonfinite_loss: stop`) or adds nothing (`skip`), before any weight sees it; a stop
  signal on any process (`preemption.StopOnSignal`) is summed with those flags, so all stop after one step;
- `train` / `evaluate` / `predict` / `save_model`: with `ema_decay`, the average of the weights is what is
  evaluated and saved (`ema.EmaTrainerMixin`, one of the bases); `evaluate` / `predict` also name the split
  being evaluated for the example log;
- `_add_run_callbacks`: every callback of a run is registered there;
- `_get_dataloader`: a streamed train split of at least as many shards as processes is split by shard, so its
  batches are not dispatched (one of fewer shards is: read once, by the main process);
  a streamed eval split is read by the main process and dispatched, so every example is scored exactly once;
  a map-style train split under several processes is read through `distributed.ProcessBatchSampler` (every
  example once per epoch, where accelerate's `even_batches` would train copies of the first ones again);
- `create_model_card`: renders `model_card.md` via `reports.model_card` (also when `push_to_hub` calls it);
- `evaluation_loop`: while `evaluate_with_predictions` runs, keeps the loop's output (the gathered top-5 ids,
  probabilities and label ids) for the reports; `push_report` uploads an evaluation-only run's report;
- `prediction_step`: a head cut to some classes to evaluate them (`modeling.SubsetHead`) adds ranks among all;
  during `evaluate_tta` (`tta.TtaTrainerMixin`, one of the bases) a batch of K views per example is averaged;
- metrics come from `metrics.reduce_logits` + `metrics.ComputeMetrics` (top-5 ids per example, never all logits).

What this relies on inside transformers / accelerate / torch (each has a test in `tests/test_trainer.py` or
`tests/test_strategies.py` that fails when an upgrade changes it):
1. patch: `optimizer.step` is replaced on the optimizer instance (`_guard_optimizer_step`); accelerate's
   `AcceleratedOptimizer.step` calls it, so a skipped update takes no step (no momentum, no weight decay) and
   moves no EMA;
2. patch: `accelerator.dataloader_config.dispatch_batches` is switched for the duration of one
   `_get_dataloader` call (`_dispatch`), and restored;
3. private override: `_prepare_inputs` (the Trainer calls it on every train and eval batch) pads a lone training
   example (`pad_lone_example`), pops `example_ids`,
   which the model never sees, and normalises the uint8 images on the model's device (`BatchNormalizer`);
4. private override: `_get_dataloader(dataset, description, batch_size, sampler_fn, is_training, dataloader_key)`
   (the common path of the train, eval and test loaders);
5. frozen BatchNorm layers are held in eval mode by a forward pre-hook (`strategies.hold_batchnorm`), a public
   torch API: nothing on the module is patched, and unfreezing removes the hook;
6. private override: `_get_train_sampler(train_dataset)` returns the balanced sampler when there is one;
7. `set_initial_training_values` returns the optimizer steps per epoch second; `create_scheduler` sets the
   private `_created_lr_scheduler` so a second `train()` builds a fresh schedule, as the Trainer's own does;
8. attributes set after `Trainer.__init__`: `model_accepts_loss_kwargs = False` (ResNet's forward takes
   `**kwargs` but ignores `num_items_in_batch`, so the Trainer must divide its batch-mean loss by the gradient
   accumulation steps and not multiply it by the process count) and `label_smoother = None` (smoothing is ours);
9. torch optimizers skip parameters whose `.grad` is None (frozen ones: no step, no state), and DDP with
   `find_unused_parameters` leaves the gradients of registered but frozen parameters None on every process;
10. `evaluate()` runs `evaluation_loop`, whose `EvalLoopOutput` holds the predictions `compute_metrics` saw;
11. `init_hf_repo` creates the repo with `hub_private_repo` and sets `hub_model_id`;
   `transformers.utils.hub.hf_api` is the client the Trainer pushes with (`push_report` uploads through it too);
12. patch: under several processes, `accelerator.prepare` wraps a map-style train loader's batch sampler in a
   `BatchSamplerShard`, which `_process_train_dataloader` turns into a pass-through (`num_processes = 1`), as
   `Trainer._get_dataloader` does for its `BatchRebalanceSampler`; a sampler without a `batch_size` has its
   uneven last batches passed on as they are;
13. `args.logging_nan_inf_filter` is read by the training loop after every backward (a host read of the loss)
   and by `evaluation_loop` for `eval_loss`: `train` turns it off while it runs (the guard keeps the loss finite)
   and back afterwards; `evaluation_loop` gets the user's setting (default on) meanwhile.
"""

from __future__ import annotations

import errno
import logging
import os

import torch
from transformers import EarlyStoppingCallback, Trainer
from transformers.trainer_utils import EvalLoopOutput, has_length
from transformers.utils.hub import hf_api

from .constants import IGNORE_INDEX, ONE_CYCLE, REPORT_DIR, value_of
from .data.gpu_decode import DeviceDecoder
from .data.inputs import ImageClassificationDataset, collate, pad_lone_example
from .data.transforms import BatchNormalizer
from .errors import ConfigError, NonFiniteLossError
from .reports.model_card import CardInfo, write_model_card
from .training.callbacks import EpochCallback, FileModesCallback, SkippedImagesCallback, UnfreezeCallback
from .training.checkpoints import disk_full, sync_folder
from .training.distributed import ExampleLog, ProcessDataMixin
from .training.ema import EmaTrainerMixin, WeightEma
from .training.metrics import ComputeMetrics, reduce_logits
from .training.modeling import subset_head
from .training.optim import describe_groups, milestone_steps, momentum_of, one_cycle, optimizer_kwargs, step_schedule
from .training.preemption import StopOnSignal, parse_stop_signals
from .training.strategies import Strategy
from .training.tta import TtaTrainerMixin

logger = logging.getLogger(__name__)


class ImageClassificationTrainer(EmaTrainerMixin, TtaTrainerMixin, ProcessDataMixin, Trainer):
    def __init__(self, *args, strategy: Strategy | None = None, describe_examples=None,
                 normalizer: BatchNormalizer | None = None, device_decoder: DeviceDecoder | None = None,
                 split_sizes: dict | None = None, max_skipped_share: float | None = None, **kwargs):
        kwargs.setdefault("data_collator", collate)
        kwargs.setdefault("preprocess_logits_for_metrics", reduce_logits)
        super().__init__(*args, **kwargs)
        if self.compute_metrics is None:
            self.compute_metrics = ComputeMetrics(self.model.config.num_labels)
        self.strategy = strategy if strategy is not None else Strategy.default()
        self.model_accepts_loss_kwargs = False  # (8) the loss is a batch mean: the Trainer scales it for accumulation
        self.label_smoother = None  # (8) label_smoothing_factor is applied by our loss, which skips -100 labels
        self._eval_nan_filter: bool | None = None  # (13) the user's NaN filter while `train` turns it off
        self.loss = self.strategy.training_loss(self.model.config.num_labels, self.args.label_smoothing_factor)
        options = self.strategy.args
        self.ema = WeightEma(self.model, options.ema_decay, options.ema_warmup) if options.ema_decay else None
        self._add_run_callbacks(split_sizes, max_skipped_share)
        self.normalizer = normalizer  # uint8 batches -> the model's float input, on its device
        self.device_decoder = device_decoder  # gpu_decode: the batch's JPEGs decoded and transformed on the device
        self.describe_examples = describe_examples  # example ids -> file names, for messages
        self.steps_per_epoch: int | None = None  # optimizer steps, known once training starts
        self._example_ids = None
        self._skip_update = False
        self._step_momentum: float | None = None  # the first group's momentum (or beta1) at the last step
        self._keep_predictions, self._kept = False, None
        self._eval_split = "eval"
        self.subset_head = subset_head(self.model)  # evaluating the pretrained head on some of its classes

    def _add_run_callbacks(self, split_sizes: dict | None, max_skipped_share: float | None) -> None:
        """Every callback of a run, registered here (the user's own come through `callbacks=`)."""
        epoch_aware = [self.train_dataset] if isinstance(self.train_dataset, ImageClassificationDataset) else []
        epoch_aware += [self.strategy.sampler] if self.strategy.sampler is not None else []
        self.epoch_callback = EpochCallback(*epoch_aware)  # the process batch sampler joins it when built
        self.add_callback(self.epoch_callback)
        self.example_log = ExampleLog(self.args.output_dir, self.args.process_index) if self.args.log_example_ids \
            else None
        if self.example_log is not None:
            self.add_callback(self.example_log)
        options = self.strategy.args
        if options.early_stopping_patience is not None:
            self.add_callback(EarlyStoppingCallback(options.early_stopping_patience, options.early_stopping_threshold))
        if self.strategy.plan.unfreeze:
            self.add_callback(UnfreezeCallback(self.strategy.plan, lambda: self.steps_per_epoch))
        if max_skipped_share is not None:
            self.add_callback(SkippedImagesCallback(self.args.output_dir, split_sizes or {}, max_skipped_share))
        self.add_callback(FileModesCallback())
        self.stop_on_signal = StopOnSignal(parse_stop_signals(self.args.stop_signals))
        self.add_callback(self.stop_on_signal)

    def _prepare_inputs(self, inputs):
        inputs = dict(inputs)
        if self.model.training and self.args.world_size == 1:
            inputs = pad_lone_example(inputs)
        undecoded = {key: inputs.pop(key) for key in list(inputs) if key.startswith("jpeg_")}
        inputs = super()._prepare_inputs(inputs)  # on the model's device
        if self.device_decoder is not None and "pixel_values" in inputs:
            inputs = self.device_decoder({**inputs, **undecoded})
        elif self.normalizer is not None and "pixel_values" in inputs:
            inputs["pixel_values"] = self.normalizer(inputs["pixel_values"])
        self._example_ids = inputs.pop("example_ids", None)  # for messages and the log; the model never sees them
        if self.example_log is not None:
            split = "train" if self.model.training else self._eval_split
            self.example_log.record(split, self.state.global_step, self._example_ids)
        return inputs

    # Loss guard: all-skipped batches and non-finite losses -----------------------------------------------------

    @staticmethod
    def _zero_loss(model) -> torch.Tensor:
        """A loss of 0 that still touches every trainable weight (DDP expects gradients for all of them)."""
        return sum(p.sum() for p in model.parameters() if p.requires_grad) * 0.0

    def _batch_files(self) -> list[str]:
        ids = [] if self._example_ids is None else self._example_ids.tolist()
        return [f"index {i}" for i in ids] if self.describe_examples is None else self.describe_examples(ids)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        kwargs = dict(return_outputs=return_outputs, num_items_in_batch=num_items_in_batch)
        if not model.training:
            return super().compute_loss(model, inputs, **kwargs)
        labels = inputs.get("labels")
        skipping = self.args.on_nonfinite_loss == "skip"
        # BatchNorm updates its running statistics during the forward pass: keep a copy to undo a dropped batch.
        buffers = [(b, b.detach().clone()) for b in model.buffers()] if skipping else []
        # Every process runs the forward pass and the reduce below, whatever its batch holds: a process that
        # returned early would leave the others waiting in a collective.
        result = self._training_loss(model, inputs, **kwargs)
        loss = result[0] if return_outputs else result
        # One host sync per step: both flags are computed on the device and read together.
        all_skipped = (labels == IGNORE_INDEX).all() if labels is not None else torch.zeros((), dtype=torch.bool,
                                                                                             device=loss.device)
        flags = torch.stack([(~all_skipped & ~torch.isfinite(loss.detach()).all()).float(),
                             torch.tensor(float(self.stop_on_signal.requested), device=loss.device)])
        if self.args.world_size > 1:  # every process takes the same decisions, so none waits on another
            flags = self.accelerator.reduce(flags, reduction="sum")
        bad, stop, all_skipped = torch.cat([flags, all_skipped.float().to(flags.device).reshape(1)]).tolist()
        self.stop_on_signal.agreed |= stop > 0  # some process got a stop signal: all stop after this step
        all_skipped = bool(all_skipped)
        if bad == 0:
            if all_skipped:  # the loss of an all-ignored batch is 0/0; it adds nothing instead
                zero = self._zero_loss(model)
                return (zero, result[1]) if return_outputs else zero
            return result
        step = self.state.global_step + 1
        if not skipping:
            raise NonFiniteLossError(
                f"The training loss is {loss.item()} at step {step} (global step {self.state.global_step} done). "
                f"Batch images: {', '.join(self._batch_files()) or 'unknown'}. Lower `learning_rate`, check those "
                "images, or set `on_nonfinite_loss: skip` to drop such updates. The last checkpoint in output_dir "
                "is intact."
            )
        with torch.no_grad():
            for buffer, saved in buffers:
                buffer.copy_(saved)
        self._skip_update = True  # the optimizer step of this update is not taken (see create_optimizer)
        logger.warning("Non-finite loss at step %d: update skipped. Images: %s", step, ", ".join(self._batch_files()))
        zero = self._zero_loss(model)
        return (zero, result[1]) if return_outputs else zero

    def _training_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """The model's own cross-entropy, or `losses.TrainingLoss` (smoothing, class weights, mixup, CutMix)."""
        if not self.loss.active:
            return super().compute_loss(model, inputs, return_outputs=return_outputs,
                                        num_items_in_batch=num_items_in_batch)
        inputs = dict(inputs)
        labels = inputs.pop("labels")
        inputs["pixel_values"], targets = self.loss.mix(inputs["pixel_values"], labels)
        outputs = model(**inputs)
        loss = self.loss(outputs["logits"], targets)
        return (loss, outputs) if return_outputs else loss

    # Optimizer and schedule: the strategy's groups, a step that can be skipped, step decay ------------------------

    def create_optimizer(self, model=None):
        if self.optimizer is None:
            opt_model = self.model if model is None else model
            groups = self.strategy.param_groups(opt_model, self.args.learning_rate, self.args.weight_decay)
            if self.optimizer_cls_and_kwargs is not None:
                optimizer_cls, kwargs = self.optimizer_cls_and_kwargs
            else:
                optimizer_cls, kwargs = self.get_optimizer_cls_and_kwargs(self.args, opt_model)
            options = self.strategy.args
            kwargs = optimizer_kwargs(optimizer_cls, kwargs, options.sgd_momentum, options.sgd_nesterov)
            self.optimizer = optimizer_cls(groups, **kwargs)
            self._guard_optimizer_step(self.optimizer)
            settings = ", ".join(f"{k}={v}" for k, v in kwargs.items() if k != "lr")
            logger.info("Optimizer %s (%s); groups at the first step:\n%s", optimizer_cls.__name__, settings,
                        describe_groups(self.optimizer.param_groups, self.strategy.plan.frozen_after(0)))
        return self.optimizer

    def _guard_optimizer_step(self, optimizer) -> None:
        """Skip the whole optimizer step (momentum, weight decay) of an update whose loss was not finite; after a
        step taken, move the EMA of the weights."""
        step = optimizer.step

        def guarded_step(*args, **kwargs):
            if self._skip_update:
                self._skip_update = False
                return None
            self._step_momentum = momentum_of(optimizer.param_groups[0])  # before a schedule moves it
            result = step(*args, **kwargs)
            self.ema_step()
            return result

        optimizer.step = guarded_step

    def set_initial_training_values(self, args, dataloader):
        values = super().set_initial_training_values(args, dataloader)
        self.steps_per_epoch = values[1] if has_length(dataloader) else self.strategy.steps_per_epoch
        return values

    def create_scheduler(self, num_training_steps: int, optimizer=None):
        options = self.strategy.args
        if self.lr_scheduler is None and options.step_decay:
            if self.steps_per_epoch is None:
                raise ConfigError("`lr_milestones` / `lr_step_size` need epochs, and this stream's size is unknown.")
            milestones = milestone_steps(options.lr_milestones, options.lr_step_size, self.steps_per_epoch,
                                         num_training_steps)
            warmup = self.args.get_warmup_steps(num_training_steps)
            self.lr_scheduler = step_schedule(optimizer or self.optimizer, warmup, milestones, options.lr_gamma)
            self._created_lr_scheduler = True  # (7) a second train() builds a fresh one
            logger.info("Step decay: rate x%g at optimizer steps %s (%d per epoch), after %d warm-up steps",
                        options.lr_gamma, milestones, self.steps_per_epoch, warmup)
        if self.lr_scheduler is None and value_of(self.args.lr_scheduler_type) == ONE_CYCLE:
            self.lr_scheduler = one_cycle(optimizer or self.optimizer, num_training_steps,
                                          options.one_cycle_pct_start, options.one_cycle_div,
                                          options.one_cycle_final_div, options.one_cycle_momentum)
            self._created_lr_scheduler = True  # (7)
            logger.info("One-cycle over %d optimizer steps: each group from its rate / %g up to it at step %d, down "
                        "to / %g", num_training_steps, options.one_cycle_div,
                        round(options.one_cycle_pct_start * num_training_steps), options.one_cycle_final_div)
        return super().create_scheduler(num_training_steps, optimizer)

    def log(self, logs: dict, *args, **kwargs) -> None:
        """The Trainer's, with the first group's momentum (SGD) or beta1 (Adam) beside its rate under one-cycle: both
        as the last optimizer step took them."""
        if "learning_rate" in logs and value_of(self.args.lr_scheduler_type) == ONE_CYCLE:
            logs = {**logs, "momentum": self._step_momentum}
        super().log(logs, *args, **kwargs)

    def _get_train_sampler(self, train_dataset=None):
        if self.strategy.sampler is not None:
            return self.strategy.sampler
        return super()._get_train_sampler(train_dataset)

    # Training, and the evaluation split's name ---------------------------------------------------------------------

    def train(self, resume_from_checkpoint=None, *args, **kwargs):
        # (13) The training loss is finite by construction (`compute_loss` stops or returns 0): the Trainer's filter
        # would only read it to the host after every backward. Evaluations inside keep the user's setting.
        self._eval_nan_filter, self.args.logging_nan_inf_filter = self.args.logging_nan_inf_filter, False
        try:
            return super().train(resume_from_checkpoint, *args, **kwargs)
        finally:
            self.args.logging_nan_inf_filter, self._eval_nan_filter = self._eval_nan_filter, None

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        """The Trainer's, plus each example's rank among all classes with a `SubsetHead` (all_classes_* metrics);
        a TTA batch's views averaged (`evaluate_tta`)."""
        if self.tta_weights is not None:
            return self.tta_prediction_step(model, inputs, prediction_loss_only)
        loss, logits, labels = super().prediction_step(model, inputs, prediction_loss_only, ignore_keys=ignore_keys)
        ranks = self.subset_head.take_ranks(labels) if self.subset_head is not None and logits is not None else None
        return loss, logits if ranks is None else (logits, ranks), labels

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval"):
        self._eval_split = metric_key_prefix  # for the example log
        return super().evaluate(eval_dataset, ignore_keys=ignore_keys, metric_key_prefix=metric_key_prefix)

    def predict(self, test_dataset, ignore_keys=None, metric_key_prefix: str = "test"):
        self._eval_split = metric_key_prefix
        return super().predict(test_dataset, ignore_keys=ignore_keys, metric_key_prefix=metric_key_prefix)

    # Checkpoints: on disk before they count as complete; a full disk in one line -----------------------------------

    def _save_checkpoint(self, model, trial):
        """The Trainer's, with every file fsynced before trainer_state.json (what marks it complete) is written;
        ENOSPC stops the run with the space needed, before older checkpoints are rotated away."""
        folder = os.path.join(self._get_output_dir(trial=trial), f"checkpoint-{self.state.global_step}")
        write_state = self.state.save_to_json

        def synced_then_state(json_path: str) -> None:
            sync_folder(folder)
            write_state(json_path)
            sync_folder(folder)

        self.state.save_to_json = synced_then_state  # on this instance only, for this save
        try:
            return super()._save_checkpoint(model, trial)
        except OSError as err:
            if err.errno == errno.ENOSPC:
                raise disk_full(self.args.output_dir, folder, err) from err
            raise
        finally:
            del self.state.save_to_json

    # Final evaluations: their predictions go to the reports ----------------------------------------------------

    def evaluate_with_predictions(self, dataset, metric_key_prefix: str = "eval") -> tuple[dict, EvalLoopOutput]:
        """`evaluate()` (metrics logged, callbacks told) that also returns the loop's output: the gathered top-k
        ids and probabilities (`metrics.reduce_logits`) and label ids, O(examples x 5)."""
        self._keep_predictions = True
        try:
            metrics = self.evaluate(dataset, metric_key_prefix=metric_key_prefix)
            return metrics, self._kept
        finally:
            self._keep_predictions, self._kept = False, None

    def evaluation_loop(self, *args, **kwargs) -> EvalLoopOutput:
        if self.example_log is not None:
            self.example_log.start_evaluation()
        training = self._eval_nan_filter is not None
        if training:  # (13) the user's filter: an all-skipped batch's loss is 0/0 here
            self.args.logging_nan_inf_filter = self._eval_nan_filter
        try:
            output = super().evaluation_loop(*args, **kwargs)
        finally:
            if training:
                self.args.logging_nan_inf_filter = False
        if self._keep_predictions:
            self._kept = output
        return output

    # Model card and Hub ---------------------------------------------------------------------------------------------

    def create_model_card(self, model_name: str | None = None, card: CardInfo | None = None, **kwargs) -> None:
        """Our card from the run's record (`run.card_info`, made after the reports; `push_to_hub(card=...)` passes it
        on); the quick start names the Hub repo when pushing, else the local folder. Without a record, none."""
        if card is not None and self.is_world_process_zero():
            repo_id = getattr(self, "hub_model_id", None) if self.args.push_to_hub else None
            write_model_card(card, self.args, repo_id=repo_id, model_name=model_name, state=self.state)

    def push_report(self, commit_message: str = "hf-resnet: evaluation report"):
        """An evaluation-only run made no model: upload its report (`report/`, the results JSON, the skipped-image
        list) to `hub_model_id`, created with `hub_private_repo` like any Trainer push."""
        if not self.is_world_process_zero():
            return None
        if getattr(self, "hub_model_id", None) is None:
            self.init_hf_repo()
        return hf_api().upload_folder(
            repo_id=self.hub_model_id, folder_path=self.args.output_dir, commit_message=commit_message,
            token=self.args.hub_token, revision=self.args.hub_revision,
            allow_patterns=[f"{REPORT_DIR}/**", "*results.json", "skipped_images.json"],
        )
