"""Freezing and parameter groups: frozen weights and BatchNorm statistics stay bit-identical, trainable ones move."""

import pytest
import torch
from conftest import finetune, recipe_args, save_checkpoint
from safetensors.torch import load_file
from transformers import ResNetConfig, ResNetForImageClassification

from hf_resnet.strategies import apply_tuning, param_groups


def test_param_groups_no_decay_on_norms_and_biases_and_head_lr():
    model = ResNetForImageClassification(ResNetConfig(embedding_size=8, hidden_sizes=[8, 8, 8, 8], depths=[1, 1, 1, 1],
                                                      layer_type="basic", num_labels=3))
    groups = param_groups(model, lr=0.1, weight_decay=0.05, head_lr=1.0)
    by_id = {id(p): g for g in groups for p in g["params"]}
    for name, param in model.named_parameters():
        group = by_id[id(param)]
        assert group["weight_decay"] == (0.05 if param.ndim > 1 else 0.0), name
        assert group["lr"] == (1.0 if name.startswith("classifier") else 0.1), name
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))
    apply_tuning(model, "linear_probe")
    assert {id(p) for g in param_groups(model, 0.1, 0.05) for p in g["params"]} == {
        id(p) for p in model.classifier.parameters()
    }


@pytest.mark.slow
@pytest.mark.parametrize("tuning", ["linear_probe", "full"])
def test_training_changes_exactly_the_trainable_weights(tmp_path, colour_folders, tuning):
    ckpt = save_checkpoint(tmp_path / "ckpt", ["a", "b"])  # other names: a new 3-class head
    out = tmp_path / "out"
    finetune(recipe_args(out, colour_folders, model_name_or_path=str(ckpt), config_name=None,
                                          tuning=tuning, num_train_epochs="2", learning_rate="0.01"))
    before, after = load_file(str(ckpt / "model.safetensors")), load_file(str(out / "model.safetensors"))
    backbone = {name for name in before if not name.startswith("classifier")}
    changed = {name for name in backbone if not torch.equal(before[name], after[name])}
    if tuning == "linear_probe":
        assert changed == set(), sorted(changed)[:5]  # weights and BatchNorm running stats bit-identical
    else:
        assert changed == backbone, sorted(backbone - changed)  # every backbone weight and statistic moved
    assert not torch.equal(before["classifier.1.weight"][:2], after["classifier.1.weight"][:2])

