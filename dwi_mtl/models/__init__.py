"""Reference models for tractography: direction getters, streamline encoders."""

from dwi_mtl._lazy import lazy_exports

_EXPORTS = {
    "PackedStreamlines": "streamline_encoders",
    "StreamlineEncoder": "streamline_encoders",
    "RecurrentTracker": "recurrent_tracker",
}

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
__all__ = sorted(_EXPORTS)
