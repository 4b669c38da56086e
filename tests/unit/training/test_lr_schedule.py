"""Learning-rate specifications and schedules."""

from __future__ import annotations

import pytest
import torch

from dwi_mtl.errors import ConfigError
from dwi_mtl.training.lr_schedule import LearningRateSchedule, parse_learning_rates
from dwi_mtl.training.optim import build_optimizer, resolve_optimizer_class


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("0.001*3 0.0001", [0.001, 0.001, 0.001, 0.0001]),
        (["0.01*2", "0.001"], [0.01, 0.01, 0.001]),
        ("0.1,0.2", [0.1, 0.2]),
        (0.5, [0.5]),
        ([0.1, 0.2], [0.1, 0.2]),
    ],
)
def test_parse_learning_rates(spec, expected):
    assert parse_learning_rates(spec) == expected


@pytest.mark.parametrize("spec", ["abc", "0.1*x", "-0.1", "0.1*0", "", []])
def test_bad_learning_rates_name_the_item(spec):
    with pytest.raises(ConfigError, match="learning rate"):
        parse_learning_rates(spec)


def _optimizer() -> torch.optim.Optimizer:
    return torch.optim.SGD(torch.nn.Linear(2, 2).parameters(), lr=1.0)


def test_per_epoch_list_repeats_its_last_value():
    schedule = LearningRateSchedule(_optimizer(), "0.01*2 0.001")
    rates = []
    for epoch in range(5):
        schedule.start_epoch(epoch)
        rates.append(schedule.current)
    assert rates == [0.01, 0.01, 0.001, 0.001, 0.001]


def test_torch_scheduler_is_stepped_and_checkpointed():
    optimizer = _optimizer()
    schedule = LearningRateSchedule(
        optimizer, 1.0, lambda o: torch.optim.lr_scheduler.StepLR(o, step_size=1, gamma=0.5)
    )
    schedule.start_epoch(0)
    optimizer.step()
    schedule.end_epoch()
    assert schedule.current == 0.5
    other_optimizer = _optimizer()
    other = LearningRateSchedule(
        other_optimizer, 1.0, lambda o: torch.optim.lr_scheduler.StepLR(o, step_size=1, gamma=0.5)
    )
    other.load_state_dict(schedule.state_dict())
    other_optimizer.load_state_dict(optimizer.state_dict())
    other_optimizer.step()
    other.end_epoch()
    assert other.current == 0.25


@pytest.mark.parametrize("name", ["Adam", "adamw", "SGD", "RAdam", "torch.optim.Adagrad"])
def test_optimizer_by_name(name):
    optimizer = build_optimizer(name, torch.nn.Linear(2, 2).parameters(), lr=0.1, weight_decay=0.01)
    assert optimizer.param_groups[0]["lr"] == 0.1


@pytest.mark.parametrize("name", ["Adamm", "torch.nn.Linear", "nowhere.Optim"])
def test_unknown_optimizer_is_a_config_error(name):
    with pytest.raises(ConfigError, match="optimizer"):
        resolve_optimizer_class(name)
