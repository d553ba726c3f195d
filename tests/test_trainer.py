"""The Trainer subclass: the NaN guard, and what it relies on inside transformers and accelerate."""

import functools

import pytest
from conftest import finetune, recipe_args

from hf_resnet.errors import NonFiniteLossError


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

