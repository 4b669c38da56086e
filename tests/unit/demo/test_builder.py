"""Demo datasets: content, determinism, cache behaviour (offline, from dipy's shipped data)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from dwi_mtl.data import MultiSubjectDataset
from dwi_mtl.demo import build_bundles_dataset, build_demo_dataset, demo_cache_dir
from dwi_mtl.demo import builder as builder_module
from dwi_mtl.demo.dwi_subjects import load_dipy_subject, mirrored, sh_features, track


@pytest.fixture(scope="module")
def dwi_demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_demo_dataset(tmp_path_factory.mktemp("cache"))


@pytest.mark.slow
def test_dwi_demo_content(dwi_demo: Path) -> None:
    dataset = MultiSubjectDataset(dwi_demo)
    assert dataset.training.subject_names == ["sub-64D", "sub-101D"]
    assert dataset.validation.subject_names == ["sub-64D-mirror"]
    assert dataset.testing.subject_names == ["sub-101D-mirror"]
    assert dataset.nb_features == {"fa": 1, "sh": 28}
    assert dataset.streamline_groups == ["streamlines"] and dataset.step_size == 1.0
    for set_name in ("training", "validation", "testing"):
        subset = dataset.subset(set_name)
        for index in range(subset.nb_subjects):
            count = subset.nb_streamlines(index, "streamlines")
            assert count > 1000
            points, lengths = subset.get_streamlines(index, "streamlines", np.arange(count))
            shape = np.array(subset.get_volume_shape(index, "sh")[:3])
            assert points.min() >= 0 and np.all(points.max(axis=0) <= shape)
            steps = np.linalg.norm(np.diff(points[: lengths[0]], axis=0), axis=1)
            voxel = subset.get_voxres(index, "streamlines")
            assert abs(float(np.mean(steps * voxel.mean())) - 1.0) < 0.2  # 1 mm steps
            assert np.isfinite(subset.get_volume(index, "sh")).all()
    assert dataset.training.get_volume_shape(1, "sh") == (6, 10, 10, 28)


@pytest.mark.slow
def test_cached_file_is_reused(dwi_demo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(*args: object, **kwargs: object) -> None:
        raise AssertionError("rebuilt although cached")

    monkeypatch.setattr(builder_module, "create_hdf5_dataset", fail)
    assert build_demo_dataset(dwi_demo.parent) == dwi_demo


def test_bundles_dataset_labels_and_determinism(tmp_path: Path) -> None:
    first = build_bundles_dataset(tmp_path / "a")
    again = build_bundles_dataset(tmp_path / "b")
    one, two = MultiSubjectDataset(first), MultiSubjectDataset(again, lazy=True)
    assert one.training.subject_names == ["sub_1", "sub_2", "sub_3"]
    assert one.testing.subject_names == ["sub_5"]
    assert one.volume_groups == ["density"] and one.streamline_groups == ["bundles"]
    ids = np.arange(150)
    labels = one.training.get_data_per_streamline(0, "bundles", "bundle", ids)
    assert labels.tolist() == [0] * 50 + [1] * 50 + [2] * 50
    for set_name in ("training", "validation", "testing"):
        a, b = one.subset(set_name), two.subset(set_name)
        for index in range(a.nb_subjects):
            assert np.array_equal(a.get_streamlines(index, "bundles", ids)[0],
                                  b.get_streamlines(index, "bundles", ids)[0])
            assert np.array_equal(a.get_volume(index, "density"), b.get_volume(index, "density"))
            assert a.get_volume(index, "density").sum() > 0


def test_force_rebuilds(tmp_path: Path) -> None:
    path = build_bundles_dataset(tmp_path)
    path.write_bytes(b"stale")
    assert build_bundles_dataset(tmp_path) == path and path.read_bytes() == b"stale"
    build_bundles_dataset(tmp_path, force=True)
    assert MultiSubjectDataset(path).testing.nb_subjects == 1


def test_cache_dir_resolution(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("DWI_MTL_CACHE", str(tmp_path / "env"))
    assert demo_cache_dir() == tmp_path / "env"
    assert demo_cache_dir(tmp_path / "arg") == tmp_path / "arg"
    monkeypatch.delenv("DWI_MTL_CACHE")
    assert demo_cache_dir() == Path.home() / ".cache" / "dwi_mtl"


def test_features_and_tracking_are_deterministic() -> None:
    subject = load_dipy_subject("small_101D", "s")
    assert np.array_equal(sh_features(subject), sh_features(subject))
    first, second = track(subject), track(subject)
    assert len(first) == len(second) > 1000
    assert all(np.array_equal(a, b) for a, b in zip(first, second))
    assert sh_features(subject).shape == (6, 10, 10, 28)


def test_mirror_keeps_rotation_invariant_features() -> None:
    subject = load_dipy_subject("small_64D", "s")
    original, mirror = sh_features(subject), sh_features(mirrored(subject, "m"))
    # the order-0 coefficient (mean attenuation) does not depend on the gradient directions
    np.testing.assert_allclose(mirror[::-1, ..., 0], original[..., 0], atol=1e-5)
