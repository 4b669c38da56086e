"""Recurrent and Transformer direction models: overfitting, tracking interface, rebuild."""

from __future__ import annotations

import pytest
import torch

from dwi_mtl.errors import ConfigError, DataError
from dwi_mtl.models import RecurrentDirectionModel, TransformerDirectionModel
from dwi_mtl.models.sequence_features import last_point_mask, previous_directions

MODELS = {
    "gru": lambda **kw: RecurrentDirectionModel(4, hidden_size=32, **kw),
    "lstm": lambda **kw: RecurrentDirectionModel(4, hidden_size=32, rnn_type="lstm", **kw),
    "transformer": lambda **kw: TransformerDirectionModel(4, d_model=32, nb_heads=4,
                                                          nb_layers=2, dim_feedforward=64,
                                                          dropout=0.0, **kw),
}


@pytest.mark.parametrize("kind", ["gru", "transformer"])
def test_model_overfits_a_handful_of_streamlines(kind: str, batch) -> None:
    torch.manual_seed(0)
    model = MODELS[kind](nb_previous_dirs=2)
    optimizer = torch.optim.Adam(model.parameters(), lr=5e-3)
    before = float(model.angular_error(batch).mean().detach())
    for _ in range(150):
        optimizer.zero_grad()
        model.compute_loss(batch).backward()
        optimizer.step()
    after = float(model.angular_error(batch).mean().detach())
    assert after < 10.0 < before


@pytest.mark.parametrize("kind", sorted(MODELS))
@pytest.mark.parametrize("head", ["cosine", "sphere", "fisher_von_mises"])
def test_tracking_steps_reproduce_the_training_forward(kind: str, head: str, batch) -> None:
    torch.manual_seed(1)
    model = MODELS[kind](nb_previous_dirs=2, direction_getter=head, eos=True).eval()
    with torch.no_grad():
        full = model(batch.inputs, batch.lengths, batch.points)
        lengths = batch.lengths[:3]
        nb = int(lengths.sum())
        starts = torch.cumsum(lengths, 0) - lengths
        # read the first 2 points of each streamline, then step through the rest
        first = torch.full_like(lengths, 2)
        index = torch.cat([torch.arange(s, s + 2) for s in starts.tolist()])
        outputs, state = model.start_tracking(batch.inputs[index], first, batch.points[index])
        torch.testing.assert_close(outputs, full[starts + 1], atol=1e-5, rtol=1e-4)
        prev = previous_directions(batch.points[:nb], lengths, 2)
        for step in range(2, int(lengths.min())):
            rows = starts + step
            outputs, state = model.track_step(batch.inputs[rows], prev[rows], state)
            torch.testing.assert_close(outputs, full[rows], atol=1e-5, rtol=1e-4)


def test_select_state_keeps_the_chosen_streamlines(batch) -> None:
    for kind in MODELS:
        model = MODELS[kind]().eval()
        lengths = torch.tensor([2, 2, 2])
        index = torch.arange(6)
        with torch.no_grad():
            _, state = model.start_tracking(batch.inputs[index], lengths, batch.points[index])
            kept = model.select_state(state, torch.tensor([2, 0]))
            out_all, _ = model.track_step(batch.inputs[6:9], torch.zeros(3, 0), state)
            out_kept, _ = model.track_step(batch.inputs[[8, 6]], torch.zeros(2, 0), kept)
        torch.testing.assert_close(out_kept, out_all[[2, 0]], atol=1e-5, rtol=1e-4)


def test_previous_directions_are_the_arrival_steps() -> None:
    points = torch.tensor([[0.0, 0, 0], [1, 0, 0], [1, 2, 0], [5, 5, 5], [5, 5, 8]])
    lengths = torch.tensor([3, 2])
    prev = previous_directions(points, lengths, 2)
    expected = torch.tensor([
        [0, 0, 0, 0, 0, 0], [1, 0, 0, 0, 0, 0], [0, 1, 0, 1, 0, 0],
        [0, 0, 0, 0, 0, 0], [0, 0, 1, 0, 0, 0]], dtype=torch.float32)
    torch.testing.assert_close(prev, expected)
    assert last_point_mask(lengths).tolist() == [False, False, True, False, True]


@pytest.mark.parametrize("kind", sorted(MODELS))
def test_config_round_trip_rebuilds_the_same_model(kind: str, batch) -> None:
    model = MODELS[kind](nb_previous_dirs=1, direction_getter="gaussian", eos=True).eval()
    again = type(model).from_config(model.get_config())
    again.load_state_dict(model.state_dict())
    again.eval()
    with torch.no_grad():
        torch.testing.assert_close(again(batch.inputs, batch.lengths, batch.points),
                                   model(batch.inputs, batch.lengths, batch.points))
    assert model.task_names == ["direction", "eos"]
    shared = {id(p) for p in model.get_share_params()}
    assert shared and not shared & {id(p) for p in model.head.parameters()}


def test_metrics_hold_losses_and_angular_error(batch) -> None:
    model = MODELS["gru"](eos=True)
    metrics = model.compute_metrics(batch)
    assert set(metrics) == {"direction", "eos", "angular_error"}
    assert 0.0 <= float(metrics["angular_error"].detach()) <= 180.0
    assert model.angular_error(batch).shape[0] == batch.directions.shape[0]


def test_bad_configs_and_batches_raise(batch) -> None:
    with pytest.raises(ConfigError, match="rnn_type"):
        RecurrentDirectionModel(4, rnn_type="rnn")
    with pytest.raises(ConfigError, match="nb_features"):
        RecurrentDirectionModel(0)
    with pytest.raises(ConfigError, match="d_model"):
        TransformerDirectionModel(4, d_model=30, nb_heads=4)
    with pytest.raises(ConfigError, match="RecurrentDirectionModel config"):
        RecurrentDirectionModel.from_config({"nb_features": 4, "unknown": 1})
    model = RecurrentDirectionModel(5)
    with pytest.raises(DataError, match="5 features"):
        model.compute_loss(batch)
    with pytest.raises(DataError, match="pass the points"):
        RecurrentDirectionModel(4, nb_previous_dirs=1)(batch.inputs, batch.lengths)
