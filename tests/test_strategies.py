"""Freezing and parameter groups: frozen weights and BatchNorm statistics stay bit-identical, trainable ones move."""

import pytest
import torch
from conftest import finetune, recipe_args, save_checkpoint
from safetensors.torch import load_file
from transformers import ResNetConfig, ResNetForImageClassification

from hf_resnet.strategies import apply_tuning, batchnorm_held, param_groups, set_frozen


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
