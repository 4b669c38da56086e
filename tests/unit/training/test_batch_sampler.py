"""BatchSampler on a real (small, synthetic) HDF5 dataset: planning, budgets, resume, shards."""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dwi_mtl.data.multi_subject_dataset import MultiSubjectDataset
from dwi_mtl.data.synthetic import write_synthetic_hdf5
from dwi_mtl.errors import ConfigError
from dwi_mtl.training.batch_sampler import BatchSampler

GROUP = "streamlines"


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> MultiSubjectDataset:
    """5 subjects (3 training, 1 validation, 1 testing), 60-90 streamlines each."""
    path = tmp_path_factory.mktemp("sampler") / "data.hdf5"
    write_synthetic_hdf5(path, nb_subjects=5, volume_shape=(8, 8, 6), nb_features=2,
                         nb_streamlines=70, min_length_mm=3.0, max_length_mm=12.0,
                         step_size=0.5, seed=4)
    return MultiSubjectDataset(path, lazy=True)


def _ids(batches: list[list[Any]]) -> list[list[tuple[int, list[int]]]]:
    return [[(int(s), [int(i) for i in ids]) for s, ids in b] for b in batches]


def _epoch(sampler: BatchSampler, epoch: int, context: str = "training") -> list[Any]:
    sampler.set_context(context)
    sampler.set_epoch(epoch)
    return _ids(list(sampler))


def _pairs(batches: list[Any]) -> list[tuple[int, int]]:
    return [(s, i) for b in batches for s, ids in b for i in ids]


def test_same_seed_same_batches_other_seed_differs(dataset: MultiSubjectDataset) -> None:
    a = _epoch(BatchSampler(dataset, GROUP, 16, seed=3), 0)
    b = _epoch(BatchSampler(dataset, GROUP, 16, seed=3), 0)
    c = _epoch(BatchSampler(dataset, GROUP, 16, seed=4), 0)
    assert a == b
    assert a != c


def test_every_streamline_once_per_epoch(dataset: MultiSubjectDataset) -> None:
    for nb_subjects in (None, 2):
        sampler = BatchSampler(dataset, GROUP, 16, nb_subjects_per_batch=nb_subjects)
        for epoch in range(2):
            pairs = _pairs(_epoch(sampler, epoch))
            expected = {(s, i) for s in range(3) for i in range(70)}
            assert len(pairs) == len(expected) == len(set(pairs))
            assert set(pairs) == expected


def test_epochs_differ(dataset: MultiSubjectDataset) -> None:
    sampler = BatchSampler(dataset, GROUP, 16)
    assert _epoch(sampler, 0) != _epoch(sampler, 1)


def test_capped_epochs_continue_through_the_pool(dataset: MultiSubjectDataset) -> None:
    sampler = BatchSampler(dataset, GROUP, 20, max_batches_per_epoch_training=4)
    seen: list[tuple[int, int]] = []
    sizes = []
    for epoch in range(4):
        batches = _epoch(sampler, epoch)
        sizes.append(len(batches))
        seen += _pairs(batches)
    # 210 streamlines / 20 = 11 batches per pass: epochs of 4, 4, 3, then a new pass.
    assert sizes == [4, 4, 3, 4]
    first_pass = seen[:210]
    assert len(set(first_pass)) == 210
    assert set(seen[210:]) <= set(first_pass)


@pytest.mark.parametrize("units", ["nb_streamlines", "nb_points", "length_mm"])
def test_budgets_are_respected(dataset: MultiSubjectDataset, units: str) -> None:
    budget = {"nb_streamlines": 10, "nb_points": 200, "length_mm": 60.0}[units]
    sampler = BatchSampler(dataset, GROUP, budget, batch_size_units=units)
    subset = dataset.training
    for batch in _epoch(sampler, 0):
        total = 0.0
        for s, ids in batch:
            if units == "nb_streamlines":
                total += len(ids)
            elif units == "nb_points":
                total += subset.streamline_lengths(s, GROUP)[ids].sum()
            else:
                total += subset.euclidean_lengths(s, GROUP)[ids].sum()
        assert 0 < total <= budget * (1 + 1e-9)


