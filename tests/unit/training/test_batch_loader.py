"""BatchLoader on a real (small, synthetic) HDF5 dataset: augmentation, inputs, determinism."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest
import torch
from scipy.ndimage import map_coordinates

from dwi_mtl.data import streamline_ops as ops
from dwi_mtl.data.multi_subject_dataset import MultiSubjectDataset
from dwi_mtl.data.synthetic import write_synthetic_hdf5
from dwi_mtl.errors import ConfigError
from dwi_mtl.training.batch import BatchItem, StreamlineBatch
from dwi_mtl.training.batch_loader import BatchLoader
from dwi_mtl.training.batch_sampler import BatchSampler

GROUP, INPUT = "streamlines", "input"


@pytest.fixture(scope="module")
def datasets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, MultiSubjectDataset]:
    """The same 4-subject file opened lazily and in memory."""
    path = tmp_path_factory.mktemp("loader") / "data.hdf5"
    write_synthetic_hdf5(path, nb_subjects=4, volume_shape=(9, 8, 7), nb_features=3,
                         nb_streamlines=40, min_length_mm=3.0, max_length_mm=10.0,
                         step_size=0.5, seed=5)
    return {"lazy": MultiSubjectDataset(path, lazy=True, cache_size=2),
            "memory": MultiSubjectDataset(path, lazy=False)}


@pytest.fixture()
def dataset(datasets: dict[str, MultiSubjectDataset]) -> MultiSubjectDataset:
    return datasets["lazy"]


def _items(batch_index: int = 0, context: str = "training", epoch: int = 0) -> list[BatchItem]:
    return [BatchItem(0, np.array([3, 1, 7, 12]), context, epoch, batch_index),
            BatchItem(1, np.array([0, 5, 39]), context, epoch, batch_index)]


def _raw(dataset: MultiSubjectDataset, items: list[BatchItem]) -> tuple[np.ndarray, np.ndarray]:
    parts = [dataset.training.get_streamlines(s, GROUP, ids) for s, ids in items]
    return np.concatenate([p for p, _ in parts]), np.concatenate([n for _, n in parts])


def _assert_same(a: StreamlineBatch, b: StreamlineBatch) -> None:
    for name in ("points", "lengths", "subject_indices", "streamline_ids", "directions"):
        torch.testing.assert_close(getattr(a, name), getattr(b, name), rtol=0, atol=0)
    if a.inputs is None:
        assert b.inputs is None
    else:
        torch.testing.assert_close(a.inputs, b.inputs, rtol=0, atol=0)


def test_plain_batch_is_the_stored_data(dataset: MultiSubjectDataset) -> None:
    batch = BatchLoader(dataset, GROUP).load_batch(_items())
    points, lengths = _raw(dataset, _items())
    np.testing.assert_array_equal(batch.points.numpy(), points)
    np.testing.assert_array_equal(batch.lengths.numpy(), lengths)
    np.testing.assert_array_equal(batch.subject_indices.numpy(), [0] * 4 + [1] * 3)
    np.testing.assert_array_equal(batch.streamline_ids.numpy(), [3, 1, 7, 12, 0, 5, 39])
    assert batch.inputs is None and batch.nb_streamlines == 7
    assert batch.nb_points == int(lengths.sum())
    assert batch.directions.shape == (batch.nb_points - 7, 3)
    first = batch.streamlines[0]
    torch.testing.assert_close(batch.streamline_directions[0], first[1:] - first[:-1])


def test_split_loses_no_point(dataset: MultiSubjectDataset) -> None:
    batch = BatchLoader(dataset, GROUP, split_ratio=1.0).load_batch(_items())
    points, lengths = _raw(dataset, _items())
    np.testing.assert_array_equal(batch.points.numpy(), points)
    assert batch.nb_streamlines > 7
    assert int(batch.lengths.sum()) == int(lengths.sum())
    long = lengths >= 2 * ops.MIN_SPLIT_POINTS
    assert batch.nb_streamlines == 7 + int(long.sum())
    np.testing.assert_array_equal(np.unique(batch.streamline_ids.numpy()), [0, 1, 3, 5, 7, 12, 39])


def test_reverse_is_exact(dataset: MultiSubjectDataset) -> None:
    batch = BatchLoader(dataset, GROUP, reverse_ratio=1.0).load_batch(_items())
    points, lengths = _raw(dataset, _items())
    for got, stored in zip(batch.streamlines, ops.unpack(points, lengths)):
        np.testing.assert_array_equal(got.numpy(), stored[::-1])


def test_noise_is_truncated(dataset: MultiSubjectDataset) -> None:
    loader = BatchLoader(dataset, GROUP, noise_gaussian_size=0.2,
                         noise_gaussian_size_targets=0.1, noise_truncation=2.0)
    batch = loader.load_batch(_items())
    points, lengths = _raw(dataset, _items())
    delta = batch.points.numpy() - points
    assert np.abs(delta).max() <= 0.4 + 1e-5 and np.abs(delta).max() > 0.1
    clean_dirs, _ = ops.directions(points, lengths)
    ddelta = batch.directions.numpy() - clean_dirs
    assert np.abs(ddelta).max() <= 0.4 + 1e-5  # difference of two noises of <= 0.2 each
    assert not np.allclose(ddelta, np.diff(delta, axis=0)[: len(ddelta)])


def test_resampling_in_the_loader(dataset: MultiSubjectDataset) -> None:
    batch = BatchLoader(dataset, GROUP, nb_points=5).load_batch(_items())
    assert torch.all(batch.lengths == 5)
    stepped = BatchLoader(dataset, GROUP, step_size=1.0).load_batch(_items())
    points, lengths = _raw(dataset, _items())
    mm = dataset.training.euclidean_lengths(0, GROUP)[[3, 1, 7, 12]]
    np.testing.assert_array_equal(stepped.lengths.numpy()[:4], ops.nb_points_for_step(mm, 1.0))
    for s, arc in zip(stepped.streamlines[:4], mm):
        # equally spaced along the arc: step within half a step spread over the segments
        arc_step = arc / (len(s) - 1)
        assert abs(arc_step - 1.0) <= 0.5 / (len(s) - 1) + 1e-3
        chords = np.linalg.norm(np.diff(s.numpy(), axis=0), axis=1)
        assert np.all(chords <= arc_step + 1e-3)
    same_step = BatchLoader(dataset, GROUP, step_size=0.5).load_batch(_items())
    np.testing.assert_array_equal(same_step.points.numpy(), points)  # file already at 0.5
    compressed = BatchLoader(dataset, GROUP, compress=0.05).load_batch(_items())
    assert int(compressed.lengths.sum()) < int(lengths.sum())


@pytest.mark.parametrize(("kind", "radius", "m"), [(None, None, 1), ("axes", 1.0, 7),
                                                   ("grid", 1, 27)])
def test_inputs_match_scipy(dataset: MultiSubjectDataset, kind: str | None, radius: Any,
                            m: int) -> None:
    loader = BatchLoader(dataset, GROUP, INPUT, neighborhood_type=kind,
                         neighborhood_radius=radius, noise_gaussian_size=0.3)
    batch = loader.load_batch(_items())
    assert batch.inputs is not None and batch.inputs.shape == (batch.nb_points, m * 3)
    assert loader.nb_input_features == m * 3
    subjects = torch.repeat_interleave(batch.subject_indices, batch.lengths).numpy()
    offsets = loader.offsets
    for s in (0, 1):
        volume = dataset.training.get_volume(s, INPUT)
        pts = batch.points.numpy()[subjects == s]
        for j, offset in enumerate(offsets):
            centre = np.clip(pts + offset - 0.5, 0, np.array(volume.shape[:3]) - 1)
            expected = np.stack([map_coordinates(volume[..., f], centre.T, order=1)
                                 for f in range(3)], axis=1)
            got = batch.inputs.numpy()[subjects == s][:, j * 3:(j + 1) * 3]
            np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_device_interpolation_equals_worker_interpolation(dataset: MultiSubjectDataset) -> None:
    kwargs: dict[str, Any] = {"neighborhood_type": "axes", "neighborhood_radius": 0.5,
                              "split_ratio": 0.5, "noise_gaussian_size": 0.1}
    worker = BatchLoader(dataset, GROUP, INPUT, **kwargs).load_batch(_items())
    deferred_loader = BatchLoader(dataset, GROUP, INPUT, interpolate_on="device", **kwargs)
    deferred = deferred_loader.load_batch(_items())
    assert deferred.inputs is None and deferred.needs_interpolation
    on_device = deferred_loader.to_device(deferred, "cpu")
    assert not on_device.needs_interpolation and on_device.inputs is not None
    torch.testing.assert_close(on_device.inputs, worker.inputs, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(on_device.points, worker.points, rtol=0, atol=0)


def test_randomness_is_derived_from_the_batch_identity(dataset: MultiSubjectDataset) -> None:
    loader = BatchLoader(dataset, GROUP, split_ratio=0.5, reverse_ratio=0.5,
                         noise_gaussian_size_targets=0.1, seed=9)
    a = loader.load_batch(_items(batch_index=4))
    _assert_same(a, BatchLoader(**{**loader.get_config(), "dataset": dataset}).load_batch(
        _items(batch_index=4)))
    assert not torch.equal(a.directions, loader.load_batch(_items(batch_index=5)).directions)
    assert not torch.equal(a.directions, loader.load_batch(_items(4, epoch=1)).directions)
    other_seed = BatchLoader(dataset, GROUP, split_ratio=0.5, reverse_ratio=0.5,
                             noise_gaussian_size_targets=0.1, seed=10)
    assert not torch.equal(a.directions, other_seed.load_batch(_items(4)).directions)


def test_each_streamline_is_augmented_the_same_on_any_shard(dataset: MultiSubjectDataset) -> None:
    loader = BatchLoader(dataset, GROUP, reverse_ratio=0.5, noise_gaussian_size=0.1, seed=2)
    full = loader.load_batch(_items(batch_index=2))
    part = loader.load_batch([_items(batch_index=2)[1]])  # the rank holding only subject 1
    torch.testing.assert_close(full.streamlines[4], part.streamlines[0], rtol=0, atol=0)
    torch.testing.assert_close(full.streamlines[6], part.streamlines[2], rtol=0, atol=0)


def test_lazy_and_in_memory_give_identical_batches(
    datasets: dict[str, MultiSubjectDataset],
) -> None:
    kwargs: dict[str, Any] = {"input_group": INPUT, "split_ratio": 0.3, "reverse_ratio": 0.3,
                              "noise_gaussian_size": 0.1, "data_per_streamline_keys": ["label"]}
    lazy = BatchLoader(datasets["lazy"], GROUP, **kwargs).load_batch(_items())
    memory = BatchLoader(datasets["memory"], GROUP, **kwargs).load_batch(_items())
    _assert_same(lazy, memory)
    torch.testing.assert_close(lazy.data_per_streamline["label"],
                               memory.data_per_streamline["label"])
    assert lazy.data_per_streamline["label"].shape == (lazy.nb_streamlines,)


def test_validation_batches_are_not_augmented(dataset: MultiSubjectDataset) -> None:
    loader = BatchLoader(dataset, GROUP, split_ratio=1.0, reverse_ratio=1.0,
                         noise_gaussian_size=0.5)
    items = [BatchItem(0, np.array([2, 0]), "validation", 0, 0)]
    batch = loader.load_batch(items)
    points, _ = dataset.validation.get_streamlines(0, GROUP, np.array([2, 0]))
    np.testing.assert_array_equal(batch.points.numpy(), points)
    assert batch.context == "validation"


def test_with_the_sampler_and_empty_batches(dataset: MultiSubjectDataset) -> None:
    sampler = BatchSampler(dataset, GROUP, 10)
    loader = BatchLoader(dataset, GROUP, INPUT)
    batches = [loader.load_batch(items) for items in sampler]
    assert sum(b.nb_streamlines for b in batches) == 80
    assert [b.batch_index for b in batches] == list(range(len(batches)))
    empty = loader.load_batch([])
    assert empty.nb_streamlines == 0 and empty.nb_points == 0


def test_batch_pickles_and_moves(dataset: MultiSubjectDataset) -> None:
    import pickle

    batch = BatchLoader(dataset, GROUP, INPUT, data_per_streamline_keys=["label"]).load_batch(
        _items())
    again = pickle.loads(pickle.dumps(batch))
    _assert_same(batch, again)
    moved = batch.to("cpu")
    assert moved.data_per_streamline["label"].device.type == "cpu"
    assert len(batch.streamline_inputs) == batch.nb_streamlines


def test_get_config_is_json(dataset: MultiSubjectDataset) -> None:
    loader = BatchLoader(dataset, GROUP, INPUT, neighborhood_type="axes",
                         neighborhood_radius=(1.0, 2.0))
    config = json.loads(json.dumps(loader.get_config()))
    assert config["neighborhood_radius"] == [1.0, 2.0]
    assert loader.state_dict() == {}
    loader.load_state_dict({})


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"input_group": "t1"}, "input_group='t1'"),
        ({"input_group": GROUP}, "not a volume group"),
        ({"streamline_group": "bundles"}, "streamline_group='bundles'"),
        ({"input_group": INPUT, "neighborhood_type": "axes"}, "needs a neighborhood_radius"),
        ({"input_group": INPUT, "neighborhood_type": "cube", "neighborhood_radius": 1},
         "neighborhood_type must be"),
        ({"neighborhood_type": "axes", "neighborhood_radius": 1.0}, "input_group is None"),
        ({"split_ratio": 1.5}, "split_ratio"),
        ({"reverse_ratio": -0.1}, "reverse_ratio"),
        ({"noise_gaussian_size": -1}, "noise_gaussian_size"),
        ({"noise_truncation": 0}, "noise_truncation"),
        ({"step_size": 1.0, "compress": 0.1}, "at most one"),
        ({"nb_points": 1}, "nb_points"),
        ({"interpolate_on": "gpu"}, "interpolate_on"),
        ({"data_per_streamline_keys": ["age"]}, "data_per_streamline_keys"),
        ({"seed": "x"}, "seed"),
    ],
)
def test_bad_arguments_fail_at_construction(dataset: MultiSubjectDataset,
                                            kwargs: dict[str, Any], match: str) -> None:
    kwargs = {"streamline_group": GROUP, **kwargs}
    with pytest.raises(ConfigError, match=match):
        BatchLoader(dataset, **kwargs)


def test_resampling_measures_steps_in_mm_through_the_affine(
    dataset: MultiSubjectDataset, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dipy.tracking.streamlinespeed import length

    affine = np.diag([2.0, 1.0, 0.5, 1.0])  # anisotropic voxels: 2 x 1 x 0.5 mm
    monkeypatch.setattr(dataset.training, "get_affine", lambda subject, group: affine)
    batch = BatchLoader(dataset, GROUP, step_size=0.75).load_batch(_items())
    points, lengths = _raw(dataset, _items())
    stored_mm = np.asarray(length([p * np.diag(affine)[:3] for p in ops.unpack(points, lengths)]))
    np.testing.assert_array_equal(batch.lengths.numpy(), ops.nb_points_for_step(stored_mm, 0.75))
    for s, arc in zip(batch.streamlines, stored_mm):
        chords_mm = np.linalg.norm(np.diff(s.numpy(), axis=0) * np.diag(affine)[:3], axis=1)
        assert np.all(chords_mm <= arc / (len(s) - 1) + 1e-3)
    first = ops.unpack(points, lengths)[0]
    np.testing.assert_allclose(batch.streamlines[0].numpy()[[0, -1]], first[[0, -1]], atol=1e-4)
