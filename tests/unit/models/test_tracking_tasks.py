"""The built-in tracking tasks: losses and metrics on real batches, parsing of their specs."""

from __future__ import annotations

import math

import pytest
import torch

from dwi_mtl.errors import ConfigError
from dwi_mtl.models.tracking_tasks import (
    ClassificationTask,
    DirectionTask,
    EndOfStreamlineTask,
    SegmentContext,
    build_task,
)


def _is_last(lengths: torch.Tensor) -> torch.Tensor:
    is_last = torch.zeros(int(lengths.sum()), dtype=torch.bool)
    is_last[torch.cumsum(lengths, 0) - 1] = True
    return is_last


def test_direction_loss_is_zero_on_the_true_steps_and_two_on_reversed(batch) -> None:
    task = DirectionTask("direction")
    is_last = _is_last(batch.lengths)
    prediction = torch.zeros(batch.nb_points, 3)
    prediction[~is_last] = batch.directions * 3.0  # any length: only the direction counts
    assert float(task.loss(prediction, batch, is_last)) == pytest.approx(0.0, abs=1e-6)
    metrics = task.metrics(prediction, batch, is_last)
    assert float(metrics["direction_angular_error"]) == pytest.approx(0.0, abs=0.1)
    prediction[~is_last] = -batch.directions
    assert float(task.loss(prediction, batch, is_last)) == pytest.approx(2.0, abs=1e-6)


def test_eos_loss_is_the_binary_cross_entropy_of_is_last(batch) -> None:
    is_last = _is_last(batch.lengths)
    logits = torch.zeros(batch.nb_points, 1)
    assert float(EndOfStreamlineTask("eos").loss(logits, batch, is_last)) == pytest.approx(
        math.log(2.0))
    weighted = EndOfStreamlineTask("eos", pos_weight=3.0)
    expected = math.log(2.0) * (3.0 * batch.nb_streamlines + batch.nb_points
                                - batch.nb_streamlines) / batch.nb_points
    assert float(weighted.loss(logits, batch, is_last)) == pytest.approx(expected, rel=1e-5)


def test_classification_pools_each_streamline_and_scores_labels(batch) -> None:
    context = SegmentContext()
    task = ClassificationTask("bundle", key="label", nb_classes=4)
    head = task.build_decoder(2, 0, context)
    with pytest.raises(ConfigError, match="lengths"):
        head(torch.zeros(batch.nb_points, 2))
    context.lengths = batch.lengths
    assert head(torch.zeros(batch.nb_points, 2)).shape == (batch.nb_streamlines, 4)
    labels = batch.data_per_streamline["label"].reshape(-1)
    perfect = torch.nn.functional.one_hot(labels, 4).float() * 50
    is_last = _is_last(batch.lengths)
    assert float(task.loss(perfect, batch, is_last)) == pytest.approx(0.0, abs=1e-6)
    assert float(task.metrics(perfect, batch, is_last)["bundle_accuracy"]) == 1.0
    small = ClassificationTask("bundle", key="label", nb_classes=2)
    if int(labels.max()) >= 2:
        with pytest.raises(ConfigError, match="nb_classes"):
            small.loss(torch.zeros(batch.nb_streamlines, 2), batch, is_last)
    missing = ClassificationTask("bundle", key="nope", nb_classes=4)
    with pytest.raises(ConfigError, match="data_per_streamline_keys"):
        missing.loss(perfect, batch, is_last)


def test_build_task_from_names_and_mappings_round_trips() -> None:
    assert isinstance(build_task("direction"), DirectionTask)
    task = build_task({"type": "classification", "name": "bundle", "key": "b", "nb_classes": 3})
    assert task.get_config() == {"type": "classification", "name": "bundle", "key": "b",
                                 "nb_classes": 3}
    assert build_task(task.get_config()).get_config() == task.get_config()
    assert task.data_per_streamline_keys == ("b",)
    eos = build_task({"type": "eos", "pos_weight": 5})
    assert build_task(eos.get_config()).get_config() == eos.get_config()


@pytest.mark.parametrize(
    ("spec", "message"),
    [("bogus", "unknown task type 'bogus'"), (3, "type name or a mapping"),
     ({"type": "eos", "pos_weight": -1}, "pos_weight"),
     ({"type": "classification", "nb_classes": 1}, "nb_classes"),
     ({"type": "classification", "key": ""}, "key"),
     ({"type": "direction", "name": ""}, "name"),
     ({"type": "direction", "bogus": 1}, "bogus")],
)
def test_bad_specs_name_the_task(spec: object, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        build_task(spec, "mtl.tasks[2]")  # type: ignore[arg-type]
    assert "mtl.tasks[2]" in str(info.value) or "task '" in str(info.value)
