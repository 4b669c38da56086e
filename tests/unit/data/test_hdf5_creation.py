"""create_hdf5_dataset on real inputs: round trip, resampling, formats, and every bad input."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import h5py
import nibabel as nib
import numpy as np
import pytest

from dwi_mtl.data import MultiSubjectDataset, create_hdf5_dataset
from dwi_mtl.data.hdf5_layout import to_str_list
from dwi_mtl.errors import ConfigError, DataError, ExperimentExistsError
from tests.unit.data.real_inputs import (
    NIBABEL_DATA,
    STANDARD_AFFINE,
    save_tck,
    small_25_config,
    small_25_files,
    small_25_streamlines,
    write_small_25_subject,
    write_standard_subject,
)


@pytest.fixture(scope="module")
def subjects(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("subjects")
    write_small_25_subject(root / "s1")
    write_small_25_subject(root / "s2", flip=True)
    write_standard_subject(root / "std")
    return root


@pytest.fixture(scope="module")
def created(subjects: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("out") / "dataset.hdf5"
    return create_hdf5_dataset(subjects, small_25_config(), out, ["s1"], ["s2"])


def _vox_corner(streamlines: list[np.ndarray], affine: np.ndarray) -> np.ndarray:
    inverse = np.linalg.inv(affine)
    return np.concatenate(streamlines) @ inverse[:3, :3].T + inverse[:3, 3] + 0.5


def test_round_trip_against_nibabel(created: Path, subjects: Path) -> None:
    image = nib.load(str(subjects / "s1" / "dwi.nii.gz"))
    streamlines = small_25_streamlines()
    for lazy in (False, True):
        subset = MultiSubjectDataset(created, lazy=lazy).training
        points, lengths = subset.get_streamlines(0, "tracts", np.arange(60))
        np.testing.assert_allclose(points, _vox_corner(streamlines, image.affine), atol=1e-4)
        assert lengths.tolist() == [len(s) for s in streamlines]
        tck_points, _ = subset.get_streamlines(0, "tracts_tck", np.arange(60))
        np.testing.assert_allclose(tck_points, points, atol=1e-4)
        np.testing.assert_array_equal(subset.get_affine(0, "tracts"), image.affine)
        np.testing.assert_allclose(subset.get_data_per_streamline(0, "tracts", "score", [5, 2]),
                                   [[5.0], [2.0]])
        expected_mm = [np.linalg.norm(np.diff(s, axis=0), axis=1).sum() for s in streamlines]
        np.testing.assert_allclose(subset.euclidean_lengths(0, "tracts"), expected_mm, rtol=1e-4)


def test_file_attributes_and_splits(created: Path) -> None:
    with h5py.File(created) as h5:
        assert to_str_list(h5.attrs["training_subjs"]) == ["s1"]
        assert to_str_list(h5.attrs["validation_subjs"]) == ["s2"]
        assert to_str_list(h5.attrs["testing_subjs"]) == []
        assert "version" in h5.attrs and "config" in h5.attrs
        assert h5["s1/tracts"].attrs["voxel_order"] == "RAS"
        assert h5["s1/tracts"].attrs["space"] == "vox"
        assert int(h5["s1/tracts"].attrs["nb_removed_invalid"]) == 0
        assert h5["s1/dwi/data"].dtype == np.float32
    ds = MultiSubjectDataset(created)
    assert ds.volume_groups == ["dwi"] and ds.nb_features == {"dwi": 26}
    assert ds.streamline_groups == ["tracts", "tracts_tck"]
    assert ds.step_size is None


def test_standardization_uses_the_mask(created: Path, subjects: Path) -> None:
    volume = MultiSubjectDataset(created).training.get_volume(0, "dwi")
    mask = nib.load(str(subjects / "s1" / "mask.nii.gz")).get_fdata() > 0
    inside = volume[mask].astype(np.float64)
    np.testing.assert_allclose(inside.mean(axis=0), 0.0, atol=1e-4)
    np.testing.assert_allclose(inside.std(axis=0), 1.0, atol=1e-4)
    raw = nib.load(str(subjects / "s1" / "dwi.nii.gz")).get_fdata()
    # the same affine map applies outside the mask
    with h5py.File(created) as h5:
        means, stds = h5["s1/dwi"].attrs["means"], h5["s1/dwi"].attrs["stds"]
    np.testing.assert_allclose(volume, (raw - means) / stds, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(("option", "check"), [
    ({"step_size": 0.5}, "step"), ({"nb_points": 7}, "points"), ({"compress": 0.2}, "compress")])
def test_resampling_at_creation(subjects: Path, tmp_path: Path, option: dict[str, Any],
                                check: str) -> None:
    out = create_hdf5_dataset(subjects, small_25_config(), tmp_path / "r.hdf5", ["s1"], **option)
    subset = MultiSubjectDataset(out).training
    points, lengths = subset.get_streamlines(0, "tracts", np.arange(60))
    original = [len(s) for s in small_25_streamlines()]
    if check == "points":
        assert set(lengths.tolist()) == {7}
    elif check == "compress":
        assert lengths.sum() < sum(original)
    else:
        first = points[: lengths[0]] * 2.0  # 2 mm voxels -> mm
        steps = np.linalg.norm(np.diff(first, axis=0), axis=1)
        np.testing.assert_allclose(steps, steps.mean(), rtol=1e-3)
        assert abs(steps.mean() - 0.5) < 0.25
        assert MultiSubjectDataset(out).step_size == 0.5


def test_nibabel_standard_trk_tck_and_trx(subjects: Path, tmp_path: Path) -> None:
    trx_file = pytest.importorskip("trx.trx_file_memmap")
    subject = tmp_path / "subjects" / "std"
    shutil.copytree(subjects / "std", subject)
    tractogram = nib.streamlines.load(str(subject / "standard.trk"))
    trx = trx_file.TrxFile.from_tractogram(tractogram.tractogram,
                                           reference=nib.load(str(subject / "t1.nii.gz")))
    trx_file.save(trx, str(subject / "standard.trx"))
    config = {"t1": {"type": "volume", "files": ["t1.nii.gz"], "standardization": "all"},
              "trk": {"type": "streamlines", "files": ["standard.trk"]},
              "tck": {"type": "streamlines", "files": ["standard.tck"]},
              "trx": {"type": "streamlines", "files": ["standard.trx"]}}
    out = create_hdf5_dataset(subject.parent, config, tmp_path / "std.hdf5", ["std"])
    subset = MultiSubjectDataset(out, lazy=True).training
    expected = _vox_corner(list(tractogram.streamlines), STANDARD_AFFINE)
    for group in ("trk", "tck", "trx"):
        points, _ = subset.get_streamlines(0, group, np.arange(120))
        np.testing.assert_allclose(points, expected, atol=1e-4)
    assert points.min() >= 0.0 and np.all(points.max(axis=0) <= [4, 5, 7])
    volume = subset.get_volume(0, "t1")
    assert abs(float(volume.mean())) < 1e-4 and abs(float(volume.std()) - 1.0) < 1e-4


def test_file_label_from_config_entries(subjects: Path, tmp_path: Path) -> None:
    config = {"dwi": {"type": "volume", "files": ["dwi.nii.gz"]},
              "all": {"type": "streamlines", "files": ["lines.trk", "lines.t?k"],
                      "file_label": "source"}}
    # the wildcard entry matches lines.tck and lines.trk: both get label 1
    out = create_hdf5_dataset(subjects, config, tmp_path / "l.hdf5", ["s1"])
    subset = MultiSubjectDataset(out).training
    labels = subset.get_data_per_streamline(0, "all", "source", np.arange(180))
    assert labels.tolist() == [0] * 60 + [1] * 120
    with h5py.File(out) as h5:
        assert to_str_list(h5["s1/all/data_per_streamline/source"].attrs["names"]) == \
            ["lines.trk", "lines.t?k"]


def test_remove_invalid_drops_and_counts(subjects: Path, tmp_path: Path) -> None:
    root = tmp_path / "subjects"
    subject = write_small_25_subject(root / "s1")
    streamlines = small_25_streamlines()
    shifted = [s + np.array([0.0, 0.0, 50.0]) for s in streamlines[:4]]  # far outside
    save_tck(subject / "lines.tck", shifted + streamlines)
    config = {"dwi": {"type": "volume", "files": ["dwi.nii.gz"]},
              "lines": {"type": "streamlines", "files": ["lines.tck"]}}
    with pytest.raises(DataError, match=r"lines.tck': 4 of 64 streamlines are outside"):
        create_hdf5_dataset(root, config, tmp_path / "x.hdf5", ["s1"])
    assert not (tmp_path / "x.hdf5").exists()
    out = create_hdf5_dataset(root, config, tmp_path / "x.hdf5", ["s1"], remove_invalid=True)
    assert MultiSubjectDataset(out).training.nb_streamlines(0, "lines") == 60
    with h5py.File(out) as h5:
        assert int(h5["s1/lines"].attrs["nb_removed_invalid"]) == 4


def _no_output(tmp_path: Path) -> bool:
    return not any(p.suffix == ".hdf5" or ".tmp-" in p.name for p in tmp_path.iterdir())


def _bad_case(subjects: Path, tmp_path: Path, config: dict[str, Any],
              error: type[Exception], match: str, **kwargs: Any) -> None:
    with pytest.raises(error, match=match):
        create_hdf5_dataset(subjects, config, tmp_path / "bad.hdf5",
                            kwargs.pop("training", ["s1"]), **kwargs)
    assert _no_output(tmp_path)


def test_bad_config(subjects: Path, tmp_path: Path) -> None:
    volume = {"type": "volume", "files": ["dwi.nii.gz"]}
    _bad_case(subjects, tmp_path, {"dwi": {**volume, "colour": 1}}, ConfigError,
              r"group 'dwi': unknown key\(s\) \['colour'\]")
    _bad_case(subjects, tmp_path, {"dwi": {**volume, "type": "mesh"}}, ConfigError,
              "group 'dwi': unknown type 'mesh'")
    _bad_case(subjects, tmp_path, {"dwi": {**volume, "standardization": "zscore"}},
              ConfigError, "group 'dwi': unknown standardization 'zscore'")
    _bad_case(subjects, tmp_path, {"dwi": {"type": "volume"}}, ConfigError,
              "group 'dwi': 'files' is missing")
    _bad_case(subjects, tmp_path, {}, ConfigError, "non-empty")
    _bad_case(subjects, tmp_path, {"dwi": volume}, ConfigError, "choose one",
              step_size=1.0, nb_points=3)


def test_bad_config_file(subjects: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    with pytest.raises(DataError, match="broken.json' is not valid JSON"):
        create_hdf5_dataset(subjects, broken, tmp_path / "bad.hdf5", ["s1"])
    with pytest.raises(DataError, match="missing.json' does not exist"):
        create_hdf5_dataset(subjects, tmp_path / "missing.json", tmp_path / "bad.hdf5", ["s1"])
    assert _no_output(tmp_path)


def test_bad_splits(subjects: Path, tmp_path: Path) -> None:
    config = small_25_config()
    _bad_case(subjects, tmp_path, config, ConfigError,
              "subject 's1' is in both the training and the testing",
              testing_subjects=["s1"])
    _bad_case(subjects, tmp_path, config, DataError, "subject 'ghost' has no folder",
              training=["s1", "ghost"])
    _bad_case(subjects, tmp_path, config, ConfigError, "no subject", training=[])
    with pytest.raises(DataError, match="subjects folder"):
        create_hdf5_dataset(tmp_path / "none", config, tmp_path / "bad.hdf5", ["s1"])


def test_missing_and_unreadable_files(subjects: Path, tmp_path: Path) -> None:
    _bad_case(subjects, tmp_path, {"dwi": {"type": "volume", "files": ["t2.nii.gz"]}},
              DataError, r"subject 's1' group 'dwi': no file matches 't2.nii.gz'")
    root = tmp_path / "subjects"
    subject = write_small_25_subject(root / "s1")
    (subject / "dwi.nii.gz").write_bytes(b"not a nifti")
    _bad_case(root, tmp_path, small_25_config(), DataError,
              r"dwi.nii.gz' cannot be read")


def test_nan_in_volume(tmp_path: Path) -> None:
    root = tmp_path / "subjects"
    subject = write_small_25_subject(root / "s1")
    image = nib.load(str(subject / "dwi.nii.gz"))
    data = image.get_fdata(dtype=np.float32)
    data[1, 2, 0, 3] = np.nan
    data[2, 2, 0, 3] = np.inf
    nib.save(nib.Nifti1Image(data, image.affine), str(subject / "dwi.nii.gz"))
    _bad_case(root, tmp_path, small_25_config(), DataError,
              r"dwi.nii.gz': 2 NaN or infinite value")


@pytest.mark.parametrize(("name", "match"), [
    ("empty.trk", "is empty"), ("empty.tck", "is empty"),
    ("no_magic_number.tck", "cannot be read"), ("no_header_end.tck", "cannot be read"),
])
def test_broken_tractograms_from_nibabel(tmp_path: Path, name: str, match: str) -> None:
    root = tmp_path / "subjects"
    subject = write_standard_subject(root / "std")
    shutil.copy(NIBABEL_DATA / name, subject / name)
    config = {"t1": {"type": "volume", "files": ["t1.nii.gz"]},
              "lines": {"type": "streamlines", "files": [name]}}
    _bad_case(root, tmp_path, config, DataError, f"{name}' {match}", training=["std"])


def test_header_mismatch_with_the_real_eudx_file(tmp_path: Path) -> None:
    root = tmp_path / "subjects"
    subject = write_small_25_subject(root / "s1")
    shutil.copy(small_25_files()[1], subject / "eudx.trk")
    config = {"dwi": {"type": "volume", "files": ["dwi.nii.gz"]},
              "lines": {"type": "streamlines", "files": ["eudx.trk"]}}
    _bad_case(root, tmp_path, config, DataError,
              r"eudx.trk': header dimensions \(1, 1, 1\) do not match reference")


def test_tck_without_reference(tmp_path: Path) -> None:
    root = tmp_path / "subjects"
    write_small_25_subject(root / "s1")
    config = {"lines": {"type": "streamlines", "files": ["lines.tck"]}}
    _bad_case(root, tmp_path, config, ConfigError, "need a 'reference'")
    config["lines"]["reference"] = "dwi.nii.gz"
    out = create_hdf5_dataset(root, config, tmp_path / "ok.hdf5", ["s1"])
    assert MultiSubjectDataset(out).volume_groups == []


def test_missing_dps_key(subjects: Path, tmp_path: Path) -> None:
    config = small_25_config()
    config["tracts_tck"]["data_per_streamline"] = ["score"]
    _bad_case(subjects, tmp_path, config, DataError, r"lines.tck': no data_per_streamline")


def test_existing_output_needs_force(subjects: Path, tmp_path: Path) -> None:
    out = tmp_path / "exists.hdf5"
    out.write_bytes(b"keep me")
    with pytest.raises(ExperimentExistsError, match="exists.hdf5' already exists"):
        create_hdf5_dataset(subjects, small_25_config(), out, ["s1"])
    assert out.read_bytes() == b"keep me"
    create_hdf5_dataset(subjects, small_25_config(), out, ["s1"], force=True)
    assert MultiSubjectDataset(out).training.subject_names == ["s1"]
