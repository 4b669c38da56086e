"""The ``mtl`` section of the training config: what it builds, seeds, overrides and refuses."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from dwi_mtl.cli.train_config import (
    apply_overrides,
    build_objects,
    check_config,
    load_config,
    trainer_arguments,
)
from dwi_mtl.data.synthetic import write_synthetic_hdf5
from dwi_mtl.errors import ConfigError
from dwi_mtl.models.model_trainer import ModelTrainer
from dwi_mtl.models.mtl_tracker import MTLTracker
from dwi_mtl.models.recurrent_tracker import RecurrentTracker
from dwi_mtl.training.reference_trainer import ReferenceTrainer

MTL = {"architecture": "MMoE", "architecture_args": {"num_experts": 2},
       "encoder": {"hidden_size": 4},
       "tasks": ["direction", {"type": "classification", "name": "bundle", "nb_classes": 4}]}


@pytest.fixture(scope="module")
def hdf5_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_synthetic_hdf5(
        tmp_path_factory.mktemp("cfg_mtl") / "data.hdf5", nb_subjects=3, volume_shape=(8, 8, 6),
        nb_features=2, nb_streamlines=10, min_length_mm=5, max_length_mm=8, seed=0,
    )


def _config(hdf5_file: Path, **extra: Any) -> dict[str, Any]:
    config = {"hdf5_file": str(hdf5_file), "batch_sampler": {"batch_size_training": 4}, **extra}
    check_config(config, "test")
    return config


def test_mtl_section_builds_an_mtl_tracker_and_a_model_trainer(hdf5_file: Path) -> None:
    config = _config(hdf5_file, mtl=dict(MTL),
                     trainer={"weighting": "upgrad", "weighting_kwargs": {"rep_grad": True}})
    _, _, loader, model = build_objects(config)
    assert isinstance(model, MTLTracker)
    assert model.get_config()["architecture"] == "mmoe"  # class names accepted, stored by key
    assert model.get_config()["nb_features"] == 2 and model.get_config()["rep_grad"] is True
    assert loader.data_per_streamline_keys == ["label"]  # added for the classification task
    trainer_class, options = trainer_arguments(config, model)
    assert trainer_class is ModelTrainer
    assert options["task_names"] == ["direction", "bundle"]
    assert config["trainer"] == {"weighting": "upgrad", "weighting_kwargs": {"rep_grad": True}}


def test_without_mtl_nothing_changes(hdf5_file: Path) -> None:
    config = _config(hdf5_file, trainer={"max_epochs": 2})
    _, _, loader, model = build_objects(config)
    assert isinstance(model, RecurrentTracker) and loader.data_per_streamline_keys == []
    assert trainer_arguments(config, model) == (ReferenceTrainer, {"max_epochs": 2})
    assert "mtl" not in config


def test_same_seed_same_mtl_weights(hdf5_file: Path) -> None:
    def weights(seed: int) -> list[torch.Tensor]:
        model = build_objects(_config(hdf5_file, mtl=dict(MTL), seed=seed))[3]
        return [p.detach().clone() for p in model.parameters()]

    first = weights(3)
    torch.manual_seed(99)
    assert all(torch.equal(a, b) for a, b in zip(first, weights(3), strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(first, weights(4), strict=True))


def test_overrides_create_and_edit_the_mtl_section(tmp_path: Path, hdf5_file: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("trainer: {max_epochs: 1}\n")
    config = apply_overrides(load_config(path), ["mtl.architecture=hps",
                                                 "mtl.tasks=[direction, eos]"])
    assert config["mtl"] == {"architecture": "hps", "tasks": ["direction", "eos"]}
    config["hdf5_file"] = str(hdf5_file)
    config["batch_sampler"] = {"batch_size_training": 4}
    assert build_objects(config)[3].task_names == ["direction", "eos"]
    config = apply_overrides(load_config(path), ["mtl.architecture=hps"])
    config["hdf5_file"] = str(hdf5_file)
    with pytest.raises(ConfigError, match="config section 'mtl' needs 'tasks'"):
        build_objects(config)


@pytest.mark.parametrize(
    ("extra", "message"),
    [({"mtl": [1]}, "section 'mtl' must be a mapping"),
     ({"mtl": {"architecture": "hps"}}, "needs 'tasks'"),
     ({"mtl": {"tasks": ["eos"]}}, "needs 'architecture'"),
     ({"mtl": {**MTL, "typo": 1}}, "unknown keys ['typo']")],
)
def test_check_config_refuses_malformed_mtl_sections(extra: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        check_config({"trainer": {}, **extra}, "c.yaml")


@pytest.mark.parametrize(
    ("extra", "message"),
    [({"model": {"hidden_size": 3}}, "section 'model'"),
     ({"batch_loader": {"data_per_streamline_keys": "label"}}, "data_per_streamline_keys"),
     ({"trainer": {"weighting_kwargs": [1]}}, "weighting_kwargs' must be a mapping"),
     ({"mtl": {**MTL, "tasks": ["direction", {"type": "classification", "nb_classes": 0}]}},
      "section 'mtl'.*nb_classes")],
)
def test_build_objects_names_the_section(hdf5_file: Path, extra: dict[str, Any],
                                         message: str) -> None:
    config = _config(hdf5_file, **{"mtl": dict(MTL), **extra})
    with pytest.raises(ConfigError, match=message):
        build_objects(config)