def test_nb_points_budget_uses_the_loader_resampling(dataset: MultiSubjectDataset) -> None:
    sampler = BatchSampler(dataset, GROUP, 60, batch_size_units="nb_points", nb_points=6)
    batches = _epoch(sampler, 0)
    assert all(sum(len(ids) for _, ids in b) == 10 for b in batches[:-1])
    with pytest.raises(ConfigError, match="smaller than one streamline"):
        BatchSampler(dataset, GROUP, 5, batch_size_units="nb_points", nb_points=6)


def test_nb_subjects_per_batch_and_cycles(dataset: MultiSubjectDataset) -> None:
    sampler = BatchSampler(dataset, GROUP, 12, nb_subjects_per_batch=1, cycles=3)
    batches = _epoch(sampler, 0)
    assert all(len(b) == 1 for b in batches)
    subjects = [b[0][0] for b in batches]
    # within a cycle the subject is kept while it has streamlines left
    for start in range(0, len(subjects) - 3, 3):
        cycle = subjects[start:start + 3]
        assert len(set(cycle)) == 1 or any(
            b[0][1] and len(b[0][1]) < 12 for b in batches[start:start + 3])
    two = _epoch(BatchSampler(dataset, GROUP, 12, nb_subjects_per_batch=2), 0)
    assert max(len(b) for b in two) == 2


def test_validation_context_is_separate(dataset: MultiSubjectDataset) -> None:
    sampler = BatchSampler(dataset, GROUP, 16, batch_size_validation=35,
                           max_batches_per_epoch_training=2)
    train0 = _epoch(sampler, 0)
    valid0 = _epoch(sampler, 0, "validation")
    assert {s for b in valid0 for s, _ in b} == {0}
    assert len(valid0) == 2 and sum(len(ids) for b in valid0 for _, ids in b) == 70
    train1 = _epoch(sampler, 1)
    assert train1 != train0 and len(train1) == 2


def test_resume_mid_epoch_yields_exactly_the_remaining_batches(
    dataset: MultiSubjectDataset,
) -> None:
    kwargs: dict[str, Any] = {"nb_subjects_per_batch": 2, "cycles": 2,
                              "max_batches_per_epoch_training": 5}
    reference = BatchSampler(dataset, GROUP, 9, **kwargs)
    full = [_epoch(reference, e) for e in range(4)]

    sampler = BatchSampler(dataset, GROUP, 9, **kwargs)
    for e in range(2):
        assert _epoch(sampler, e) == full[e]
    sampler.set_epoch(2)
    it = iter(sampler)
    consumed = _ids([next(it) for _ in range(3)])
    assert consumed == full[2][:3]
    sampler.position = 2  # the trainer consumed 2 (a DataLoader prefetched one more)
    state = json.loads(json.dumps(sampler.state_dict()))
    state = pickle.loads(pickle.dumps(state))

    resumed = BatchSampler(dataset, GROUP, 9, **kwargs)
    resumed.load_state_dict(state)
    resumed.set_epoch(2)  # same epoch: keeps the position
    assert resumed.position == 2 and len(resumed) == len(full[2]) - 2
    assert _ids(list(resumed)) == full[2][2:]
    assert _epoch(resumed, 3) == full[3]


def test_resume_does_not_replan_previous_epochs(
    dataset: MultiSubjectDataset, monkeypatch: pytest.MonkeyPatch
) -> None:
    sampler = BatchSampler(dataset, GROUP, 9, max_batches_per_epoch_training=3)
    for e in range(6):
        _epoch(sampler, e)
    sampler.set_epoch(6)
    expected = _ids(list(sampler))
    sampler.position = 1
    state = sampler.state_dict()
    resumed = BatchSampler(dataset, GROUP, 9, max_batches_per_epoch_training=3)
    calls = []
    original = resumed._plan
    monkeypatch.setattr(resumed, "_plan", lambda *a: calls.append(a) or original(*a))
    resumed.load_state_dict(state)
    assert _ids(list(resumed)) == expected[1:]
    assert len(calls) == 1


def test_jumping_to_an_epoch_replans_from_scratch(dataset: MultiSubjectDataset) -> None:
    sequential = BatchSampler(dataset, GROUP, 9, max_batches_per_epoch_training=3)
    for e in range(5):
        last = _epoch(sequential, e)
    jumped = BatchSampler(dataset, GROUP, 9, max_batches_per_epoch_training=3)
    assert _epoch(jumped, 4) == last


