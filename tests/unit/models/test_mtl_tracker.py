"""MTLTracker: every registered architecture by name on real batches, causality, rep_grad,
config round trip, multi_input, and one clear error per bad argument."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch.nn.parameter import UninitializedParameter

from dwi_mtl.errors import ConfigError
from dwi_mtl.models.mtl_tracker import MTLTracker
from dwi_mtl.mtl.architectures import ARCHITECTURES
from dwi_mtl.mtl.weighting import get_weighting
from dwi_mtl.training.batch import StreamlineBatch

TASKS: list[str | dict[str, Any]] = [
    "direction", "eos",
    {"type": "classification", "name": "bundle", "key": "label", "nb_classes": 4}]
ARGS: dict[str, dict[str, Any]] = {
    "mmoe": {"num_experts": 2}, "cgc": {"num_experts": [1, 1]},
    "ple": {"num_experts": [1, 1], "stages": ["conv1", "points"]},
    "dselect_k": {"num_experts": 3, "num_nonzeros": 2},
}


def _model(name: str, **kwargs: Any) -> MTLTracker:
    torch.manual_seed(0)
    options: dict[str, Any] = {"architecture": name, "architecture_args": ARGS.get(name),
                               "encoder": {"hidden_size": 6}, "head_hidden_size": 5}
    options.update(kwargs)
    return MTLTracker(4, TASKS, **options)


@pytest.mark.parametrize("name", sorted(ARCHITECTURES))
def test_every_architecture_trains_and_rebuilds_from_its_config(name: str, batch) -> None:
    model = _model(name)
    assert not any(isinstance(p, UninitializedParameter) for p in model.parameters())
    losses = model.compute_loss(batch)
    assert list(losses) == ["direction", "eos", "bundle"]
    assert all(loss.dim() == 0 and torch.isfinite(loss) for loss in losses.values())
    torch.stack(list(losses.values())).sum().backward()
    shared = {id(p) for p in model.get_share_params()}
    decoders = {id(p) for p in model.architecture.decoders.parameters()}
    assert shared and not shared & decoders
    assert all(p.grad is not None for p in model.get_share_params())

    copy = MTLTracker.from_config(model.get_config())
    copy.load_state_dict(model.state_dict())
    with torch.no_grad():
        want, got = model(batch), copy(batch)
    for task in want:
        assert torch.equal(want[task], got[task]), task
    metrics = copy.compute_metrics(batch)
    assert {"direction_angular_error", "bundle_accuracy"} <= set(metrics)


@pytest.mark.parametrize(
    ("name", "gate"),
    [("hps", "default"), ("cross_stitch", "default"), ("mtan", "default"), ("mmoe", "point"),
     ("cgc", "point"), ("dselect_k", "point"), ("mmoe", "static")],
)
def test_point_predictions_ignore_the_points_that_follow(name: str, gate: str) -> None:
    model = _model(name, gate=gate)
    lengths = torch.tensor([6, 4])
    generator = torch.Generator().manual_seed(3)
    inputs = torch.randn(10, 4, generator=generator)
    batch = StreamlineBatch(points=torch.randn(10, 3, generator=generator), lengths=lengths,
                            subject_indices=torch.zeros(2, dtype=torch.long),
                            streamline_ids=torch.arange(2), inputs=inputs,
                            directions=torch.randn(8, 3, generator=generator))
    moved = inputs.clone()
    moved[3:6] += 5.0  # the last three points of the first streamline
    changed = StreamlineBatch(**{**batch.__dict__, "inputs": moved})
    with torch.no_grad():
        before, after = model(batch), model(changed)
    for task in ("direction", "eos"):
        assert torch.equal(before[task][:3], after[task][:3]), task
        assert torch.equal(before[task][6:], after[task][6:]), task
        assert not torch.allclose(before[task][3:6], after[task][3:6]), task


def test_rep_grad_weighting_fills_the_shared_gradients(batch) -> None:
    model = _model("mmoe", rep_grad=True)
    losses = model.compute_loss(batch)
    reps = model.get_representation(list(losses))
    assert reps and all(r.requires_grad for r in reps)
    weighting = get_weighting("upgrad", model.task_names, rep_grad=True)
    weighting.backward(losses, model.get_share_params(), representation=reps)
    model.clear_representation()
    assert all(p.grad is not None and torch.isfinite(p.grad).all()
               for p in model.get_share_params())
    with torch.no_grad():  # validation passes record nothing
        model.compute_loss(batch)
    with pytest.raises(ConfigError, match="no representation"):
        model.get_representation()


def test_multi_input_runs_one_pass_per_task_with_the_same_predictions(batch) -> None:
    single, multi = _model("hps"), _model("hps", multi_input=True)
    multi.load_state_dict(single.state_dict())
    with torch.no_grad():
        want, got = single(batch), multi(batch)
    assert list(got) == list(want)
    for task in want:
        torch.testing.assert_close(got[task], want[task])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"architecture": "nope"}, "architecture: unknown architecture 'nope'"),
     ({"architecture": "mmoe", "architecture_args": {}}, "num_experts"),
     ({"architecture": "hps", "architecture_args": {"bogus": 1}}, "bogus"),
     ({"architecture": "cross_stitch", "multi_input": True}, "multi_input"),
     ({"architecture": "ple", "architecture_args": {"num_experts": 1}, "multi_input": True},
      "multi_input"),
     ({"architecture": "hps", "gate": "point"}, "gate 'point' applies to"),
     ({"architecture": "ple", "architecture_args": {"num_experts": 1}, "gate": "point"},
      "not available for ple"),
     ({"architecture": "mmoe", "architecture_args": {"num_experts": 2}, "gate": "x"}, "gate"),
     ({"architecture": "hps", "encoder": {"hidden_size": 0}}, "encoder: .*hidden_size"),
     ({"architecture": "hps", "encoder": {"in_features": 3}}, "encoder: in_features"),
     ({"architecture": "hps", "encoder": {"bogus": 3}}, "encoder: .*bogus"),
     ({"architecture": "hps", "architecture_args": [1]}, "architecture_args must be"),
     ({"architecture": "hps", "rep_grad": "yes"}, "rep_grad"),
     ({"architecture": "hps", "head_hidden_size": -1}, "head_hidden_size"),
     ({"architecture": "hps", "tasks": []}, "tasks must be a non-empty list"),
     ({"architecture": "hps", "tasks": ["eos", "eos"]}, "duplicated task names"),
     ({"architecture": "hps", "tasks": ["direction", "bogus"]}, r"tasks\[1\]")],
)
def test_bad_arguments_raise_one_clear_config_error(kwargs: dict[str, Any], message: str) -> None:
    options = {"tasks": TASKS, **kwargs}
    with pytest.raises(ConfigError, match=message):
        MTLTracker(4, **options)


def test_dselect_k_entropy_regularization_is_added_to_training_losses_only(batch) -> None:
    plain = _model("dselect_k")
    regular = _model("dselect_k", entropy_regularization=0.5)
    regular.load_state_dict(plain.state_dict())
    want, got = plain.compute_loss(batch), regular.compute_loss(batch)
    for task in want:
        entropy = regular.architecture.entropy_regularization([task])
        assert float(entropy.detach()) > 0
        torch.testing.assert_close(got[task], want[task] + 0.5 * entropy)
    with torch.no_grad():
        for task, loss in regular.compute_loss(batch).items():
            torch.testing.assert_close(loss, want[task])
    assert MTLTracker.from_config(regular.get_config()).entropy_regularization == 0.5
    with pytest.raises(ConfigError, match="dselect_k only"):
        _model("hps", entropy_regularization=0.1)
    with pytest.raises(ConfigError, match="entropy_regularization must be"):
        _model("dselect_k", entropy_regularization=-1)
