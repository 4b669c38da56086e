"""Construction-time checks of the batch sampler's and loader's arguments.

Every bad value is refused when the object is built, with a :class:`~dwi_mtl.errors.ConfigError`
naming the argument, instead of failing later deep inside a DataLoader worker.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from dwi_mtl.errors import ConfigError

BATCH_SIZE_UNITS = ("nb_streamlines", "nb_points", "length_mm")


def is_int(value: Any) -> bool:
    """True for an integer (bools excluded)."""
    return not isinstance(value, bool) and isinstance(value, (int, np.integer))


def is_number(value: Any) -> bool:
    """True for a finite real number (bools excluded)."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        return False
    return bool(np.isfinite(value))


def json_value(value: Any) -> Any:
    """Turn numpy scalars and tuples into plain JSON-able values (for ``get_config``)."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (list, tuple, np.ndarray)):
        return [json_value(v) for v in value]
    return value


def check_optional_int(name: str, value: Any, minimum: int) -> None:
    """Refuse a value that is neither None nor an integer >= ``minimum``."""
    if value is not None and (not is_int(value) or value < minimum):
        raise ConfigError(f"{name} must be None or an integer >= {minimum}, got {value!r}")


def check_optional_positive(name: str, value: Any) -> None:
    """Refuse a value that is neither None nor a number > 0."""
    if value is not None and (not is_number(value) or value <= 0):
        raise ConfigError(f"{name} must be None or a number > 0, got {value!r}")


def check_ratio(name: str, value: Any) -> None:
    """Refuse a value outside [0, 1]."""
    if not is_number(value) or not 0 <= value <= 1:
        raise ConfigError(f"{name} must be a number in [0, 1], got {value!r}")


def check_group(dataset: Any, name: str, group: Any, kind: str) -> None:
    """Refuse a group that is not one of the dataset's groups of that kind."""
    groups = list(getattr(dataset, f"{kind}_groups"))
    if group not in groups:
        raise ConfigError(
            f"{name}={group!r} is not a {kind} group of {getattr(dataset, 'hdf5_file', 'the file')}"
            f" (its {kind} groups: {groups})"
        )


def check_resampling(step_size: Any, nb_points: Any, compress: Any = None) -> None:
    """step_size, nb_points and compress: positive, and at most one of them."""
    check_optional_positive("step_size", step_size)
    check_optional_int("nb_points", nb_points, 2)
    check_optional_positive("compress", compress)
    given = [n for n, v in (("step_size", step_size), ("nb_points", nb_points),
                            ("compress", compress)) if v is not None]
    if len(given) > 1:
        raise ConfigError(f"give at most one of step_size, nb_points, compress; got {given}")


def check_seed(seed: Any) -> None:
    """A seed is an integer >= 0."""
    if not is_int(seed) or seed < 0:
        raise ConfigError(f"seed must be an integer >= 0, got {seed!r}")


def check_sampler_args(dataset: Any, config: dict[str, Any]) -> None:
    """Validate :class:`~dwi_mtl.training.batch_sampler.BatchSampler` arguments.

    The budget-versus-streamline check needs the pool and is done by the sampler itself.
    """
    check_group(dataset, "streamline_group", config["streamline_group"], "streamline")
    units = config["batch_size_units"]
    if units not in BATCH_SIZE_UNITS:
        raise ConfigError(f"batch_size_units must be one of {BATCH_SIZE_UNITS}, got {units!r}")
    for name in ("batch_size_training", "batch_size_validation"):
        value = config[name]
        if name == "batch_size_validation" and value is None:
            continue
        if not is_number(value) or value <= 0:
            raise ConfigError(f"{name} must be a number > 0, got {value!r}")
        if units == "nb_streamlines" and not float(value).is_integer():
            raise ConfigError(f"{name} in nb_streamlines must be an integer, got {value!r}")
    nb_subjects = config["nb_subjects_per_batch"]
    check_optional_int("nb_subjects_per_batch", nb_subjects, 1)
    available = dataset.training.nb_subjects
    if nb_subjects is not None and nb_subjects > available:
        raise ConfigError(
            f"nb_subjects_per_batch={nb_subjects} is larger than the {available} training "
            "subjects"
        )
    check_optional_int("cycles", config["cycles"], 1)
    if config["cycles"] is not None and nb_subjects is None:
        raise ConfigError("cycles needs nb_subjects_per_batch (it reuses the chosen subjects)")
    check_optional_int("max_batches_per_epoch_training",
                       config["max_batches_per_epoch_training"], 1)
    check_optional_int("max_batches_per_epoch_validation",
                       config["max_batches_per_epoch_validation"], 1)
    check_resampling(config["step_size"], config["nb_points"])
    check_seed(config["seed"])
    rank, world_size = config["rank"], config["world_size"]
    if not is_int(world_size) or world_size < 1:
        raise ConfigError(f"world_size must be an integer >= 1, got {world_size!r}")
    if not is_int(rank) or not 0 <= rank < world_size:
        raise ConfigError(f"rank must be an integer in [0, world_size={world_size}), got {rank!r}")


def check_loader_args(dataset: Any, config: dict[str, Any]) -> None:
    """Validate :class:`~dwi_mtl.training.batch_loader.BatchLoader` arguments."""
    from dwi_mtl.data.neighborhood import get_neighborhood_offsets

    c = config
    check_group(dataset, "streamline_group", c["streamline_group"], "streamline")
    if c["input_group"] is not None:
        check_group(dataset, "input_group", c["input_group"], "volume")
    check_resampling(c["step_size"], c["nb_points"], c["compress"])
    check_ratio("split_ratio", c["split_ratio"])
    check_ratio("reverse_ratio", c["reverse_ratio"])
    for name in ("noise_gaussian_size", "noise_gaussian_size_targets"):
        if not is_number(c[name]) or c[name] < 0:
            raise ConfigError(f"{name} must be a number >= 0 (voxels), got {c[name]!r}")
    if not is_number(c["noise_truncation"]) or c["noise_truncation"] <= 0:
        raise ConfigError(f"noise_truncation must be > 0, got {c['noise_truncation']!r}")
    get_neighborhood_offsets(c["neighborhood_type"], c["neighborhood_radius"])
    if c["neighborhood_type"] is not None and c["input_group"] is None:
        raise ConfigError("neighborhood_type is set but input_group is None")
    if c["interpolate_on"] not in ("workers", "device"):
        raise ConfigError(
            f"interpolate_on must be 'workers' or 'device', got {c['interpolate_on']!r}"
        )
    check_optional_int("device_cache_size", c["device_cache_size"], 1)
    check_seed(c["seed"])
    _check_dps_keys(dataset, c["streamline_group"], c["data_per_streamline_keys"])


def _check_dps_keys(dataset: Any, group: str, keys: list[str]) -> None:
    """Refuse data-per-streamline keys absent from the first training subject."""
    if not keys or dataset.training.nb_subjects == 0:
        return
    known = dataset.training.data_per_streamline_keys(0, group)
    missing = [k for k in keys if k not in known]
    if missing:
        raise ConfigError(
            f"data_per_streamline_keys {missing} not in group {group!r} "
            f"(available: {list(known)})"
        )
