"""Synthetic dataset files: layout, determinism, geometry and argument errors."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest

from dwi_mtl.data.hdf5_layout import FORMAT_VERSION, to_str_list
from dwi_mtl.data.synthetic import default_splits, write_synthetic_hdf5
from dwi_mtl.errors import ConfigError, ExperimentExistsError


def _write(path: Path, **kwargs: object) -> Path:
    args: dict[str, object] = {"nb_subjects": 2, "volume_shape": (6, 5, 4), "nb_features": 3,
                               "nb_streamlines": 30, "min_length_mm": 3.0, "max_length_mm": 6.0,
                               "step_size": 0.5, "seed": 1}
    args.update(kwargs)
    return write_synthetic_hdf5(path, **args)  # type: ignore[arg-type]


def test_layout_matches_design(small_hdf5: Path) -> None:
    with h5py.File(small_hdf5, "r") as h5:
        assert int(h5.attrs["version"]) == FORMAT_VERSION
        assert to_str_list(h5.attrs["training_subjs"]) == ["subj-00"]
        assert to_str_list(h5.attrs["validation_subjs"]) == ["subj-01"]
        assert to_str_list(h5.attrs["testing_subjs"]) == ["subj-02"]
        assert float(h5.attrs["step_size"]) == 0.5
        volume = h5["subj-00/input"]
        assert volume.attrs["type"] == "volume"
        assert volume["data"].shape == (10, 9, 8, 5) and volume["data"].dtype == np.float32
        assert int(volume.attrs["nb_features"]) == 5
        lines = h5["subj-00/streamlines"]
        assert lines.attrs["type"] == "streamlines"
        assert lines.attrs["space"] == "vox" and lines.attrs["origin"] == "corner"
        offsets, lengths = lines["offsets"][()], lines["lengths"][()]
        assert offsets[0] == 0 and np.array_equal(offsets[1:], np.cumsum(lengths)[:-1])
        assert lines["data"].shape == (lengths.sum(), 3) and lines["data"].dtype == np.float32
        assert lines["data"].chunks is None  # contiguous: fast random reads
        assert lines["data_per_streamline/label"].shape == (200,)


def test_streamlines_inside_volume_with_requested_steps(small_hdf5: Path) -> None:
    with h5py.File(small_hdf5, "r") as h5:
        points = h5["subj-01/streamlines/data"][()]
        lengths = h5["subj-01/streamlines/lengths"][()]
        euclid = h5["subj-01/streamlines/euclidean_lengths"][()]
    assert points.min() >= 0.0 and np.all(points.max(axis=0) <= np.array([10, 9, 8]))
    first = points[: lengths[0]]
    steps = np.linalg.norm(np.diff(first, axis=0), axis=1)
    np.testing.assert_allclose(steps, 0.5, atol=1e-4)
    np.testing.assert_allclose(euclid, (lengths - 1) * 0.5, rtol=1e-4)
    assert euclid.min() >= 3.0 - 0.5 and euclid.max() <= 20.0 + 0.5


def test_same_seed_same_arrays_other_seed_differs(tmp_path: Path) -> None:
    a = _write(tmp_path / "a.hdf5")
    b = _write(tmp_path / "b.hdf5")
    c = _write(tmp_path / "c.hdf5", seed=2)
    with h5py.File(a) as ha, h5py.File(b) as hb, h5py.File(c) as hc:
        for key in ("subj-01/input/data", "subj-01/streamlines/data"):
            assert np.array_equal(ha[key][()], hb[key][()])
        assert not np.array_equal(ha["subj-01/streamlines/data"][()][:5],
                                  hc["subj-01/streamlines/data"][()][:5])


def test_explicit_splits_and_chunking(tmp_path: Path) -> None:
    path = _write(tmp_path / "s.hdf5", splits={"training": ["subj-00", "subj-01"]},
                  points_chunks=64, compression="gzip")
    with h5py.File(path) as h5:
        assert to_str_list(h5.attrs["training_subjs"]) == ["subj-00", "subj-01"]
        assert to_str_list(h5.attrs["testing_subjs"]) == []
        assert h5["subj-00/streamlines/data"].chunks == (64, 3)
        assert h5["subj-00/streamlines/data"].compression == "gzip"


def test_default_splits() -> None:
    assert default_splits(1) == {"training": ["subj-00"], "validation": [], "testing": []}
    assert default_splits(2)["validation"] == ["subj-01"]
    assert default_splits(4)["training"] == ["subj-00", "subj-01"]


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"nb_subjects": 0}, "nb_subjects"),
        ({"volume_shape": (4, 4)}, "volume_shape"),
        ({"nb_features": 0}, "nb_features"),
        ({"nb_streamlines": 0}, "nb_streamlines"),
        ({"step_size": 0.0}, "step_size"),
        ({"min_length_mm": 9.0, "max_length_mm": 5.0}, "min_length_mm"),
        ({"splits": {"train": ["subj-00"]}}, "unknown split"),
        ({"splits": {"training": ["nobody"]}}, "nobody"),
        ({"splits": {"training": ["subj-00"], "testing": ["subj-00"]}}, "both"),
    ],
)
def test_bad_arguments_name_the_argument_and_write_nothing(tmp_path: Path, kwargs: dict,
                                                           fragment: str) -> None:
    out = tmp_path / "bad.hdf5"
    with pytest.raises(ConfigError, match=fragment):
        _write(out, **kwargs)
    assert list(tmp_path.iterdir()) == []


def test_existing_output_needs_force(tmp_path: Path) -> None:
    out = _write(tmp_path / "x.hdf5")
    with pytest.raises(ExperimentExistsError, match="x.hdf5"):
        _write(out, force=False)
    _write(out, force=True, seed=5)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.hdf5"]
