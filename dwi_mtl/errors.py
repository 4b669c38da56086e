"""Exception types of dwi_mtl.

Every error raised for bad user input derives from :class:`DwiMtlError`, so scripts can turn it
into one clear message and a non-zero exit (see :mod:`dwi_mtl.cli.common`) instead of a
traceback from deep inside h5py or torch.
"""

from __future__ import annotations


class DwiMtlError(Exception):
    """Base class of the errors dwi_mtl raises for bad input or state."""


class ConfigError(DwiMtlError, ValueError):
    """A configuration (JSON/YAML file, constructor argument, CLI option) is invalid."""


class DataError(DwiMtlError, ValueError):
    """An input data file (NIfTI, tractogram, HDF5) is missing, unreadable or inconsistent."""


class CheckpointError(DwiMtlError):
    """A checkpoint or experiment folder is missing, corrupt or incompatible."""


class NonFiniteError(DwiMtlError, FloatingPointError):
    """A loss, gradient or input contained NaN or inf."""


class ExperimentExistsError(DwiMtlError, FileExistsError):
    """An experiment or output already exists and overwriting was not requested."""
