"""Multi-subject datasets read from one HDF5 file, lazily or fully in memory.

:class:`MultiSubjectDataset` opens a file written by
:func:`~dwi_mtl.data.create_hdf5_dataset` (or by dwi_ml) and exposes its ``training``,
``validation`` and ``testing`` subjects as :class:`MultiSubjectSubset` objects, which are
``torch.utils.data.Dataset`` s consumed by the batch sampler and loader (docs/internals.md).

Both modes return identical arrays through the same code path:

- in memory (``lazy=False``): every split subject's points, volumes and
  data-per-streamline arrays are read once at construction;
- lazy (``lazy=True``): only metadata is held; each process opens its own h5py handle on first
  use (safe in DataLoader workers), a batch of one subject's streamlines is read with a few
  coalesced slices, and at most ``cache_size`` volumes stay in memory (LRU).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import Dataset

from dwi_mtl.data.hdf5_layout import DPS_GROUP, SPLITS, stored_to_voxel_corner
from dwi_mtl.data.hdf5_metadata import DatasetMetadata, StreamlineInfo, read_metadata
from dwi_mtl.data.hdf5_reader import LRUCache, ProcessLocalFile, open_hdf5, read_packed
from dwi_mtl.errors import ConfigError, DataError


class MultiSubjectDataset:
    """All subjects of one HDF5 dataset file, split into training/validation/testing.

    Attributes:
        hdf5_file: path of the file.
        lazy: whether bulk arrays are read on demand.
        cache_size: volumes kept in memory in lazy mode (LRU).
        volume_groups: names of the volume groups (same in every subject).
        streamline_groups: names of the streamline groups.
        nb_features: volume group -> number of features per voxel.
        step_size: the file's step size in mm (None when not resampled).
        compress: the file's compression tolerance in mm (None when not compressed).
        training, validation, testing: the subsets.
    """

    def __init__(self, hdf5_file: str | os.PathLike[str], lazy: bool = False,
                 cache_size: int = 1) -> None:
        """Read the file's metadata (and, unless lazy, all its arrays).

        Args:
            hdf5_file: the dataset file.
            lazy: read points and volumes on demand instead of at construction.
            cache_size: volumes kept in memory in lazy mode (0: read on every access).

        Raises:
            DataError: the file is missing, unreadable or inconsistent (the message names
                the file, subject and group).
            ConfigError: a negative ``cache_size``.
        """
        if int(cache_size) < 0:
            raise ConfigError(f"cache_size must be >= 0, got {cache_size}")
        self.hdf5_file = Path(hdf5_file)
        self.lazy = bool(lazy)
        self.cache_size = int(cache_size)
        with open_hdf5(self.hdf5_file) as h5:
            self._meta: DatasetMetadata = read_metadata(h5, self.hdf5_file)
            self._memory: dict[tuple[str, str], np.ndarray] = {}
            if not self.lazy:
                self._load_all(h5)
        self._file = ProcessLocalFile(self.hdf5_file)
        self._volume_cache = LRUCache(self.cache_size)
        self.volume_groups: list[str] = list(self._meta.volume_groups)
        self.streamline_groups: list[str] = list(self._meta.streamline_groups)
        self.nb_features: dict[str, int] = dict(self._meta.nb_features)
        self.step_size: float | None = self._meta.step_size
        self.compress: float | None = self._meta.compress
        self.version: str | None = self._meta.version
        self.training = MultiSubjectSubset(self, "training", self._meta.splits["training"])
        self.validation = MultiSubjectSubset(self, "validation", self._meta.splits["validation"])
        self.testing = MultiSubjectSubset(self, "testing", self._meta.splits["testing"])

    def get_config(self) -> dict[str, Any]:
        """Return the JSON-able constructor arguments (to rebuild the dataset on resume)."""
        return {"hdf5_file": str(self.hdf5_file), "lazy": self.lazy, "cache_size": self.cache_size}

    def subset(self, set_name: str) -> MultiSubjectSubset:
        """Return the subset called ``set_name`` ("training", "validation" or "testing")."""
        if set_name not in SPLITS:
            raise ConfigError(f"unknown subset {set_name!r}; expected one of {SPLITS}")
        subset: MultiSubjectSubset = getattr(self, set_name)
        return subset

    @property
    def config_json(self) -> str | None:
        """The creation config stored in the file (JSON text), if any."""
        return self._meta.config

    def close(self) -> None:
        """Close this process's h5py handle and drop cached volumes."""
        self._file.close()
        self._volume_cache.clear()

    def __repr__(self) -> str:
        counts = {s: self.subset(s).nb_subjects for s in SPLITS}
        return (f"MultiSubjectDataset('{self.hdf5_file}', lazy={self.lazy}, "
                f"subjects={counts}, volumes={self.nb_features}, "
                f"streamlines={self.streamline_groups})")

    # ---- reading, keyed by subject name (used by the subsets) ----

    def _streamline_info(self, subject: str, group: str) -> StreamlineInfo:
        try:
            return self._meta.streamlines[(subject, group)]
        except KeyError:
            raise DataError(f"{self.hdf5_file}: no streamline group '{group}' "
                            f"(have {self.streamline_groups})") from None

    def _check_volume_group(self, group: str) -> None:
        if group not in self._meta.volume_groups:
            raise DataError(f"{self.hdf5_file}: no volume group '{group}' "
                            f"(have {self.volume_groups})")

    def _read_streamlines(self, subject: str, group: str, ids: np.ndarray) -> np.ndarray:
        info = self._streamline_info(subject, group)
        ids = _checked_ids(ids, len(info.lengths), subject, group)
        source = (self._file.dataset(f"{subject}/{group}/data") if self.lazy
                  else self._memory[(subject, group)])
        points = read_packed(source, info.offsets, info.lengths, ids)
        if not np.isfinite(points).all():  # one pass over the batch: NaN data fails here
            raise DataError(f"{self.hdf5_file}:/{subject}/{group}: non-finite streamline "
                            "coordinates (NaN or inf) in the requested streamlines")
        return stored_to_voxel_corner(points, info.space, info.origin, info.affine,
                                      info.voxel_sizes)

    def _read_volume(self, subject: str, group: str) -> np.ndarray:
        self._check_volume_group(group)
        if not self.lazy:
            return self._memory[(subject, group)]
        key = (subject, group)
        volume = self._volume_cache.get(key)
        if volume is None:
            volume = _as_4d_float32(self._file.dataset(f"{subject}/{group}/data")[()])
            self._volume_cache.put(key, volume)
        return volume

    def _read_dps(self, subject: str, group: str, key: str, ids: np.ndarray) -> np.ndarray:
        info = self._streamline_info(subject, group)
        if key not in info.dps_keys:
            raise DataError(f"{self.hdf5_file}:/{subject}/{group}: no data_per_streamline "
                            f"'{key}' (have {list(info.dps_keys)})")
        ids = _checked_ids(ids, len(info.lengths), subject, group)
        if not self.lazy:
            return self._memory[(subject, f"{group}/{DPS_GROUP}/{key}")][ids]
        unique, inverse = np.unique(ids, return_inverse=True)
        dataset = self._file.dataset(f"{subject}/{group}/{DPS_GROUP}/{key}")
        values = dataset[unique] if len(unique) else dataset[:0]
        return np.asarray(values)[inverse.reshape(-1)]

    def _load_all(self, h5: Any) -> None:
        subjects = [s for split in SPLITS for s in self._meta.splits[split]]
        for subject in subjects:
            for group in self._meta.volume_groups:
                self._memory[(subject, group)] = _as_4d_float32(h5[subject][group]["data"][()])
            for group in self._meta.streamline_groups:
                points = np.asarray(h5[subject][group]["data"][()], dtype=np.float32)
                if not np.isfinite(points).all():
                    raise DataError(f"{self.hdf5_file}:/{subject}/{group}: non-finite "
                                    "streamline coordinates (NaN or inf)")
                self._memory[(subject, group)] = points
                info = self._meta.streamlines[(subject, group)]
                for key in info.dps_keys:
                    values = np.asarray(h5[subject][group][DPS_GROUP][key][()])
                    self._memory[(subject, f"{group}/{DPS_GROUP}/{key}")] = values