@pytest.mark.parametrize("world_size", [2, 3])
def test_shards_partition_each_global_batch(dataset: MultiSubjectDataset,
                                            world_size: int) -> None:
    single = BatchSampler(dataset, GROUP, 40, batch_size_units="nb_points")
    global_batches = _epoch(single, 0)
    shards = []
    for rank in range(world_size):
        sampler = BatchSampler(dataset, GROUP, 40, batch_size_units="nb_points",
                               rank=rank, world_size=world_size)
        shards.append(_epoch(sampler, 0))
    assert all(len(s) == len(global_batches) for s in shards)
    for b, batch in enumerate(global_batches):
        merged = sorted(p for rank in range(world_size) for p in _pairs([shards[rank][b]]))
        assert merged == sorted(_pairs([batch]))
        counts = [len(_pairs([shards[rank][b]])) for rank in range(world_size)]
        assert max(counts) - min(counts) <= 4


def test_get_config_rebuilds_the_same_sampler(dataset: MultiSubjectDataset) -> None:
    sampler = BatchSampler(dataset, GROUP, 30.0, batch_size_units="length_mm",
                           nb_subjects_per_batch=2, seed=7)
    config = json.loads(json.dumps(sampler.get_config()))
    again = BatchSampler(dataset, **config)
    assert _epoch(again, 0) == _epoch(sampler, 0)


def test_items_carry_their_identity(dataset: MultiSubjectDataset) -> None:
    sampler = BatchSampler(dataset, GROUP, 16)
    sampler.set_epoch(3)
    batch = next(iter(sampler))
    restored = pickle.loads(pickle.dumps(batch))
    for item in restored:
        assert (item.context, item.epoch, item.batch_index) == ("training", 3, 0)
        subject, ids = item
        assert isinstance(ids, np.ndarray) and subject == item.subject_index
    assert sampler.planned_batch(0)[0].batch_index == 0


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"batch_size_training": 0}, "batch_size_training"),
        ({"batch_size_training": 2.5}, "must be an integer"),
        ({"batch_size_training": 10, "batch_size_validation": -1}, "batch_size_validation"),
        ({"batch_size_training": 3, "batch_size_units": "nb_points"}, "smaller than one"),
        ({"batch_size_training": 1.0, "batch_size_units": "length_mm"}, "smaller than one"),
        ({"batch_size_training": 10, "batch_size_units": "voxels"}, "batch_size_units"),
        ({"batch_size_training": 10, "streamline_group": "nope"}, "streamline_group='nope'"),
        ({"batch_size_training": 10, "nb_subjects_per_batch": 4}, "larger than the 3"),
        ({"batch_size_training": 10, "cycles": 2}, "cycles needs"),
        ({"batch_size_training": 10, "max_batches_per_epoch_training": 0}, "max_batches"),
        ({"batch_size_training": 10, "step_size": 1.0, "nb_points": 5}, "at most one"),
        ({"batch_size_training": 10, "rank": 2, "world_size": 2}, "rank"),
        ({"batch_size_training": 10, "world_size": 0}, "world_size"),
        ({"batch_size_training": 10, "seed": -1}, "seed"),
    ],
)
def test_bad_arguments_fail_at_construction(dataset: MultiSubjectDataset,
                                            kwargs: dict[str, Any], match: str) -> None:
    kwargs = {"streamline_group": GROUP, **kwargs}
    with pytest.raises(ConfigError, match=match):
        BatchSampler(dataset, **kwargs)


def test_bad_runtime_values(dataset: MultiSubjectDataset) -> None:
    sampler = BatchSampler(dataset, GROUP, 10)
    with pytest.raises(ConfigError, match="context"):
        sampler.set_context("testing-ish")
    with pytest.raises(ConfigError, match="epoch"):
        sampler.set_epoch(-1)
    with pytest.raises(ConfigError, match="position"):
        sampler.position = -2
    with pytest.raises(ConfigError, match="malformed"):
        sampler.load_state_dict({"context": "training"})


def test_empty_validation_set(tmp_path: Path) -> None:
    path = write_synthetic_hdf5(tmp_path / "one.hdf5", nb_subjects=1, volume_shape=(4, 4, 4),
                                nb_features=1, nb_streamlines=10, min_length_mm=2.0,
                                max_length_mm=4.0, step_size=1.0)
    sampler = BatchSampler(MultiSubjectDataset(path), GROUP, 4)
    assert len(_epoch(sampler, 0)) == 3
    assert _epoch(sampler, 0, "validation") == []


