"""Freezing, unfreezing and parameter groups: frozen weights and BatchNorm statistics stay bit-identical,
trainable ones move, each parameter learns at its group's rate, and a selector that names nothing is an error."""

import json

import pytest
import torch
from conftest import finetune, recipe_args, save_checkpoint
from safetensors.torch import load_file
from transformers import ResNetConfig, ResNetForImageClassification

from hf_resnet.errors import ConfigError
from hf_resnet.strategy_config import StrategyArguments
from hf_resnet.training.strategies import (
    add_head_dropout,
    batchnorm_held,
    component_of,
    param_groups,
    plan_freezing,
    select,
    set_frozen,
)


def tiny_resnet(num_labels=3) -> ResNetForImageClassification:
    torch.manual_seed(0)
    return ResNetForImageClassification(ResNetConfig(embedding_size=8, hidden_sizes=[8, 8, 8, 8], depths=[1, 1, 1, 1],
                                                     layer_type="basic", num_labels=num_labels))


def names_of(model) -> list[str]:
    return [name for name, _ in model.named_parameters()]


def test_param_groups_no_decay_on_norms_and_biases_and_head_lr():
    model = tiny_resnet()
    groups = param_groups(model, lr=0.1, weight_decay=0.05, head_lr=1.0)
    by_id = {id(p): g for g in groups for p in g["params"]}
    for name, param in model.named_parameters():
        group = by_id[id(param)]
        assert group["weight_decay"] == (0.05 if param.ndim > 1 else 0.0), name
        assert group["lr"] == (1.0 if name.startswith("classifier") else 0.1), name
        assert name in group["param_names"]
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))  # every parameter, once
    assert [g["name"] for g in groups] == ["head", "head/no_decay", "backbone", "backbone/no_decay"]


def test_layer_decay_and_explicit_groups_by_selector():
    model = tiny_resnet()
    explicit = [{"params": "conv1", "lr": 0.5, "weight_decay": None},
                {"params": r"stages\.3\..*convolution", "lr": None, "weight_decay": 0.0}]
    groups = param_groups(model, lr=0.1, weight_decay=0.01, head_lr=1.0, layer_decay=0.5, groups=explicit)
    rate = {n: g["lr"] for g in groups for n in g["param_names"]}
    decay = {n: g["weight_decay"] for g in groups for n in g["param_names"]}
    assert rate["resnet.embedder.embedder.convolution.weight"] == 0.5  # conv1: its own group, first
    assert decay["resnet.embedder.embedder.convolution.weight"] == 0.01
    assert rate["resnet.embedder.embedder.normalization.weight"] == pytest.approx(0.1 * 0.5**5)  # bn1: the stem's
    assert rate["resnet.encoder.stages.0.layers.0.layer.0.convolution.weight"] == pytest.approx(0.1 * 0.5**4)
    stage4_conv = "resnet.encoder.stages.3.layers.0.layer.0.convolution.weight"
    assert rate[stage4_conv] == pytest.approx(0.1 * 0.5) and decay[stage4_conv] == 0.0  # 2nd group: decay only
    assert rate["classifier.1.weight"] == 1.0
    assert [g["name"] for g in groups][:2] == ["conv1", explicit[1]["params"]]


def test_selectors_components_torchvision_names_and_regex():
    names = names_of(tiny_resnet())
    assert select(names, "layer4", "x") == select(names, "stage4", "x") == {
        n for n in names if n.startswith("resnet.encoder.stages.3.")}
    assert select(names, "fc", "x") == {"classifier.1.weight", "classifier.1.bias"}
    assert select(names, "conv1", "x") == {"resnet.embedder.embedder.convolution.weight"}
    assert select(names, "backbone", "x") == {n for n in names if not n.startswith("classifier")}
    assert select(names, r"normalization\.bias$", "x") == {n for n in names if n.endswith("normalization.bias")}
    assert {component_of(n) for n in names} == {"stem", "stage1", "stage2", "stage3", "stage4", "head"}
    with pytest.raises(ConfigError, match=r"`trainable` selector 'layer5' matches no parameter"):
        select(names, "layer5", "trainable")
    with pytest.raises(ConfigError, match="not a valid regular expression"):
        select(names, "stage[", "param_groups")


