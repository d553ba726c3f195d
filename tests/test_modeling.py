"""Head set-up, freezing and parameter groups, on tiny ResNets saved as local 'pretrained' checkpoints."""

import finetune
import pytest
import torch
from conftest import recipe_args
from safetensors.torch import load_file
from transformers import ResNetConfig, ResNetForImageClassification

from hf_resnet.bundled import resolve_asset
from hf_resnet.configs import ModelArguments
from hf_resnet.modeling import apply_tuning, build_model, param_groups, pretrained_label_map
from hf_resnet.parser import parse_args

COLOUR_NAMES = ["red", "green", "blue"]


def save_checkpoint(path, names):
    """A tiny ResNet 'pretrained' on `names`, saved with the smoke processor: stands in for a Hub checkpoint."""
    config = ResNetConfig(embedding_size=8, hidden_sizes=[8, 16, 16, 16], depths=[1, 1, 1, 1], layer_type="basic",
                          num_labels=len(names), id2label=dict(enumerate(names)), label2id={n: i for i, n in enumerate(names)})
    torch.manual_seed(0)
    model = ResNetForImageClassification(config)
    with torch.no_grad():  # non-trivial BatchNorm statistics, so keeping them is a real check
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 1.5)
    model.save_pretrained(path)
    from transformers import AutoImageProcessor
    AutoImageProcessor.from_pretrained(resolve_asset("bundled:resnet-smoke")).save_pretrained(path)
    return path


def test_same_class_names_keep_the_head_and_map_labels_by_name(tmp_path):
    ckpt = save_checkpoint(tmp_path / "ckpt", COLOUR_NAMES)
    # the dataset lists the same classes in sorted (folder) order
    model, label_map = build_model(ModelArguments(model_name_or_path=str(ckpt)), ["blue", "green", "red"])
    assert label_map == [2, 1, 0]
    saved = load_file(str(ckpt / "model.safetensors"))
    assert torch.equal(model.state_dict()["classifier.1.weight"], saved["classifier.1.weight"])
    assert model.config.id2label[0] == "red"


def test_other_classes_get_a_new_head_and_keep_the_backbone(tmp_path):
    ckpt = save_checkpoint(tmp_path / "ckpt", COLOUR_NAMES)
    model, label_map = build_model(ModelArguments(model_name_or_path=str(ckpt)), ["ant", "bee"])
    assert label_map is None
    assert model.config.num_labels == 2 and model.config.id2label == {0: "ant", 1: "bee"}
    assert model.classifier[1].out_features == 2
    saved = load_file(str(ckpt / "model.safetensors"))
    for name, tensor in model.state_dict().items():
        if not name.startswith("classifier") and name in saved:
            assert torch.equal(tensor, saved[name]), name


def test_pretrained_label_map_needs_the_same_names():
    config = ResNetConfig(num_labels=3, id2label={0: "Tench, Tinca tinca", 1: "goldfish", 2: "great_white_shark"})
    assert pretrained_label_map(config, ["goldfish", "great white shark", "tench, tinca tinca"]) == [1, 2, 0]
    assert pretrained_label_map(config, ["goldfish", "tench"]) is None
    twice = ResNetConfig(num_labels=3, id2label={0: "crane", 1: "goldfish", 2: "crane"})  # as ImageNet-1k has
    assert pretrained_label_map(twice, ["crane", "goldfish", "crane"]) == [0, 1, 2]
    assert pretrained_label_map(twice, ["goldfish", "crane", "crane"]) is None  # ambiguous: which crane is which
    assert pretrained_label_map(config, ["goldfish", "shark", "tench, tinca tinca"]) is None


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
    finetune.main(*parse_args(recipe_args(out, colour_folders, model_name_or_path=str(ckpt), config_name=None,
                                          tuning=tuning, num_train_epochs="2", learning_rate="0.01")))
    before, after = load_file(str(ckpt / "model.safetensors")), load_file(str(out / "model.safetensors"))
    changed = {name for name in before if not name.startswith("classifier") and not torch.equal(before[name], after[name])}
    backbone = {name for name in before if not name.startswith("classifier")}
    if tuning == "linear_probe":
        assert changed == set(), sorted(changed)[:5]  # weights and BatchNorm running stats bit-identical
    else:
        assert changed == backbone, sorted(backbone - changed)  # every backbone weight and statistic moved
    assert not torch.equal(before["classifier.1.weight"][:2], after["classifier.1.weight"][:2])
