"""SGD gets the momentum a recipe asks for; the step schedule warms up, then multiplies by gamma at each milestone
(epochs turned into optimizer steps)."""

import pytest
import torch

from hf_resnet.training.optim import (
    describe_groups,
    milestone_steps,
    optimizer_kwargs,
    step_decay_factor,
    step_schedule,
)


def test_sgd_gets_momentum_and_nesterov_other_optimizers_are_untouched():
    assert optimizer_kwargs(torch.optim.SGD, {"lr": 0.1}, 0.9, True) == {"lr": 0.1, "momentum": 0.9, "nesterov": True}
    assert optimizer_kwargs(torch.optim.AdamW, {"lr": 0.1}, 0.9, False) == {"lr": 0.1}


def test_milestones_in_epochs_become_steps():
    assert milestone_steps([5], None, steps_per_epoch=41, total_steps=410) == [205]
    assert milestone_steps([0.5, 2], None, steps_per_epoch=9, total_steps=27) == [4, 18]  # round(4.5) = 4
    assert milestone_steps([], 3, steps_per_epoch=10, total_steps=100) == [30, 60, 90]  # torch's StepLR, in epochs


def test_step_schedule_with_warm_up_and_two_milestones():
    factors = [step_decay_factor(step, warmup_steps=4, milestones=(10, 20), gamma=0.1) for step in range(25)]
    assert factors[:5] == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert factors[9] == 1.0 and factors[10] == pytest.approx(0.1) and factors[19] == pytest.approx(0.1)
    assert factors[20] == pytest.approx(0.01)
    weight = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([{"params": [weight], "lr": 0.5}], lr=0.5)
    schedule = step_schedule(optimizer, 0, [2], 0.1)
    rates = []
    for _ in range(4):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    assert rates == pytest.approx([0.5, 0.5, 0.05, 0.05])  # the 3rd step (after 2 done) is the first at the lower rate
    restored = step_schedule(torch.optim.SGD([{"params": [weight], "lr": 0.5}], lr=0.5), 0, [2], 0.1)
    restored.load_state_dict(schedule.state_dict())  # what a resumed run does with scheduler.pt
    assert restored.get_last_lr() == pytest.approx(schedule.get_last_lr())


def test_group_table_counts_what_trains():
    linear = torch.nn.Linear(3, 2)
    groups = [{"name": "head", "params": [linear.weight, linear.bias], "param_names": ["w", "b"], "lr": 0.1,
               "weight_decay": 0.0}]
    table = describe_groups(groups, frozen=lambda name: name == "b")
    assert table.splitlines()[1].split() == ["head", "2", "8", "6", "0.1", "0"]
