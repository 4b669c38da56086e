"""Every case of the hostile-input catalogue (malformed HDF5 files, broken tractograms, wrong
configs and command lines, experiment folders of another run) gives exit 2 with one error
naming the culprit, no traceback and nothing half-written; plus hypothesis-generated index
arrays of the streamline layout."""

from __future__ import annotations

import shutil

import h5py
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from dwi_mtl.data import MultiSubjectDataset
from dwi_mtl.errors import DataError
from tests.reliability.hostile import Inputs, all_cases, check_case

pytestmark = pytest.mark.reliability

CASES = all_cases()


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    return Inputs(tmp_path_factory.mktemp("hostile"))


def test_the_catalogue_has_at_least_40_distinct_inputs():
    assert len(CASES) >= 40


@pytest.mark.parametrize("name", sorted(CASES))
def test_hostile_input_gives_one_clear_error(inputs, tmp_path, name):
    outcome = check_case(name, CASES[name], inputs, tmp_path)
    assert outcome.held, outcome.detail


index_arrays = arrays(np.int64, st.integers(0, 30),
                      elements=st.integers(-(2**40), 2**40))


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(offsets=index_arrays, lengths=index_arrays)
def test_any_offsets_and_lengths_read_back_or_raise_data_error(inputs, tmp_path, offsets,
                                                               lengths):
    """Whatever the index arrays, the dataset either opens and every streamline reads back
    with its stored number of points, or opening raises DataError naming the file."""
    path = tmp_path / "fuzz.hdf5"
    shutil.copy(inputs.hdf5, path)
    with h5py.File(path, "r+") as h5:
        group = h5["subj-00/streamlines"]
        for key, value in (("offsets", offsets), ("lengths", lengths)):
            del group[key]
            group[key] = value
        del group["euclidean_lengths"]
    try:
        dataset = MultiSubjectDataset(path)
    except DataError as exc:
        assert "fuzz.hdf5" in str(exc)
        return
    subset = dataset.training
    count = subset.nb_streamlines(0, "streamlines")
    points, read = subset.get_streamlines(0, "streamlines", np.arange(count))
    np.testing.assert_array_equal(read, lengths)
    assert points.shape == (int(lengths.sum()), 3)
