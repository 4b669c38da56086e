"""Coalesced packed reads, the per-process handle and the LRU cache."""

from __future__ import annotations

import pickle
from pathlib import Path

import h5py
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dwi_mtl.data.hdf5_reader import (
    LRUCache,
    ProcessLocalFile,
    coalesce_ranges,
    open_hdf5,
    read_packed,
)
from dwi_mtl.errors import DataError


class CountingSource:
    """A (P, 3) array that counts slice reads, standing in for an h5py dataset."""

    def __init__(self, array: np.ndarray) -> None:
        self.array = array
        self.reads = 0

    def __getitem__(self, key: slice) -> np.ndarray:
        self.reads += 1
        return self.array[key]


def _packed(nb: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, 12, size=nb).astype(np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    points = rng.standard_normal((int(lengths.sum()), 3)).astype(np.float32)
    return points, offsets, lengths


def test_coalesce_merges_touching_and_close_ranges() -> None:
    starts = np.array([0, 10, 25, 100])
    stops = np.array([10, 20, 30, 110])
    merged = coalesce_ranges(starts, stops, max_gap=0)
    assert [a.tolist() for a in merged] == [[0, 25, 100], [20, 30, 110]]
    assert [a.tolist() for a in coalesce_ranges(starts, stops, max_gap=5)] == [[0, 100], [30, 110]]
    assert [a.tolist() for a in coalesce_ranges(starts, stops, max_gap=1000)] == [[0], [110]]


@pytest.mark.parametrize("max_gap", [0, 7, 10_000])
def test_read_packed_matches_naive_in_request_order(max_gap: int) -> None:
    points, offsets, lengths = _packed(300)
    rng = np.random.default_rng(1)
    ids = np.concatenate([rng.integers(0, 300, size=50), [7, 7, 299, 0]])
    expected = np.concatenate([points[offsets[i]:offsets[i] + lengths[i]] for i in ids])
    got = read_packed(points, offsets, lengths, ids, max_gap=max_gap)
    assert got.dtype == np.float32
    assert np.array_equal(got, expected)


def test_read_packed_uses_few_reads() -> None:
    points, offsets, lengths = _packed(1000)
    source = CountingSource(points)
    ids = np.random.default_rng(2).choice(1000, size=100, replace=False)
    read_packed(source, offsets, lengths, ids, max_gap=0)
    assert source.reads <= 100  # at most one read per (merged) range
    source.reads = 0
    read_packed(source, offsets, lengths, np.arange(200, 300), max_gap=0)
    assert source.reads == 1  # consecutive ids: one slice
    source.reads = 0
    read_packed(source, offsets, lengths, ids, max_gap=10**9)
    assert source.reads == 1


def test_read_packed_empty_ids() -> None:
    points, offsets, lengths = _packed(10)
    assert read_packed(points, offsets, lengths, np.array([], dtype=np.int64)).shape == (0, 3)


def test_lru_cache_evicts_least_recently_used() -> None:
    cache = LRUCache(2)
    cache.put("a", 1)
    cache.put("b", 2)
    assert cache.get("a") == 1
    cache.put("c", 3)
    assert cache.keys() == ["a", "c"] and cache.get("b") is None
    none = LRUCache(0)
    none.put("a", 1)
    assert len(none) == 0
    with pytest.raises(ValueError):
        LRUCache(-1)


def test_process_local_file_reopens_after_pickle(small_hdf5: Path) -> None:
    handle = ProcessLocalFile(small_hdf5)
    first = handle.get()
    assert handle.get() is first and isinstance(first, h5py.File)
    clone = pickle.loads(pickle.dumps(handle))
    assert clone._handle is None
    assert clone.get().filename == first.filename
    handle.close()
    clone.close()


def test_open_hdf5_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="missing.hdf5"):
        open_hdf5(tmp_path / "missing.hdf5")
    garbage = tmp_path / "garbage.hdf5"
    garbage.write_bytes(b"this is not hdf5")
    with pytest.raises(DataError, match="garbage.hdf5"):
        open_hdf5(garbage)


@settings(max_examples=60, deadline=None)
@given(lengths=st.lists(st.integers(0, 9), min_size=1, max_size=40),
       picks=st.lists(st.integers(0, 10**6), max_size=30),
       max_gap=st.sampled_from([0, 1, 5, 50, 10**9]))
def test_read_packed_property(lengths: list[int], picks: list[int], max_gap: int) -> None:
    lengths_array = np.asarray(lengths, dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths_array)[:-1]]).astype(np.int64)
    points = np.arange(int(lengths_array.sum()) * 3, dtype=np.float32).reshape(-1, 3)
    ids = np.asarray([p % len(lengths) for p in picks], dtype=np.int64)
    expected = [points[offsets[i]:offsets[i] + lengths_array[i]] for i in ids]
    got = read_packed(points, offsets, lengths_array, ids, max_gap=max_gap)
    assert np.array_equal(got, np.concatenate(expected) if expected else np.zeros((0, 3)))
