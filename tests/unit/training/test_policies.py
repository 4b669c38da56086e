"""Policies and value policies: values by epoch, plateaus, early stopping, state round trips."""

from __future__ import annotations

import math

import numpy as np
import pytest

from dwi_mtl.errors import ConfigError
from dwi_mtl.training import (
    TQDM,
    DecreasingOnPlateau,
    EarlyStopping,
    Exponential,
    LambdaEpoch,
    Multiply,
    NEpochs,
    Policy,
    Schedule,
    Switch,
    TimeProfiler,
    ValuePolicy,
)


def values_by_epoch(policy: ValuePolicy, n_epochs: int) -> list:
    out = []
    for epoch in range(n_epochs):
        policy.epoch_started(epoch)
        out.append(policy.value)
    return out


def test_exponential_halves_every_epoch_and_every_step_length():
    assert values_by_epoch(Exponential(initial=10, multiplier=0.5), 3) == [10.0, 5.0, 2.5]
    assert values_by_epoch(Exponential(8, 0.5, step_length=2), 5) == [8, 8, 4, 4, 2]
    smooth = values_by_epoch(Exponential(1.0, 0.25, step_length=2, floordiv=False), 2)
    assert smooth[1] == pytest.approx(0.5)
    assert values_by_epoch(Exponential(1.0, 0.1, min_value=0.05), 3) == [1.0, 0.1, 0.05]


def test_exponential_rejects_bad_step_length():
    with pytest.raises(ConfigError, match="step_length"):
        Exponential(1.0, 0.5, step_length=0)


def test_multiply_schedule_lambda_by_epoch():
    assert values_by_epoch(Multiply(1.0, {1: 0.1, 3: 0.5}), 5) == pytest.approx(
        [1.0, 0.1, 0.1, 0.05, 0.05]
    )
    assert values_by_epoch(Schedule(1.0, {2: 3.0, 4: 7.0}), 6) == [1.0, 1.0, 3.0, 3.0, 7.0, 7.0]
    assert values_by_epoch(LambdaEpoch(lambda e, k: k * e, 3), 3) == [0, 3, 6]


def test_epoch_policies_are_idempotent_when_epoch_started_twice():
    policy = Multiply(2.0, {0: 2.0})
    policy.epoch_started(0)
    policy.epoch_started(0)
    assert policy.value == 4.0


@pytest.mark.parametrize("mapping", [{-1: 1.0}, {"a": 1.0}, [1, 2]])
def test_schedule_rejects_bad_epoch_keys(mapping):
    with pytest.raises(ConfigError, match="Schedule"):
        Schedule(1.0, mapping)


def test_lambda_epoch_rejects_non_callable():
    with pytest.raises(ConfigError, match="callable"):
        LambdaEpoch(3)


def test_switch_follows_global_steps_and_resumes():
    policy = Switch(0.1, {3: 1.0})
    seen = []
    for step in range(5):
        policy.train_step_started(0, step)
        seen.append(policy.value)
        policy.train_step_finished(0, step, 0.0)
    assert seen == [0.1, 0.1, 0.1, 1.0, 1.0]
    restored = Switch(0.1, {3: 1.0})
    restored.load_state_dict(policy.state_dict())
    restored.train_step_started(1, 0)
    assert restored.value == 1.0 and restored.steps_done == 5


def test_decreasing_on_plateau_multiplies_after_patience():
    policy = DecreasingOnPlateau(initial=1.0, multiplier=0.5, patience=2, rtol=0.0, atol=0.01)
    values = []
    for loss in [1.0, 0.5, 0.499, 0.498, 0.3, 0.3, 0.3]:
        policy.epoch_finished(0, train_losses=[loss, loss])
        values.append(policy.value)
    assert values == [1.0, 1.0, 1.0, 0.5, 0.5, 0.5, 0.25]


