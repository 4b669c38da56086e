"""The JSON configuration of HDF5 dataset creation: parsing and validation.

Example (one entry per group; paths are relative to each subject's folder, wildcards allowed)::

    {
      "input": {"type": "volume", "files": ["dwi/fodf.nii.gz", "anat/t1.nii.gz"],
                "standardization": "per_file", "std_mask": ["masks/wm.nii.gz"]},
      "streamlines": {"type": "streamlines", "files": ["tractograms/*.trk"],
                      "reference": "anat/t1.nii.gz",
                      "data_per_streamline": ["score"], "file_label": "bundle"}
    }

Volume keys: ``type``, ``files``, ``standardization`` (``all`` | ``independent`` |
``per_file`` | ``none``, default ``none``), ``std_mask`` (file or list of files, their union is
the mask). Streamline keys: ``type``, ``files``, ``reference`` (the NIfTI giving the voxel grid;
default: the first file of the first volume group), ``data_per_streamline`` (keys copied from
the tractograms), ``file_label`` (name of an int64 data-per-streamline array holding, for every
streamline, the index of the ``files`` entry its file matched: one class per entry, e.g. one per
bundle). Any other key, type or standardization is a :class:`ConfigError` naming the group.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dwi_mtl.data.hdf5_layout import DPS_GROUP, STREAMLINES, VOLUME
from dwi_mtl.errors import ConfigError, DataError

STANDARDIZATIONS = ("all", "independent", "per_file", "none")
_VOLUME_KEYS = {"type", "files", "standardization", "std_mask"}
_STREAMLINE_KEYS = {"type", "files", "reference", "data_per_streamline", "file_label"}


@dataclass(frozen=True)
class VolumeGroupConfig:
    """A volume group: files concatenated on the last axis, then standardized."""

    name: str
    files: tuple[str, ...]
    standardization: str = "none"
    std_mask: tuple[str, ...] = ()


@dataclass(frozen=True)
class StreamlineGroupConfig:
    """A streamline group: tractogram files concatenated into one group."""

    name: str
    files: tuple[str, ...]
    reference: str | None = None
    data_per_streamline: tuple[str, ...] = ()
    file_label: str | None = None


GroupConfig = VolumeGroupConfig | StreamlineGroupConfig


def load_config(config: Mapping[str, Any] | str | os.PathLike[str]) -> dict[str, GroupConfig]:
    """Parse and validate a creation config given as a mapping or a JSON file path.

    Returns:
        group name -> group config, in the config's order.

    Raises:
        DataError: the JSON file is missing or not valid JSON.
        ConfigError: an unknown key, type or standardization, or a missing ``files``.
    """
    source = "config"
    if not isinstance(config, Mapping):
        path = Path(config)
        source = str(path)
        if not path.is_file():
            raise DataError(f"config file '{path}' does not exist")
        try:
            config = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise DataError(f"config file '{path}' is not valid JSON: {exc}") from exc
    if not isinstance(config, Mapping) or not config:
        raise ConfigError(f"{source}: expected a non-empty JSON object of groups")
    groups: dict[str, GroupConfig] = {}
    for name, entry in config.items():
        groups[str(name)] = _parse_group(str(name), entry, source)
    return groups


def config_to_json(groups: Mapping[str, GroupConfig]) -> dict[str, Any]:
    """Return the JSON-able form of parsed groups (stored in the HDF5 file's attributes)."""
    out: dict[str, Any] = {}
    for name, group in groups.items():
        if isinstance(group, VolumeGroupConfig):
            out[name] = {"type": VOLUME, "files": list(group.files),
                         "standardization": group.standardization,
                         "std_mask": list(group.std_mask)}
        else:
            out[name] = {"type": STREAMLINES, "files": list(group.files),
                         "reference": group.reference,
                         "data_per_streamline": list(group.data_per_streamline),
                         "file_label": group.file_label}
    return out


def _parse_group(name: str, entry: Any, source: str) -> GroupConfig:
    where = f"{source}: group '{name}'"
    if not name or "/" in name or name == DPS_GROUP:
        raise ConfigError(f"{where}: invalid group name")
    if not isinstance(entry, Mapping):
        raise ConfigError(f"{where}: expected an object with 'type' and 'files'")
    kind = entry.get("type")
    if kind not in (VOLUME, STREAMLINES):
        raise ConfigError(f"{where}: unknown type {kind!r} (expected 'volume' or 'streamlines')")
    allowed = _VOLUME_KEYS if kind == VOLUME else _STREAMLINE_KEYS
    unknown = sorted(set(entry) - allowed)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown} for type '{kind}' "
                          f"(allowed: {sorted(allowed)})")
    files = _string_list(entry.get("files"), f"{where}: 'files'", required=True)
    if kind == VOLUME:
        standardization = entry.get("standardization", "none")
        if standardization not in STANDARDIZATIONS:
            raise ConfigError(f"{where}: unknown standardization {standardization!r} "
                              f"(expected one of {STANDARDIZATIONS})")
        mask = _string_list(entry.get("std_mask"), f"{where}: 'std_mask'", required=False)
        return VolumeGroupConfig(name, files, standardization, mask)
    reference = entry.get("reference")
    if reference is not None and not isinstance(reference, str):
        raise ConfigError(f"{where}: 'reference' must be a file name")
    keys = _string_list(entry.get("data_per_streamline"), f"{where}: 'data_per_streamline'",
                        required=False)
    label = entry.get("file_label")
    if label is not None and (not isinstance(label, str) or not label or label in keys):
        raise ConfigError(f"{where}: 'file_label' must be a new data_per_streamline name")
    return StreamlineGroupConfig(name, files, reference, keys, label)


def _string_list(value: Any, where: str, required: bool) -> tuple[str, ...]:
    if value is None:
        if required:
            raise ConfigError(f"{where} is missing")
        return ()
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) and v for v in value):
        raise ConfigError(f"{where} must be a file name or a list of file names")
    if required and not value:
        raise ConfigError(f"{where} is empty")
    return tuple(value)
