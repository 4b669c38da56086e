"""Operations on packed streamlines: resampling, compression, splitting, reversing, noise.

Streamlines travel through the pipeline *packed*: one ``(P, 3)`` float32 array of points and
one ``(N,)`` int64 array of lengths (points per streamline), streamline ``i`` being
``points[offsets[i]:offsets[i] + lengths[i]]``. Packing keeps every operation vectorised over a
whole batch instead of looping in Python per streamline.

Resampling and compression delegate to dipy's compiled routines
(:func:`dipy.tracking.streamlinespeed.set_number_of_points`,
:func:`dipy.tracking.streamlinespeed.compress_streamlines`). Randomised operations take their
random numbers as arguments (uniform draws per streamline), so the caller decides how they are
derived (see :mod:`dwi_mtl.training.batch_random`) and the operations stay pure functions.
"""

from __future__ import annotations

import numpy as np
from dipy.tracking.streamlinespeed import compress_streamlines, length, set_number_of_points

from dwi_mtl.errors import ConfigError

#: A streamline is split only when each half keeps at least this many points, so each half
#: still has a direction to predict; shorter streamlines are kept whole.
MIN_SPLIT_POINTS = 3


def offsets_of(lengths: np.ndarray) -> np.ndarray:
    """Return the start index of each streamline in the packed points array.

    Args:
        lengths: ``(N,)`` points per streamline.

    Returns:
        ``(N,)`` int64 offsets (``0, l0, l0 + l1, ...``).
    """
    offsets = np.zeros(len(lengths), dtype=np.int64)
    if len(lengths) > 1:
        np.cumsum(lengths[:-1], out=offsets[1:])
    return offsets


def unpack(points: np.ndarray, lengths: np.ndarray) -> list[np.ndarray]:
    """Split packed points into a list of per-streamline views (no copy)."""
    if len(lengths) == 0:
        return []
    return np.split(points, np.cumsum(lengths[:-1]))