def test_freeze_plans_from_frozen_stages_trainable_and_unfreeze_epochs():
    model = tiny_resnet()
    names = names_of(model)
    plan = plan_freezing(model, StrategyArguments(frozen_stages=1))
    assert {component_of(n) for n in plan.frozen} == {"stem", "stage1"} and not plan.unfreeze
    plan = plan_freezing(model, StrategyArguments(trainable=["conv1", "fc"]))
    assert set(names) - plan.frozen == {"resnet.embedder.embedder.convolution.weight", "classifier.1.weight",
                                        "classifier.1.bias"}
    plan = plan_freezing(model, StrategyArguments(tuning="linear_probe", unfreeze_epochs=[1, 2.5]))
    assert plan.unfreeze == ((1.0, "stage4"), (2.5, "stage3"))  # deepest first
    assert [plan.due(step, 4) for step in (0, 3, 4, 9, 10)] == [0, 0, 1, 1, 2]  # epoch 2.5 = step 10
    frozen = plan.frozen_after(1)
    assert not frozen("resnet.encoder.stages.3.layers.0.shortcut.convolution.weight")
    assert frozen("resnet.encoder.stages.2.layers.0.shortcut.convolution.weight")
    with pytest.raises(ConfigError, match="6 epochs but only 5 components start frozen"):
        plan_freezing(model, StrategyArguments(tuning="linear_probe", unfreeze_epochs=[1, 2, 3, 4, 5, 6]))


def test_scheduled_parts_stay_trainable_until_training_starts_then_follow_the_plan():
    """DDP registers the parameters that need gradients when it wraps the model: what unfreezes later must be
    among them, so `start` leaves it trainable and `apply` (the first step) freezes it."""
    model = tiny_resnet()
    plan = plan_freezing(model, StrategyArguments(frozen_stages=2, unfreeze_epochs=[1]))
    assert plan.unfreeze == ((1.0, "stage2"),)
    plan.start(model)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert {component_of(n) for n in trainable} == {"stage2", "stage3", "stage4", "head"}
    plan.apply(model, 0)
    assert {component_of(n) for n, p in model.named_parameters() if p.requires_grad} == {"stage3", "stage4", "head"}
    assert batchnorm_held(model.resnet.encoder.stages[1].layers[0].shortcut.normalization)
    plan.apply(model, 1)
    assert not batchnorm_held(model.resnet.encoder.stages[1].layers[0].shortcut.normalization)
    assert batchnorm_held(model.resnet.embedder.embedder.normalization)


def test_head_dropout_in_training_only_and_the_architecture_unchanged():
    model = tiny_resnet()
    keys = set(model.state_dict())
    add_head_dropout(model, 0.5)
    add_head_dropout(model, 0.5)  # once, not twice
    x = torch.randn(4, 3, 32, 32)
    model.eval()
    assert torch.equal(model(pixel_values=x).logits, model(pixel_values=x).logits)
    model.train()
    set_frozen(model, lambda name: not name.startswith("classifier"))  # BatchNorm held: only dropout varies
    torch.manual_seed(1)
    first = model(pixel_values=x).logits
    assert not torch.equal(first, model(pixel_values=x).logits)
    assert set(model.state_dict()) == keys  # a hook: what is saved (and served) is the plain ResNet


def pretrained(tmp_path):
    """A tiny checkpoint that knows the colour classes and one more: the new head starts from its rows for blue,
    green and red, so every weight has a known value before training. -> (checkpoint, its weights as the run
    starts from them)."""
    ckpt = save_checkpoint(tmp_path / "ckpt", ["cat", "blue", "green", "red"])
    start = load_file(str(ckpt / "model.safetensors"))
    start["classifier.1.weight"], start["classifier.1.bias"] = start["classifier.1.weight"][1:], start[
        "classifier.1.bias"][1:]
    return ckpt, start


def changed(start: dict, weights: dict) -> set[str]:
    return {name for name in start if not torch.equal(start[name], weights[name])}


