"""build_dataloader: identical batches with 0 or 2 workers, across epochs and after a resume."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from dwi_mtl.data.multi_subject_dataset import MultiSubjectDataset
from dwi_mtl.data.synthetic import write_synthetic_hdf5
from dwi_mtl.errors import ConfigError
from dwi_mtl.training.batch import StreamlineBatch
from dwi_mtl.training.batch_loader import BatchLoader
from dwi_mtl.training.batch_sampler import BatchSampler
from dwi_mtl.training.dataloaders import WorkerInit, build_dataloader

GROUP, INPUT = "streamlines", "input"
AUGMENT: dict[str, Any] = {"split_ratio": 0.4, "reverse_ratio": 0.5, "noise_gaussian_size": 0.1,
                           "noise_gaussian_size_targets": 0.05, "neighborhood_type": "axes",
                           "neighborhood_radius": 1.0}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> MultiSubjectDataset:
    path = tmp_path_factory.mktemp("dataloaders") / "data.hdf5"
    write_synthetic_hdf5(path, nb_subjects=4, volume_shape=(8, 8, 6), nb_features=2,
                         nb_streamlines=30, min_length_mm=3.0, max_length_mm=8.0,
                         step_size=0.5, seed=6)
    return MultiSubjectDataset(path, lazy=True)


def _build(dataset: MultiSubjectDataset, **sampler_kwargs: Any) -> tuple[BatchSampler,
                                                                         BatchLoader]:
    sampler = BatchSampler(dataset, GROUP, 8, max_batches_per_epoch_training=5, **sampler_kwargs)
    loader = BatchLoader(dataset, GROUP, INPUT, **AUGMENT)
    return sampler, loader


def _run(dataloader: Any, sampler: BatchSampler, epochs: list[tuple[str, int]]) -> list[Any]:
    out = []
    for context, epoch in epochs:
        sampler.set_context(context)
        sampler.set_epoch(epoch)
        out.extend(dataloader)
    return out


def _same(a: StreamlineBatch, b: StreamlineBatch) -> None:
    assert (a.context, a.epoch, a.batch_index) == (b.context, b.epoch, b.batch_index)
    for name in ("points", "lengths", "subject_indices", "streamline_ids", "directions",
                 "inputs"):
        torch.testing.assert_close(getattr(a, name), getattr(b, name), rtol=0, atol=0)


def test_zero_and_two_workers_give_identical_batches(dataset: MultiSubjectDataset) -> None:
    epochs = [("training", 0), ("validation", 0), ("training", 1), ("validation", 1)]
    sampler0, loader0 = _build(dataset)
    batches0 = _run(build_dataloader(sampler0, loader0, num_workers=0), sampler0, epochs)
    sampler2, loader2 = _build(dataset)
    dataloader2 = build_dataloader(sampler2, loader2, num_workers=2, persistent_workers=True)
    batches2 = _run(dataloader2, sampler2, epochs)
    # 60 training streamlines in batches of 8: 8 per pass, capped at 5 then the last 3
    assert len(batches0) == len(batches2) == 5 + 4 + 3 + 4
    for a, b in zip(batches0, batches2):
        _same(a, b)


def test_resume_after_consuming_k_batches(dataset: MultiSubjectDataset) -> None:
    sampler, loader = _build(dataset)
    reference = _run(build_dataloader(sampler, loader), sampler, [("training", 0)])

    sampler, loader = _build(dataset)
    dataloader = build_dataloader(sampler, loader, num_workers=2, prefetch_factor=2)
    sampler.set_epoch(0)
    consumed = []
    for batch in dataloader:
        consumed.append(batch)
        if len(consumed) == 2:
            break
    assert sampler.position > 2  # the workers prefetched ahead
    sampler.position = len(consumed)  # what the trainer saves
    state = sampler.state_dict()
    del dataloader

    resumed_sampler, resumed_loader = _build(dataset)
    resumed_sampler.load_state_dict(state)
    rest = list(build_dataloader(resumed_sampler, resumed_loader, num_workers=0))
    assert len(consumed) + len(rest) == len(reference)
    for a, b in zip(consumed + rest, reference):
        _same(a, b)


def test_device_interpolation_through_the_dataloader(dataset: MultiSubjectDataset) -> None:
    sampler, loader = _build(dataset)
    expected = _run(build_dataloader(sampler, loader), sampler, [("training", 0)])
    sampler, _ = _build(dataset)
    deferred = BatchLoader(dataset, GROUP, INPUT, interpolate_on="device", **AUGMENT)
    dataloader = build_dataloader(sampler, deferred, num_workers=0, device="cpu")
    got = [deferred.to_device(b, "cpu") for b in _run(dataloader, sampler, [("training", 0)])]
    for a, b in zip(got, expected):
        torch.testing.assert_close(a.inputs, b.inputs, rtol=1e-5, atol=1e-5)


def test_builder_settings_and_errors(dataset: MultiSubjectDataset) -> None:
    sampler, loader = _build(dataset)
    dataloader = build_dataloader(sampler, loader, num_workers=2, prefetch_factor=3)
    assert dataloader.num_workers == 2 and dataloader.prefetch_factor == 3
    assert dataloader.persistent_workers and not dataloader.pin_memory
    assert build_dataloader(sampler, loader, device="cpu", pin_memory=False).num_workers == 0
    with pytest.raises(ConfigError, match="num_workers"):
        build_dataloader(sampler, loader, num_workers=-1)
    with pytest.raises(ConfigError, match="prefetch_factor"):
        build_dataloader(sampler, loader, num_workers=1, prefetch_factor=0)


def test_worker_init_seeds_differ_per_worker() -> None:
    draws = []
    threads = torch.get_num_threads()
    try:
        for worker in (0, 1):
            WorkerInit(5)(worker)
            draws.append(np.random.random())
        WorkerInit(5)(0)
        assert np.random.random() == draws[0] != draws[1]
    finally:
        torch.set_num_threads(threads)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_pinned_batches_and_device_interpolation(dataset: MultiSubjectDataset) -> None:
    sampler, loader = _build(dataset)
    expected = _run(build_dataloader(sampler, loader), sampler, [("training", 0)])
    sampler, _ = _build(dataset)
    deferred = BatchLoader(dataset, GROUP, INPUT, interpolate_on="device", **AUGMENT)
    dataloader = build_dataloader(sampler, deferred, num_workers=2, device="cuda")
    assert dataloader.pin_memory
    batches = _run(dataloader, sampler, [("training", 0)])
    assert batches[0].points.is_pinned()
    for got, ref in zip((deferred.to_device(b, "cuda") for b in batches), expected):
        assert got.inputs is not None and got.inputs.device.type == "cuda"
        torch.testing.assert_close(got.inputs.cpu(), ref.inputs, rtol=1e-5, atol=1e-5)
