"""The Trainer subclass: the NaN guard, and what it relies on inside transformers and accelerate.

The first tests below each fail when a transformers or accelerate upgrade changes something the trainer's
docstring lists (a patched attribute, a private method it overrides): they run a tiny model for a few steps.
"""

import functools
import inspect
import math

import pytest
import torch
from conftest import finetune, recipe_args
from transformers import ResNetConfig, ResNetForImageClassification, Trainer

from hf_resnet.configs import FinetuneTrainingArguments
from hf_resnet.errors import NonFiniteLossError
from hf_resnet.strategy_config import StrategyArguments
from hf_resnet.trainer import ImageClassificationTrainer
from hf_resnet.training.balance import BalancedSampler
from hf_resnet.training.strategies import Strategy, plan_freezing


class ProbeTrainer(ImageClassificationTrainer):
    """Records which loaders went through `_get_dataloader` and which batches through `_prepare_inputs`."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.loaders, self.prepared = [], 0

    def _get_dataloader(self, dataset, description, *args, **kwargs):
        self.loaders.append(description)
        return super()._get_dataloader(dataset, description, *args, **kwargs)

    def _prepare_inputs(self, inputs):
        self.prepared += 1
        return super()._prepare_inputs(inputs)


def tiny_trainer(tmp_path, strategy_args: StrategyArguments | None = None, sampler=None, **overrides) -> ProbeTrainer:
    torch.manual_seed(0)
    config = ResNetConfig(embedding_size=8, hidden_sizes=[8, 8, 8, 8], depths=[1, 1, 1, 1], layer_type="basic",
                          num_labels=2)
    examples = [{"pixel_values": torch.randn(3, 16, 16), "labels": i % 2, "example_ids": i} for i in range(8)]
    values = dict(output_dir=str(tmp_path), per_device_train_batch_size=4, per_device_eval_batch_size=4,
                  max_steps=2, report_to="none", use_cpu=True, dataloader_num_workers=0, save_strategy="no",
                  eval_strategy="no", optim="sgd", learning_rate=0.1, lr_scheduler_type="constant")
    args = FinetuneTrainingArguments(**{**values, **overrides})
    model = ResNetForImageClassification(config)
    strategy = None
    if strategy_args is not None:
        strategy = Strategy(strategy_args, plan_freezing(model, strategy_args), sampler=sampler)
        strategy.plan.start(model)
    return ProbeTrainer(model=model, args=args, train_dataset=examples, eval_dataset=examples,
                        strategy=strategy)


def test_every_batch_goes_through_prepare_inputs_and_every_loader_through_get_dataloader(tmp_path):
    """(3) and (4): if the Trainer stopped calling either, `example_ids` would reach the model's forward (a
    TypeError) or streamed loaders would lose their dispatch setting."""
    trainer = tiny_trainer(tmp_path)
    trainer.train()
    trainer.evaluate()
    assert trainer.prepared == 2 + 2  # 2 training steps, 2 evaluation batches
    assert trainer.loaders == ["Training", "Evaluation"]
    ours = inspect.signature(ImageClassificationTrainer._get_dataloader).parameters
    assert list(inspect.signature(Trainer._get_dataloader).parameters) == list(ours)


def test_the_trainers_nan_filter_is_off_in_training_and_the_users_in_evaluation(tmp_path):
    """(13) The Trainer's filter would read each training loss to the host (a sync per step on a GPU) to replace
    a NaN that `compute_loss` never returns; in evaluation it still leaves out the 0/0 loss of a batch whose
    images were all skipped, so `eval_loss` stays a number."""
    from transformers import TrainerCallback

    seen = {"train": set(), "eval": set()}

    class Probe(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            seen["train"].add(args.logging_nan_inf_filter)

        def on_prediction_step(self, args, state, control, **kwargs):
            seen["eval"].add(args.logging_nan_inf_filter)

    trainer = tiny_trainer(tmp_path, eval_strategy="steps", eval_steps=1)  # evaluations inside `train` too
    trainer.add_callback(Probe())
    trainer.train()
    assert trainer.args.logging_nan_inf_filter is True
    skipped = [{"pixel_values": torch.zeros(3, 16, 16), "labels": -100, "example_ids": i} for i in range(4)]
    kept = [{"pixel_values": torch.randn(3, 16, 16), "labels": i % 2, "example_ids": 4 + i} for i in range(4)]
    metrics = trainer.evaluate(skipped + kept)  # batches of 4: the first is all skipped
    assert seen == {"train": {False}, "eval": {True}}
    assert math.isfinite(metrics["eval_loss"]) and trainer.args.logging_nan_inf_filter is True  # the user's again


def test_a_skipped_update_takes_no_optimizer_step_through_accelerates_wrapper(tmp_path):
    """(1): accelerate's AcceleratedOptimizer.step must call the step we put on the optimizer instance."""
    trainer = tiny_trainer(tmp_path)
    trainer.train()  # the optimizer is now accelerate's wrapper around ours
    assert type(trainer.optimizer).__name__ == "AcceleratedOptimizer"
    model = trainer.model
    weight = model.classifier[1].weight

    def step() -> bool:
        model.zero_grad()
        model(pixel_values=torch.randn(2, 3, 16, 16), labels=torch.tensor([0, 1])).loss.backward()
        before = weight.detach().clone()
        trainer.optimizer.step()
        return not torch.equal(before, weight)

    trainer._skip_update = True
    assert step() is False and trainer._skip_update is False  # skipped once, then armed again
    assert step() is True


