"""BatchLoader: the DataLoader collate_fn that turns planned ids into a :class:`StreamlineBatch`.

``load_batch(items)`` reads each subject's streamlines (one coalesced read per subject), then,
vectorised over the whole batch:

1. resamples them to the loader's ``step_size`` (in mm, through the streamline affine) or
   ``nb_points``, or compresses them (``compress`` tolerance in mm); skipped when the file is
   already at that step size;
2. (training context only) splits ``split_ratio`` of them at a random point, keeping both
   halves, and streamlines too short to split whole;
3. (training only) reverses ``reverse_ratio`` of them;
4. (training only) adds truncated Gaussian noise (voxel units, cut at ``noise_truncation``
   sigma) to the target points, from which the next-step ``directions`` are computed, and to
   the input points at which volume features are read (``noise_gaussian_size``);
5. interpolates the ``input_group`` volume at every point (and neighbourhood) in the worker,
   or leaves it to :meth:`BatchLoader.to_device` on the training device.

Every random decision is a hash of ``(seed, context, epoch, batch_index, subject, streamline
id, ...)`` (:mod:`dwi_mtl.training.batch_random`): identical with 0 or N workers, on any rank,
and after a resume. The loader holds no state that changes while training.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from dwi_mtl.data import streamline_ops as ops
from dwi_mtl.data.neighborhood import get_neighborhood_offsets
from dwi_mtl.training import batch_random as rnd
from dwi_mtl.training.batch import BatchItem, StreamlineBatch
from dwi_mtl.training.batch_inputs import (
    DeviceVolumeCache,
    interpolate_batch_torch,
    interpolate_items_numpy,
)
from dwi_mtl.training.batch_validation import check_loader_args, json_value


class BatchLoader:
    """Loads and augments the streamlines of a batch and interpolates their inputs.

    Args:
        dataset: a ``MultiSubjectDataset`` (built object; not part of :meth:`get_config`).
        streamline_group: the streamline group to read.
        input_group: volume group interpolated at every point, or None (no ``inputs``).
        step_size: resample to this step (mm); exclusive with ``nb_points`` and ``compress``.
        nb_points: resample every streamline to this many points.
        compress: compress with this tolerance (mm).
        split_ratio: fraction of streamlines split in two (training only).
        reverse_ratio: fraction of streamlines reversed (training only).
        noise_gaussian_size: std (voxels) of the noise on the points the inputs are read at.
        noise_gaussian_size_targets: std (voxels) of the noise on the target points.
        noise_truncation: noise is cut at this many std.
        neighborhood_type: None, ``"axes"`` or ``"grid"`` (see :mod:`dwi_mtl.data.neighborhood`).
        neighborhood_radius: the neighbourhood's radius (required with a type).
        data_per_streamline_keys: per-streamline arrays to add to the batch.
        interpolate_on: ``"workers"`` (numpy, in load_batch) or ``"device"`` (torch, in
            :meth:`to_device` on the training device).
        device_cache_size: volumes kept on the device when ``interpolate_on="device"``.
        seed: base seed of every random decision.

    Raises:
        ConfigError: naming the argument, for an unknown group, bad ratio, a neighbourhood
            without radius, ...
    """

    def __init__(
        self,
        dataset: Any,
        streamline_group: str,
        input_group: str | None = None,
        step_size: float | None = None,
        nb_points: int | None = None,
        compress: float | None = None,
        split_ratio: float = 0.0,
        reverse_ratio: float = 0.0,
        noise_gaussian_size: float = 0.0,
        noise_gaussian_size_targets: float = 0.0,
        noise_truncation: float = 2.0,
        neighborhood_type: str | None = None,
        neighborhood_radius: float | int | Sequence[float] | None = None,
        data_per_streamline_keys: Sequence[str] = (),
        interpolate_on: str = "workers",
        device_cache_size: int = 1,
        seed: int = 1234,
    ) -> None:
        radius = list(neighborhood_radius) if isinstance(neighborhood_radius, (list, tuple)) \
            else neighborhood_radius
        self._config: dict[str, Any] = {
            "streamline_group": streamline_group, "input_group": input_group,
            "step_size": step_size, "nb_points": nb_points, "compress": compress,
            "split_ratio": split_ratio, "reverse_ratio": reverse_ratio,
            "noise_gaussian_size": noise_gaussian_size,
            "noise_gaussian_size_targets": noise_gaussian_size_targets,
            "noise_truncation": noise_truncation, "neighborhood_type": neighborhood_type,
            "neighborhood_radius": radius,
            "data_per_streamline_keys": list(data_per_streamline_keys),
            "interpolate_on": interpolate_on, "device_cache_size": device_cache_size,
            "seed": seed,
        }
        check_loader_args(dataset, self._config)
        self.dataset = dataset
        self.streamline_group = streamline_group
        self.input_group = input_group
        self.step_size, self.nb_points, self.compress = step_size, nb_points, compress
        self.split_ratio, self.reverse_ratio = float(split_ratio), float(reverse_ratio)
        self.noise_inputs = float(noise_gaussian_size)
        self.noise_targets = float(noise_gaussian_size_targets)
        self.noise_truncation = float(noise_truncation)
        self.offsets = get_neighborhood_offsets(neighborhood_type, radius)
        self.data_per_streamline_keys = list(data_per_streamline_keys)
        self.interpolate_on = interpolate_on
        self.seed = int(seed)
        self._device_cache = DeviceVolumeCache(device_cache_size)

    # -- public API -----------------------------------------------------------------------
    @property
    def nb_input_features(self) -> int:
        """Features per point in ``inputs`` (``M * F``), 0 without an input group."""
        if self.input_group is None:
            return 0
        return len(self.offsets) * int(self.dataset.nb_features[self.input_group])

    def get_config(self) -> dict[str, Any]:
        """The JSON-able constructor arguments (without the dataset)."""
        return {key: json_value(value) for key, value in self._config.items()}

    def state_dict(self) -> dict[str, Any]:
        """No training-time state: randomness is derived from each batch's identity."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Nothing to restore (see :meth:`state_dict`)."""

    def load_batch(self, items: Sequence[BatchItem]) -> StreamlineBatch:
        """Read, augment and (unless deferred) interpolate one batch: the DataLoader collate_fn.

        Args:
            items: the sampler's ``[BatchItem(subject_index, ids), ...]`` for one batch.

        Returns:
            The batch, with numpy-backed CPU tensors.
        """
        context, epoch, batch_index = _identity(items)
        subset = getattr(self.dataset, context)
        points, lengths, subjects, ids = self._read(subset, items)
        keys = rnd.streamline_keys(rnd.batch_key(self.seed, context, epoch, batch_index),
                                   subjects, ids)
        source = np.arange(len(lengths), dtype=np.int64)
        augment = context == "training"
        if augment and self.split_ratio > 0:
            do = rnd.uniforms(keys, rnd.STREAM_SPLIT) < self.split_ratio
            lengths, source = ops.split(lengths, do, rnd.uniforms(keys, rnd.STREAM_SPLIT_POINT))
            pieces = np.concatenate([[0], (source[1:] == source[:-1]).astype(np.int64)])
            keys = rnd.piece_keys(keys[source], pieces)
        if augment and self.reverse_ratio > 0:
            flip = rnd.uniforms(keys, rnd.STREAM_REVERSE) < self.reverse_ratio
            points = ops.reverse(points, lengths, flip)
        targets = points
        if augment and self.noise_targets > 0:
            targets = points + self._noise(keys, lengths, rnd.STREAM_NOISE_TARGETS,
                                           self.noise_targets)
        if augment and self.noise_inputs > 0:
            points = points + self._noise(keys, lengths, rnd.STREAM_NOISE_INPUTS,
                                          self.noise_inputs)
        directions, _ = ops.directions(targets, lengths)
        subjects, ids = subjects[source], ids[source]
        deferred = self.input_group is not None and self.interpolate_on == "device"
        width = self.nb_input_features if self.input_group is not None and not deferred else 0
        floats, ints = _buffers(points, directions, width, lengths, subjects, ids)
        inputs = None
        if width:
            interpolate_items_numpy(
                points, _point_ranges(subjects, lengths),
                lambda s: subset.get_volume(s, self.input_group), self.offsets, out=floats[2])
            inputs = torch.from_numpy(floats[2])
        return StreamlineBatch(
            points=torch.from_numpy(floats[0]),
            lengths=torch.from_numpy(ints[0]),
            subject_indices=torch.from_numpy(ints[1]),
            streamline_ids=torch.from_numpy(ints[2]),
            directions=torch.from_numpy(floats[1]),
            inputs=inputs,
            data_per_streamline=self._dps(subset, items, source),
            context=context, epoch=epoch, batch_index=batch_index,
            needs_interpolation=deferred,
        )

    def to_device(self, batch: StreamlineBatch, device: torch.device | str) -> StreamlineBatch:
        """Move a batch to ``device``; interpolate there when it was deferred.

        Volumes are copied to the device once and kept in an LRU of ``device_cache_size``.
        """
        device = torch.device(device)
        moved = batch.to(device, non_blocking=device.type == "cuda")
        if not moved.needs_interpolation:
            return moved
        subset = getattr(self.dataset, moved.context)
        group = self.input_group

        def volume(subject: int) -> torch.Tensor:
            key = (moved.context, subject, str(device))
            return self._device_cache.get(key, lambda: subset.get_volume(subject, group), device)

        point_subjects = torch.repeat_interleave(moved.subject_indices, moved.lengths)
        offsets = torch.from_numpy(self.offsets).to(device)
        moved.inputs = interpolate_batch_torch(moved.points, point_subjects, volume, offsets)
        moved.needs_interpolation = False
        return moved

    # -- steps ----------------------------------------------------------------------------
    def _read(self, subset: Any, items: Sequence[BatchItem]) -> tuple[np.ndarray, ...]:
        """Read and resample every item; return packed points, lengths, subjects, ids."""
        all_points, all_lengths, subjects, ids = [], [], [], []
        for item in items:
            s, item_ids = int(item[0]), np.asarray(item[1], dtype=np.int64)
            pts, lens = subset.get_streamlines(s, self.streamline_group, item_ids)
            pts, lens = self._resample(subset, s, pts, np.asarray(lens, dtype=np.int64))
            all_points.append(pts)
            all_lengths.append(lens)
            subjects.append(np.full(len(lens), s, dtype=np.int64))
            ids.append(item_ids)
        if not items:
            empty = np.zeros(0, dtype=np.int64)
            return np.zeros((0, 3), np.float32), empty, empty, empty
        return (np.concatenate(all_points).astype(np.float32, copy=False),
                np.concatenate(all_lengths), np.concatenate(subjects), np.concatenate(ids))

    def _resample(self, subset: Any, subject: int, points: np.ndarray,
                  lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Resample or compress in mm (through the affine's linear part), back to voxels."""
        file_step = getattr(self.dataset, "step_size", None)
        step_needed = self.step_size is not None and not (
            file_step is not None and np.isclose(file_step, self.step_size)
            and getattr(self.dataset, "compress", None) is None)
        if not (step_needed or self.nb_points is not None or self.compress is not None):
            return points, lengths
        linear = np.asarray(subset.get_affine(subject, self.streamline_group))[:3, :3]
        identity = np.allclose(linear, np.eye(3))
        mm = points if identity else points @ linear.T.astype(np.float32)
        if self.compress is not None:
            mm, lengths = ops.compress(mm, lengths, self.compress)
        else:
            mm, lengths = ops.resample(mm, lengths, self.step_size if step_needed else None,
                                       self.nb_points)
        vox = mm if identity else mm @ np.linalg.inv(linear).T.astype(np.float32)
        return vox.astype(np.float32, copy=False), lengths

    def _noise(self, keys: np.ndarray, lengths: np.ndarray, stream: int,
               sigma: float) -> np.ndarray:
        """Truncated Gaussian noise for every coordinate of every point."""
        draws = rnd.point_uniforms(keys, lengths, stream)
        return ops.truncated_gaussian(draws, sigma, self.noise_truncation)

    def _dps(self, subset: Any, items: Sequence[BatchItem],
             source: np.ndarray) -> dict[str, torch.Tensor]:
        """Requested data-per-streamline arrays, repeated for both halves of split ones."""
        out: dict[str, torch.Tensor] = {}
        for key in self.data_per_streamline_keys:
            parts = [np.asarray(subset.get_data_per_streamline(
                int(i[0]), self.streamline_group, key, i[1])) for i in items]
            if parts:
                out[key] = torch.from_numpy(np.ascontiguousarray(np.concatenate(parts)[source]))
        return out


def _identity(items: Sequence[BatchItem]) -> tuple[str, int, int]:
    """``(context, epoch, batch_index)`` of a batch's items (defaults for plain tuples)."""
    if not items:
        return "training", 0, 0
    first = items[0]
    return (getattr(first, "context", "training"), int(getattr(first, "epoch", 0)),
            int(getattr(first, "batch_index", 0)))


def _buffers(points: np.ndarray, directions: np.ndarray, width: int, lengths: np.ndarray,
             subjects: np.ndarray, ids: np.ndarray) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Copy the batch's arrays into one float32 and one int64 buffer (views returned).

    Tensors that are views of one storage cross the DataLoader's worker queue as one shared
    memory segment instead of one each, which makes a worker's batch cheaper to receive.
    The third float view is the ``(P, width)`` space for the interpolated inputs.
    """
    p, d, n = len(points), len(directions), len(lengths)
    floats = np.empty(p * 3 + d * 3 + p * width, dtype=np.float32)
    views = [floats[: p * 3].reshape(p, 3), floats[p * 3 : (p + d) * 3].reshape(d, 3),
             floats[(p + d) * 3 :].reshape(p, width)]
    views[0][...] = points
    views[1][...] = directions
    ints = np.empty(3 * n, dtype=np.int64)
    int_views = [ints[:n], ints[n : 2 * n], ints[2 * n :]]
    for view, values in zip(int_views, (lengths, subjects, ids)):
        view[...] = values
    return views, int_views


def _point_ranges(subjects: np.ndarray, lengths: np.ndarray) -> list[tuple[int, int, int]]:
    """Contiguous ``(subject, start, stop)`` point ranges of a packed batch."""
    if len(subjects) == 0:
        return []
    ends = np.cumsum(lengths)
    cuts = np.flatnonzero(np.diff(subjects)) + 1
    firsts = np.concatenate([[0], cuts])
    lasts = np.concatenate([cuts, [len(subjects)]]) - 1
    starts = np.concatenate([[0], ends[:-1]])
    return [(int(subjects[f]), int(starts[f]), int(ends[last]))
            for f, last in zip(firsts, lasts)]