@pytest.mark.slow
@pytest.mark.parametrize("tuning", ["linear_probe", "full"])
def test_training_changes_exactly_the_trainable_weights(tmp_path, colour_folders, tuning):
    ckpt, start = pretrained(tmp_path)
    out = tmp_path / "out"
    finetune(recipe_args(out, colour_folders, model_name_or_path=str(ckpt), config_name=None, tuning=tuning,
                         num_train_epochs="2", learning_rate="0.01"))
    after = load_file(str(out / "model.safetensors"))
    assert after.keys() == start.keys()
    head = {name for name in start if name.startswith("classifier")}
    if tuning == "linear_probe":  # backbone weights and BatchNorm statistics bit-identical; every head tensor moved
        assert changed(start, after) == head
    else:  # every weight, bias and BatchNorm statistic moved
        assert changed(start, after) == set(start)


@pytest.mark.slow
@pytest.mark.parametrize("streaming", ["false", "true"])
def test_gradual_unfreezing_a_stage_is_unchanged_before_its_epoch_and_changes_after(tmp_path, colour_folders,
                                                                                    streaming):
    """9 steps an epoch (72 images, batch 8), also on a stream, whose epochs come from the folder's size."""
    ckpt, start = pretrained(tmp_path)
    out = tmp_path / "out"
    finetune([*recipe_args(out, colour_folders, model_name_or_path=str(ckpt), config_name=None, tuning="linear_probe",
                           num_train_epochs="3", learning_rate="0.01", save_strategy="epoch", save_total_limit="3",
                           eval_strategy="no", streaming=streaming), "--unfreeze_epochs", "1", "2"])
    parts = {part: {n for n in start if n.startswith(prefix)} for part, prefix in (
        ("head", "classifier."), ("stage4", "resnet.encoder.stages.3."), ("stage3", "resnet.encoder.stages.2."))}
    parts["rest"] = set(start) - set().union(*parts.values())
    epochs = [changed(start, load_file(str(out / f"checkpoint-{step}" / "model.safetensors"))) for step in (9, 18, 27)]
    assert epochs[0] == parts["head"]  # epoch 1: the head alone; stage 4's weights and statistics untouched
    assert epochs[1] == parts["head"] | parts["stage4"]  # epoch 2: stage 4 too, BatchNorm statistics included
    assert epochs[2] == parts["head"] | parts["stage4"] | parts["stage3"]  # epoch 3: stage 3 too
    assert not epochs[2] & parts["rest"]


@pytest.mark.slow
def test_report_recipe_momentum_groups_rates_and_step_decay(tmp_path, colour_folders):
    """The shipped recipe on a tiny checkpoint, 2 epochs with the decay after the first: 72 images at batch 32
    are 3 steps an epoch, so steps 1-3 learn at the full rates and 4-6 at a tenth."""
    ckpt = save_checkpoint(tmp_path / "ckpt", ["a", "b"])  # other classes: a new head, as in the report
    out = tmp_path / "out"
    finetune(["--config", "resnet50/report_recipe", "--model_name_or_path", str(ckpt),
              "--train_dir", str(colour_folders["train"]), "--validation_dir", str(colour_folders["validation"]),
              "--output_dir", str(out), "--num_train_epochs", "2", "--lr_milestones", "1", "--logging_steps", "1",
              "--dataloader_num_workers", "0"])
    optimizer = torch.load(out / "checkpoint-6" / "optimizer.pt", weights_only=False)
    groups = {group["name"]: group for group in optimizer["param_groups"]}
    assert all(group["momentum"] == 0.9 and not group["nesterov"] for group in groups.values())
    assert groups["conv1"]["param_names"] == ["resnet.embedder.embedder.convolution.weight"]
    assert groups["conv1"]["initial_lr"] == 0.001 and groups["conv1"]["weight_decay"] == 0.0001
    assert groups["fc"]["param_names"] == ["classifier.1.weight"] and groups["fc"]["initial_lr"] == 0.01
    assert groups["fc/no_decay"]["param_names"] == ["classifier.1.bias"] and groups["fc/no_decay"]["weight_decay"] == 0
    trained = {name for group in optimizer["param_groups"] for i, name in zip(group["params"], group["param_names"])
               if i in optimizer["state"]}  # a momentum buffer exists only for what received gradients
    assert trained == {"resnet.embedder.embedder.convolution.weight", "classifier.1.weight", "classifier.1.bias"}
    assert all(group["lr"] == pytest.approx(group["initial_lr"] * 0.1) for group in groups.values())

    history = json.loads((out / "trainer_state.json").read_text())["log_history"]
    rates = {h["step"]: h["learning_rate"] for h in history if "learning_rate" in h}  # group 0: conv1's
    assert rates == pytest.approx({1: 0.001, 2: 0.001, 3: 0.001, 4: 0.0001, 5: 0.0001, 6: 0.0001})

    before, after = load_file(str(ckpt / "model.safetensors")), load_file(str(out / "model.safetensors"))
    moved = {n for n in before if not n.startswith("classifier") and not torch.equal(before[n], after[n])}
    assert "resnet.embedder.embedder.convolution.weight" in moved
    assert {name.rsplit(".", 1)[-1] for name in moved - {"resnet.embedder.embedder.convolution.weight"}} == {
        "running_mean", "running_var", "num_batches_tracked"}  # frozen weights fixed; BatchNorm statistics adapt