def test_dispatch_setting_is_switched_for_one_loader_and_restored(tmp_path):
    """(2): accelerate reads `dataloader_config.dispatch_batches` when it prepares a loader."""

    class Stream(torch.utils.data.IterableDataset):
        def __iter__(self):
            return iter(range(8))

    trainer = tiny_trainer(tmp_path)
    config = trainer.accelerator.dataloader_config
    before = config.dispatch_batches
    for value, kind in ((True, "DataLoaderDispatcher"), (False, "DataLoaderShard")):
        with trainer._dispatch(value):
            assert config.dispatch_batches is value
            loader = trainer.accelerator.prepare_data_loader(torch.utils.data.DataLoader(Stream(), batch_size=2))
        assert type(loader).__name__ == kind
        assert config.dispatch_batches is before


def test_gradient_accumulation_gives_the_update_of_the_whole_batch(tmp_path):
    """(8): ResNet's loss is a batch mean; 2 accumulated batches of 4 must move the head as 1 batch of 8 does (the
    Trainer would otherwise take the sum, twice the step). A linear probe, so BatchNorm does not depend on the
    batch size."""
    probe = StrategyArguments(tuning="linear_probe", sgd_momentum=0.0)
    heads = []
    for batch, accumulate in ((8, 1), (4, 2)):
        trainer = tiny_trainer(tmp_path / str(batch), probe, max_steps=1, per_device_train_batch_size=batch,
                               gradient_accumulation_steps=accumulate)
        trainer.train()
        heads.append(trainer.model.classifier[1].weight.detach().clone())
    start = tiny_trainer(tmp_path / "start", probe).model.classifier[1].weight
    assert not torch.equal(heads[0], start)
    assert torch.allclose(heads[0], heads[1], atol=1e-6), (heads[0] - heads[1]).abs().max()


def test_the_trainer_counts_steps_per_epoch_and_draws_from_the_strategys_sampler(tmp_path):
    """(6) and (7): the balanced sampler reaches the training DataLoader (through accelerate), and the optimizer
    steps per epoch are known when training starts."""
    sampler = BalancedSampler(torch.tensor([0, 0, 0, 0, 0, 0, 1, 1]).numpy(), torch.tensor([6, 2]).numpy(), seed=0)
    trainer = tiny_trainer(tmp_path, StrategyArguments(balanced_sampler=True), sampler=sampler, max_steps=-1,
                           num_train_epochs=1)
    assert trainer._get_train_sampler() is sampler
    seen = [i for batch in trainer.get_train_dataloader() for i in batch["example_ids"].tolist()]
    sampler.set_epoch(0)
    assert seen == list(sampler)
    trainer.train()
    assert trainer.steps_per_epoch == 2  # 8 examples, batches of 4


def test_step_decay_schedule_is_built_afresh_for_each_train_call(tmp_path):
    """(7): the Trainer drops a schedule it created before a new `train()`; ours must be dropped too."""
    trainer = tiny_trainer(tmp_path, StrategyArguments(lr_milestones=[1]), max_steps=-1, num_train_epochs=2)
    trainer.train()
    first = trainer.lr_scheduler
    assert first.get_last_lr()[0] == pytest.approx(0.01)  # x0.1 after epoch 1 (2 steps of 2)
    trainer.train()
    assert trainer.lr_scheduler is not first and trainer.lr_scheduler.get_last_lr()[0] == pytest.approx(0.01)


def test_sgd_momentum_reaches_the_optimizer(tmp_path):
    trainer = tiny_trainer(tmp_path, StrategyArguments(sgd_momentum=0.8, sgd_nesterov=True))
    trainer.create_optimizer()
    assert all(g["momentum"] == 0.8 and g["nesterov"] for g in trainer.optimizer.param_groups)
    assert {g["name"] for g in trainer.optimizer.param_groups} == {"head", "head/no_decay", "backbone",
                                                                   "backbone/no_decay"}


