"""Infinite and load_by_random_id: seeded, epoch-cut, and resumable at any batch."""

from __future__ import annotations

import numpy as np
import pytest

from dwi_mtl.errors import CheckpointError, ConfigError
from dwi_mtl.training import Infinite, load_by_random_id

IMAGES = {i: np.full((2, 2), i, dtype=np.float32) for i in range(20)}


def load_image(i):
    return IMAGES[i]


def load_label(i):
    return i % 3


def make_iter(seed=0, batch_size=4, n_iters=3):
    source = load_by_random_id(load_image, load_label, ids=list(IMAGES), random_state=seed)
    return Infinite(source, batch_size=batch_size, n_iters_per_epoch=n_iters)


def flatten(epochs):
    return [x[:, 0, 0].tolist() for batches in epochs for x, _ in batches]


def test_batches_are_stacked_tuples_cut_into_epochs():
    batch_iter = make_iter()
    batches = list(batch_iter())
    assert len(batches) == 3 and len(batch_iter) == 3
    images, labels = batches[0]
    assert images.shape == (4, 2, 2) and labels.shape == (4,)
    np.testing.assert_array_equal(labels, images[:, 0, 0].astype(int) % 3)
    assert len(list(batch_iter())) == 3


def test_same_seed_same_stream_other_seed_other_stream():
    first = flatten([list(make_iter(seed=7)()) for _ in range(1)])
    again = flatten([list(make_iter(seed=7)()) for _ in range(1)])
    other = flatten([list(make_iter(seed=8)()) for _ in range(1)])
    assert first == again and first != other


def test_resume_mid_epoch_continues_exactly():
    reference = make_iter(seed=3)
    expected = flatten([list(reference()) for _ in range(3)])

    interrupted = make_iter(seed=3)
    seen = [list(interrupted())]
    gen = interrupted()
    seen.append([next(gen)])  # one batch into epoch 1, then "crash"
    state = interrupted.state_dict()

    resumed = make_iter(seed=3)
    resumed.load_state_dict(state)
    seen[-1].extend(resumed())
    seen.append(list(resumed()))
    assert flatten(seen) == expected


def test_ids_are_drawn_across_blocks_reproducibly():
    source = load_by_random_id(load_label, ids=list(range(5)), random_state=1)
    first = [next(source) for _ in range(2100)]
    restored = load_by_random_id(load_label, ids=list(range(5)), random_state=99)
    source_state = {"seed": 1, "position": 1500}
    restored.load_state_dict(source_state)
    assert [next(restored) for _ in range(600)] == first[1500:]
    assert set(first) == {0, 1, 2}


def test_weights_restrict_the_drawn_ids():
    source = load_by_random_id(load_label, ids=[0, 1, 2], weights=[0, 1, 0], random_state=0)
    assert {next(source) for _ in range(50)} == {1}


def test_random_state_none_is_saved_in_the_state():
    source = load_by_random_id(load_image, ids=[1, 2, 3])
    state = source.state_dict()
    assert isinstance(state["seed"], int)


def test_transformers_apply_in_order():
    source = load_by_random_id(load_image, load_label, ids=[2], random_state=0)
    batch_iter = Infinite(
        source,
        lambda item: (item[0] + 1, item[1]),
        lambda item: (item[0] * 10, item[1]),
        batch_size=2,
        n_iters_per_epoch=1,
    )
    images, _ = next(batch_iter())
    assert images[0, 0, 0] == 30


def deterministic_generator():
    i = 0
    while True:
        yield np.float32(i), i
        i += 1


def test_plain_generator_is_replayed_on_resume_and_cannot_rewind():
    batch_iter = Infinite(deterministic_generator(), batch_size=2, n_iters_per_epoch=2)
    list(batch_iter())
    state = batch_iter.state_dict()
    fresh = Infinite(deterministic_generator(), batch_size=2, n_iters_per_epoch=2)
    fresh.load_state_dict(state)
    x, _ = next(fresh())
    assert x.tolist() == [4.0, 5.0]
    used = Infinite(deterministic_generator(), batch_size=2, n_iters_per_epoch=2)
    list(used())
    list(used())
    with pytest.raises(CheckpointError, match="cannot rewind"):
        used.load_state_dict(state)


def test_a_generator_function_is_accepted_as_source():
    batch_iter = Infinite(deterministic_generator, batch_size=3, n_iters_per_epoch=1)
    x, y = next(batch_iter())
    assert y.tolist() == [0, 1, 2]


def test_finite_source_gives_a_clear_error():
    batch_iter = Infinite(iter([(1, 2)]), batch_size=2, n_iters_per_epoch=1)
    with pytest.raises(ConfigError, match="ran out"):
        list(batch_iter())


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"batch_size": 0, "n_iters_per_epoch": 1}, "batch_size"),
        ({"batch_size": 2, "n_iters_per_epoch": 1.5}, "n_iters_per_epoch"),
    ],
)
def test_infinite_rejects_bad_sizes(kwargs, field):
    with pytest.raises(ConfigError, match=field):
        Infinite(deterministic_generator(), **kwargs)


def test_infinite_rejects_non_iterable_source():
    with pytest.raises(ConfigError, match="iterable"):
        Infinite(3, batch_size=1, n_iters_per_epoch=1)


@pytest.mark.parametrize(
    "args, kwargs, match",
    [
        ((), {"ids": [1]}, "loader"),
        ((load_image,), {"ids": []}, "'ids' is empty"),
        ((load_image,), {"ids": [1, 2], "weights": [1.0]}, "'weights'"),
        ((load_image,), {"ids": [1], "random_state": "x"}, "random_state"),
    ],
)
def test_load_by_random_id_rejects_bad_arguments(args, kwargs, match):
    with pytest.raises(ConfigError, match=match):
        load_by_random_id(*args, **kwargs)


def test_epoch_batch_source_resumes_an_infinite_at_the_consumed_batch():
    from dwi_mtl.training.batch_iter import as_batch_source

    reference = as_batch_source(make_iter(seed=5))
    expected = [x[:, 0, 0].tolist() for x, _ in reference.begin(0)]
    assert reference.nb_batches == 3

    source = as_batch_source(make_iter(seed=5))
    iterator = source.begin(0)
    first = next(iterator)
    state = source.state_dict()
    assert state["consumed"] == 1

    resumed = as_batch_source(make_iter(seed=5))
    resumed.load_state_dict(state)
    rest = [x[:, 0, 0].tolist() for x, _ in resumed.begin(0, start=state["consumed"])]
    assert [first[0][:, 0, 0].tolist(), *rest] == expected
    with pytest.raises(CheckpointError, match="batch 3 of the epoch|batch 0 of the epoch"):
        resumed.begin(1, start=2)


def test_epoch_batch_source_replays_a_stateless_callable():
    from dwi_mtl.training.batch_iter import as_batch_source

    def epoch():
        yield from ((np.float32(i), i) for i in range(4))

    source = as_batch_source(epoch)
    assert source.nb_batches is None
    assert [b[1] for b in source.begin(0, start=2)] == [2, 3]
    assert source.state_dict() == {"consumed": 4}


def test_as_batch_source_rejects_other_objects():
    from dwi_mtl.training.batch_iter import as_batch_source

    with pytest.raises(ConfigError, match="batch_iter must be"):
        as_batch_source(3)
