"""The training config's top-level seed fixes the model's initial weights."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from dwi_mtl.cli.train_config import apply_overrides, build_objects, check_config
from dwi_mtl.data.synthetic import write_synthetic_hdf5
from dwi_mtl.errors import ConfigError


@pytest.fixture(scope="module")
def hdf5_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_synthetic_hdf5(
        tmp_path_factory.mktemp("cfg") / "data.hdf5", nb_subjects=3, volume_shape=(8, 8, 6),
        nb_features=2, nb_streamlines=10, min_length_mm=5, max_length_mm=8, seed=0,
    )


def _model_weights(config: dict) -> list[torch.Tensor]:
    config = {**config, "batch_sampler": {"batch_size_training": 4}}
    check_config(config, "test")
    return [p.detach().clone() for p in build_objects(config)[3].parameters()]


def test_same_seed_same_initial_weights_other_seed_other_weights(hdf5_file: Path) -> None:
    first = _model_weights({"hdf5_file": str(hdf5_file)})
    torch.manual_seed(99)  # whatever the process's global state
    second = _model_weights({"hdf5_file": str(hdf5_file)})
    other = _model_weights({"hdf5_file": str(hdf5_file), "seed": 7})
    assert all(torch.equal(a, b) for a, b in zip(first, second, strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(first, other, strict=True))


def test_seed_is_overridable_and_checked(hdf5_file: Path) -> None:
    config = apply_overrides({"hdf5_file": str(hdf5_file)}, ["seed=5"])
    assert config["seed"] == 5
    with pytest.raises(ConfigError, match="'seed'"):
        _model_weights({"hdf5_file": str(hdf5_file), "seed": -1})
