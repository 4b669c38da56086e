"""Reading tractograms (.trk, .tck, .trx), checking them against a volume grid, resampling.

Reading goes through nibabel.streamlines (.trk, .tck) and trx-python (.trx, when installed);
resampling and compression through dipy. Streamlines come out of the readers in RAS mm, are
resampled there (so step sizes and tolerances are in mm), then converted to voxel coordinates
with the corner origin, which is how the HDF5 file stores them.

A .trk or .trx header carries its voxel grid; it must match the reference volume (affine
within :data:`HEADER_TOLERANCE` mm, same dimensions), or the streamlines would silently land
in the wrong place. A .tck has no grid and always uses the reference.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
from dipy.tracking.streamline import length, set_number_of_points
from dipy.tracking.streamlinespeed import compress_streamlines

from dwi_mtl.errors import ConfigError, DataError

logger = logging.getLogger(__name__)

SUPPORTED = (".trk", ".tck", ".trx")
#: Largest difference (mm) between a tractogram header's affine and the reference's.
HEADER_TOLERANCE = 1e-2


@dataclass
class RawTractogram:
    """Streamlines in RAS mm with their data-per-streamline and the header's grid if any."""

    path: Path
    streamlines: list[np.ndarray]
    data_per_streamline: dict[str, np.ndarray] = field(default_factory=dict)
    affine: np.ndarray | None = None
    dimensions: tuple[int, int, int] | None = None


def read_tractogram(path: Path, dps_keys: Sequence[str] = ()) -> RawTractogram:
    """Read a .trk/.tck/.trx file, keeping the data-per-streamline ``dps_keys``.

    Raises:
        DataError: missing, unreadable, empty or unsupported file, or a missing key.
    """
    suffix = path.suffix.lower()
    if suffix not in SUPPORTED:
        raise DataError(f"tractogram '{path}': unsupported format '{suffix}' "
                        f"(expected one of {SUPPORTED})")
    if not path.is_file():
        raise DataError(f"tractogram file '{path}' does not exist")
    raw = _read_trx(path) if suffix == ".trx" else _read_nibabel(path)
    if not raw.streamlines:
        raise DataError(f"tractogram '{path}' is empty (no streamline)")
    missing = [key for key in dps_keys if key not in raw.data_per_streamline]
    if missing:
        raise DataError(f"tractogram '{path}': no data_per_streamline {missing} "
                        f"(has {sorted(raw.data_per_streamline)})")
    raw.data_per_streamline = {k: raw.data_per_streamline[k] for k in dps_keys}
    return raw


def _read_nibabel(path: Path) -> RawTractogram:
    try:
        tract = nib.streamlines.load(str(path))
    except Exception as exc:  # nibabel raises HeaderError, DataError, ValueError, OSError...
        raise DataError(f"tractogram '{path}' cannot be read: {exc}") from exc
    streamlines = [np.asarray(s, dtype=np.float64) for s in tract.streamlines]
    dps = {k: np.asarray(v) for k, v in tract.tractogram.data_per_streamline.items()}
    affine = dims = None
    if path.suffix.lower() == ".trk":
        affine = np.asarray(tract.header["voxel_to_rasmm"], dtype=np.float64)
        dims = tuple(int(d) for d in tract.header["dimensions"])
    return RawTractogram(path, streamlines, dps, affine, dims)  # type: ignore[arg-type]


def _read_trx(path: Path) -> RawTractogram:
    try:
        from trx import trx_file_memmap
    except ImportError as exc:
        raise DataError(f"tractogram '{path}': reading .trx needs trx-python "
                        "(pip install trx-python)") from exc
    try:
        trx = trx_file_memmap.load(str(path))
    except Exception as exc:
        raise DataError(f"tractogram '{path}' cannot be read: {exc}") from exc
    try:
        streamlines = [np.array(s, dtype=np.float64) for s in trx.streamlines]
        dps = {k: np.array(v) for k, v in trx.data_per_streamline.items()}
        affine = np.asarray(trx.header["VOXEL_TO_RASMM"], dtype=np.float64)
        dims = tuple(int(d) for d in trx.header["DIMENSIONS"])
    finally:
        trx.close()
    return RawTractogram(path, streamlines, dps, affine, dims)  # type: ignore[arg-type]


