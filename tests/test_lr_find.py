"""`hf-resnet lr-find`: the range test leaves the trainer as it found it (every tensor, flag, optimizer state and
random state, bit for bit), writes its curve and record, prints a command that uses the suggestion, and the
suggestion trains the smoke digits to within a point of the recipe's tuned rate."""

import json
import random

import numpy as np
import pytest
import torch
from conftest import finetune, recipe_args

from hf_resnet.cli import main as cli
from hf_resnet.lr_find import find_lr, suggest
from hf_resnet.parser import parse_args
from hf_resnet.run import build_trainer
from hf_resnet.training.strategies import batchnorm_held


def build(tmp_path, folders, **overrides):
    # the head alone first (frozen BatchNorm held in eval mode), everything at epoch 1; an EMA; mixup draws
    values = dict(tuning="linear_probe", unfreeze_epochs="1", ema_decay="0.9", mixup_alpha="0.4", max_steps="6",
                  eval_strategy="no", logging_steps="2")
    return build_trainer(*parse_args(recipe_args(tmp_path, folders, **{**values, **overrides})), resume=False).trainer


def state_of(trainer) -> dict:
    model = trainer.model
    return {
        "tensors": {name: t.detach().clone() for name, t in model.state_dict().items()},
        "requires_grad": {name: p.requires_grad for name, p in model.named_parameters()},
        "modes": {name: (m.training, batchnorm_held(m)) for name, m in model.named_modules()},
        "rng": (random.getstate(), np.random.get_state()[1].copy(), torch.get_rng_state()),
        "ema": {name: t.clone() for name, t in trainer.ema.shadow.items()},
        "optimizer": trainer.optimizer, "scheduler": trainer.lr_scheduler,
    }


def assert_same(before: dict, after: dict) -> None:
    assert [n for n, t in before["tensors"].items() if not torch.equal(t, after["tensors"][n])] == []
    assert before["requires_grad"] == after["requires_grad"] and before["modes"] == after["modes"]
    assert before["rng"][0] == after["rng"][0] and np.array_equal(before["rng"][1], after["rng"][1])
    assert torch.equal(before["rng"][2], after["rng"][2])
    assert [n for n, t in before["ema"].items() if not torch.equal(t, after["ema"][n])] == []
    assert before["optimizer"] is after["optimizer"] and before["scheduler"] is after["scheduler"]


def test_the_range_test_leaves_the_run_as_it_found_it(tmp_path, colour_folders):
    trainer = build(tmp_path / "a", colour_folders)
    before = state_of(trainer)
    assert any(held for _, held in before["modes"].values())  # the frozen backbone's BatchNorm is held
    result = find_lr(trainer, num_steps=12)
    assert len(result.rates) >= 3 and result.rates[0] == pytest.approx(1e-7)
    assert_same(before, state_of(trainer))
    assert not list((tmp_path / "a").glob("checkpoint-*")) and not (tmp_path / "a" / "model.safetensors").exists()

    # ... so training afterwards is bit for bit the training of a run that never ran the test
    trainer.train()
    untouched = build(tmp_path / "b", colour_folders)
    untouched.train()
    a, b = trainer.model.state_dict(), untouched.model.state_dict()
    assert [n for n in a if not torch.equal(a[n], b[n])] == []

    # a trainer that has trained: its optimizer's state (AdamW's moments) and its schedule come back too
    optimizer_state = {k: v.clone() for k, v in trainer.optimizer.state_dict()["state"][0].items()}
    schedule = trainer.lr_scheduler.state_dict()
    before = state_of(trainer)
    find_lr(trainer, num_steps=8)
    assert_same(before, state_of(trainer))
    assert all(torch.equal(v, trainer.optimizer.state_dict()["state"][0][k]) for k, v in optimizer_state.items())
    assert trainer.lr_scheduler.state_dict() == schedule


def test_suggestions_follow_fastais_definitions():
    rates = list(np.geomspace(1e-5, 1, 60))
    # flat, a long descent between 1e-3 and 1e-1, then up
    losses = [2.0 if r < 1e-3 else 2.0 - np.log10(r / 1e-3) if r < 1e-1 else 0.0 + 40 * (r - 0.1) for r in rates]
    found = suggest(rates, losses)
    kept = slice(6, 55)  # fastai trims the first 10% and the last 5 steps
    assert found["minimum"] == pytest.approx(rates[kept][int(np.argmin(losses[kept]))] / 10)
    assert 1e-3 <= found["valley"] <= 1e-1 and 1e-3 <= found["steep"] <= 1e-1
    assert found["steep"] <= found["minimum"] * 10


def test_lr_find_command_writes_the_curve_and_the_command(tmp_path, colour_folders, capsys):
    out = tmp_path / "out"
    code = cli(["lr-find", "--num-steps", "40", *recipe_args(out, colour_folders, head_learning_rate="0.03"),
                "--param_groups", "stem: lr=0.001"])
    assert code == 0
    printed = capsys.readouterr().out
    record = json.loads((out / "lr_find.json").read_text())
    assert set(record["suggestions"]) == {"valley", "slide", "minimum", "steep"}
    suggested = record["suggested_learning_rate"]
    assert suggested == record["suggestions"]["valley"] and len(record["curve"]) == record["steps"] > 10
    assert f"Suggested learning_rate: {suggested:.3g} (valley" in printed
    factor = float(f"{suggested:.3g}") / 0.003
    assert f"--learning_rate {suggested:.3g} --head_learning_rate {0.03 * factor:.3g}" in printed
    assert f"'stem: lr={0.001 * factor:.3g}'" in printed  # every rate scaled, so the groups' ratios hold
    assert (out / "lr_find.png").read_bytes()[:4] == b"\x89PNG"
    assert not (out / "model.safetensors").exists() and not list(out.glob("checkpoint-*"))


@pytest.mark.slow
def test_the_suggestion_trains_the_smoke_digits_within_a_point_of_the_recipes_rate(tmp_path):
    """The smoke recipe's rate (3e-3) was tuned by hand; the finder's suggestion, with the recipe's budget, must
    reach its accuracy within 1 point."""
    fast = ["--dataloader_num_workers", "0", "--save_strategy", "no", "--eval_strategy", "no", "--logging_strategy",
            "no", "--disable_tqdm", "true"]
    found = find_lr(build_trainer(*parse_args(["--config", "smoke/digits_smoke", "--output_dir",
                                               str(tmp_path / "find"), *fast]), resume=False).trainer)
    assert 1e-4 < found.suggested < 3e-2
    accuracy = {}
    for name, rate in (("recipe", 0.003), ("suggested", found.suggested)):
        metrics = finetune(["--config", "smoke/digits_smoke", "--output_dir", str(tmp_path / name),
                            "--learning_rate", str(rate), *fast])
        accuracy[name] = metrics["eval_accuracy"]
    assert accuracy["suggested"] >= accuracy["recipe"] - 0.01, (found.suggested, accuracy)
