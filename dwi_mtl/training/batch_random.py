"""Counter-based randomness for the batch loader: every draw is a hash of its coordinates.

A draw for streamline ``id`` of subject ``s`` in batch ``b`` of epoch ``e`` of a context is a
pure function of ``(seed, context, e, b, s, id, stream[, point, component])``. It does not
depend on which process loads the batch, how many workers exist, on which distributed rank
the streamline landed, or on what was drawn before: 0 or N workers, any world size and a
resumed run all see the same numbers. Hashing is the splitmix64 finaliser, vectorised over
numpy ``uint64`` arrays (wrapping arithmetic), so a batch's draws cost a few array passes.
"""

from __future__ import annotations

import numpy as np

from dwi_mtl.state import derive_seed

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_TO_UNIT = 2.0**-53

#: Independent streams of draws (one per random decision).
STREAM_SPLIT = 1
STREAM_SPLIT_POINT = 2
STREAM_REVERSE = 3
STREAM_NOISE_INPUTS = 4
STREAM_NOISE_TARGETS = 5


def _stream_constant(stream: int) -> np.uint64:
    """A per-stream odd constant (computed in Python integers: no numpy overflow warning)."""
    return np.uint64((int(stream) * 0x9E3779B97F4A7C15) % 2**64)


def mix(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser of a uint64 array (a bijection with good avalanche)."""
    z = x.astype(np.uint64, copy=True)
    z += _GOLDEN
    z = (z ^ (z >> np.uint64(30))) * _M1
    z = (z ^ (z >> np.uint64(27))) * _M2
    return z ^ (z >> np.uint64(31))


def batch_key(seed: int, context: str, epoch: int, batch_index: int) -> int:
    """The key of a batch, from ``(seed, context, epoch, batch_index)``."""
    return derive_seed(seed, context, epoch, batch_index)


def streamline_keys(key: int, subjects: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """One uint64 key per streamline from the batch key, its subject and its id."""
    base = mix(np.array([key], dtype=np.uint64))[0]
    with np.errstate(over="ignore"):
        first = mix(np.asarray(subjects, dtype=np.uint64) ^ base)
        return mix(first ^ np.asarray(ids, dtype=np.uint64))


def piece_keys(keys: np.ndarray, pieces: np.ndarray) -> np.ndarray:
    """Keys of the pieces of split streamlines (piece 0 or 1 of a source streamline)."""
    return mix(keys ^ (np.asarray(pieces, dtype=np.uint64) + np.uint64(1)) * _M2)


def uniforms(keys: np.ndarray, stream: int) -> np.ndarray:
    """One float64 in [0, 1) per key for a given stream."""
    z = mix(keys ^ _stream_constant(stream))
    return (z >> np.uint64(11)).astype(np.float64) * _TO_UNIT


def point_uniforms(keys: np.ndarray, lengths: np.ndarray, stream: int) -> np.ndarray:
    """``(P, 3)`` floats in [0, 1): one per coordinate of every point of every streamline.

    The draw of point ``j`` of a streamline depends only on the streamline's key and ``j``.
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    per_point = np.repeat(mix(keys ^ _stream_constant(stream)), lengths)
    starts = np.repeat(np.cumsum(lengths) - lengths, lengths)
    j = (np.arange(len(per_point), dtype=np.int64) - starts).astype(np.uint64)
    counters = (j[:, None] * np.uint64(3) + np.arange(3, dtype=np.uint64)[None, :])
    z = mix(per_point[:, None] ^ mix(counters))
    return (z >> np.uint64(11)).astype(np.float64) * _TO_UNIT