def check_header(raw: RawTractogram, affine: np.ndarray, dimensions: Sequence[int],
                 reference: Path) -> None:
    """Raise when a .trk/.trx header's grid differs from the reference volume's."""
    if raw.affine is None or raw.dimensions is None:
        return
    if tuple(raw.dimensions) != tuple(int(d) for d in dimensions[:3]):
        raise DataError(f"tractogram '{raw.path}': header dimensions {tuple(raw.dimensions)} do "
                        f"not match reference '{reference}' {tuple(dimensions[:3])}")
    difference = float(np.abs(raw.affine - affine).max())
    if difference > HEADER_TOLERANCE:
        raise DataError(f"tractogram '{raw.path}': header affine differs from reference "
                        f"'{reference}' by {difference:.4g} mm (tolerance {HEADER_TOLERANCE})")


def check_resampling(step_size: float | None, nb_points: int | None,
                     compress: float | None) -> None:
    """Raise unless at most one of step_size / nb_points / compress is set, and positive."""
    chosen = {k: v for k, v in (("step_size", step_size), ("nb_points", nb_points),
                                ("compress", compress)) if v is not None}
    if len(chosen) > 1:
        raise ConfigError(f"choose one of step_size, nb_points, compress (got {sorted(chosen)})")
    for key, value in chosen.items():
        if value <= 0 or (key == "nb_points" and (int(value) != value or value < 2)):
            raise ConfigError(f"{key} must be positive (nb_points an integer >= 2), got {value}")


def resample(streamlines: list[np.ndarray], step_size: float | None = None,
             nb_points: int | None = None, compress: float | None = None) -> list[np.ndarray]:
    """Resample streamlines in mm with dipy: fixed step, fixed number of points or compression.

    Streamlines with fewer than 2 points are returned unchanged (they are dropped as invalid
    later).
    """
    check_resampling(step_size, nb_points, compress)
    if step_size is None and nb_points is None and compress is None:
        return streamlines
    usable = [i for i, s in enumerate(streamlines) if len(s) >= 2]
    out = list(streamlines)
    chosen = [streamlines[i] for i in usable]
    if compress is not None:
        done = compress_streamlines(chosen, tol_error=compress)
    elif nb_points is not None:
        done = set_number_of_points(chosen, nb_points=int(nb_points))
    elif step_size is not None:
        lengths = np.asarray(length(chosen), dtype=np.float64)
        counts = np.maximum(np.round(lengths / step_size).astype(int) + 1, 2)
        done = [set_number_of_points(s, nb_points=int(n)) for s, n in zip(chosen, counts)]
    for i, s in zip(usable, done):
        out[i] = np.asarray(s, dtype=np.float64)
    return out


def to_voxel_corner(streamlines: list[np.ndarray],
                    affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Convert RAS mm streamlines to packed voxel coordinates with the corner origin."""
    lengths = np.array([len(s) for s in streamlines], dtype=np.int64)
    ras = (np.concatenate(streamlines, axis=0) if len(streamlines)
           else np.zeros((0, 3)))
    inverse = np.linalg.inv(affine)
    vox = ras @ inverse[:3, :3].T + inverse[:3, 3] + 0.5
    return vox.astype(np.float32), lengths


def find_invalid(points: np.ndarray, lengths: np.ndarray, dimensions: Sequence[int]) -> np.ndarray:
    """Boolean mask of streamlines with < 2 points, non-finite points or points outside the grid.

    In corner-origin voxel coordinates the volume spans ``[0, dim]`` on each axis.
    """
    upper = np.asarray(dimensions[:3], dtype=np.float64)
    bad_point = ~np.isfinite(points).all(axis=1) | (points < 0).any(axis=1) \
        | (points > upper).any(axis=1)
    owner = np.repeat(np.arange(len(lengths)), lengths)
    invalid = np.zeros(len(lengths), dtype=bool)
    invalid[owner[bad_point]] = True
    invalid |= lengths < 2
    return invalid
