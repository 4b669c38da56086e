"""Embedded demo datasets built offline from data shipped inside dipy (see docs/data.md)."""

from dwi_mtl._lazy import lazy_exports

_EXPORTS = {
    "build_demo_dataset": "builder",
    "build_bundles_dataset": "builder",
    "demo_cache_dir": "builder",
}

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
__all__ = sorted(_EXPORTS)