def test_an_iterator_keeps_its_context(dataset: MultiSubjectDataset) -> None:
    sampler = BatchSampler(dataset, GROUP, 16)
    sampler.set_epoch(0)
    training = iter(sampler)
    sampler.set_context("validation")
    sampler.set_epoch(0)
    validation = list(sampler)
    first = next(training)
    assert first[0].context == "training" and validation[0][0].context == "validation"
    sampler.set_context("training")
    assert sampler.position == 1
    sampler.set_epoch(1)  # a new plan ends the old iterator
    assert list(training) == []


@settings(max_examples=20, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(budget=st.integers(1, 40), cap=st.one_of(st.none(), st.integers(1, 6)),
       nb_subjects=st.one_of(st.none(), st.integers(1, 3)), stop=st.integers(0, 8),
       world_size=st.integers(1, 3), seed=st.integers(0, 2**31))
def test_properties_of_plans_and_resumes(dataset: MultiSubjectDataset, budget: int,
                                         cap: int | None, nb_subjects: int | None, stop: int,
                                         world_size: int, seed: int) -> None:
    kwargs: dict[str, Any] = {"max_batches_per_epoch_training": cap,
                              "nb_subjects_per_batch": nb_subjects, "seed": seed}
    sampler = BatchSampler(dataset, GROUP, budget, **kwargs)
    epochs = [_epoch(sampler, e) for e in range(3)]
    flat = [p for batches in epochs for p in _pairs(batches)]
    # no repeat before the whole pool (210 streamlines) has been visited
    assert len(set(flat[:210])) == min(len(flat), 210)
    assert all(0 < sum(len(ids) for _, ids in b) <= budget for e in epochs for b in e)
    # stop anywhere in epoch 1, save, rebuild, resume: the rest is identical
    sampler = BatchSampler(dataset, GROUP, budget, **kwargs)
    _epoch(sampler, 0)
    sampler.set_epoch(1)
    sampler.position = min(stop, sampler.nb_batches)
    resumed = BatchSampler(dataset, GROUP, budget, **kwargs)
    resumed.load_state_dict(sampler.state_dict())
    assert _ids(list(resumed)) == epochs[1][min(stop, len(epochs[1])):]
    # shards of every rank put back together give the global batches
    parts = []
    for rank in range(world_size):
        ranked = BatchSampler(dataset, GROUP, budget, rank=rank, world_size=world_size, **kwargs)
        parts.append(_epoch(ranked, 0))
    for b, batch in enumerate(epochs[0]):
        merged = sorted(p for rank in range(world_size) for p in _pairs([parts[rank][b]]))
        assert merged == sorted(_pairs([batch]))


@pytest.mark.parametrize("budget", [1, 2, 5])
def test_budget_shared_between_subjects_is_never_exceeded(dataset: MultiSubjectDataset,
                                                          budget: int) -> None:
    sampler = BatchSampler(dataset, GROUP, budget, nb_subjects_per_batch=3)
    batches = _epoch(sampler, 0)
    assert all(0 < sum(len(ids) for _, ids in b) <= budget for b in batches)
    assert len(set(_pairs(batches))) == 210 == len(_pairs(batches))


def test_nb_points_budget_matches_the_loader(dataset: MultiSubjectDataset) -> None:
    from dwi_mtl.training.batch_loader import BatchLoader

    for step in (0.5, 1.0):  # the file's step (no resampling) and a coarser one
        sampler = BatchSampler(dataset, GROUP, 150, batch_size_units="nb_points",
                               step_size=step)
        loader = BatchLoader(dataset, GROUP, step_size=step)
        sampler.set_epoch(0)
        for items in list(sampler)[:5]:
            assert 0 < loader.load_batch(items).nb_points <= 150


def test_get_config_is_json_with_numpy_arguments(dataset: MultiSubjectDataset) -> None:
    sampler = BatchSampler(dataset, GROUP, np.int64(12), seed=np.int64(3),
                           max_batches_per_epoch_training=np.int32(2))
    config = json.loads(json.dumps(sampler.get_config()))
    assert config["batch_size_training"] == 12 and config["seed"] == 3