def pack(streamlines: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Pack a list of ``(L_i, 3)`` arrays into ``(points, lengths)`` (float32, int64)."""
    lengths = np.fromiter((len(s) for s in streamlines), dtype=np.int64, count=len(streamlines))
    if len(streamlines) == 0:
        return np.zeros((0, 3), dtype=np.float32), lengths
    return np.concatenate(streamlines).astype(np.float32, copy=False), lengths


def points_after_resampling(
    nb_points_stored: np.ndarray,
    euclidean_lengths: np.ndarray | None,
    step_size: float | None,
    nb_points: int | None,
) -> np.ndarray:
    """Predict the number of points per streamline after :func:`resample`, without its data.

    The batch sampler uses it to size batches in points from the stored lengths alone.

    Args:
        nb_points_stored: ``(N,)`` stored points per streamline.
        euclidean_lengths: ``(N,)`` lengths in the unit of ``step_size`` (needed with a step).
        step_size: resampling step, or None.
        nb_points: fixed number of points, or None.

    Returns:
        ``(N,)`` int64 predicted points per streamline.
    """
    if nb_points is not None:
        return np.full(len(nb_points_stored), nb_points, dtype=np.int64)
    if step_size is not None:
        if euclidean_lengths is None:
            raise ConfigError("points_after_resampling: a step_size needs euclidean_lengths")
        return nb_points_for_step(np.asarray(euclidean_lengths, dtype=np.float64), step_size)
    return np.asarray(nb_points_stored, dtype=np.int64)


def nb_points_for_step(lengths_mm: np.ndarray, step_size: float) -> np.ndarray:
    """Points needed so consecutive points are ``step_size`` apart (at least 2)."""
    return np.maximum(np.rint(lengths_mm / step_size).astype(np.int64) + 1, 2)


def resample(
    points: np.ndarray,
    lengths: np.ndarray,
    step_size: float | None = None,
    nb_points: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Resample every streamline to a step size or to a fixed number of points.

    With a step size, each streamline gets ``round(length / step) + 1`` equally spaced points,
    so the actual step is within ``step / 2 / (n - 1)``-ish of the requested one and the end
    points are kept. Streamlines of fewer than 2 points are returned unchanged.

    Args:
        points: ``(P, 3)`` packed points.
        lengths: ``(N,)`` points per streamline.
        step_size: target distance between consecutive points (same unit as the points).
        nb_points: target number of points (exclusive with ``step_size``).

    Returns:
        The resampled ``(points, lengths)``.
    """
    if (step_size is None) == (nb_points is None):
        raise ConfigError("resample: give exactly one of step_size and nb_points")
    if step_size is not None and step_size <= 0:
        raise ConfigError(f"resample: step_size must be > 0, got {step_size}")
    if nb_points is not None and nb_points < 2:
        raise ConfigError(f"resample: nb_points must be >= 2, got {nb_points}")
    streamlines = unpack(points, lengths)
    if not streamlines:
        return points, lengths
    keep = lengths >= 2
    if nb_points is not None and keep.all():
        return pack(set_number_of_points(streamlines, nb_points))
    if nb_points is not None:
        targets = np.full(len(lengths), nb_points, dtype=np.int64)
    else:
        assert step_size is not None  # for mypy: validated above
        mm = np.asarray(length(streamlines), dtype=np.float64)
        targets = nb_points_for_step(mm, step_size)
    out = [
        set_number_of_points(s, int(n)) if k else s
        for s, n, k in zip(streamlines, targets, keep)
    ]
    return pack(out)


def compress(
    points: np.ndarray, lengths: np.ndarray, tol_error: float
) -> tuple[np.ndarray, np.ndarray]:
    """Compress streamlines (drop nearly collinear points) with dipy, error below ``tol_error``.

    Args:
        points: ``(P, 3)`` packed points.
        lengths: ``(N,)`` points per streamline.
        tol_error: maximum distance between the original and the compressed streamline.

    Returns:
        The compressed ``(points, lengths)``.
    """
    if tol_error <= 0:
        raise ConfigError(f"compress: tol_error must be > 0, got {tol_error}")
    streamlines = unpack(points, lengths)
    if not streamlines:
        return points, lengths
    return pack(compress_streamlines(streamlines, tol_error=tol_error))


def split(
    lengths: np.ndarray, do_split: np.ndarray, uniforms: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Split chosen streamlines in two at a random point; both halves are kept.

    Packed points do not move: a split only replaces one length ``L`` by ``(k, L - k)``, so the
    two halves together hold exactly the original points (no point lost or duplicated).
    Streamlines shorter than ``2 * MIN_SPLIT_POINTS`` are kept whole even when chosen.

    Args:
        lengths: ``(N,)`` points per streamline.
        do_split: ``(N,)`` bool, which streamlines to split.
        uniforms: ``(N,)`` floats in [0, 1) choosing the split point.

    Returns:
        ``(new_lengths, source)``: the lengths after splitting and, for each new streamline, the
        index of the streamline it comes from (halves of a split streamline are adjacent).
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    can = do_split & (lengths >= 2 * MIN_SPLIT_POINTS)
    # First half size k in [MIN, L - MIN], both ends inclusive.
    span = lengths - 2 * MIN_SPLIT_POINTS + 1
    first = MIN_SPLIT_POINTS + np.minimum((uniforms * span).astype(np.int64), span - 1)
    repeats = np.where(can, 2, 1)
    source = np.repeat(np.arange(len(lengths), dtype=np.int64), repeats)
    new_lengths = np.repeat(lengths, repeats)
    starts = np.cumsum(repeats) - repeats  # index of each source's first output
    halves = starts[can]
    new_lengths[halves] = first[can]
    new_lengths[halves + 1] = lengths[can] - first[can]
    return new_lengths, source


def reverse(points: np.ndarray, lengths: np.ndarray, flip: np.ndarray) -> np.ndarray:
    """Reverse the point order of the chosen streamlines (exact; a permutation of points).

    Args:
        points: ``(P, 3)`` packed points.
        lengths: ``(N,)`` points per streamline.
        flip: ``(N,)`` bool, which streamlines to reverse.

    Returns:
        A new ``(P, 3)`` array with the chosen streamlines reversed.
    """
    if not flip.any():
        return points
    offsets = offsets_of(lengths)
    index = np.arange(len(points), dtype=np.int64)
    owner = np.repeat(np.arange(len(lengths)), lengths)
    flipped = flip[owner]
    # Within a reversed streamline, position j maps to start + (L - 1 - j).
    start = offsets[owner[flipped]]
    end = start + lengths[owner[flipped]] - 1
    index[flipped] = start + end - index[flipped]
    return points[index]


def directions(points: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Next-step vectors ``p[j + 1] - p[j]`` of every streamline, packed.

    Returns:
        ``(dirs, dir_lengths)``: ``(P - N', 3)`` vectors and ``(N,)`` counts (``max(L - 1, 0)``).
    """
    dir_lengths = np.maximum(lengths - 1, 0)
    if len(points) < 2:
        return np.zeros((0, 3), dtype=np.float32), dir_lengths
    owner = np.repeat(np.arange(len(lengths)), lengths)
    # Keep only differences between two points of the same streamline.
    keep = owner[1:] == owner[:-1]
    return np.diff(points, axis=0)[keep].astype(np.float32, copy=False), dir_lengths


def truncated_gaussian(uniforms: np.ndarray, sigma: float, truncation: float = 2.0) -> np.ndarray:
    """Turn uniform draws into Gaussian noise of std ``sigma`` truncated at ``truncation`` sigma.

    Uses the inverse normal CDF on ``[Phi(-t), Phi(t)]``, so every value lies strictly inside
    ``[-truncation * sigma, truncation * sigma]`` and no draw is rejected (the count of random
    numbers used is fixed, which keeps counter-based randomness simple).

    Args:
        uniforms: floats in [0, 1), any shape.
        sigma: standard deviation of the untruncated Gaussian.
        truncation: cut-off in units of ``sigma``.

    Returns:
        float32 noise of the same shape as ``uniforms``.
    """
    from scipy.special import ndtr, ndtri

    low = ndtr(-truncation)
    probs = low + uniforms * (1.0 - 2.0 * low)
    return (ndtri(probs) * sigma).astype(np.float32)