def test_frozen_batchnorm_stays_in_eval_through_model_train_and_unfreezing_undoes_it():
    torch.manual_seed(0)
    model = ResNetForImageClassification(ResNetConfig(embedding_size=8, hidden_sizes=[8, 8, 8, 8],
                                                      depths=[1, 1, 1, 1], layer_type="basic", num_labels=3))
    stem_bn = model.resnet.embedder.embedder.normalization
    stage4_bn = model.resnet.encoder.stages[3].layers[0].shortcut.normalization
    batch = torch.randn(4, 3, 32, 32)

    set_frozen(model, lambda name: not name.startswith(("classifier", "resnet.encoder.stages.3")))
    model.train()  # what the Trainer calls before every step
    stem_mean, stage4_mean = stem_bn.running_mean.clone(), stage4_bn.running_mean.clone()
    model(pixel_values=batch)
    assert batchnorm_held(stem_bn) and not batchnorm_held(stage4_bn)
    assert torch.equal(stem_bn.running_mean, stem_mean)  # frozen: statistics unmoved
    assert not torch.equal(stage4_bn.running_mean, stage4_mean)  # trainable: statistics adapt
    assert not stem_bn.weight.requires_grad and stage4_bn.weight.requires_grad

    set_frozen(model, lambda name: False)  # unfreeze everything: the hold is removed, not left behind
    model.train()
    model(pixel_values=batch)
    assert not batchnorm_held(stem_bn) and stem_bn.training
    assert not torch.equal(stem_bn.running_mean, stem_mean)
    assert all(p.requires_grad for p in model.parameters())


def test_frozen_batchnorm_may_be_left_to_adapt():
    model = ResNetForImageClassification(ResNetConfig(embedding_size=8, hidden_sizes=[8, 8, 8, 8],
                                                      depths=[1, 1, 1, 1], layer_type="basic", num_labels=3))
    set_frozen(model, lambda name: not name.startswith("classifier"), keep_batchnorm_stats=False)
    bn = model.resnet.embedder.embedder.normalization
    before = bn.running_mean.clone()
    model.train()
    model(pixel_values=torch.randn(4, 3, 32, 32))
    assert not batchnorm_held(bn) and not torch.equal(bn.running_mean, before)
    assert not bn.weight.requires_grad


STRATEGY_RECIPES = ["resnet50/report_recipe", "resnet50/imagefolder_gradual_unfreeze",
                    "resnet50/imagefolder_frozen_stages", "resnet50/imagefolder_regularised",
                    "resnet50/imagefolder_imbalanced", "resnet50/imagefolder_fine_tune"]


@pytest.mark.slow
@pytest.mark.parametrize("recipe", STRATEGY_RECIPES)
def test_each_strategy_recipe_trains(tmp_path, colour_folders, recipe):
    """The shipped example recipes as written, with a tiny checkpoint, the colour folders and 3 epochs."""
    ckpt = save_checkpoint(tmp_path / "ckpt", ["a", "b"])
    out = tmp_path / "out"
    metrics = finetune(["--config", recipe, "--model_name_or_path", str(ckpt), "--train_dir",
                        str(colour_folders["train"]), "--validation_dir", str(colour_folders["validation"]),
                        "--output_dir", str(out), "--num_train_epochs", "3", "--per_device_train_batch_size", "8",
                        "--dataloader_num_workers", "0"])
    assert metrics["eval_samples"] == 24 and 0.0 <= metrics["eval_accuracy"] <= 1.0
    assert (out / "model.safetensors").is_file()
