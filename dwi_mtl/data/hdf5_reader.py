"""Low-level reading: one h5py handle per process and coalesced streamline reads.

Why one handle per process: h5py handles must not cross ``fork`` (a DataLoader worker that
inherits its parent's handle reads garbage or deadlocks), and opening one handle per subject
runs out of file descriptors on large datasets ("too many open files", seen in dwi_ml). The
:class:`ProcessLocalFile` opens the file lazily and re-opens it when ``os.getpid()`` changes.

Why coalesced reads: every h5py read call costs tens of microseconds whatever its size, so
reading a batch of 100 streamlines one by one is dominated by call overhead. We sort the ids,
merge ranges that touch or are separated by less than ``max_gap`` points into one slice, read
each slice once, and scatter the streamlines back into the order the caller asked for.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from dwi_mtl.errors import DataError

#: Gaps (in points) up to which two ranges are read with one call. About the number of points
#: whose bytes cost as much to read as one extra h5py call (benchmarks/bench_dataset.py).
DEFAULT_MAX_GAP = 2048


class ProcessLocalFile:
    """An h5py file opened read-only on first use, once per process.

    The object pickles without its handle, so it can be sent to DataLoader workers; each
    worker opens its own handle on first access.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        """Remember ``path``; nothing is opened yet."""
        self.path = Path(path)
        self._handle: h5py.File | None = None
        self._pid: int | None = None
        self._datasets: dict[str, h5py.Dataset] = {}

    def dataset(self, name: str) -> h5py.Dataset:
        """Return the dataset at ``name`` (e.g. ``subj/group/data``), cached per process.

        Looking a dataset up through its groups costs tens of microseconds, as much as a read.
        """
        handle = self.get()
        found = self._datasets.get(name)
        if found is None:
            found = handle[name]
            self._datasets[name] = found
        return found

    def get(self) -> h5py.File:
        """Return this process's open handle, opening it on first use or after a fork."""
        pid = os.getpid()
        if self._handle is None or self._pid != pid:
            # A handle inherited through fork is dropped, never used nor closed here.
            self._handle = open_hdf5(self.path)
            self._pid = pid
            self._datasets = {}
        return self._handle

    def close(self) -> None:
        """Close the handle if this process opened it."""
        if self._handle is not None and self._pid == os.getpid():
            self._handle.close()
        self._handle = None
        self._pid = None
        self._datasets = {}

    def __getstate__(self) -> dict[str, Any]:
        return {"path": self.path}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.path = state["path"]
        self._handle = None
        self._pid = None
        self._datasets = {}


def open_hdf5(path: str | os.PathLike[str]) -> h5py.File:
    """Open an HDF5 file read-only, turning every failure into a :class:`DataError`."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"HDF5 file '{path}' does not exist")
    try:
        return h5py.File(path, "r")
    except OSError as exc:
        raise DataError(f"HDF5 file '{path}' cannot be opened: {exc}") from exc


def coalesce_ranges(starts: np.ndarray, stops: np.ndarray,
                    max_gap: int = DEFAULT_MAX_GAP) -> tuple[np.ndarray, np.ndarray]:
    """Merge sorted ``[start, stop)`` ranges whose gap is at most ``max_gap``.

    Args:
        starts: range starts, sorted ascending.
        stops: range stops (same length).
        max_gap: largest number of unused rows read to save one call.

    Returns:
        ``(block_starts, block_stops)`` of the merged blocks.
    """
    if len(starts) == 0:
        return starts.copy(), stops.copy()
    running_stop = np.maximum.accumulate(stops)
    new_block = np.ones(len(starts), dtype=bool)
    new_block[1:] = starts[1:] - running_stop[:-1] > max_gap
    first = np.flatnonzero(new_block)
    last = np.append(first[1:], len(starts)) - 1
    return starts[first], running_stop[last]


def read_packed(source: Any, offsets: np.ndarray, lengths: np.ndarray, ids: np.ndarray,
                max_gap: int = DEFAULT_MAX_GAP) -> np.ndarray:
    """Read streamlines ``ids`` from a packed (P, 3) source, packed in the order of ``ids``.

    ``source`` is an h5py dataset (lazy) or a numpy array (in memory); both go through the
    same code so they return identical arrays.

    Args:
        source: (P, 3) points of one subject's streamline group.
        offsets: (N,) first point of each streamline.
        lengths: (N,) points of each streamline.
        ids: streamline indices, any order, repeats allowed.
        max_gap: see :func:`coalesce_ranges`.

    Returns:
        (sum(lengths[ids]), 3) float32 points.
    """
    ids = np.asarray(ids, dtype=np.int64)
    sel_lengths = lengths[ids]
    out = np.empty((int(sel_lengths.sum()), 3), dtype=np.float32)
    if len(ids) == 0:
        return out
    unique_ids = np.unique(ids)  # sorted
    starts = offsets[unique_ids]
    stops = starts + lengths[unique_ids]
    block_starts, block_stops = coalesce_ranges(starts, stops, max_gap)
    # Read each block once into one buffer.
    block_sizes = block_stops - block_starts
    buffer = np.empty((int(block_sizes.sum()), 3), dtype=np.float32)
    buffer_offsets = np.concatenate([[0], np.cumsum(block_sizes)[:-1]])
    for b_start, b_stop, b_off in zip(block_starts.tolist(), block_stops.tolist(),
                                      buffer_offsets.tolist()):
        buffer[b_off:b_off + (b_stop - b_start)] = source[b_start:b_stop]
    # Position of every wanted streamline's first point inside the buffer.
    block_of = np.searchsorted(block_starts, starts, side="right") - 1
    in_buffer = buffer_offsets[block_of] + (starts - block_starts[block_of])
    position = in_buffer[np.searchsorted(unique_ids, ids)]
    # Gather with one fancy index: row r of the output comes from buffer row src[r].
    out_offsets = np.concatenate([[0], np.cumsum(sel_lengths)[:-1]])
    src = np.repeat(position - out_offsets, sel_lengths) + np.arange(len(out))
    np.take(buffer, src, axis=0, out=out)
    return out


class LRUCache:
    """A tiny least-recently-used cache bounded by its number of entries."""

    def __init__(self, capacity: int) -> None:
        """Keep at most ``capacity`` entries (0 keeps nothing)."""
        if capacity < 0:
            raise ValueError(f"cache capacity must be >= 0, got {capacity}")
        self.capacity = capacity
        self._items: OrderedDict[Any, Any] = OrderedDict()

    def get(self, key: Any) -> Any | None:
        """Return the cached value (and mark it recently used) or None."""
        if key not in self._items:
            return None
        self._items.move_to_end(key)
        return self._items[key]

    def put(self, key: Any, value: Any) -> None:
        """Insert a value, evicting the least recently used entries beyond capacity."""
        if self.capacity == 0:
            return
        self._items[key] = value
        self._items.move_to_end(key)
        while len(self._items) > self.capacity:
            self._items.popitem(last=False)

    def keys(self) -> list[Any]:
        """Keys from least to most recently used."""
        return list(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def clear(self) -> None:
        """Drop every entry."""
        self._items.clear()
