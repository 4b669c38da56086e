"""MultiSubjectDataset / MultiSubjectSubset: lazy == in memory, metadata, workers, errors."""

from __future__ import annotations

import json
import os
import pickle
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from dwi_mtl.data import MultiSubjectDataset, MultiSubjectSubset
from dwi_mtl.errors import ConfigError, DataError

GROUP = "streamlines"


@pytest.fixture(scope="module")
def both(small_hdf5: Path) -> tuple[MultiSubjectDataset, MultiSubjectDataset]:
    return MultiSubjectDataset(small_hdf5, lazy=True), MultiSubjectDataset(small_hdf5, lazy=False)


def test_attributes_and_subsets(both: tuple[MultiSubjectDataset, MultiSubjectDataset]) -> None:
    lazy, memory = both
    for ds in both:
        assert ds.volume_groups == ["input"] and ds.streamline_groups == [GROUP]
        assert ds.nb_features == {"input": 5}
        assert ds.step_size == 0.5 and ds.compress is None
        assert isinstance(ds.training, MultiSubjectSubset)
        assert isinstance(ds.training, torch.utils.data.Dataset)
        assert ds.training.set_name == "training" and ds.training.subject_names == ["subj-00"]
        assert ds.validation.subject_names == ["subj-01"]
        assert ds.testing.nb_subjects == 1 and len(ds.testing) == 1
        assert ds.training[(0, [1, 2])] == (0, [1, 2])
        assert ds.subset("validation") is ds.validation
    assert lazy.get_config() == {"hdf5_file": str(lazy.hdf5_file), "lazy": True, "cache_size": 1}
    assert memory.get_config()["lazy"] is False
    assert set(json.loads(lazy.config_json or "{}")) == {"input", GROUP}


def test_lazy_and_memory_give_identical_arrays(
        both: tuple[MultiSubjectDataset, MultiSubjectDataset]) -> None:
    lazy, memory = both
    rng = np.random.default_rng(0)
    for set_name in ("training", "validation", "testing"):
        a, b = lazy.subset(set_name), memory.subset(set_name)
        assert np.array_equal(a.streamline_lengths(0, GROUP), b.streamline_lengths(0, GROUP))
        assert np.array_equal(a.euclidean_lengths(0, GROUP), b.euclidean_lengths(0, GROUP))
        for _ in range(3):
            ids = rng.integers(0, 200, size=40)
            pa, la = a.get_streamlines(0, GROUP, ids)
            pb, lb = b.get_streamlines(0, GROUP, ids)
            assert pa.dtype == np.float32 and la.dtype == np.int64
            assert np.array_equal(pa, pb) and np.array_equal(la, lb)
            assert np.array_equal(a.get_data_per_streamline(0, GROUP, "label", ids),
                                  b.get_data_per_streamline(0, GROUP, "label", ids))
        assert np.array_equal(a.get_volume(0, "input"), b.get_volume(0, "input"))
        assert np.array_equal(a.get_affine(0, "input"), b.get_affine(0, "input"))


def test_streamlines_match_the_file_in_request_order(small_hdf5: Path,
                                                     both: tuple[MultiSubjectDataset, ...]) -> None:
    lazy = both[0]
    ids = [17, 3, 3, 150, 0]
    with h5py.File(small_hdf5) as h5:
        group = h5["subj-01/streamlines"]
        offsets, lengths, data = group["offsets"][()], group["lengths"][()], group["data"][()]
    expected = np.concatenate([data[offsets[i]:offsets[i] + lengths[i]] for i in ids])
    points, got_lengths = lazy.validation.get_streamlines(0, GROUP, ids)
    assert np.array_equal(points, expected)
    assert np.array_equal(got_lengths, lengths[ids])
    assert lazy.validation.nb_streamlines(0, GROUP) == 200


def test_volume_metadata(both: tuple[MultiSubjectDataset, MultiSubjectDataset]) -> None:
    subset = both[0].training
    volume = subset.get_volume(0, "input")
    assert volume.shape == (10, 9, 8, 5) and volume.dtype == np.float32
    assert subset.get_volume_shape(0, "input") == (10, 9, 8, 5)
    np.testing.assert_array_equal(subset.get_voxres(0, "input"), [1.0, 1.0, 1.0])
    np.testing.assert_array_equal(subset.get_voxres(0, GROUP), [1.0, 1.0, 1.0])
    assert subset.get_affine(0, GROUP).shape == (4, 4)
    assert subset.data_per_streamline_keys(0, GROUP) == ("label",)


