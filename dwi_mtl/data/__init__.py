"""Data: HDF5 dataset creation, multi-subject datasets, streamline operations, interpolation."""

from dwi_mtl._lazy import lazy_exports

_EXPORTS = {
    "create_hdf5_dataset": "hdf5_creation",
    "MultiSubjectDataset": "multi_subject_dataset",
    "MultiSubjectSubset": "multi_subject_dataset",
}

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
__all__ = sorted(_EXPORTS)
