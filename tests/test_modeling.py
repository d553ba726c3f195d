"""Head set-up on tiny ResNets saved as local 'pretrained' checkpoints; a checkpoint that cannot be had says how on."""

import pytest
import torch
from conftest import save_checkpoint
from safetensors.torch import load_file
from transformers import ResNetConfig

from hf_resnet.configs import ModelArguments
from hf_resnet.errors import ConfigError, ModelLoadError
from hf_resnet.training.alignment import align_classes
from hf_resnet.training.modeling import build_model, head_alignment, label_remap, load_config


def build(args: ModelArguments, labels: list[str]):
    """-> (model, the labels' remap onto a kept head) as the run builds them."""
    config = load_config(args)
    alignment = head_alignment(args, config, labels)
    return build_model(args, labels, config, alignment), label_remap(alignment, len(labels))


def full_rows(config, labels):
    """The head's row per class when the classes are all of the checkpoint's, else None."""
    alignment = align_classes(config, labels)
    return alignment.rows if alignment is not None and alignment.full else None


def rows(config, labels):
    alignment = align_classes(config, labels)
    return None if alignment is None else alignment.rows


def test_unreachable_hub_id_names_both_ways_on():
    with pytest.raises(ModelLoadError) as info:
        load_config(ModelArguments(model_name_or_path="someone/does-not-exist-xyz"))
    message = str(info.value)
    assert "'someone/does-not-exist-xyz'" in message
    assert "`model_name_or_path` at a local checkpoint folder" in message
    assert "hf-resnet train --config smoke/digits_smoke" in message


COLOUR_NAMES = ["red", "green", "blue"]


def test_same_class_names_keep_the_head_and_map_labels_by_name(tmp_path):
    ckpt = save_checkpoint(tmp_path / "ckpt", COLOUR_NAMES)
    # the dataset lists the same classes in sorted (folder) order
    model, label_map = build(ModelArguments(model_name_or_path=str(ckpt)), ["blue", "green", "red"])
    assert label_map == [2, 1, 0]
    saved = load_file(str(ckpt / "model.safetensors"))
    assert torch.equal(model.state_dict()["classifier.1.weight"], saved["classifier.1.weight"])
    assert model.config.id2label[0] == "red"


def test_other_classes_get_a_new_head_and_keep_the_backbone(tmp_path):
    ckpt = save_checkpoint(tmp_path / "ckpt", COLOUR_NAMES)
    model, label_map = build(ModelArguments(model_name_or_path=str(ckpt)), ["ant", "bee"])
    assert label_map is None
    assert model.config.num_labels == 2 and model.config.id2label == {0: "ant", 1: "bee"}
    assert model.classifier[1].out_features == 2
    saved = load_file(str(ckpt / "model.safetensors"))
    for name, tensor in model.state_dict().items():
        if not name.startswith("classifier") and name in saved:
            assert torch.equal(tensor, saved[name]), name


def test_the_whole_head_is_kept_only_for_the_same_names():
    config = ResNetConfig(num_labels=3, id2label={0: "Tench, Tinca tinca", 1: "goldfish", 2: "great_white_shark"})
    assert full_rows(config, ["goldfish", "great white shark", "tench, tinca tinca"]) == [1, 2, 0]
    assert full_rows(config, ["goldfish", "tench"]) is None  # some of its classes: not the whole head
    twice = ResNetConfig(num_labels=3, id2label={0: "crane", 1: "goldfish", 2: "crane"})  # as ImageNet-1k has
    assert full_rows(twice, ["crane", "goldfish", "crane"]) == [0, 1, 2]  # by position
    assert full_rows(twice, ["goldfish", "crane", "crane"]) is None  # ambiguous: which crane is which
    assert full_rows(config, ["goldfish", "shark", "tench, tinca tinca"]) is None



def test_a_replaced_head_is_said_in_our_words_and_the_library_stays_quiet(tmp_path, caplog, capfd):
    ckpt = save_checkpoint(tmp_path / "ckpt", [f"c{i}" for i in range(10)])
    with caplog.at_level("INFO", logger="hf_resnet"):
        model, label_map = build(ModelArguments(model_name_or_path=str(ckpt)), ["ant", "bee"])
    assert label_map is None and model.config.num_labels == 2
    assert "New 2-class head for ant, bee; the pretrained head had 10 classes" in caplog.text
    printed = capfd.readouterr()
    for alarming in ("LOAD REPORT", "MISMATCH", "incompatible"):
        assert alarming not in printed.out + printed.err + caplog.text