def test_lazy_volume_cache_is_bounded(small_hdf5: Path) -> None:
    ds = MultiSubjectDataset(small_hdf5, lazy=True, cache_size=1)
    first = ds.training.get_volume(0, "input")
    assert ds.training.get_volume(0, "input") is first  # cached
    ds.validation.get_volume(0, "input")
    assert len(ds._volume_cache) == 1
    assert ds.training.get_volume(0, "input") is not first  # evicted, read again
    no_cache = MultiSubjectDataset(small_hdf5, lazy=True, cache_size=0)
    no_cache.training.get_volume(0, "input")
    assert len(no_cache._volume_cache) == 0
    ds.close()


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc")
def test_lazy_mode_holds_one_file_descriptor(tmp_path: Path) -> None:
    from dwi_mtl.data.synthetic import write_synthetic_hdf5

    path = write_synthetic_hdf5(tmp_path / "many.hdf5", nb_subjects=12, volume_shape=(4, 4, 4),
                                nb_features=1, nb_streamlines=5, min_length_mm=2.0,
                                max_length_mm=3.0, splits={"training": [f"subj-{i:02d}"
                                                                        for i in range(12)]})
    before = len(list(Path("/proc/self/fd").iterdir()))
    dataset = MultiSubjectDataset(path, lazy=True, cache_size=2)
    for index in range(12):
        dataset.training.get_streamlines(index, GROUP, [0, 4])
        dataset.training.get_volume(index, "input")
    assert len(list(Path("/proc/self/fd").iterdir())) - before == 1
    dataset.close()
    assert len(list(Path("/proc/self/fd").iterdir())) == before


def test_lazy_dataset_pickles_without_handle(small_hdf5: Path) -> None:
    ds = MultiSubjectDataset(small_hdf5, lazy=True)
    ds.training.get_streamlines(0, GROUP, [0])
    clone = pickle.loads(pickle.dumps(ds))
    assert clone._file._handle is None
    assert np.array_equal(clone.training.get_streamlines(0, GROUP, [4, 2])[0],
                          ds.training.get_streamlines(0, GROUP, [4, 2])[0])


def _collate(items: list[tuple[int, list[int]]], subset: MultiSubjectSubset) -> dict:
    subject, ids = items[0]
    points, lengths = subset.get_streamlines(subject, GROUP, ids)
    return {"points": points, "lengths": lengths, "pid": os.getpid()}


class _Collate:
    def __init__(self, subset: MultiSubjectSubset) -> None:
        self.subset = subset

    def __call__(self, items: list[tuple[int, list[int]]]) -> dict:
        return _collate(items, self.subset)


def test_dataloader_with_two_workers_reads_like_main_process(small_hdf5: Path) -> None:
    ds = MultiSubjectDataset(small_hdf5, lazy=True)
    ds.training.get_streamlines(0, GROUP, [0])  # open a handle in the parent before forking
    batches = [[(0, list(range(i, 200, 7)))] for i in range(6)]
    loader = DataLoader(ds.training, batch_sampler=batches, num_workers=2,
                        collate_fn=_Collate(ds.training))
    results = list(loader)
    assert len({r["pid"] for r in results} - {os.getpid()}) >= 1
    for batch, result in zip(batches, results):
        expected, lengths = ds.training.get_streamlines(0, GROUP, batch[0][1])
        assert np.array_equal(result["points"], expected)
        assert np.array_equal(result["lengths"], lengths)


def test_bad_queries_raise(both: tuple[MultiSubjectDataset, MultiSubjectDataset]) -> None:
    subset = both[0].training
    with pytest.raises(IndexError, match="subject index 3"):
        subset.get_streamlines(3, GROUP, [0])
    with pytest.raises(IndexError, match=r"\[0, 200\)"):
        subset.get_streamlines(0, GROUP, [200])
    with pytest.raises(DataError, match="no streamline group 'nope'"):
        subset.get_streamlines(0, "nope", [0])
    with pytest.raises(DataError, match="no volume group 'nope'"):
        subset.get_volume(0, "nope")
    with pytest.raises(DataError, match="no data_per_streamline 'nope'"):
        subset.get_data_per_streamline(0, GROUP, "nope", [0])
    with pytest.raises(ConfigError, match="cache_size"):
        MultiSubjectDataset(both[0].hdf5_file, lazy=True, cache_size=-1)
    with pytest.raises(ConfigError, match="unknown subset"):
        both[0].subset("train")


def _copy(small_hdf5: Path, tmp_path: Path) -> Path:
    path = tmp_path / "copy.hdf5"
    shutil.copy(small_hdf5, path)
    return path


