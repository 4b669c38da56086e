"""Tracker: grow streamlines from seeds with a trained direction model, batched on CPU or GPU.

At every step, for all running streamlines at once: interpolate the volume features at their
last points (with the model's neighbourhood), ask the model for its head outputs (one
recurrent step, or a re-read for Transformers), take the most likely direction or draw one
(``sample=True``), and move ``step_size`` mm. A streamline stops when the next point would
leave the volume or the stopping mask, turn by more than ``max_angle`` degrees, reach
``max_length`` mm, or when the model's end-of-streamline probability exceeds
``eos_threshold``. With ``bidirectional`` the seed is then tracked the other way, the model
having first re-read the streamline from its far end. Streamlines shorter than ``min_length``
mm are dropped.

Directions live in the voxel space the model was trained in (the HDF5 streamlines' space);
step lengths and angles are measured in mm through the voxel sizes.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from dwi_mtl.data.interpolation import interpolate_volume_torch
from dwi_mtl.errors import ConfigError, DataError
from dwi_mtl.models.sequence_features import last_point_mask, previous_directions
from dwi_mtl.state import derive_seed

logger = logging.getLogger(__name__)


@dataclass
class TrackingOptions:
    """How to propagate (see the module doc). Lengths in mm, angle in degrees."""

    step_size: float = 1.0
    max_angle: float = 60.0
    min_length: float = 10.0
    max_length: float = 200.0
    sample: bool = False
    eos_threshold: float = 0.5
    bidirectional: bool = True
    batch_size: int = 1000
    seed: int = 1234

    def check(self) -> None:
        """Raise :class:`ConfigError` naming the first invalid option."""
        if not self.step_size > 0:
            raise ConfigError(f"step_size must be > 0 mm, got {self.step_size}")
        if not 0 < self.max_angle <= 180:
            raise ConfigError(f"max_angle must be in (0, 180] degrees, got {self.max_angle}")
        if not 0 <= self.min_length <= self.max_length:
            raise ConfigError(f"need 0 <= min_length <= max_length, got {self.min_length} and "
                              f"{self.max_length}")
        if self.max_length < self.step_size:
            raise ConfigError(f"max_length ({self.max_length}) is below step_size "
                              f"({self.step_size})")
        if not 0 < self.eos_threshold <= 1:
            raise ConfigError(f"eos_threshold must be in (0, 1], got {self.eos_threshold}")
        if self.batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {self.batch_size}")

    @property
    def max_points(self) -> int:
        """Points of the longest allowed streamline."""
        return int(math.floor(self.max_length / self.step_size + 1e-9)) + 1


class Tracker:
    """Track with a :class:`~dwi_mtl.models.direction_model.DirectionModel` or any model with
    its tracking interface (``start_tracking``, ``track_step``, ``select_state``,
    ``directions``, ``stop_probability``, ``nb_features``, ``nb_previous_dirs``), or a model
    that re-reads the streamlines and gets each step's new points instead of previous
    directions (``track_with_points``), such as an
    :class:`~dwi_mtl.models.mtl_tracker.MTLTracker`.

    Args:
        model: a trained model (its tracking interface is used).
        volume: ``(X, Y, Z, F)`` input volume, as in the HDF5 file the model trained on.
        voxel_sizes: ``(3,)`` mm.
        options: :class:`TrackingOptions`.
        neighborhood_offsets: ``(M, 3)`` voxel offsets the model's inputs were read at
            (the batch loader's ``offsets``; None: the point alone).
        stopping_mask: ``(X, Y, Z)``; tracking stops before a point in a zero voxel.
        device: where the model, the volume and the propagation live.
    """

    def __init__(self, model: Any, volume: np.ndarray, voxel_sizes: np.ndarray,
                 options: TrackingOptions | None = None,
                 neighborhood_offsets: np.ndarray | None = None,
                 stopping_mask: np.ndarray | None = None, device: str = "cpu") -> None:
        self.options = options or TrackingOptions()
        self.options.check()
        self.device = torch.device(device)
        volume = np.asarray(volume, dtype=np.float32)
        if volume.ndim != 4:
            raise DataError(f"the tracking volume must be (X, Y, Z, F), got shape {volume.shape}")
        offsets = np.zeros((1, 3), np.float32) if neighborhood_offsets is None \
            else np.asarray(neighborhood_offsets, np.float32)
        features = offsets.shape[0] * volume.shape[3]
        if features != model.nb_features:
            raise DataError(f"the model reads {model.nb_features} features per point but the "
                            f"volume and neighbourhood give {features}")
        self.shape = volume.shape[:3]
        if stopping_mask is not None and tuple(np.shape(stopping_mask)) != self.shape:
            raise DataError(f"the stopping mask has shape {np.shape(stopping_mask)}, the volume "
                            f"{self.shape}")
        mask = np.ones(self.shape, bool) if stopping_mask is None else np.asarray(stopping_mask) > 0
        self.model = model.to(self.device).eval()
        self.volume = torch.as_tensor(volume, device=self.device)
        self.offsets = torch.as_tensor(offsets, device=self.device)
        self.mask = torch.as_tensor(mask, device=self.device)
        self.voxres = torch.as_tensor(np.asarray(voxel_sizes, np.float32), device=self.device)

    # -- public -------------------------------------------------------------------------
    @torch.no_grad()
    def track(self, seeds: np.ndarray) -> list[np.ndarray]:
        """Track from ``(S, 3)`` voxel seeds; return the kept streamlines (voxel space).

        Seeds outside the stopping mask are skipped.
        """
        seeds = np.asarray(seeds, dtype=np.float32).reshape(-1, 3)
        result: list[np.ndarray] = []
        size = self.options.batch_size
        for chunk, start in enumerate(range(0, seeds.shape[0], size)):
            points = torch.as_tensor(seeds[start:start + size], device=self.device)
            points = points[self.inside(points)]
            if points.shape[0]:
                result.extend(self._track_chunk(points, chunk))
        logger.info("tracked %d streamlines from %d seeds", len(result), seeds.shape[0])
        return result

    def inside(self, points: Tensor) -> Tensor:
        """``(n,)`` bool: the points lie in the volume and in a non-zero stopping-mask voxel."""
        voxel = torch.floor(points).long()
        dims = torch.as_tensor(self.shape, device=points.device)
        ok = ((voxel >= 0) & (voxel < dims)).all(dim=1)
        safe = torch.minimum(voxel.clamp_min(0), dims - 1)
        return ok & self.mask[safe[:, 0], safe[:, 1], safe[:, 2]]

    def features(self, points: Tensor) -> Tensor:
        """``(n, M * F)`` model inputs at ``points`` (neighbourhood, point-major)."""
        coords = (points[:, None, :] + self.offsets[None]).reshape(-1, 3)
        return interpolate_volume_torch(self.volume, coords).reshape(points.shape[0], -1)

    # -- propagation --------------------------------------------------------------------
    def _track_chunk(self, seeds: Tensor, chunk: int) -> list[np.ndarray]:
        generator = torch.Generator(device=self.device)
        generator.manual_seed(derive_seed(self.options.seed, "tracking", chunk))
        ones = torch.ones(seeds.shape[0], dtype=torch.long, device=self.device)
        forward = self._propagate(seeds, ones, generator)
        lines = [torch.cat([seed[None], new]) for seed, new in zip(seeds, forward, strict=True)]
        if self.options.bidirectional:
            flipped = [line.flip(0) for line in lines]
            lengths = torch.as_tensor([len(line) for line in flipped], device=self.device)
            backward = self._propagate(torch.cat(flipped), lengths, generator)
            lines = [torch.cat([line, new]) for line, new in zip(flipped, backward, strict=True)]
        keep_points = self.options.min_length / self.options.step_size + 1 - 1e-6
        return [line.cpu().numpy() for line in lines if line.shape[0] >= keep_points]

    def _propagate(self, packed: Tensor, lengths: Tensor,
                   generator: torch.Generator) -> list[Tensor]:
        """Continue packed sequences; return each one's new points ``(k_i, 3)``."""
        opts, model = self.options, self.model
        # a re-reading model gets each step's new points and derives its own previous
        # directions from them; the others get their k previous directions
        with_points = bool(getattr(model, "track_with_points", False))
        n, k = lengths.shape[0], 0 if with_points else model.nb_previous_dirs
        last_mask = last_point_mask(lengths)
        outputs, state = model.start_tracking(self.features(packed), lengths, packed)
        last = packed[last_mask].clone()
        prev_dirs = previous_directions(packed, lengths, max(k, 1))[last_mask].reshape(n, -1, 3)
        prev_step = prev_dirs[:, 0] * self.voxres  # mm-space direction of the last step
        history = prev_dirs[:, :k].clone()
        remaining = opts.max_points - lengths
        buffer = packed.new_zeros((n, max(int(remaining.max()), 0), 3))
        counts = torch.zeros(n, dtype=torch.long, device=self.device)
        active = torch.arange(n, device=self.device)
        cos_max = math.cos(math.radians(opts.max_angle))
        for _ in range(buffer.shape[1]):
            dirs = model.directions(outputs, opts.sample, generator)
            step_mm = dirs * self.voxres
            step = dirs * (opts.step_size / step_mm.norm(dim=1, keepdim=True).clamp_min(1e-12))
            new = last[active] + step
            ok = (counts[active] < remaining[active]) & self.inside(new)
            before = prev_step[active]
            turned = (step_mm * before).sum(1) < cos_max * step_mm.norm(dim=1) * before.norm(dim=1)
            ok &= ~(turned & (before.norm(dim=1) > 0))
            stop = model.stop_probability(outputs)
            if stop is not None:
                ok &= stop < opts.eos_threshold
            kept = active[ok]
            buffer[kept, counts[kept]] = new[ok]
            counts[kept] += 1
            last[kept], prev_step[kept] = new[ok], step_mm[ok]
            if k:
                history[kept] = torch.cat([dirs[ok][:, None], history[kept][:, :-1]], dim=1)
            active = kept
            if active.numel() == 0:
                break
            state = model.select_state(state, torch.nonzero(ok)[:, 0])
            extra = {"points": last[active]} if with_points else {}
            outputs, state = model.track_step(self.features(last[active]),
                                              history[active].reshape(active.numel(), -1), state,
                                              **extra)
        return [buffer[i, : int(counts[i])] for i in range(n)]