def test_pickle_weights_need_an_explicit_opt_in(tmp_path, caplog):
    from transformers import ResNetForImageClassification

    ckpt = save_checkpoint(tmp_path / "ckpt", ["ant", "bee"])
    model = ResNetForImageClassification.from_pretrained(ckpt)
    pickled = tmp_path / "pickled"  # a checkpoint as older tools saved it: pytorch_model.bin, no safetensors
    pickled.mkdir()
    torch.save(model.state_dict(), pickled / "pytorch_model.bin")
    for name in ("config.json", "preprocessor_config.json"):
        (pickled / name).write_text((ckpt / name).read_text())
    with pytest.raises(ModelLoadError, match="only in pickle format.*--allow_pickle_weights true"):
        build(ModelArguments(model_name_or_path=str(tmp_path / "pickled")), ["ant", "bee"])
    with caplog.at_level("WARNING", logger="hf_resnet"):
        loaded, _ = build(ModelArguments(model_name_or_path=str(tmp_path / "pickled"), allow_pickle_weights=True),
                          ["ant", "bee"])
    assert torch.equal(loaded.classifier[1].weight, model.classifier[1].weight)
    assert "only do so for checkpoints you trust" in caplog.text


def test_remote_code_is_never_trusted(tmp_path):
    """A checkpoint's own Python code never runs: a known model type loads transformers' class; an unknown one
    that needs its code is refused."""
    import json

    from transformers import ResNetConfig

    ckpt = save_checkpoint(tmp_path / "ckpt", ["ant", "bee"])
    config = json.loads((ckpt / "config.json").read_text())
    config["auto_map"] = {"AutoConfig": "evil.EvilConfig", "AutoModelForImageClassification": "evil.EvilModel"}
    (ckpt / "config.json").write_text(json.dumps(config))
    (ckpt / "evil.py").write_text("raise SystemExit('remote code ran')\n")
    assert type(load_config(ModelArguments(model_name_or_path=str(ckpt)))) is ResNetConfig
    config["model_type"] = "evil-net"
    (ckpt / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelLoadError, match="needs its own Python code .*never runs a checkpoint's code"):
        load_config(ModelArguments(model_name_or_path=str(ckpt)))


def test_a_bundled_config_as_model_name_builds_a_random_model():
    args = ModelArguments(model_name_or_path="bundled:resnet-smoke")
    assert args.model_name_or_path is None and args.config_name == "bundled:resnet-smoke"


def test_classes_that_are_some_of_the_checkpoints_start_from_its_rows(tmp_path):
    ckpt = save_checkpoint(tmp_path / "ckpt", ["tabby, tabby cat", "red", "dog", "blue", "green"])
    model, label_map = build(ModelArguments(model_name_or_path=str(ckpt)), ["blue", "green", "red"])
    assert label_map is None and model.config.id2label == {0: "blue", 1: "green", 2: "red"}
    saved = load_file(str(ckpt / "model.safetensors"))
    assert torch.equal(model.classifier[1].weight, saved["classifier.1.weight"][[3, 4, 1]])
    assert torch.equal(model.classifier[1].bias, saved["classifier.1.bias"][[3, 4, 1]])
    logits = model(pixel_values=torch.randn(2, 3, 32, 32)).logits
    assert logits.shape == (2, 3) and model.num_labels == 3
    random_head, _ = build(ModelArguments(model_name_or_path=str(ckpt), head_from_checkpoint_rows=False),
                           ["blue", "green", "red"])
    assert not torch.equal(random_head.classifier[1].weight, saved["classifier.1.weight"][[3, 4, 1]])


def test_checkpoint_rows_by_name_or_synonym_and_never_ambiguous():
    config = ResNetConfig(num_labels=4, id2label={0: "tench, Tinca tinca", 1: "crane", 2: "tabby, tabby cat",
                                                   3: "crane"})
    assert rows(config, ["tabby_cat", "Tench"]) == [2, 0]  # a synonym, any case, _ for space
    assert rows(config, ["tabby", "crane"]) is None  # which crane?
    assert rows(config, ["tabby", "lion"]) is None
    assert rows(config, ["tabby", "tabby cat"]) is None  # two classes on one row


def test_a_class_map_starts_the_new_head_from_the_rows_it_names(tmp_path):
    ckpt = save_checkpoint(tmp_path / "ckpt", ["tench, Tinca tinca", "crane", "goldfish", "crane"])
    args = ModelArguments(model_name_or_path=str(ckpt), class_map="{bird: 1, machine: 3}")
    model, remap = build(args, ["bird", "goldfish", "machine"])  # goldfish: by name, as without a map
    saved = load_file(str(ckpt / "model.safetensors"))
    assert remap is None and model.config.id2label == {0: "bird", 1: "goldfish", 2: "machine"}
    assert torch.equal(model.classifier[1].weight, saved["classifier.1.weight"][[1, 2, 3]])
    with pytest.raises(ConfigError, match="'crane' names 2 checkpoint classes: 1 .*; 3 "):
        build(ModelArguments(model_name_or_path=str(ckpt), class_map={"bird": "crane"}), ["bird", "goldfish"])