def test_decreasing_on_plateau_on_a_metric_in_max_mode():
    policy = DecreasingOnPlateau(
        initial=1.0, multiplier=0.1, patience=1, metric="dice", mode="max"
    )
    policy.epoch_finished(0, train_losses=[1.0], metrics={"dice": 0.5})
    policy.epoch_finished(1, train_losses=[1.0], metrics={"dice": 0.6})
    assert policy.value == 1.0
    policy.epoch_finished(2, train_losses=[1.0], metrics={"dice": 0.55})
    assert policy.value == pytest.approx(0.1)
    with pytest.raises(ConfigError, match="'dice'"):
        policy.epoch_finished(3, train_losses=[1.0], metrics={"acc": 1.0})


def test_decreasing_on_plateau_state_round_trip():
    policy = DecreasingOnPlateau(initial=1.0, multiplier=0.5, patience=3)
    policy.epoch_finished(0, train_losses=[2.0])
    policy.epoch_finished(1, train_losses=[2.0])
    restored = DecreasingOnPlateau(initial=1.0, multiplier=0.5, patience=3)
    restored.load_state_dict(policy.state_dict())
    assert restored.best == 2.0 and restored.epochs_without_improvement == 1


@pytest.mark.parametrize(
    "kwargs, field",
    [({"patience": 0}, "patience"), ({"patience": 1, "mode": "avg"}, "mode")],
)
def test_decreasing_on_plateau_rejects_bad_arguments(kwargs, field):
    with pytest.raises(ConfigError, match=field):
        DecreasingOnPlateau(initial=1.0, multiplier=0.5, **kwargs)


def test_value_policy_state_holds_value_and_scalars_log_it():
    policy = Exponential(4.0, 0.5)
    policy.epoch_started(2)
    restored = Exponential(4.0, 0.5)
    restored.load_state_dict(policy.state_dict())
    assert restored.value == 1.0
    assert restored.scalars() == {"": 1.0}
    assert ValuePolicy("adam").scalars() == {}


class CountingPolicy(Policy):
    def __init__(self):
        self.epochs_seen = 0
        self.history: list[float] = []
        self.callback = print  # not plain data: must stay out of the state

    def epoch_finished(self, epoch, *, train_losses, metrics=None):
        self.epochs_seen += 1
        self.history.append(float(np.mean(train_losses)))


def test_default_policy_state_is_its_plain_attributes():
    policy = CountingPolicy()
    policy.epoch_finished(0, train_losses=[1.0, 3.0])
    state = policy.state_dict()
    assert state == {"epochs_seen": 1, "history": [2.0]}
    restored = CountingPolicy()
    restored.load_state_dict(state)
    assert restored.epochs_seen == 1 and restored.history == [2.0]
    restored.load_state_dict({"set_later": 1})  # attributes created after __init__ too
    assert restored.set_later == 1


def test_n_epochs_raises_early_stopping_at_the_last_epoch():
    policy = NEpochs(2)
    policy.epoch_finished(0, train_losses=[1.0])
    with pytest.raises(EarlyStopping):
        policy.epoch_finished(1, train_losses=[1.0])
    with pytest.raises(ConfigError, match="n_epochs"):
        NEpochs(0)


def test_time_profiler_reports_positive_durations():
    profiler = TimeProfiler()
    profiler.epoch_started(0)
    for step in range(3):
        profiler.train_step_started(0, step)
        sum(range(1000))
        profiler.train_step_finished(0, step, 0.0)
    profiler.validation_started(0, [0.0])
    profiler.epoch_finished(0, train_losses=[0.0])
    scalars = profiler.scalars()
    assert set(scalars) == {"epoch", "train_step_mean", "validation"}
    assert all(value >= 0 and math.isfinite(value) for value in scalars.values())
    assert scalars["epoch"] >= scalars["train_step_mean"]
    assert profiler.state_dict() == {}


def test_tqdm_opens_and_closes_a_bar_per_epoch():
    bar = TQDM()
    for epoch in range(2):
        bar.epoch_started(epoch)
        for step in range(3):
            bar.train_step_started(epoch, step)
            bar.train_step_finished(epoch, step, 0.5)
        assert bar._bar is not None and bar._bar.n == 3
        bar.epoch_finished(epoch, train_losses=[0.5] * 3)
        assert bar._bar is None
    assert bar.state_dict() == {}
