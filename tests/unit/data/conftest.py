"""Fixtures of the data tests: small synthetic dataset files with the real layout."""

from __future__ import annotations

from pathlib import Path

import pytest

from dwi_mtl.data.synthetic import write_synthetic_hdf5


@pytest.fixture(scope="session")
def small_hdf5(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three subjects, 10x9x8 volumes with 5 features, 200 streamlines each (read-only)."""
    path = tmp_path_factory.mktemp("synthetic") / "small.hdf5"
    return write_synthetic_hdf5(path, nb_subjects=3, volume_shape=(10, 9, 8), nb_features=5,
                                nb_streamlines=200, min_length_mm=5.0, max_length_mm=20.0,
                                step_size=0.5, seed=3)
