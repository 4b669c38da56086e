"""TorchModel: one real optimisation step, inference, optimizer options and state."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from dwi_mtl.errors import ConfigError, NonFiniteError
from dwi_mtl.training import TorchModel


def make_model(optimizer=torch.optim.SGD, seed=0):
    torch.manual_seed(seed)
    architecture = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Dropout(0.5), nn.Linear(8, 3))
    return TorchModel(architecture, nn.Softmax(-1), nn.CrossEntropyLoss(), optimizer)


def batch(seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(16, 4)).astype(np.float32), rng.integers(0, 3, size=16)


def test_train_step_sets_lr_and_matches_a_hand_written_step():
    model = make_model()
    reference = make_model()
    x, y = batch()
    torch.manual_seed(5)
    loss = model.do_train_step(x, y, lr=0.1)
    assert isinstance(loss, float)
    assert model.optimizer.param_groups[0]["lr"] == 0.1

    torch.manual_seed(5)
    optimizer = torch.optim.SGD(reference.architecture.parameters(), lr=0.1)
    logits = reference.architecture(torch.from_numpy(x))
    expected = nn.CrossEntropyLoss()(logits, torch.from_numpy(y))
    expected.backward()
    optimizer.step()
    assert loss == pytest.approx(expected.item())
    for got, want in zip(model.architecture.parameters(), reference.architecture.parameters()):
        torch.testing.assert_close(got, want)


def test_repeated_steps_reduce_the_loss():
    model = make_model(torch.optim.Adam)
    x, y = batch()
    losses = [model.do_train_step(x, y, lr=1e-2) for _ in range(30)]
    assert losses[-1] < losses[0]


def test_extra_values_are_optimizer_options():
    model = make_model(lambda params: torch.optim.SGD(params, lr=0.1, momentum=0.0))
    x, y = batch()
    model.do_train_step(x, y, lr=0.05, momentum=0.9)
    assert model.optimizer.param_groups[0]["momentum"] == 0.9
    with pytest.raises(ConfigError, match="unknown keyword 'weights'"):
        model.do_train_step(x, y, lr=0.05, weights=2.0)


def test_inference_is_eval_mode_without_grad_and_restores_training_mode():
    model = make_model()
    x, _ = batch()
    first = model.do_inf_step(x)
    second = model.do_inf_step(x)
    assert isinstance(first, np.ndarray) and first.shape == (16, 3)
    np.testing.assert_allclose(first.sum(-1), 1.0, rtol=1e-5)
    np.testing.assert_array_equal(first, second)  # dropout is off in eval mode
    assert model.architecture.training


def test_non_finite_loss_raises_and_leaves_weights_untouched():
    model = make_model()
    before = [p.detach().clone() for p in model.architecture.parameters()]
    x, y = batch()
    x[0, 0] = np.nan
    with pytest.raises(NonFiniteError, match="not finite"):
        model.do_train_step(x, y, lr=0.1)
    for got, want in zip(model.architecture.parameters(), before):
        torch.testing.assert_close(got, want)


def test_state_dict_round_trip_restores_weights_and_optimizer():
    model = make_model(torch.optim.Adam)
    x, y = batch()
    model.do_train_step(x, y, lr=1e-2)
    clone = make_model(torch.optim.Adam, seed=1)
    clone.load_state_dict(model.state_dict())
    torch.manual_seed(0)
    a = model.do_train_step(x, y, lr=1e-2)
    torch.manual_seed(0)
    b = clone.do_train_step(x, y, lr=1e-2)
    assert a == b


def test_a_built_optimizer_is_used_as_is():
    architecture = nn.Linear(4, 3)
    optimizer = torch.optim.SGD(architecture.parameters(), lr=0.3)
    model = TorchModel(architecture, nn.Identity(), nn.CrossEntropyLoss(), optimizer)
    assert model.optimizer is optimizer


@pytest.mark.parametrize(
    "args, match",
    [
        (("not a module", nn.Identity(), nn.MSELoss(), torch.optim.SGD), "architecture"),
        ((nn.Linear(2, 2), nn.Identity(), nn.MSELoss(), 3), "optimizer"),
        ((nn.Linear(2, 2), nn.Identity(), nn.MSELoss(), lambda params: 3), "Optimizer"),
        ((nn.Linear(2, 2), 1, nn.MSELoss(), torch.optim.SGD), "callables"),
    ],
)
def test_bad_arguments_raise_config_errors(args, match):
    with pytest.raises(ConfigError, match=match):
        TorchModel(*args)
