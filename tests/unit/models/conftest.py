"""Small real datasets and batches for the model tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from dwi_mtl.data import MultiSubjectDataset
from dwi_mtl.data.synthetic import write_synthetic_hdf5
from dwi_mtl.training import BatchLoader
from dwi_mtl.training.batch import BatchItem


@pytest.fixture(scope="module")
def small_hdf5(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two synthetic subjects (16^3 x 4 features, 40 short streamlines each)."""
    path = tmp_path_factory.mktemp("models") / "small.hdf5"
    return write_synthetic_hdf5(path, nb_subjects=2, volume_shape=(16, 16, 16), nb_features=4,
                                nb_streamlines=40, min_length_mm=6.0, max_length_mm=14.0,
                                seed=5)


@pytest.fixture(scope="module")
def small_dataset(small_hdf5: Path) -> MultiSubjectDataset:
    return MultiSubjectDataset(small_hdf5)


@pytest.fixture(scope="module")
def batch(small_dataset: MultiSubjectDataset):
    """Eight streamlines with inputs, directions and labels."""
    loader = BatchLoader(small_dataset, "streamlines", input_group="input",
                         data_per_streamline_keys=["label"])
    return loader.load_batch([BatchItem(0, np.arange(8))])
