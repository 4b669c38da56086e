"""MTLTask data handling and the MTL batch sources (positioning for exact resume)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from dwi_mtl.errors import ConfigError
from dwi_mtl.mtl import MTLTask
from dwi_mtl.mtl.scheduling import ProportionalSampler
from dwi_mtl.mtl.task_sources import (
    DatasetSource,
    JointSource,
    ScheduledSource,
    SequentialSource,
)
from dwi_mtl.mtl.tasks import same_data
from dwi_mtl.training.batch_sources import MemoryBatchSource, SamplerLoaderSource


def _loss(out: torch.Tensor, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
    return ((out[:, 0] - batch[1]) ** 2).mean()


def _dataset(count: int = 20) -> TensorDataset:
    x = torch.arange(count * 2, dtype=torch.float32).reshape(count, 2)
    return TensorDataset(x, x[:, 0])


def _ids(source: DatasetSource, epoch: int) -> list[float]:
    return [float(v) for batch in source.begin(epoch) for v in batch[1]]


def test_validation_split_is_random_recorded_and_reproducible() -> None:
    task = MTLTask("t", nn.Linear(2, 1), _loss, _dataset(), validation_fraction=0.25,
                   split_seed=9, batch_size=4)
    assert task.split == {"kind": "random", "seed": 9, "fraction": 0.25, "nb_training": 15,
                          "nb_validation": 5}
    train, valid = _ids(task.train_source, 0), _ids(task.valid_source, 0)
    assert sorted(train + valid) == [2.0 * i for i in range(20)]
    assert valid != [2.0 * i for i in range(5)]  # drawn at random, not the first samples
    again = MTLTask("t", nn.Linear(2, 1), _loss, _dataset(), validation_fraction=0.25,
                    split_seed=9, batch_size=4)
    assert _ids(again.valid_source, 0) == valid
    other = MTLTask("t", nn.Linear(2, 1), _loss, _dataset(), validation_fraction=0.25,
                    split_seed=10, batch_size=4)
    assert _ids(other.valid_source, 0) != valid
    assert task.get_config()["split"]["seed"] == 9


def test_dataloader_list_and_source_inputs() -> None:
    loader = DataLoader(_dataset(), batch_size=5, shuffle=True)
    task = MTLTask("t", nn.Linear(2, 1), _loss, loader, loader)
    assert isinstance(task.train_source, DatasetSource) and task.train_source.shuffle
    assert task.train_source.nb_batches == 4 and not task.valid_source.shuffle
    split = MTLTask("d", nn.Linear(2, 1), _loss, DataLoader(_dataset(), batch_size=3))
    assert split.train_source.batch_size == 3 and not split.train_source.shuffle
    assert split.train_source.nb_batches == 6 and split.valid_source.nb_batches == 2
    batches = [(torch.zeros(2, 2), torch.zeros(2)) for _ in range(10)]
    listed = MTLTask("l", {"h1": nn.Linear(2, 1)}, _loss, batches, validation_fraction=0.3)
    assert listed.train_source.nb_batches == 7 and listed.valid_source.nb_batches == 3
    source = MemoryBatchSource(batches)
    given = MTLTask("s", nn.Linear(2, 1), _loss, source, source)
    assert given.train_source is source


def test_default_forward_runs_blocks_then_heads() -> None:
    task = MTLTask("t", nn.Linear(3, 1), _loss, _dataset())
    blocks = nn.ModuleDict({"enc": nn.Linear(2, 3)})
    batch = next(task.train_source.begin(0))
    assert task.forward(blocks, batch).shape == (batch[0].shape[0], 1)
    assert task.compute_loss(task.forward(blocks, batch), batch).dim() == 0


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"name": "a b"}, "task name"),
        ({"heads": "linear"}, "heads"),
        ({"loss": 3}, "loss must be callable"),
        ({"train_data": None}, "train_data is required"),
        ({"train_data": 42}, "cannot draw a validation split"),
        ({"train_data": 42, "valid_data": 42}, "data must be"),
        ({"validation_fraction": 1.0}, "validation_fraction"),
        ({"train_data": _dataset(1)}, "cannot split"),
        ({"train_data": DataLoader(_dataset(), batch_size=None)}, "replayed"),
        ({"train_data": DataLoader(_dataset(), sampler=torch.utils.data.WeightedRandomSampler(
            [1.0] * 20, 20))}, "custom sampler"),
    ],
)
def test_bad_task_arguments_raise_config_errors(kwargs: dict, match: str) -> None:
    args = {"name": "t", "heads": nn.Linear(2, 1), "loss": _loss, "train_data": _dataset()}
    args.update(kwargs)
    with pytest.raises(ConfigError, match=match):
        MTLTask(**args)


def test_loss_must_be_scalar() -> None:
    task = MTLTask("t", nn.Linear(2, 1), lambda out, b: out, _dataset())
    batch = next(task.train_source.begin(0))
    with pytest.raises(ConfigError, match="scalar"):
        task.compute_loss(task.forward(nn.ModuleDict(), batch), batch)


def _flatten(source: object, epoch: int, start: int) -> list[tuple[str, float]]:
    return [(name, float(b[1][0])) for step in source.begin(epoch, start)  # type: ignore[attr-defined]
            for name, b in step.items]


def test_scheduled_and_sequential_sources_resume_at_any_step() -> None:
    sources = {"a": DatasetSource(_dataset(20), 4, seed=1), "b": DatasetSource(_dataset(6), 2)}
    scheduled = ScheduledSource(sources, ProportionalSampler(seed=5))
    full = _flatten(scheduled, 2, 0)
    assert len(full) == 8
    for start in range(9):
        assert _flatten(scheduled, 2, start) == full[start:]
    grouped = ScheduledSource(sources, ProportionalSampler(seed=5), group_rounds=True)
    assert _flatten(grouped, 2, 0) == full
    steps = list(grouped.begin(2, 0))
    assert all({n for n, _ in s.items} == {"a", "b"} for s in steps)
    sequential = SequentialSource(sources)
    whole = _flatten(sequential, 0, 0)
    assert [n for n, _ in whole] == ["a"] * 5 + ["b"] * 3
    for start in range(9):
        assert _flatten(sequential, 0, start) == whole[start:]


def test_validation_sources_cap_each_task_and_resume_at_any_step() -> None:
    sources = {"a": DatasetSource(_dataset(20), 4, seed=1), "b": DatasetSource(_dataset(6), 2)}
    sequential = SequentialSource(sources, max_batches=2)
    whole = _flatten(sequential, 0, 0)
    assert [n for n, _ in whole] == ["a"] * 2 + ["b"] * 2
    uncapped = _flatten(SequentialSource(sources), 0, 0)
    assert whole == uncapped[:2] + uncapped[5:7]  # the first 2 of a's 5, then of b's 3
    for start in range(5):
        assert _flatten(sequential, 0, start) == whole[start:]
    assert sequential.nb_batches == 4
    joint = JointSource(sources["a"], ["a", "b"], max_batches=3)
    shared = _flatten(joint, 1, 0)
    assert len(shared) == 6 and shared[0::2] == [("a", v) for _, v in shared[1::2]]
    assert joint.nb_batches == 3
    for start in range(5):
        assert _flatten(joint, 1, start) == shared[2 * start:]


def test_same_data_accepts_equal_sampler_loader_pairs(tmp_path: Path) -> None:
    from dwi_mtl.training.batch_sampler import BatchSampler

    dataset, (sampler, loader) = _pair_without_validation(tmp_path)
    data = [1, 2]
    assert same_data((sampler, loader), (sampler, loader))
    assert not same_data((sampler, loader), (BatchSampler(dataset, "streamlines", 4), loader))
    assert same_data(data, data) and same_data(None, None)
    assert not same_data(data, [1, 2])


def test_sampler_loader_pair_uses_the_dataset_validation_subjects(tmp_path: Path) -> None:
    from dwi_mtl.data import MultiSubjectDataset
    from dwi_mtl.data.synthetic import write_synthetic_hdf5
    from dwi_mtl.training.batch_loader import BatchLoader
    from dwi_mtl.training.batch_sampler import BatchSampler

    path = write_synthetic_hdf5(tmp_path / "d.hdf5", nb_subjects=2, volume_shape=(8, 8, 8),
                                nb_features=2, nb_streamlines=20, min_length_mm=5,
                                max_length_mm=8, seed=0)
    dataset = MultiSubjectDataset(path)
    pair = (BatchSampler(dataset, "streamlines", 5, 5), BatchLoader(dataset, "streamlines"))
    task = MTLTask("dirs", nn.Linear(3, 3), _loss, pair)
    assert isinstance(task.valid_source, SamplerLoaderSource)
    assert task.valid_source.context == "validation"
    assert task.split["kind"] == "validation subjects of the dataset"
    assert len(list(task.valid_source.begin(0))) == 4


def _pair_without_validation(tmp_path: Path, validation_subject: bool = False,
                             **loader_options: object) -> tuple:
    from dwi_mtl.data import MultiSubjectDataset
    from dwi_mtl.data.synthetic import write_synthetic_hdf5
    from dwi_mtl.training.batch_loader import BatchLoader
    from dwi_mtl.training.batch_sampler import BatchSampler

    path = write_synthetic_hdf5(tmp_path / "train_only.hdf5", nb_subjects=2,
                                volume_shape=(8, 8, 8), nb_features=2, nb_streamlines=20,
                                min_length_mm=5, max_length_mm=8, seed=0,
                                splits={"training": ["subj-00"], "validation": ["subj-01"]}
                                if validation_subject else
                                {"training": ["subj-00", "subj-01"]})
    dataset = MultiSubjectDataset(path)
    return dataset, (BatchSampler(dataset, "streamlines", 4, 6),
                     BatchLoader(dataset, "streamlines", **loader_options))


def test_pair_without_validation_subjects_holds_out_random_streamlines(tmp_path: Path) -> None:
    dataset, pair = _pair_without_validation(tmp_path, reverse_ratio=1.0)
    task = MTLTask("dirs", nn.Linear(3, 3), _loss, pair, validation_fraction=0.25, split_seed=4)
    assert task.split == {"kind": "random streamlines", "seed": 4, "fraction": 0.25,
                          "nb_training": 30, "nb_validation": 10}
    held = set()
    for batch in task.valid_source.begin(0):
        assert batch.nb_streamlines <= 6
        held |= {(int(s), int(i)) for s, i in zip(batch.subject_indices, batch.streamline_ids)}
        points, _ = dataset.training.get_streamlines(
            int(batch.subject_indices[0]), "streamlines", batch.streamline_ids.numpy())
        np.testing.assert_allclose(batch.points.numpy(), points)  # not reversed: no augmentation
    assert len(held) == 10
    trained = set()
    for epoch in range(2):
        for batch in task.train_source.begin(epoch):
            if batch is not None:
                trained |= {(int(s), int(i))
                            for s, i in zip(batch.subject_indices, batch.streamline_ids)}
    assert not trained & held and len(trained) == 30
    again = MTLTask("dirs", nn.Linear(3, 3), _loss, pair, validation_fraction=0.25, split_seed=4)
    assert [b.streamline_ids.tolist() for b in again.valid_source.begin(0)] == \
        [b.streamline_ids.tolist() for b in task.valid_source.begin(0)]


def test_tensor_dataset_fast_path_equals_the_default_collate() -> None:
    from torch.utils.data import Dataset

    class Plain(Dataset):
        def __init__(self, data: TensorDataset) -> None:
            self.data = data

        def __len__(self) -> int:
            return len(self.data)

        def __getitem__(self, index: int) -> tuple:
            return self.data[index]

    data = _dataset(13)
    fast, slow = DatasetSource(data, 4, seed=2), DatasetSource(Plain(data), 4, seed=2)
    for a, b in zip(fast.begin(1), slow.begin(1), strict=True):
        assert type(a) is type(b) and all(torch.equal(x, y) for x, y in zip(a, b))
