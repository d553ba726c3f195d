"""`lr_scheduler_type: one_cycle`: the logged rate and momentum follow the one-cycle's closed form (fastai's
definition: from peak / div up to the peak over pct_start of the steps, cosine, down to peak / final_div; momentum
the other way), every group peaks at its own rate, and a run killed mid-cycle resumes exactly."""

import json
import math
import sys

import pytest
import torch
from conftest import finetune, recipe_args
from safetensors.torch import load_file
from test_resume import finish, kill_when, start, tensors_equal

from hf_resnet.errors import ConfigError
from hf_resnet.parser import parse_args
from hf_resnet.training.optim import momentum_of, one_cycle


def closed_form(step: int, total: int, peak: float, pct: float, div: float, final_div: float,
                high: float, low: float) -> tuple[float, float]:
    """Rate and momentum of optimizer step `step` + 1 (torch's OneCycleLR phases: the peak at pct x total - 1)."""
    def cos(start, end, share):
        return end + (start - end) / 2 * (math.cos(math.pi * share) + 1)

    top = pct * total - 1
    if step <= top:
        share = step / top
        return cos(peak / div, peak, share), cos(high, low, share)
    share = (step - top) / (total - 1 - top)
    return cos(peak, peak / final_div, share), cos(low, high, share)


@pytest.mark.parametrize("optim", ["sgd", "adamw_torch"])
def test_logged_rate_and_momentum_follow_the_closed_form(tmp_path, colour_folders, optim):
    out = tmp_path / "out"
    # 72 images at batch 8: 9 steps an epoch, 18 in all; the head at 10x the backbone's rate
    finetune(recipe_args(out, colour_folders, num_train_epochs="2", lr_scheduler_type="one_cycle", optim=optim,
                         learning_rate="0.01", head_learning_rate="0.1", one_cycle_pct_start="0.3",
                         one_cycle_div="5", one_cycle_final_div="1000", eval_strategy="no"))
    history = json.loads((out / "trainer_state.json").read_text())["log_history"]
    logged = [(h["step"], h["learning_rate"], h["momentum"]) for h in history if "learning_rate" in h]
    assert [step for step, _, _ in logged] == list(range(1, 19))
    first_group_peak = 0.1  # the head's group comes first
    for step, rate, momentum in logged:  # the Trainer logs the rate the step was taken with
        want_rate, want_momentum = closed_form(step - 1, 18, first_group_peak, 0.3, 5, 1000, 0.95, 0.85)
        assert rate == pytest.approx(want_rate, rel=1e-6), step
        assert momentum == pytest.approx(want_momentum, rel=1e-6), step
    assert max(rate for _, rate, _ in logged) == pytest.approx(0.1, rel=0.05)  # close to the peak at step 4.4
    assert logged[-1][1] == pytest.approx(0.1 / 1000, rel=1e-6)


def test_every_group_peaks_at_its_own_rate():
    weights = [torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(2))]
    adam = torch.optim.AdamW([{"params": weights[:1], "lr": 0.1}, {"params": weights[1:], "lr": 0.01}])
    schedule = one_cycle(adam, 20, pct_start=0.25, div=25, final_div=1e5, momentum=[0.95, 0.85])
    assert [g["max_lr"] for g in adam.param_groups] == [0.1, 0.01]  # the ratio holds all along
    assert [g["lr"] for g in adam.param_groups] == pytest.approx([0.1 / 25, 0.01 / 25])
    assert [g["min_lr"] for g in adam.param_groups] == pytest.approx([0.1 / 1e5, 0.01 / 1e5])  # fastai's div_final
    assert [momentum_of(g) for g in adam.param_groups] == [0.95, 0.95]
    for _ in range(19):
        adam.step()
        schedule.step()
    assert [g["lr"] for g in adam.param_groups] == pytest.approx([0.1 / 1e5, 0.01 / 1e5])
    sgd = torch.optim.SGD(weights, lr=0.1, momentum=0)  # no momentum asked for: none is cycled in
    one_cycle(sgd, 20, pct_start=0.25, div=25, final_div=1e5, momentum=[0.95, 0.85])
    assert sgd.param_groups[0]["momentum"] == 0


def test_warm_up_is_refused_with_one_cycle(colour_folders, tmp_path):
    with pytest.raises(ConfigError, match="warms up by itself"):
        parse_args(recipe_args(tmp_path, colour_folders, lr_scheduler_type="one_cycle", warmup_steps="0.1"))
    with pytest.raises(ConfigError, match="one_cycle_momentum"):
        parse_args(recipe_args(tmp_path, colour_folders, lr_scheduler_type="one_cycle", one_cycle_momentum="0.9"))


ONE_CYCLE = ["--lr_scheduler_type", "one_cycle", "--optim", "sgd", "--learning_rate", "0.02", "--layer_decay", "0.7",
             "--one_cycle_pct_start", "0.3"]


def one_cycle_command(out, folders):
    args = recipe_args(out, folders, num_train_epochs="3", save_strategy="steps", save_steps="4",
                       save_total_limit="2", dataloader_num_workers="0")
    return [sys.executable, "-m", "hf_resnet.cli", "train", *args, *ONE_CYCLE]


@pytest.mark.slow
def test_one_cycle_killed_mid_cycle_resumes_exactly(tmp_path, colour_folders):
    """27 steps, the peak at step 7; killed at checkpoint 12 (on the way down), the rerun ends with the same
    weights, and the same rates and momenta in every group, as a run never stopped."""
    reference, killed, log = tmp_path / "reference", tmp_path / "killed", tmp_path / "log.txt"
    finish(one_cycle_command(reference, colour_folders), tmp_path / "reference.txt")
    proc = start(one_cycle_command(killed, colour_folders), log)
    kill_when(proc, killed / "checkpoint-12" / "trainer_state.json")
    assert not (killed / "model.safetensors").exists()
    output = finish(one_cycle_command(killed, colour_folders), log)
    assert f"Resuming from {killed / 'checkpoint-12'}" in output, output[-2000:]
    for name in ("model.safetensors", "checkpoint-27/model.safetensors"):
        assert tensors_equal(load_file(str(reference / name)), load_file(str(killed / name))) == [], name
    a, b = (torch.load(d / "checkpoint-27" / "optimizer.pt", weights_only=False) for d in (reference, killed))
    assert a["param_groups"] == b["param_groups"]  # rates, momenta and the one-cycle's bounds per group
    histories = [json.loads((d / "trainer_state.json").read_text())["log_history"] for d in (reference, killed)]
    logged = [[(h["step"], h["learning_rate"], h["momentum"]) for h in history if "momentum" in h]
              for history in histories]
    assert logged[0] == logged[1] and len(logged[0]) == 27