class MultiSubjectSubset(Dataset):  # type: ignore[type-arg]
    """The subjects of one split; indices are positions in :attr:`subject_names`.

    ``__getitem__`` returns its item unchanged: the batch sampler yields
    ``(subject_index, streamline_ids)`` items and the loader's collate function reads them
    through :meth:`get_streamlines` and :meth:`get_volume`.
    """

    def __init__(self, dataset: MultiSubjectDataset, set_name: str,
                 subject_names: Sequence[str]) -> None:
        """Wrap ``dataset``'s subjects ``subject_names`` as the ``set_name`` subset."""
        self.dataset = dataset
        self.set_name = set_name
        self.subject_names: list[str] = list(subject_names)

    @property
    def nb_subjects(self) -> int:
        """Number of subjects in this subset."""
        return len(self.subject_names)

    def __len__(self) -> int:
        return len(self.subject_names)

    def __getitem__(self, item: Any) -> Any:
        return item

    def _name(self, subject_index: int) -> str:
        if not -len(self.subject_names) <= int(subject_index) < len(self.subject_names):
            raise IndexError(f"{self.set_name} subset: subject index {subject_index} out of range "
                             f"({len(self.subject_names)} subjects)")
        return self.subject_names[int(subject_index)]

    def nb_streamlines(self, subject_index: int, group: str) -> int:
        """Number of streamlines of a subject's streamline group."""
        return len(self.dataset._streamline_info(self._name(subject_index), group).lengths)

    def streamline_lengths(self, subject_index: int, group: str) -> np.ndarray:
        """(N,) int64 number of points of every streamline (no point data is read)."""
        return self.dataset._streamline_info(self._name(subject_index), group).lengths

    def euclidean_lengths(self, subject_index: int, group: str) -> np.ndarray:
        """(N,) float32 length in mm of every streamline (no point data is read)."""
        return self.dataset._streamline_info(self._name(subject_index), group).euclidean_lengths

    def get_streamlines(self, subject_index: int, group: str,
                        ids: Sequence[int] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Read streamlines ``ids`` (any order, repeats allowed) of one subject.

        Returns:
            ``(points, lengths)``: packed (P, 3) float32 voxel coordinates with the corner
            origin, and (N,) int64 lengths, both in the order of ``ids``.
        """
        name = self._name(subject_index)
        ids_array = np.asarray(ids, dtype=np.int64).reshape(-1)
        points = self.dataset._read_streamlines(name, group, ids_array)
        lengths = self.dataset._streamline_info(name, group).lengths[ids_array]
        return points, lengths

    def get_volume(self, subject_index: int, group: str) -> np.ndarray:
        """(X, Y, Z, F) float32 volume of a subject (lazy: through the LRU cache)."""
        return self.dataset._read_volume(self._name(subject_index), group)

    def get_volume_shape(self, subject_index: int, group: str) -> tuple[int, ...]:
        """Shape (X, Y, Z, F) of a subject's volume, without reading it."""
        self.dataset._check_volume_group(group)
        shape = self.dataset._meta.volumes[(self._name(subject_index), group)].shape
        return shape if len(shape) == 4 else (*shape, 1)

    def get_affine(self, subject_index: int, group: str) -> np.ndarray:
        """(4, 4) voxel-to-RAS-mm affine of a volume or streamline group."""
        name = self._name(subject_index)
        if group in self.dataset._meta.volume_groups:
            return self.dataset._meta.volumes[(name, group)].affine
        return self.dataset._streamline_info(name, group).affine

    def get_voxres(self, subject_index: int, group: str) -> np.ndarray:
        """(3,) voxel sizes in mm of a volume or streamline group."""
        name = self._name(subject_index)
        if group in self.dataset._meta.volume_groups:
            return self.dataset._meta.volumes[(name, group)].voxres
        return self.dataset._streamline_info(name, group).voxel_sizes

    def data_per_streamline_keys(self, subject_index: int, group: str) -> tuple[str, ...]:
        """Names of the data-per-streamline arrays of a streamline group."""
        return self.dataset._streamline_info(self._name(subject_index), group).dps_keys

    def get_data_per_streamline(self, subject_index: int, group: str, key: str,
                                ids: Sequence[int] | np.ndarray) -> np.ndarray:
        """Values of data-per-streamline ``key`` for streamlines ``ids``, in their order."""
        ids_array = np.asarray(ids, dtype=np.int64).reshape(-1)
        return self.dataset._read_dps(self._name(subject_index), group, key, ids_array)

    def __repr__(self) -> str:
        return f"MultiSubjectSubset({self.set_name!r}, subjects={self.subject_names})"


def _checked_ids(ids: np.ndarray, nb_streamlines: int, subject: str, group: str) -> np.ndarray:
    ids = np.asarray(ids, dtype=np.int64).reshape(-1)
    if len(ids) and (ids.min() < 0 or ids.max() >= nb_streamlines):
        raise IndexError(f"subject '{subject}' group '{group}': streamline ids must be in "
                         f"[0, {nb_streamlines}), got min {ids.min()} max {ids.max()}")
    return ids


def _as_4d_float32(data: np.ndarray) -> np.ndarray:
    data = np.asarray(data, dtype=np.float32)
    return data[..., None] if data.ndim == 3 else data
