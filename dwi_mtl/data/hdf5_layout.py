"""Names and parsing rules of the HDF5 dataset layout (the dwi_ml layout).

One file holds many subjects::

    file.attrs: version, training_subjs, validation_subjs, testing_subjs,
                step_size, compress, nb_points, config (JSON)
    /<subject>/<group>.attrs['type'] = 'volume' | 'streamlines'
    volume group:      data (X, Y, Z, F) float32; attrs affine, voxres, nb_features
    streamline group:  data (P, 3) float32 voxel space, corner origin; offsets, lengths,
                       euclidean_lengths (mm); optional data_per_streamline/<key>;
                       attrs space, origin, affine, dimensions, voxel_sizes, voxel_order

Files written by dwi_ml use the same names but spell some values differently (``Space.VOX``,
``Origin.TRACKVIS``, byte strings, ``"None"``). The helpers here accept every spelling, so
readers never look at raw attribute values themselves.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from dwi_mtl.errors import DataError

#: Layout version written by dwi_mtl (an integer, as dwi_ml writes it).
FORMAT_VERSION = 4

SPLITS = ("training", "validation", "testing")
SPLIT_ATTRS = {"training": "training_subjs", "validation": "validation_subjs",
               "testing": "testing_subjs"}

VOLUME = "volume"
STREAMLINES = "streamlines"
GROUP_TYPES = (VOLUME, STREAMLINES)
DPS_GROUP = "data_per_streamline"

#: Space/origin spellings accepted when reading (dwi_ml writes str(Space.VOX) etc.).
_SPACE_NAMES = {"vox": "vox", "space.vox": "vox", "voxmm": "voxmm", "space.voxmm": "voxmm",
                "rasmm": "rasmm", "space.rasmm": "rasmm"}
_ORIGIN_NAMES = {"corner": "corner", "origin.trackvis": "corner", "trackvis": "corner",
                 "center": "center", "origin.nifti": "center", "nifti": "center"}


def to_str(value: Any) -> str:
    """Decode an HDF5 attribute that holds text (bytes, numpy bytes or str) to ``str``."""
    if isinstance(value, bytes | np.bytes_):
        return bytes(value).decode("utf-8")
    if isinstance(value, np.ndarray) and value.shape == ():
        return to_str(value[()])
    return str(value)


def to_str_list(value: Any) -> list[str]:
    """Decode a subject-list attribute (array of bytes/str, a JSON string or one name)."""
    if value is None:
        return []
    if isinstance(value, np.ndarray):
        return [to_str(v) for v in value.reshape(-1)]
    if isinstance(value, list | tuple):
        return [to_str(v) for v in value]
    text = to_str(value).strip()
    if not text:
        return []
    if text.startswith("["):
        try:
            return [str(v) for v in json.loads(text)]
        except json.JSONDecodeError:
            pass
    return [text]


def to_optional_float(value: Any) -> float | None:
    """Parse ``step_size``/``compress``: missing, ``None``, ``"None"``, 0 or NaN give None."""
    if value is None:
        return None
    if isinstance(value, np.ndarray):
        if value.size != 1:
            return None
        value = value.reshape(-1)[0]
    if isinstance(value, bytes | np.bytes_ | str):
        text = to_str(value).strip().lower()
        if text in ("", "none", "null", "nan"):
            return None
        try:
            value = float(text)
        except ValueError:
            return None
    number = float(value)
    if math.isnan(number) or number <= 0:
        return None
    return number


def normalize_space(value: Any, where: str) -> str:
    """Return ``'vox'``, ``'voxmm'`` or ``'rasmm'`` for a stored ``space`` attribute."""
    text = to_str(value).strip().lower() if value is not None else "vox"
    if text not in _SPACE_NAMES:
        raise DataError(f"{where}: unknown streamline space attribute {text!r}")
    return _SPACE_NAMES[text]


def normalize_origin(value: Any, where: str) -> str:
    """Return ``'corner'`` or ``'center'`` for a stored ``origin`` attribute."""
    text = to_str(value).strip().lower() if value is not None else "corner"
    if text not in _ORIGIN_NAMES:
        raise DataError(f"{where}: unknown streamline origin attribute {text!r}")
    return _ORIGIN_NAMES[text]


def group_type(attrs: Any, where: str) -> str:
    """Return the ``type`` attribute of a subject's group, validated."""
    if "type" not in attrs:
        raise DataError(f"{where}: group has no 'type' attribute (expected one of {GROUP_TYPES})")
    value = to_str(attrs["type"]).strip().lower()
    if value not in GROUP_TYPES:
        raise DataError(f"{where}: group type {value!r} is not one of {GROUP_TYPES}")
    return value


def stored_to_voxel_corner(points: np.ndarray, space: str, origin: str,
                           affine: np.ndarray,
                           voxel_sizes: Sequence[float] | np.ndarray) -> np.ndarray:
    """Convert stored points to voxel coordinates with the corner origin (float32).

    Our files store ``vox``/``corner`` already, and this is then a no-op returning ``points``.
    dwi_ml files may store ``rasmm`` or ``voxmm`` or the ``center`` origin.

    Args:
        points: (P, 3) stored coordinates.
        space: normalized space (see :func:`normalize_space`).
        origin: normalized origin (see :func:`normalize_origin`).
        affine: (4, 4) voxel-to-RAS-mm affine of the reference volume.
        voxel_sizes: (3,) voxel sizes in mm.

    Returns:
        (P, 3) float32 voxel coordinates, corner origin.
    """
    if space == "vox" and origin == "corner":
        return points
    pts = np.asarray(points, dtype=np.float64)
    if space == "rasmm":
        inverse = np.linalg.inv(np.asarray(affine, dtype=np.float64))
        pts = pts @ inverse[:3, :3].T + inverse[:3, 3]
        pts = pts + 0.5  # voxel centres are at integer coordinates in RAS mm -> vox
    else:
        if space == "voxmm":
            pts = pts / np.asarray(voxel_sizes, dtype=np.float64)
        if origin == "center":
            pts = pts + 0.5
    return pts.astype(np.float32)
