"""Tracking with trained models: seeding, batched propagation, tractogram output, evaluation."""

from dwi_mtl._lazy import lazy_exports

_EXPORTS = {
    "Tracker": "tracker",
    "TrackingOptions": "tracker",
    "seeds_from_mask": "seeding",
    "seeds_from_points": "seeding",
    "save_tractogram": "io",
    "voxel_to_rasmm": "space",
    "rasmm_to_voxel": "space",
    "load_trained_model": "model_loading",
    "save_tracking_model": "model_loading",
    "angular_error_on_subset": "evaluation",
    "fraction_inside_mask": "evaluation",
}

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
__all__ = sorted(_EXPORTS)
