"""EMA of the weights: the average follows its formula, is what is evaluated and saved, and survives a save/load."""

import json

import pytest
import torch
from conftest import finetune, recipe_args, save_checkpoint
from safetensors.torch import load_file

from hf_resnet.errors import ConfigError
from hf_resnet.training.ema import WeightEma


def test_update_formula_with_warm_up_and_save_load(tmp_path):
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2))
    start = {k: v.clone() for k, v in model.state_dict().items()}
    ema = WeightEma(model, decay=0.9)
    expected = start["0.weight"].clone()
    for n in (1, 2, 3):
        with torch.no_grad():
            model[0].weight.add_(1.0)
            model[1].num_batches_tracked += 1
        ema.update(model)
        d = min(0.9, (1 + n) / (10 + n))  # warm-up: 2/11, 3/12, 4/13
        expected = d * expected + (1 - d) * model[0].weight.detach()
    assert torch.allclose(ema.shadow["0.weight"], expected)
    assert ema.shadow["1.num_batches_tracked"] == 3  # integers are copied, not averaged
    assert WeightEma(model, decay=0.9, warmup=False).decay_at(1) == 0.9

    own = model[0].weight.detach().clone()
    with ema.applied(model):
        assert torch.allclose(model[0].weight, expected)
    assert torch.equal(model[0].weight, own)  # the model's own weights are back

    ema.save(tmp_path)
    other = WeightEma(model, decay=0.9)
    other.load(tmp_path)
    assert other.updates == 3 and all(torch.equal(other.shadow[k], ema.shadow[k]) for k in ema.shadow)
    with pytest.raises(ConfigError, match="has no ema.safetensors"):
        other.load(tmp_path / "elsewhere")


def test_multi_tensor_update_equals_lerp_tensor_by_tensor():
    from transformers import ResNetConfig, ResNetForImageClassification

    torch.manual_seed(0)
    model = ResNetForImageClassification(ResNetConfig(embedding_size=8, hidden_sizes=[8, 8, 8, 8], depths=[1] * 4,
                                                      layer_type="basic", num_labels=3))
    ema = WeightEma(model, decay=0.99)
    reference = {name: t.clone() for name, t in ema.shadow.items()}
    for step in range(1, 4):
        with torch.no_grad():
            for tensor in model.state_dict().values():
                tensor.add_(torch.randn_like(tensor.float()).to(tensor.dtype))
        ema.update(model)
        for name, tensor in model.state_dict().items():
            if reference[name].is_floating_point():
                reference[name].lerp_(tensor, 1.0 - ema.decay_at(step))
            else:
                reference[name].copy_(tensor)
    assert [name for name in reference if not torch.equal(reference[name], ema.shadow[name])] == []


@pytest.mark.slow
def test_saved_ema_weights_are_the_ema_of_the_trajectory(tmp_path, colour_folders):
    """One epoch (9 steps), a checkpoint after every step: the saved model is the average of the start and the 9
    raw weights the checkpoints hold, and it is what was evaluated (pipeline() on it gives eval_accuracy)."""
    from test_run import pipeline_accuracy

    ckpt = save_checkpoint(tmp_path / "ckpt", ["cat", "blue", "green", "red"])  # head rows: a known start
    out = tmp_path / "out"
    finetune(recipe_args(out, colour_folders, model_name_or_path=str(ckpt), config_name=None, num_train_epochs="1",
                         ema_decay="0.8", save_strategy="steps", save_steps="1", save_total_limit="20",
                         learning_rate="0.01"))
    start = load_file(str(ckpt / "model.safetensors"))
    average = {k: v.double() if v.is_floating_point() else v for k, v in start.items()}
    average["classifier.1.weight"] = average["classifier.1.weight"][1:]
    average["classifier.1.bias"] = average["classifier.1.bias"][1:]
    for n in range(1, 10):
        weights = load_file(str(out / f"checkpoint-{n}" / "model.safetensors"))
        d = min(0.8, (1 + n) / (10 + n))
        for name, value in weights.items():
            average[name] = d * average[name] + (1 - d) * value.double() if value.is_floating_point() else value
    saved = load_file(str(out / "model.safetensors"))
    raw = load_file(str(out / "checkpoint-9" / "model.safetensors"))
    assert not all(torch.equal(saved[k], raw[k]) for k in saved)  # not simply the last weights
    for name, value in saved.items():
        assert torch.allclose(value.double(), average[name].to(torch.float64), rtol=1e-5, atol=1e-6), name
    ema_file = load_file(str(out / "checkpoint-9" / "ema.safetensors"))
    assert all(torch.equal(ema_file[k], saved[k]) for k in saved)

    results = json.loads((out / "all_results.json").read_text())
    accuracy, _ = pipeline_accuracy(out, colour_folders["validation"])
    assert accuracy == pytest.approx(results["eval_accuracy"], abs=1e-9)