def test_final_evaluation_hands_back_top5_of_every_example_not_logits(tmp_path):
    """(10): `evaluate()` runs `evaluation_loop`; the report gets its gathered output: 1000 classes over many
    batches come back as examples x 5 ids and probabilities, with metrics equal to what evaluate() logged."""
    import numpy as np

    torch.manual_seed(0)
    config = ResNetConfig(embedding_size=8, hidden_sizes=[8, 8, 8, 8], depths=[1, 1, 1, 1], layer_type="basic",
                          num_labels=1000)
    examples = [{"pixel_values": torch.randn(3, 16, 16), "labels": i % 1000, "example_ids": i} for i in range(60)]
    args = FinetuneTrainingArguments(output_dir=str(tmp_path), per_device_eval_batch_size=4, report_to="none",
                                     use_cpu=True, dataloader_num_workers=0, eval_strategy="no")
    trainer = ImageClassificationTrainer(model=ResNetForImageClassification(config), args=args)
    metrics, output = trainer.evaluate_with_predictions(examples, metric_key_prefix="eval")
    ids, probs, _ = output.predictions
    assert ids.shape == probs.shape == (60, 5) and output.label_ids.shape == (60,)  # 15 batches, 5 per example
    assert np.array_equal(output.label_ids, np.arange(60))
    assert metrics["eval_samples"] == 60 and trainer.state.log_history[-1]["eval_samples"] == 60  # logged
    assert metrics["eval_accuracy"] == float((ids[:, 0] == output.label_ids).mean())
    assert trainer._kept is None  # nothing held once handed over
    assert trainer.evaluate(examples)["eval_samples"] == 60 and trainer._kept is None  # periodic ones keep nothing


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["stop", "skip"])
def test_nonfinite_loss(tmp_path, colour_folders, mode):
    args = recipe_args(tmp_path / "out", colour_folders, optim="sgd", learning_rate="1e20", weight_decay="0",
                       num_train_epochs="1", on_nonfinite_loss=mode)
    if mode == "stop":
        with pytest.raises(NonFiniteLossError, match=r"at step \d+ .*\.png.*on_nonfinite_loss: skip"):
            finetune(args)
        return
    finetune(args)  # every exploded batch skipped: the run ends, weights stay finite
    from safetensors.torch import load_file
    weights = load_file(str(tmp_path / "out" / "model.safetensors"))
    assert all(bool(t.float().isfinite().all()) for t in weights.values())


@pytest.mark.slow
def test_skipped_nonfinite_update_leaves_weights_and_optimizer_untouched(tmp_path, colour_folders, monkeypatch):
    """AdamW with weight decay: 3 steps whose 3rd loss is NaN end exactly where 2 clean steps end."""
    from safetensors.torch import load_file
    from transformers import ResNetForImageClassification

    common = dict(num_train_epochs="1", lr_scheduler_type="constant", weight_decay="0.1", save_strategy="no",
                  eval_strategy="no", on_nonfinite_loss="skip")
    finetune(recipe_args(tmp_path / "two", colour_folders, max_steps="2", **common))

    forward, calls = ResNetForImageClassification.forward, []

    @functools.wraps(forward)  # the Trainer reads `labels` from the signature
    def poisoned(self, *args, **kwargs):
        out = forward(self, *args, **kwargs)
        if self.training:
            calls.append(1)
            if len(calls) == 3:
                out.loss = out.loss * float("nan")
        return out

    monkeypatch.setattr(ResNetForImageClassification, "forward", poisoned)
    finetune(recipe_args(tmp_path / "three", colour_folders, max_steps="3", **common))
    a, b = (load_file(str(tmp_path / name / "model.safetensors")) for name in ("two", "three"))
    assert [k for k in a if not torch_equal(a[k], b[k])] == []


def torch_equal(x, y) -> bool:
    import torch

    return bool(torch.equal(x, y))



@pytest.mark.slow
def test_early_stopping_on_the_metric_for_best_model(tmp_path, colour_folders):
    """A rate of 0 never improves accuracy: with patience 1 the run stops after the 2nd evaluation, of 4 epochs,
    and ends with the best weights."""
    import json

    out = tmp_path / "out"
    finetune(recipe_args(out, colour_folders, learning_rate="0", num_train_epochs="4", save_strategy="epoch",
                         load_best_model_at_end="true", metric_for_best_model="accuracy",
                         early_stopping_patience="1"))
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["global_step"] == 18  # 2 epochs of 9 steps
    assert len([h for h in state["log_history"] if "eval_accuracy" in h]) == 2
    assert state["stateful_callbacks"]["EarlyStoppingCallback"]["attributes"]["early_stopping_patience_counter"] == 1