def test_malformed_files_name_file_subject_and_group(small_hdf5: Path, tmp_path: Path) -> None:
    path = _copy(small_hdf5, tmp_path)
    with h5py.File(path, "a") as h5:
        h5.attrs["testing_subjs"] = np.array(["ghost"], dtype=h5py.string_dtype())
    with pytest.raises(DataError, match="'ghost'"):
        MultiSubjectDataset(path)
    with h5py.File(path, "a") as h5:
        h5.attrs["testing_subjs"] = np.array(["subj-00"], dtype=h5py.string_dtype())
    with pytest.raises(DataError, match="both 'training' and 'testing'"):
        MultiSubjectDataset(path)
    with h5py.File(path, "a") as h5:
        h5.attrs["testing_subjs"] = np.array(["subj-02"], dtype=h5py.string_dtype())
        del h5["subj-02/streamlines/offsets"]
    with pytest.raises(DataError, match="subj-02/streamlines: streamline group has no 'offsets'"):
        MultiSubjectDataset(path, lazy=True)
    with pytest.raises(DataError, match="missing.hdf5"):
        MultiSubjectDataset(tmp_path / "missing.hdf5")


def test_inconsistent_groups_and_features(small_hdf5: Path, tmp_path: Path) -> None:
    path = _copy(small_hdf5, tmp_path)
    with h5py.File(path, "a") as h5:
        data = h5["subj-01/input/data"][()]
        del h5["subj-01/input/data"]
        h5["subj-01/input"].create_dataset("data", data=data[..., :2])
    with pytest.raises(DataError, match="subj-01/input: 2 features"):
        MultiSubjectDataset(path)
    with h5py.File(path, "a") as h5:
        h5["subj-01/input"].attrs["type"] = "mesh"
    with pytest.raises(DataError, match="group type 'mesh'"):
        MultiSubjectDataset(path)
    with h5py.File(path, "a") as h5:
        del h5["subj-01/input"]
    with pytest.raises(DataError, match="same groups"):
        MultiSubjectDataset(path)


def _write_dwi_ml_style(path: Path, space: str, origin: str, points_vox_corner: np.ndarray,
                        affine: np.ndarray) -> None:
    """A file as dwi_ml writes it: byte-string splits, Space/Origin enums, 'None' step."""
    lengths = np.array([3, 2], dtype=np.int64)
    if space == "Space.RASMM":
        stored = (points_vox_corner - 0.5) @ affine[:3, :3].T + affine[:3, 3]
    elif origin == "Origin.NIFTI":
        stored = points_vox_corner - 0.5
    else:
        stored = points_vox_corner
    with h5py.File(path, "w") as h5:
        h5.attrs["version"] = 3
        h5.attrs["training_subjs"] = [b"s1"]
        h5.attrs["validation_subjs"] = []
        h5.attrs["testing_subjs"] = []
        h5.attrs["step_size"] = "None"
        group = h5.create_group("s1/lines")
        group.attrs["type"] = b"streamlines"
        group.attrs["space"] = space
        group.attrs["origin"] = origin
        group.attrs["affine"] = affine
        group.attrs["dimensions"] = [4, 4, 4]
        group.attrs["voxel_sizes"] = [2.0, 2.0, 2.0]
        group.attrs["voxel_order"] = "RAS"
        group.create_dataset("data", data=stored.astype(np.float32))
        group.create_dataset("offsets", data=np.array([0, 3]))
        group.create_dataset("lengths", data=lengths)
        volume = h5.create_group("s1/t1")
        volume.attrs["type"] = "volume"
        volume.attrs["affine"] = affine
        volume.attrs["voxres"] = [2.0, 2.0, 2.0]
        volume.attrs["nb_features"] = [1]
        volume.create_dataset("data", data=np.ones((4, 4, 4), dtype=np.float32))


@pytest.mark.parametrize(("space", "origin"), [("Space.VOX", "Origin.TRACKVIS"),
                                               ("Space.VOX", "Origin.NIFTI"),
                                               ("Space.RASMM", "Origin.NIFTI")])
def test_reads_dwi_ml_files(tmp_path: Path, space: str, origin: str) -> None:
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    affine[:3, 3] = [-3.0, 1.0, 5.0]
    points = np.array([[0.5, 0.5, 0.5], [1.0, 1.5, 2.0], [3.5, 3.5, 3.5],
                       [2.0, 2.0, 2.0], [2.0, 3.0, 2.0]], dtype=np.float32)
    path = tmp_path / "dwi_ml.hdf5"
    _write_dwi_ml_style(path, space, origin, points, affine)
    for lazy in (True, False):
        ds = MultiSubjectDataset(path, lazy=lazy)
        assert ds.step_size is None and ds.training.subject_names == ["s1"]
        assert ds.volume_groups == ["t1"] and ds.nb_features == {"t1": 1}
        got, lengths = ds.training.get_streamlines(0, "lines", [1, 0])
        np.testing.assert_allclose(got, np.concatenate([points[3:], points[:3]]), atol=1e-5)
        assert lengths.tolist() == [2, 3]
        # euclidean lengths computed from the points (mm) when the file lacks them
        np.testing.assert_allclose(ds.training.euclidean_lengths(0, "lines")[1], 2.0, atol=1e-5)
        assert ds.training.get_volume(0, "t1").shape == (4, 4, 4, 1)
